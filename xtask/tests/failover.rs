//! Failover at any moment, on a real HA cluster (`testkit::ha`: etcd, two Patroni nodes, HAProxy
//! routing to whichever node Patroni calls primary, cutting the sessions of a node marked down):
//! prestart, several prestarts, backend and worker through a planned switchover at every phase,
//! and an unplanned failover (the leader's postmaster SIGKILLed). Each prints the time from the
//! end of the switchover (HAProxy routing to the new leader) to prestart's exit, for the README's
//! figures. Skipped, with one line, where Patroni, etcd or HAProxy are not installed.
//!
//! Settings leave `sslmode` at its default, as deployments do (see [`env`]). `cargo nextest run
//! -p xtask --test failover --no-capture` shows each scenario's timing line. The backend ones need `target/debug/backend` and `worker` (`cargo build -p backend --features server
//! --bins`; `cargo xtask test` builds them).

use std::time::{Duration, Instant};

use testkit::ha::Ha;
use testkit::{Migrations, Outcome, Run, Running, eventually, http, with};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");
/// The three workspace migrations and the seed's first superuser.
const WORKSPACE_MIGRATIONS: usize = 3;
/// Every run gets this much waiting in all; a failover here takes seconds.
const WAIT_TIMEOUT: &str = "60";
const WITHIN: Duration = Duration::from_secs(90);

/// Settings through HAProxy with `sslmode` at its default (`prefer`), as deployments run it:
/// sqlx then opens every connection with an SSLRequest, which is where a proxy that accepts and
/// closes (no backend up) shows.
fn env(ha: &Ha) -> Vec<(String, String)> {
    ha.env("app").into_iter().filter(|(key, _)| key != "POSTGRES_SSLMODE").collect()
}

fn prestart(ha: &Ha, migrations: &Migrations) -> Run {
    let source = migrations.path().to_str().expect("utf-8 path").to_owned();
    Run::xtask(XTASK, &["prestart", "--source", &source, "--wait-timeout", WAIT_TIMEOUT], &env(ha))
}

/// The signed time from `end` (the switchover's end) to `exited`, in ms: negative when prestart
/// was done first.
fn after(end: Instant, exited: Instant) -> f64 {
    match exited.checked_duration_since(end) {
        Some(later) => later.as_secs_f64() * 1000.0,
        None => -(end.duration_since(exited).as_secs_f64() * 1000.0),
    }
}

/// Waits for `running` while `during` drives the cluster on another thread (it returns the moment
/// the switchover ended); returns prestart's outcome and the time from that end to its exit.
fn race(ha: &Ha, running: Running, during: impl FnOnce(&Ha) -> Instant + Send) -> (Outcome, f64) {
    std::thread::scope(|scope| {
        let driver = scope.spawn(|| during(ha));
        let outcome = running.wait_within(WITHIN);
        let exited = Instant::now();
        let end = driver.join().unwrap_or_else(|_| panic!("the switchover failed; prestart said:\n{}", outcome.stderr));
        (outcome, after(end, exited))
    })
}

/// Every migration applied once and successfully, `expected` in all, and the seed's account once.
#[track_caller]
fn assert_applied_once(ha: &Ha, expected: usize) {
    let doubled =
        ha.psql("app", "SELECT version, count(*) FROM _sqlx_migrations GROUP BY 1 HAVING count(*) > 1 ORDER BY 1");
    assert_eq!(doubled, "", "a migration was recorded twice");
    assert_eq!(ha.psql("app", "SELECT count(*) FROM _sqlx_migrations WHERE NOT success"), "0", "a failed migration");
    assert_eq!(ha.psql("app", "SELECT count(*) FROM _sqlx_migrations"), expected.to_string());
    assert_eq!(ha.psql("app", "SELECT count(*) FROM users"), "1", "the seed's account, once");
}

/// A stderr's first lines, for the report of a failure.
fn head(outcome: &Outcome) -> String {
    outcome.stderr.lines().take(12).collect::<Vec<_>>().join("\n")
}

/// The scenario's figure, for the README (and, today, what prestart said).
fn report(scenario: &str, ms: f64, outcome: &Outcome) {
    eprintln!(
        "{scenario}: prestart exited {ms:.0} ms after the switchover's end, with {:?}; its stderr began:\n{}",
        outcome.code,
        head(outcome)
    );
}

#[track_caller]
fn assert_success(ha: &Ha, outcome: &Outcome) {
    assert_eq!(
        outcome.code,
        Some(0),
        "prestart failed through the failover:\n{}\n--- cluster\n{}",
        outcome.stderr,
        ha.log()
    );
}

/// Waits until a statement sleeps in `pg_sleep` on the leader (seen through HAProxy), which is
/// where each scenario puts its switchover. By what the server process waits on, not by its query
/// text: a batch of migrations is one message, and `pg_stat_activity` shows only its first
/// `track_activity_query_size` bytes.
#[track_caller]
fn wait_for_sleep(ha: &Ha) {
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND pid <> pg_backend_pid()";
    assert!(
        eventually(Duration::from_secs(30), || ha.try_psql("app", sql).is_ok_and(|n| n != "0")),
        "no statement sleeps in pg_sleep on the leader:\n{}",
        ha.log()
    );
}

/// The harness itself: a switchover, a SIGKILLed leader whose node rejoins as a replica
/// (pg_rewind), a switchover back to it, and nothing left behind (process or folder) once dropped.
#[test]
fn the_harness_switches_over_fails_over_rejoins_and_leaves_nothing_behind() {
    let Some(ha) = Ha::start() else { return };
    eprintln!("the HA cluster started in {:?}", ha.started_in);
    let first = ha.leader();
    let started = Instant::now();
    let end = ha.switchover();
    eprintln!("a switchover took {:?} until HAProxy routed to the new leader", end - started);
    assert_ne!(ha.leader(), first);
    let killed = ha.kill_leader_postmaster();
    let started = Instant::now();
    let end = ha.wait_routed_to_a_writable_leader(Duration::from_secs(60));
    eprintln!("an unplanned failover took {:?} from the SIGKILL to HAProxy routing", end - started);
    assert_ne!(ha.leader(), killed, "Patroni restarted the crashed leader instead of failing over");
    ha.wait_healthy();
    ha.switchover();
    assert_eq!(ha.leader(), killed, "the killed node did not come back as a replica, then leader");
    assert_eq!(ha.psql("app", "SELECT pg_is_in_recovery()"), "f");
    let dir = ha.dir().to_owned();
    let name = dir.file_name().and_then(|n| n.to_str()).expect("folder name").to_owned();
    drop(ha);
    assert!(!dir.exists(), "{} is left", dir.display());
    let left: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&name))
        .collect();
    assert!(left.is_empty(), "processes left running: {left:#?}");
}

/// A transactional migration that takes 3 s, then creates a table.
const SLOW: &str = "SELECT pg_sleep(3);\nCREATE TABLE after_the_sleep (id int);\n";

#[test]
fn switchover_during_the_wait() {
    let Some(ha) = Ha::start() else { return };
    let migrations = Migrations::workspace();
    let before = ha.times_marked_down(&ha.leader());
    let switchover = ha.start_switchover();
    // One prestart starts as the switchover does (it may meet the old leader shutting down,
    // 57P03), another once HAProxy has marked the old leader down: HAProxy has no backend until
    // the new leader is up, and accepts connections only to close them.
    let early = prestart(&ha, &migrations).spawn();
    ha.wait_marked_down(&switchover.from, before);
    let running = prestart(&ha, &migrations).spawn();
    let (outcome, ms) = race(&ha, running, |ha| switchover.finish(ha));
    let early = early.wait_within(WITHIN);
    report("switchover during the wait (started with no backend)", ms, &outcome);
    eprintln!(
        "the prestart started with the switchover exited with {:?}; its stderr began:\n{}",
        early.code,
        head(&early)
    );
    assert_success(&ha, &outcome);
    assert_success(&ha, &early);
    assert_applied_once(&ha, WORKSPACE_MIGRATIONS);
}

/// sqlx's migration lock key for a database: CRC-32 of its name times a constant (xtask's
/// `lock::key`, as sqlx's Migrator takes it).
fn lock_key(database: &str) -> i64 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32_ad9e * i64::from(CRC.checksum(database.as_bytes()))
}

/// A psql session through HAProxy fed `sql` and kept open until dropped (or until the failover
/// ends it).
struct Holder(std::process::Child);

impl Holder {
    fn open(ha: &Ha, sql: &str) -> Holder {
        use std::io::Write;
        let mut child = ha
            .psql_command("app")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("psql");
        let stdin = child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{sql}").expect("send");
        stdin.flush().expect("flush");
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn switchover_during_the_migration_lock_wait() {
    let Some(ha) = Ha::start() else { return };
    let migrations = Migrations::workspace();
    let key = lock_key("app");
    let holder = Holder::open(&ha, &format!("SET application_name = 'lock holder'; SELECT pg_advisory_lock({key});"));
    let held = "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' \
         AND l.granted AND a.application_name = 'lock holder'";
    assert!(eventually(Duration::from_secs(10), || ha.try_psql("app", held).is_ok_and(|n| n == "1")), "no lock");
    let running = prestart(&ha, &migrations).spawn();
    running.wait_for_stderr("waiting for the migration lock held by", Duration::from_secs(30));
    // The holder's session dies with the old primary: the lock is free on the new one.
    let (outcome, ms) = race(&ha, running, |ha| ha.switchover());
    drop(holder);
    report("switchover during the lock wait", ms, &outcome);
    assert_success(&ha, &outcome);
    assert_applied_once(&ha, WORKSPACE_MIGRATIONS);
}

#[test]
fn switchover_mid_migration_runs_the_transactional_migration_again_once() {
    let Some(ha) = Ha::start() else { return };
    let migrations = Migrations::workspace();
    migrations.write("20261201000000_slow.sql", SLOW);
    let running = prestart(&ha, &migrations).spawn();
    wait_for_sleep(&ha);
    let (outcome, ms) = race(&ha, running, |ha| {
        std::thread::sleep(Duration::from_secs(1));
        ha.switchover()
    });
    report("switchover mid-migration", ms, &outcome);
    assert_success(&ha, &outcome);
    assert_applied_once(&ha, WORKSPACE_MIGRATIONS + 1);
    assert_eq!(ha.psql("app", "SELECT count(*) FROM pg_class WHERE relname = 'after_the_sleep'"), "1");
}

#[test]
fn switchover_during_a_no_transaction_migration_exits_6_naming_the_rerun_which_finishes_it() {
    let Some(ha) = Ha::start() else { return };
    let migrations = Migrations::workspace();
    // It sleeps 20 s until the test says "rerun now": the switchover surely cuts the first run,
    // however slow the machine, and the rerun does not wait.
    migrations.write(
        "20261201000000_outside.sql",
        "-- no-transaction\nSELECT pg_sleep(CASE WHEN to_regclass('public.rerun_now') IS NULL THEN 20 ELSE 0 END);\n\
         CREATE TABLE IF NOT EXISTS outside_a_transaction (id int);\n",
    );
    let running = prestart(&ha, &migrations).spawn();
    wait_for_sleep(&ha);
    let (outcome, ms) = race(&ha, running, |ha| {
        std::thread::sleep(Duration::from_secs(1));
        ha.switchover()
    });
    report("switchover during a no-transaction migration", ms, &outcome);
    outcome.assert_code(6).assert_stderr_contains("20261201000000_outside.sql").assert_stderr_contains("rerun");
    ha.psql("app", "CREATE TABLE rerun_now ()");
    let rerun = prestart(&ha, &migrations).output();
    assert_success(&ha, &rerun);
    assert_applied_once(&ha, WORKSPACE_MIGRATIONS + 1);
    assert_eq!(ha.psql("app", "SELECT count(*) FROM pg_class WHERE relname = 'outside_a_transaction'"), "1");
}

/// The seed is made slow by a trigger on its INSERT into users (3 s), so the switchover lands
/// inside the seed's transaction, deterministically.
#[test]
fn switchover_during_the_seed_runs_it_again_whole() {
    let Some(ha) = Ha::start() else { return };
    let migrations = Migrations::workspace();
    migrations.write(
        "20261201000000_slow_seed.sql",
        "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(3); RETURN NEW; \
         END $$;\nCREATE TRIGGER slow_insert BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION slow_insert();\n",
    );
    let running = prestart(&ha, &migrations).spawn();
    running.wait_for_stderr("seed initial data", Duration::from_secs(30));
    wait_for_sleep(&ha);
    let (outcome, ms) = race(&ha, running, |ha| {
        std::thread::sleep(Duration::from_millis(500));
        ha.switchover()
    });
    report("switchover during the seed", ms, &outcome);
    assert_success(&ha, &outcome);
    assert_applied_once(&ha, WORKSPACE_MIGRATIONS + 1);
    assert_eq!(
        ha.psql("app", "SELECT count(*) FROM app_settings"),
        ha.psql("app", "SELECT count(DISTINCT key) FROM app_settings")
    );
}

#[test]
fn four_prestarts_at_once_through_a_switchover() {
    let Some(ha) = Ha::start() else { return };
    let migrations = Migrations::workspace();
    migrations.write("20261201000000_slow.sql", SLOW);
    let runs: Vec<Running> = (0..4).map(|_| prestart(&ha, &migrations).spawn()).collect();
    wait_for_sleep(&ha);
    let (outcomes, ms) = std::thread::scope(|scope| {
        let driver = scope.spawn(|| {
            std::thread::sleep(Duration::from_secs(1));
            ha.switchover()
        });
        let mut outcomes = Vec::new();
        let mut last = Instant::now();
        for running in runs {
            outcomes.push(running.wait_within(WITHIN));
            last = Instant::now();
        }
        let end = driver.join().expect("the switchover failed");
        (outcomes, after(end, last))
    });
    let codes: Vec<Option<i32>> = outcomes.iter().map(|o| o.code).collect();
    eprintln!("four prestarts through a switchover: the last exited {ms:.0} ms after the switchover's end: {codes:?}");
    for outcome in outcomes.iter().filter(|o| o.code != Some(0)) {
        eprintln!("one of them said:\n{}", head(outcome));
    }
    for outcome in &outcomes {
        assert_success(&ha, outcome);
    }
    assert_applied_once(&ha, WORKSPACE_MIGRATIONS + 1);
    assert_eq!(ha.psql("app", "SELECT count(*) FROM pg_class WHERE relname = 'after_the_sleep'"), "1");
}

#[test]
fn unplanned_failover_during_the_wait() {
    let Some(ha) = Ha::start() else { return };
    let migrations = Migrations::workspace();
    let before = ha.times_marked_down(&ha.leader());
    let killed = ha.kill_leader_postmaster();
    // HAProxy accepts and closes while no backend is up: prestart starts then (started earlier,
    // HAProxy would hold its connection while retrying the dead node).
    ha.wait_marked_down(&killed, before);
    let running = prestart(&ha, &migrations).spawn();
    let (outcome, ms) = race(&ha, running, |ha| ha.wait_routed_to_a_writable_leader(Duration::from_secs(60)));
    report(&format!("unplanned failover ({killed}'s postmaster SIGKILLed) during the wait"), ms, &outcome);
    assert_success(&ha, &outcome);
    assert_applied_once(&ha, WORKSPACE_MIGRATIONS);
}

/// backend and worker from the workspace's target/, which `cargo xtask test` builds (nextest
/// with --all-features builds every binary of the workspace).
fn service(name: &str, env: &[(String, String)], bind: &str) -> Run {
    let binary = testkit::workspace().join("target/debug").join(name);
    assert!(
        binary.is_file(),
        "{} not found: build it with `cargo build -p backend --features server --bins`",
        binary.display()
    );
    let env = with(env.to_vec(), "BACKEND_BIND", bind);
    Run::program(&binary, &["--env-file", "/dev/null"], &env)
}

fn enqueue(bind: &str, n: usize) -> Result<(), String> {
    let body = format!(r#"{{"kind":"echo","payload":{{"n":{n}}}}}"#);
    match http("POST", bind, "/api/jobs", Some(&body)) {
        Ok((201, _)) => Ok(()),
        Ok((status, body)) => Err(format!("{status} {body}")),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn backend_and_worker_through_a_switchover_lose_and_double_no_job() {
    let Some(ha) = Ha::start() else { return };
    jobs_through_a_switchover(&ha, env(&ha), "HAProxy", &String::new);
}

/// The other router: PgBouncer (session mode) in front of HAProxy. The switchover cuts only the
/// pooler's server connections; backend and worker keep theirs to PgBouncer.
#[test]
fn backend_and_worker_through_pgbouncer_and_a_switchover_lose_and_double_no_job() {
    let Some(ha) = Ha::start() else { return };
    if testkit::ha::pgbouncer_missing() {
        eprintln!("skipped: PgBouncer is not installed (cargo xtask test installs it)");
        return;
    }
    let pooler = ha.pooler();
    let through_pooler = with(env(&ha), "POSTGRES_PORT", &pooler.port().to_string());
    let log = || format!("--- pgbouncer.log\n{}", pooler.log());
    jobs_through_a_switchover(&ha, through_pooler, "PgBouncer in front of HAProxy", &log);
}

/// prestart migrates (through HAProxy), then backend and worker run on `env`: jobs posted before
/// and after a switchover are each done exactly once, and `/ready` and the first write come back
/// within seconds of its end.
fn jobs_through_a_switchover(ha: &Ha, env: Vec<(String, String)>, router: &str, router_log: &dyn Fn() -> String) {
    let migrations = Migrations::workspace();
    let migrated = prestart(ha, &migrations).output();
    assert_success(ha, &migrated);
    let port = testkit::claim_port();
    let bind = format!("127.0.0.1:{}", port.number);
    let api = Service(Some(service("backend", &env, &bind).spawn()));
    let worker = Service(Some(service("worker", &env, &bind).spawn()));
    assert!(eventually(Duration::from_secs(20), || http("GET", &bind, "/ready", None).is_ok_and(|(s, _)| s == 200)));
    for n in 0..5 {
        enqueue(&bind, n).expect("enqueue before the switchover");
    }
    let done = |count: usize| {
        let sql = "SELECT count(*) FROM jobs WHERE status = 'done'";
        eventually(Duration::from_secs(30), || ha.try_psql("app", sql).is_ok_and(|n| n == count.to_string()))
    };
    assert!(done(5), "the jobs before the switchover did not finish");
    let end = ha.switchover();
    let mut ready_after = None;
    let mut written_after = None;
    let mut n = 5;
    let deadline = end + Duration::from_secs(30);
    let (mut first_not_ready, mut first_refused) = (None, None);
    while Instant::now() < deadline && (ready_after.is_none() || written_after.is_none()) {
        if ready_after.is_none() {
            match http("GET", &bind, "/ready", None) {
                Ok((200, _)) => ready_after = Some(end.elapsed()),
                answer => first_not_ready = first_not_ready.or(Some(format!("{answer:?}"))),
            }
        }
        if written_after.is_none() {
            match enqueue(&bind, n) {
                Ok(()) => {
                    written_after = Some(end.elapsed());
                    n += 1;
                }
                Err(e) => first_refused = first_refused.or(Some(e)),
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "backend through {router} and a switchover: /ready 200 after {ready_after:?}, first successful write (POST \
         /api/jobs) after {written_after:?}"
    );
    let said = || {
        format!(
            "first /ready after it: {first_not_ready:?}\nfirst refused write: {first_refused:?}\n{}\n--- cluster\n{}",
            router_log(),
            ha.log()
        )
    };
    assert!(
        ready_after.is_some_and(|t| t < Duration::from_secs(5)),
        "/ready not 200 within 5 s of the switchover:\n{}",
        said()
    );
    assert!(
        written_after.is_some_and(|t| t < Duration::from_secs(5)),
        "no write within 5 s of the switchover:\n{}",
        said()
    );
    while n < 10 {
        enqueue(&bind, n).expect("enqueue after the switchover");
        n += 1;
    }
    assert!(done(n), "the jobs did not all finish after the switchover:\n{}", ha.psql("app", "SELECT * FROM jobs"));
    assert_eq!(ha.psql("app", "SELECT count(*) FROM jobs"), n.to_string(), "a job was lost or doubled");
    let doubled = ha.psql("app", "SELECT payload->>'n' FROM jobs GROUP BY 1 HAVING count(*) > 1");
    assert_eq!(doubled, "", "a job was enqueued twice");
    assert_eq!(ha.psql("app", "SELECT count(*) FROM jobs WHERE attempts <> 1"), "0", "a job ran twice");
    worker.stop().assert_code(0);
    api.stop().assert_code(0);
}

/// backend or worker, killed if the test ends before [`Service::stop`].
struct Service(Option<Running>);

impl Service {
    /// SIGTERM, and its outcome.
    fn stop(mut self) -> Outcome {
        let running = self.0.take().expect("running");
        running.signal("TERM");
        running.wait_within(Duration::from_secs(20))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut running) = self.0.take() {
            let _ = running.child.kill();
            let _ = running.wait();
        }
    }
}
