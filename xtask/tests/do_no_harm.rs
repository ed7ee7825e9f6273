//! Nothing prestart, doctor or the database commands do may hurt the database they point at: a
//! test per way they once could, each against real parts (a server log, a locked table,
//! PgBouncer with a full pool, a resolver that never answers, real signals).

use std::time::{Duration, Instant};

use testkit::{Bouncer, Cluster, MigrationLock, Migrations, PoolMode, Run, Session, eventually, with};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn xtask(args: &[&str], env: &[(String, String)]) -> Run {
    Run::xtask(XTASK, args, env)
}

fn with_source<'a>(args: &[&'a str], migrations: &'a Migrations) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend(["--source", migrations.path().to_str().expect("utf-8 path")]);
    all
}

/// Server processes of ours still there, by application name.
fn our_sessions(cluster: &Cluster) -> String {
    cluster.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'prestart%'")
}

/// #4: a migrations table another session holds locked. migrate waits for it naming that session,
/// ends at its one deadline (the bounded read used to time out, reconnect with a fresh budget and
/// queue another read, forever), and leaves no read of ours queued on the server; doctor says
/// who holds it within its bound.
#[test]
fn a_locked_migrations_table_is_waited_for_until_the_deadline_naming_the_holder() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    let env = cluster.env("app");
    xtask(&with_source(&["migrate"], &migrations), &env).output().assert_code(0);
    // sqlx updates a `-- no-transaction` migration's execution_time after it ran (a transactional
    // one's is written with its row, in its transaction).
    migrations.write("20990101000000_later.sql", "-- no-transaction\nCREATE TABLE later (id int);\n");
    let holder = Session::open(
        &cluster,
        "SET application_name = 'hand-lock'; BEGIN; LOCK TABLE _sqlx_migrations IN ACCESS EXCLUSIVE MODE; \
         SELECT pg_sleep(600);",
    );
    assert!(eventually(Duration::from_secs(10), || {
        cluster.psql("app", "SELECT count(*) FROM pg_locks WHERE relation = '_sqlx_migrations'::regclass AND granted")
            == "1"
    }));

    let started = Instant::now();
    let outcome = xtask(&with_source(&["migrate", "--wait-timeout", "4"], &migrations), &env)
        .spawn()
        .wait_within(Duration::from_secs(60));
    let took = started.elapsed();
    outcome
        .assert_code(6)
        .assert_stderr_contains("waiting: _sqlx_migrations is locked by pid")
        .assert_stderr_contains("_sqlx_migrations is still locked after")
        .assert_stderr_contains("hand-lock");
    assert!(took < Duration::from_secs(30), "the 4 s deadline held for {took:?}");
    assert!(
        eventually(Duration::from_secs(5), || our_sessions(&cluster) == "0"),
        "reads of ours stay queued on the server: {}",
        cluster.psql("postgres", "SELECT string_agg(application_name || ' ' || state, ', ') FROM pg_stat_activity")
    );
    assert_eq!(cluster.psql("app", "SELECT to_regclass('later') IS NULL"), "t", "nothing was applied");

    let doctor =
        xtask(&with_source(&["doctor", "--json"], &migrations), &env).spawn().wait_within(Duration::from_secs(60));
    let check = doctor.doctor_check("migrations.pending");
    assert_eq!(check["status"], "fail", "{check}");
    assert!(check["message"].as_str().unwrap_or_default().contains("hand-lock"), "{check}");
    cluster.psql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'hand-lock'",
    );
    drop(holder);
}

/// #3: SIGTERM behind PgBouncer in session mode, its pool full and clients queued for it. The
/// server process is terminated while our client connection still holds it: closed first, the
/// pooler would hand it to the next client (an application's, or our own cancel connection), and
/// the terminate would kill that one.
#[test]
fn sigterm_behind_a_session_pooler_never_terminates_another_clients_session() {
    let cluster = Cluster::started();
    let bouncer = Bouncer::start_with_pool_size(&cluster, PoolMode::Session, 3);
    let migrations = Migrations::workspace();
    let through_pooler = bouncer.env(&cluster, "app");
    // Eight clients that connect, sleep a little and leave, again and again, through the pooler.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, port) = (stop.clone(), bouncer.port.to_string());
            std::thread::spawn(move || {
                let mut victims = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let output = std::process::Command::new("psql")
                        .env("PGPASSWORD", testkit::PASSWORD)
                        .args(["-X", "-Atq", "-h", "127.0.0.1", "-p", &port, "-U", testkit::SUPERUSER, "-d", "app"])
                        .args(["-c", "SELECT pg_sleep(0.05)"])
                        .output()
                        .expect("psql");
                    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
                    if stderr.contains("administrator command") {
                        victims.push(stderr);
                    }
                }
                victims
            })
        })
        .collect();
    let _lock = MigrationLock::take(&cluster, "app", "lock-holder");
    for round in 0..5 {
        let running = xtask(&with_source(&["migrate"], &migrations), &through_pooler).spawn();
        running.wait_for_stderr("waiting for the migration lock", Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(300));
        running.signal("TERM");
        let outcome = running.wait_within(Duration::from_secs(20));
        outcome.assert_code(143);
        assert!(
            !outcome.stderr.contains("57P01"),
            "round {round}: we terminated our own connection:\n{}",
            outcome.stderr
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let victims: Vec<String> = clients.into_iter().flat_map(|c| c.join().expect("client")).collect();
    assert!(victims.is_empty(), "clients of the pooler were terminated: {victims:#?}");
}

/// #2: `database drop` and `reset` ask the database which environment it serves (recorded by
/// prestart and migrate), not the local settings: a `.env` saying `ENVIRONMENT=local` with an
/// exported DATABASE_URL of production used to drop production.
#[test]
fn drop_and_reset_refuse_a_database_that_does_not_record_itself_as_local() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    cluster.create_database("prod");
    let production = with(cluster.env("prod"), "ENVIRONMENT", "production");
    xtask(&with_source(&["prestart"], &migrations), &production).output().assert_code(0);
    assert_eq!(cluster.psql("prod", "SELECT environment FROM _prestart_environment"), "production");
    cluster.psql("prod", "INSERT INTO app_settings (key, value) VALUES ('kept', '1')");
    // sqlx-cli's table is as it was: the record lives beside it.
    assert_eq!(
        cluster.psql(
            "prod",
            "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns \
             WHERE table_name = '_sqlx_migrations'"
        ),
        "version,description,installed_on,success,checksum,execution_time"
    );

    // A local .env, and a production URL exported in the shell.
    let local_shell = with(with(cluster.env("app"), "ENVIRONMENT", "local"), "DATABASE_URL", &cluster.url("prod"));
    // Migrating from that shell keeps the record: a non-local one is never made local.
    xtask(&with_source(&["migrate"], &migrations), &local_shell)
        .output()
        .assert_code(0)
        .assert_stderr_contains("but the database records ENVIRONMENT=production");
    assert_eq!(cluster.psql("prod", "SELECT environment FROM _prestart_environment"), "production");
    let doctor = xtask(&with_source(&["doctor", "--json"], &migrations), &local_shell).output();
    let check = doctor.doctor_check("migrations.environment");
    assert_eq!(check["status"], "warn", "{check}");
    assert!(
        check["message"].as_str().unwrap_or_default().contains("while these settings say ENVIRONMENT=local"),
        "{check}"
    );
    for command in ["drop", "reset"] {
        let args = if command == "reset" {
            with_source(&["database", command, "-y"], &migrations)
        } else {
            vec!["database", command, "-y"]
        };
        xtask(&args, &local_shell)
            .output()
            .assert_code(3)
            .assert_stderr_contains("refusing to drop database prod on 127.0.0.1:")
            .assert_stderr_contains("it records ENVIRONMENT=production");
    }
    assert_eq!(cluster.psql("prod", "SELECT count(*) FROM app_settings WHERE key = 'kept'"), "1");

    // A database with no record counts as not local; migrating it locally records it.
    cluster.create_database("unknown");
    let unknown = with(cluster.env("unknown"), "ENVIRONMENT", "local");
    xtask(&["database", "drop", "-y"], &unknown)
        .output()
        .assert_code(3)
        .assert_stderr_contains("has no record of its environment");
    xtask(&with_source(&["migrate"], &migrations), &unknown).output().assert_code(0);
    xtask(&["database", "drop", "-y"], &unknown)
        .output()
        .assert_code(0)
        .assert_stderr_contains("dropped database unknown");
    // A database migrated before records existed (its record dropped here) and migrated again
    // from a local shell stays unrecorded: only a fresh database takes `local`.
    cluster.psql("prod", "DROP TABLE _prestart_environment");
    xtask(&with_source(&["migrate"], &migrations), &local_shell).output().assert_code(0);
    assert_eq!(cluster.psql("prod", "SELECT to_regclass('_prestart_environment') IS NULL"), "t");
    xtask(&["database", "drop", "-y"], &local_shell)
        .output()
        .assert_code(3)
        .assert_stderr_contains("has no record of its environment");
    // --force is the way to drop what is not local.
    xtask(&["database", "drop", "-y", "--force"], &local_shell).output().assert_code(0);
    assert_eq!(cluster.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'prod'"), "0");

    // DATABASE_URL with POSTGRES_MIGRATION_* built the migration (and drop) target from POSTGRES_*.
    let mixed = with(local_shell, "POSTGRES_MIGRATION_USER", "postgres");
    xtask(&["database", "drop", "-y"], &mixed)
        .output()
        .assert_code(3)
        .assert_stderr_contains("POSTGRES_MIGRATION_USER")
        .assert_stderr_contains("MIGRATION_DATABASE_URL instead");
}

/// #1: doctor, `schema drift` and a failed migration's drift note build the expected schema in a
/// throwaway cluster on this machine. On the live server they used to replay every applied
/// migration in a throwaway database: a migration's `ALTER ROLE ... SET` undid a later change by
/// hand, and every doctor run created and dropped a database there. The server log
/// (`log_statement = 'ddl'`) shows nothing of ours.
#[test]
fn doctor_drift_and_the_failure_note_only_read_the_server_they_diagnose() {
    let cluster = Cluster::started();
    cluster.psql("postgres", "CREATE ROLE app");
    let migrations = Migrations::workspace();
    migrations.write("20990101000000_items.sql", "CREATE TABLE items (id int PRIMARY KEY, name text);\n");
    migrations.write("20990101000100_role.sql", "ALTER ROLE app SET statement_timeout = 5000;\n");
    let env = cluster.env("app");
    xtask(&with_source(&["prestart"], &migrations), &env).output().assert_code(0);
    cluster.psql("postgres", "ALTER ROLE app SET statement_timeout = 9000");
    cluster.write_conf("log_statement = 'ddl'");
    cluster.reload();
    let logged_before = cluster.log().len();

    let doctor = xtask(&with_source(&["doctor", "--json"], &migrations), &env).output();
    let check = doctor.doctor_check("migrations.drift");
    assert_eq!(check["status"], "ok", "{check}");
    assert!(check["message"].as_str().unwrap_or_default().contains("throwaway PostgreSQL"), "{check}");
    xtask(&with_source(&["schema", "drift"], &migrations), &env).output().assert_code(0);
    let logged = cluster.log()[logged_before..].to_owned();
    assert!(!logged.contains("statement:"), "doctor and drift ran DDL on the server:\n{logged}");
    // A failed migration gets its drift note the same way.
    migrations.write("20990101000200_broken.sql", "ALTER TABLE items ADD COLUMN name text;\n");
    xtask(&with_source(&["prestart"], &migrations), &env)
        .output()
        .assert_code(6)
        .assert_stderr_contains("drift: no drift");

    let setting = "SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting WHERE setrole = 'app'::regrole";
    assert_eq!(cluster.psql("postgres", setting), "statement_timeout=9000", "a migration ran again on the server");
    let logged = cluster.log()[logged_before..].to_owned();
    for statement in ["CREATE DATABASE", "DROP DATABASE", "ALTER ROLE"] {
        assert!(!logged.contains(statement), "the server ran {statement} for us:\n{logged}");
    }
}

/// #8: a migration that committed, then failed in sqlx's follow-up `UPDATE ... execution_time`,
/// was reported as "nothing of it was applied". What is reported is read back from the table.
#[test]
fn a_migration_that_committed_before_its_failure_is_reported_as_applied() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    let env = cluster.env("app");
    xtask(&with_source(&["migrate"], &migrations), &env).output().assert_code(0);
    cluster.psql(
        "app",
        "CREATE FUNCTION no_updates() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           RAISE EXCEPTION 'execution_time may not change'; END $$; \
         CREATE TRIGGER no_updates BEFORE UPDATE ON _sqlx_migrations FOR EACH ROW EXECUTE FUNCTION no_updates();",
    );
    // sqlx updates a `-- no-transaction` migration's execution_time after it ran (a transactional
    // one's is written with its row, in its transaction).
    migrations.write("20990101000000_later.sql", "-- no-transaction\nCREATE TABLE later (id int);\n");
    let outcome = xtask(&with_source(&["migrate"], &migrations), &env).output();
    outcome
        .assert_code(6)
        .assert_stderr_contains("execution_time may not change")
        .assert_stderr_contains("applied all the same");
    assert!(!outcome.stderr.contains("nothing of it was applied"), "{}", outcome.stderr);
    assert_eq!(cluster.psql("app", "SELECT to_regclass('later') IS NOT NULL"), "t");
    cluster.psql("app", "DROP TRIGGER no_updates ON _sqlx_migrations");
    xtask(&with_source(&["migrate"], &migrations), &env).output().assert_code(0).assert_stderr_contains("up to date");
}

/// #6: a resolver that never answers (a mount namespace whose resolv.conf names a UDP socket
/// that reads and never replies, with glibc's `timeout:5 attempts:2`): `getaddrinfo` takes 10 s
/// on the runtime's blocking threads, and the run used to wait for it at exit. The wait's
/// deadline holds instead.
#[test]
fn a_resolver_that_never_answers_does_not_outlive_the_wait_deadline() {
    if !testkit::is_root() {
        eprintln!("skipped: a mount namespace of its own needs root");
        return;
    }
    let _silent = std::net::UdpSocket::bind("127.0.0.99:53").expect("a UDP socket that never replies");
    let dir = tempfile::tempdir().expect("temp dir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.99\noptions timeout:5 attempts:2\n").expect("resolv.conf");
    let cluster = Cluster::started();
    let env = with(cluster.env("app"), "POSTGRES_SERVER", "db.prestart-test.example");
    let started = Instant::now();
    let mount_then_run = "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"";
    let args = [
        "-m",
        "--",
        "sh",
        "-c",
        mount_then_run,
        resolv.to_str().expect("utf-8"),
        XTASK,
        "wait-for-db",
        "--wait-timeout",
        "2",
    ];
    let outcome = Run::program("unshare", &args, &env).spawn().wait_within(Duration::from_secs(60));
    let took = started.elapsed();
    outcome.assert_code(4).assert_stderr_contains("did not become ready within");
    // 2 s of waiting plus one attempt's bound; the lookups it abandoned took 10 s each.
    assert!(took < Duration::from_secs(8), "wait-for-db --wait-timeout 2 took {took:?}");
}

/// #5: one runtime and one signal listener for the whole process. A SIGTERM during the drift
/// note of a failed migration (a step after the migrate step, which had a runtime of its own)
/// was lost for seconds and the run exited 6; it ends the run as interrupted now, and the
/// throwaway cluster of the note is stopped and deleted.
#[test]
fn sigterm_during_the_drift_note_of_a_failed_migration_interrupts_the_run() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    // The expected schema takes seconds to build: the slow migration runs again in the throwaway.
    migrations.write("20990101000000_slow.sql", "SELECT pg_sleep(5);\nCREATE TABLE slow (id int);\n");
    let env = cluster.env("app");
    xtask(&with_source(&["migrate"], &migrations), &env).output().assert_code(0);
    migrations.write("20990101000100_broken.sql", "CREATE TABLE slow (id int);\n");
    let scratch = tempfile::tempdir().expect("temp dir");
    testkit::set_mode(scratch.path(), 0o755);
    let running = xtask(&with_source(&["prestart"], &migrations), &env)
        .env("TMPDIR", scratch.path().to_str().expect("utf-8"))
        .spawn();
    let throwaways = || std::fs::read_dir(scratch.path()).expect("scratch").count();
    assert!(eventually(Duration::from_secs(20), || throwaways() == 1), "the drift note made no throwaway cluster");
    std::thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    running.signal("TERM");
    let outcome = running.wait_within(Duration::from_secs(20));
    let took = signalled.elapsed();
    outcome.assert_code(143);
    assert!(took < Duration::from_secs(4), "the signal was noticed after {took:?}");
    assert_eq!(throwaways(), 0, "the throwaway cluster's folder is left");
}

/// The live read is one transaction: a database nothing was applied to (no migrations table)
/// must not abort it (found by a helper's review: "current transaction is aborted").
#[test]
fn drift_of_a_database_nothing_was_applied_to_is_no_drift() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    let env = cluster.env("app");
    xtask(&with_source(&["schema", "drift"], &migrations), &env)
        .output()
        .assert_code(0)
        .assert_stderr_contains("no drift");
    let doctor = xtask(&with_source(&["doctor", "--json"], &migrations), &env).output();
    assert_eq!(doctor.doctor_check("migrations.drift")["status"], "ok");
}
