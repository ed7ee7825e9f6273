//! The review's findings (issue 30, 3a-3n), each held by a test that failed before its fix,
//! against real clusters.

use std::path::Path;

use testkit::{Cluster, Migrations, Outcome, Run};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn run(args: &[&str], env: &[(String, String)], migrations: &Migrations) -> Outcome {
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    let mut all = args.to_vec();
    all.extend(["--source", &source]);
    Run::xtask(XTASK, &all, env).output()
}

/// `cargo xtask ARGS` as the OS user `nobody`, as on a laptop without root: its own home, the
/// settings in the environment.
fn as_a_normal_user(args: &[&str], env: &[(String, String)], home: &Path) -> Outcome {
    spawn_as_a_normal_user(args, env, home).wait()
}

fn readable_by_all(path: &Path) {
    testkit::set_mode(path, 0o755);
}

/// (a) A migration that can reach another server is never replayed in a throwaway: drift,
/// doctor and `lint-migrations --locks` refuse and say so, and the live server's rows stay as
/// they are, as root (a network namespace) and as a normal user (a user namespace); a Unix
/// socket, which no network namespace hides, included.
#[test]
fn a_replay_never_writes_into_a_live_server() {
    if !testkit::is_root() {
        eprintln!("skipped: needs root to run a part as another user");
        return;
    }
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    readable_by_all(migrations.path());
    migrations.write("1_hits.sql", "CREATE EXTENSION dblink;\nCREATE TABLE hits (n int);\n");
    migrations.write(
        "2_hit.sql",
        &format!(
            "SELECT dblink_exec('host={} port={} dbname=app user=postgres', 'INSERT INTO hits VALUES (1)');\n",
            cluster.socket_dir().display(),
            cluster.port
        ),
    );
    let env = cluster.env("app");
    run(&["migrate"], &env, &migrations).assert_code(0);
    let hits = || cluster.psql("app", "SELECT count(*) FROM hits");
    assert_eq!(hits(), "1");

    let drift = run(&["schema", "drift"], &env, &migrations);
    drift
        .assert_code(3)
        .assert_stderr_contains("1_hits.sql uses dblink")
        .assert_stderr_contains("does not replay the migrations");
    assert_eq!(hits(), "1", "schema drift wrote into the live server:\n{}", drift.stderr);
    let doctor = run(&["doctor"], &env, &migrations);
    assert_eq!(hits(), "1", "doctor wrote into the live server:\n{}", doctor.stderr);
    let locks = run(&["lint-migrations", "--all", "--locks"], &env, &migrations);
    locks.assert_stderr_contains("1_hits.sql uses dblink");
    assert_eq!(hits(), "1");

    let home = tempfile::tempdir().expect("a home");
    std::process::Command::new("chown").arg("nobody").arg(home.path()).status().expect("chown");
    let source = migrations.path().to_str().expect("utf-8");
    let drift = as_a_normal_user(&["schema", "drift", "--source", source], &env, home.path());
    drift.assert_code(3).assert_stderr_contains("1_hits.sql uses dblink");
    assert_eq!(hits(), "1", "schema drift as a normal user wrote into the live server:\n{}", drift.stderr);
}

/// A cluster whose `app` holds `sql` as its one applied migration, in a folder every user may
/// read, and a home for `nobody`: drift as a normal user, set up.
fn migrated_for_a_normal_user(sql: &str) -> (Cluster, Migrations, tempfile::TempDir) {
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    readable_by_all(migrations.path());
    migrations.write("1_t.sql", sql);
    run(&["migrate"], &cluster.env("app"), &migrations).assert_code(0);
    let home = tempfile::tempdir().expect("a home");
    std::process::Command::new("chown").arg("nobody").arg(home.path()).status().expect("chown");
    (cluster, migrations, home)
}

/// (a) As a normal user the throwaway runs in a network namespace of its own (made in a user
/// namespace): its server processes are seen in another network namespace than ours while it
/// replays, and drift says nothing of a missing one.
#[test]
fn a_normal_users_throwaway_is_cut_off_from_the_network() {
    if !testkit::is_root() {
        eprintln!("skipped: needs root to run a part as another user");
        return;
    }
    let (cluster, migrations, home) = migrated_for_a_normal_user("CREATE TABLE t (id int);\nSELECT pg_sleep(3);\n");
    let env = cluster.env("app");
    let source = migrations.path().to_str().expect("utf-8");
    let drift = spawn_as_a_normal_user(&["schema", "drift", "--source", source], &env, home.path());
    let ours = std::fs::read_link("/proc/self/ns/net").expect("our network namespace");
    let mut namespaces = Vec::new();
    let seen = testkit::eventually(std::time::Duration::from_secs(30), || {
        namespaces = std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter(|entry| {
                // The postmaster (a `cp` of the template and `pg_ctl stop` run outside on purpose).
                std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| {
                    let cmdline = String::from_utf8_lossy(&c);
                    cmdline.contains("bin/postgres\0") && cmdline.contains("prestart-throwaway-")
                })
            })
            .filter_map(|entry| std::fs::read_link(entry.path().join("ns/net")).ok())
            .collect();
        !namespaces.is_empty()
    });
    let outcome = drift.wait_within(std::time::Duration::from_secs(60));
    assert!(seen, "no throwaway server was seen:\n{}", outcome.stderr);
    assert!(namespaces.iter().all(|ns| *ns != ours), "a throwaway server shares our network namespace: {namespaces:?}");
    outcome.assert_code(0).assert_stderr_lacks("not in a network namespace");
}

/// (b) `schema dump` builds in a throwaway cluster on this machine: no database is created and
/// no migration runs on the server the settings name, unless `--build-on-server` says so.
#[test]
fn schema_dump_builds_on_this_machine_not_on_the_configured_server() {
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    migrations.write("1_role.sql", "CREATE ROLE dump_marker;\nCREATE TABLE t (id int);\n");
    let output = tempfile::tempdir().expect("a folder");
    let schema = output.path().join("schema.sql");
    let schema = schema.to_str().expect("utf-8");
    let env = cluster.env("app");
    let marker = || cluster.psql("postgres", "SELECT count(*) FROM pg_roles WHERE rolname = 'dump_marker'");
    let databases = || cluster.psql("postgres", "SELECT count(*) FROM pg_database");
    let before = databases();
    run(&["schema", "dump", "--output", schema], &env, &migrations)
        .assert_code(0)
        .assert_stderr_contains("in a throwaway PostgreSQL");
    assert!(std::fs::read_to_string(schema).expect("schema.sql").contains("CREATE TABLE public.t"));
    assert_eq!(marker(), "0", "a migration ran on the configured server");
    let log = cluster.log();
    assert!(!log.contains("prestart_schema"), "a throwaway database was made on the configured server:\n{log}");
    assert_eq!(databases(), before);

    run(&["schema", "dump", "--output", schema, "--build-on-server"], &env, &migrations).assert_code(0);
    assert_eq!(marker(), "1", "--build-on-server builds on the configured server");
}

/// `cargo xtask ARGS` as `nobody` (setpriv execs it, so a signal reaches it alone), with its own
/// home.
fn spawn_as_a_normal_user(args: &[&str], env: &[(String, String)], home: &Path) -> testkit::Running {
    let mut all = vec!["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", XTASK];
    all.extend_from_slice(args);
    all.extend(["--env-file", "/dev/null"]);
    let mut env = env.to_vec();
    env.push(("HOME".to_owned(), home.display().to_string()));
    Run::program("setpriv", &all, &env).spawn()
}

/// The processes whose command line names `dir`.
fn processes_in(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&needle).then_some(cmdline)
        })
        .collect()
}

/// (c) A throwaway's start cut short by a signal (here during the template's initdb, which a
/// first run makes) leaves no process running and no half-made folder behind.
#[test]
fn a_throwaway_start_cut_short_leaves_nothing_behind() {
    if !testkit::is_root() {
        eprintln!("skipped: needs root to run a part as another user");
        return;
    }
    let (cluster, migrations, home) = migrated_for_a_normal_user("CREATE TABLE t (id int);\n");
    let env = cluster.env("app");
    let source = migrations.path().to_str().expect("utf-8");
    let running = spawn_as_a_normal_user(&["schema", "drift", "--source", source], &env, home.path());
    running.wait_for_stderr("make a cluster template", std::time::Duration::from_secs(30));
    // Signalled while initdb runs in the half-made folder.
    let initdb_runs = testkit::eventually(std::time::Duration::from_secs(30), || {
        processes_in(home.path()).iter().any(|cmdline| cmdline.contains("initdb"))
    });
    running.signal("INT");
    let outcome = running.wait_within(std::time::Duration::from_secs(20));
    assert!(initdb_runs, "initdb was never seen running:\n{}", outcome.stderr);
    assert_eq!(outcome.code, Some(130), "{}", outcome.stderr);
    let left = processes_in(home.path());
    assert!(left.is_empty(), "still running: {left:?}\n{}", outcome.stderr);
    let cache = std::fs::read_dir(home.path().join(".cache")).expect("the cache").flatten().flat_map(|user| {
        std::fs::read_dir(user.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
    });
    let half_made: Vec<String> =
        cache.filter(|name| name.starts_with("template-") && !name.ends_with("-wal1")).collect();
    assert!(half_made.is_empty(), "left behind: {half_made:?}\n{}", outcome.stderr);
}

/// (f) A seed that waits on a lock past the bound is a slow server, told as one: not a lost
/// connection, and not a crash restart.
#[test]
fn a_seed_waiting_on_a_lock_is_not_taken_for_a_lost_connection() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    let env = cluster.env("app");
    run(&["migrate"], &env, &migrations).assert_code(0);
    let _holder = testkit::Session::open(&cluster, "BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE;");
    assert!(testkit::eventually(std::time::Duration::from_secs(10), || {
        cluster.psql(
            "app",
            "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation = 'users'::regclass",
        ) == "1"
    }));
    let outcome = Run::xtask(XTASK, &["seed"], &env).output();
    outcome.assert_code(7).assert_stderr_contains("no answer within 10 s");
    outcome.assert_stderr_lacks("lost the connection").assert_stderr_lacks("crash");
}

/// (h) Behind a transaction pooler, drift's wait for a running migration (a try every 200 ms,
/// each a transaction of its own) lands on other server sessions while other clients crowd the
/// pool (each session a try gives back goes to a client that waits for one): no named statement
/// of an earlier try is missing there.
#[test]
fn drift_waiting_behind_a_transaction_pooler_uses_no_statement_of_another_session() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    run(&["migrate"], &cluster.env("app"), &migrations).assert_code(0);
    let bouncer = testkit::Bouncer::start_with_pool_size(&cluster, testkit::PoolMode::Transaction, 2);
    let _lock = testkit::MigrationLock::take(&cluster, "app", "a-migration-running");
    let script = tempfile::NamedTempFile::new().expect("a script");
    std::fs::write(script.path(), "SELECT pg_sleep(0.002);\n").expect("write the script");
    let mut crowd = std::process::Command::new(testkit::server_bindir().join("pgbench"))
        .args(["-n", "-c", "6", "-T", "14", "-h", "127.0.0.1", "-p", &bouncer.port.to_string(), "-U", "postgres", "-f"])
        .arg(script.path())
        .arg("app")
        .env("PGPASSWORD", testkit::PASSWORD)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pgbench");
    let source = migrations.path().to_str().expect("utf-8");
    let outcome = Run::xtask(XTASK, &["schema", "drift", "--source", source], &bouncer.env(&cluster, "app")).output();
    let _ = crowd.kill();
    let _ = crowd.wait();
    outcome.assert_stderr_contains("a migration is running").assert_stderr_lacks("prepared statement");
}

/// (l) A blocking session's query is never printed (its last statement may carry a password);
/// `--dev-url`'s password is blanked; and a password that equals the user's name or an English
/// word blanks neither.
#[test]
fn secrets_are_blanked_where_they_stand_and_nothing_else_is() {
    let cluster = Cluster::started();
    cluster.psql("app", "CREATE TABLE accounts (id int); CREATE ROLE bob");
    let migrations = Migrations::empty();
    migrations.write("1_add_column.sql", "ALTER TABLE accounts ADD COLUMN note text;\n");
    let _holder = testkit::Session::open(
        &cluster,
        "SET application_name = 'holder'; BEGIN; LOCK TABLE accounts IN ACCESS SHARE MODE; \
         ALTER ROLE bob PASSWORD 'bobs own secret';",
    );
    assert!(testkit::eventually(std::time::Duration::from_secs(10), || {
        cluster.psql(
            "app",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'holder' AND state = 'idle in transaction'",
        ) == "1"
    }));
    let outcome = run(&["migrate", "--statement-lock-timeout", "2"], &cluster.env("app"), &migrations);
    outcome.assert_code(6).assert_stderr_contains("a lock held by pid").assert_stderr_lacks("bobs own secret");

    // --dev-url's password, in a URL that does not answer.
    let dev = format!("postgres://postgres:dev-url-secret-9@127.0.0.1:{}/nowhere", cluster.port);
    let drift = run(&["schema", "drift", "--dev-url", &dev], &cluster.env("app"), &migrations);
    drift.assert_stderr_lacks("dev-url-secret-9");
    assert!(!drift.stdout.contains("dev-url-secret-9"));

    // The classic of Docker's postgres image: user postgres, password postgres.
    cluster.psql("postgres", "ALTER ROLE postgres PASSWORD 'postgres'");
    let env = testkit::with(cluster.env("app"), "POSTGRES_PASSWORD", "postgres");
    Run::xtask(XTASK, &["wait-for-db"], &env).output().assert_code(0).assert_stderr_contains("postgres@127.0.0.1");
    let doctor = Run::xtask(XTASK, &["doctor", "--json"], &env).output();
    assert!(!doctor.stdout.contains("********"), "{}", doctor.stdout);
    let wrong = testkit::with(cluster.env("app"), "POSTGRES_PASSWORD", "wrong");
    Run::xtask(XTASK, &["wait-for-db", "--wait-timeout", "5"], &wrong)
        .output()
        .assert_code(5)
        .assert_stderr_lacks("********");
    cluster.psql("postgres", &format!("ALTER ROLE postgres PASSWORD '{}'", testkit::PASSWORD.replace('\'', "''")));
}

/// Makes the zh_CN.UTF-8 locale where it is missing (as root: `localedef`); whether it exists.
fn chinese_locale() -> bool {
    let has = || {
        std::process::Command::new("locale")
            .arg("-a")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.eq_ignore_ascii_case("zh_CN.utf8")))
    };
    if !has() && testkit::is_root() {
        let _ = std::process::Command::new("localedef").args(["-i", "zh_CN", "-f", "UTF-8", "zh_CN.UTF-8"]).status();
    }
    has()
}

/// (m) A server that answers in Chinese (`lc_messages`) is understood: every failure is told by
/// its SQLSTATE and fields, none by the words of its message.
#[test]
fn a_server_that_answers_in_chinese_is_understood() {
    if !chinese_locale() {
        eprintln!(
            "skipped: no zh_CN.UTF-8 locale here, and no root to make one (localedef -i zh_CN -f UTF-8 zh_CN.UTF-8)"
        );
        return;
    }
    let cluster = Cluster::stopped();
    cluster.write_conf("lc_messages = 'zh_CN.UTF-8'");
    cluster.start();
    let divided = cluster.psql_command("postgres").args(["-c", "SELECT 1/0"]).output().expect("psql");
    assert!(String::from_utf8_lossy(&divided.stderr).contains("除以零"), "the server does not answer in Chinese");
    cluster.psql("postgres", "CREATE ROLE shut_out LOGIN PASSWORD 'shut out secret'");
    let hba = cluster.data().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
    std::fs::write(&hba, format!("host all shut_out 127.0.0.1/32 reject\n{rules}")).expect("pg_hba.conf");
    cluster.reload();
    let env = cluster.env("app");
    let wait = |env: &[(String, String)]| Run::xtask(XTASK, &["wait-for-db", "--wait-timeout", "20"], env).output();

    // The database is missing: told at once, and --create-database makes it.
    wait(&env).assert_code(5).assert_stderr_contains("create it (cargo xtask database create");
    let migrations = Migrations::workspace();
    run(&["prestart", "--create-database"], &env, &migrations).assert_code(0);
    // A role that does not exist, and one that pg_hba.conf turns away.
    // (Over the trusted Unix socket: with a password PostgreSQL answers 28P01 for both on purpose.)
    let socket = cluster.socket_dir().display().to_string();
    let nobody = testkit::with(testkit::with(env.clone(), "POSTGRES_USER", "nobody_here"), "POSTGRES_SERVER", &socket);
    wait(&nobody).assert_code(5).assert_stderr_contains("CREATE ROLE \"nobody_here\"");
    let shut_out =
        testkit::with(testkit::with(env.clone(), "POSTGRES_USER", "shut_out"), "POSTGRES_PASSWORD", "shut out secret");
    wait(&shut_out).assert_code(5).assert_stderr_contains("pg_hba.conf on the server has no rule");
    // A migration that fails is explained with its file and line in the server's words.
    migrations.write("20990101000000_fails.sql", "SELECT 1;\nSELEC 2;\n");
    run(&["migrate"], &env, &migrations)
        .assert_code(6)
        .assert_stderr_contains("20990101000000_fails.sql:2: ")
        .assert_stderr_contains("(SQLSTATE 42601)");
}

/// This machine's first address that is not a loopback one, if it has one.
fn non_loopback_address() -> Option<String> {
    let output = std::process::Command::new("hostname").arg("-I").output().ok()?;
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| !ip.is_loopback()))
        .map(str::to_owned)
}

/// (j) An empty database on another machine, migrated first from a laptop's ENVIRONMENT=local,
/// is not recorded local; one on this machine is.
#[test]
fn only_a_database_on_this_machine_is_recorded_local() {
    let Some(address) = non_loopback_address() else {
        eprintln!("skipped: this machine has no address but loopback");
        return;
    };
    let cluster = Cluster::started();
    cluster.serve(&address);
    cluster.create_database("remote");
    let migrations = Migrations::workspace();
    let remote =
        testkit::with(testkit::with(cluster.env("remote"), "POSTGRES_SERVER", &address), "ENVIRONMENT", "local");
    run(&["migrate"], &remote, &migrations).assert_code(0);
    assert_eq!(cluster.psql("remote", "SELECT to_regclass('_prestart_environment') IS NULL"), "t");
    Run::xtask(XTASK, &["database", "drop", "-y"], &remote)
        .output()
        .assert_code(3)
        .assert_stderr_contains("refusing to drop");
    assert_eq!(cluster.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'remote'"), "1");

    let here = testkit::with(cluster.env("app"), "ENVIRONMENT", "local");
    run(&["migrate"], &here, &migrations).assert_code(0);
    assert_eq!(cluster.psql("app", "SELECT environment FROM _prestart_environment"), "local");
}

/// (j) The record is read where the drop happens: behind a pooler's alias that names another
/// database than the direct settings, the direct one's record decides, and only it is dropped.
#[test]
fn drop_reads_the_record_of_the_database_it_drops() {
    let cluster = Cluster::started();
    cluster.create_database("prod");
    let migrations = Migrations::workspace();
    run(&["migrate"], &testkit::with(cluster.env("app"), "ENVIRONMENT", "local"), &migrations).assert_code(0);
    run(&["migrate"], &testkit::with(cluster.env("prod"), "ENVIRONMENT", "production"), &migrations).assert_code(0);
    let bouncer = testkit::Bouncer::start(&cluster, testkit::PoolMode::Session);
    // The app's settings: the pooler's alias of `app`; migrations (and drops) go to `prod`.
    let direct = cluster.url("prod");
    let env = testkit::with(bouncer.env(&cluster, testkit::Bouncer::ALIAS), "ENVIRONMENT", "local");
    let env = testkit::with(env, "MIGRATION_DATABASE_URL", &direct);
    Run::xtask(XTASK, &["database", "drop", "-y"], &env)
        .output()
        .assert_code(3)
        .assert_stderr_contains("refusing to drop database prod")
        .assert_stderr_contains("ENVIRONMENT=production");
    assert_eq!(cluster.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname IN ('app', 'prod')"), "2");
}

/// (j) A standby never takes a drop: refused at once, not after the wait's 300 s.
#[test]
fn drop_against_a_standby_is_refused_at_once() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    run(&["migrate"], &testkit::with(cluster.env("app"), "ENVIRONMENT", "local"), &migrations).assert_code(0);
    let standby = cluster.replica("");
    let env = testkit::with(standby.env("app"), "ENVIRONMENT", "local");
    let outcome = Run::xtask(XTASK, &["database", "drop", "-y"], &env).output();
    outcome.assert_code(5).assert_stderr_contains("a standby in recovery");
    assert!(outcome.elapsed < std::time::Duration::from_secs(15), "took {:?}", outcome.elapsed);
}

/// (n) Drift names a grant's grantee and what it got or lost.
#[test]
fn drift_names_who_got_and_who_lost_privileges() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    // Roles are the cluster's: made by hand, as drift makes the live server's roles in its throwaway.
    cluster.psql("postgres", "CREATE ROLE reader; CREATE ROLE reporting");
    migrations.write("20990101000000_reader.sql", "GRANT SELECT ON app_settings TO reader;\n");
    let env = cluster.env("app");
    run(&["migrate"], &env, &migrations).assert_code(0);
    cluster.psql("app", "GRANT ALL ON jobs TO reporting; REVOKE SELECT ON app_settings FROM reader");
    run(&["schema", "drift"], &env, &migrations)
        .assert_code(9)
        .assert_stderr_contains("grants table public.jobs: reporting got ")
        .assert_stderr_contains("(not granted by any migration: granted by hand?)")
        .assert_stderr_contains("grants table public.app_settings: reader lost SELECT");
}

/// (i) Behind PgBouncer with a fallback entry (`* = host=...`), a database that does not exist
/// is the server's own refusal, relayed (3D000): told at once, and `--create-database` makes it
/// through the pooler. (Without a fallback, see the next test.)
#[test]
fn behind_pgbouncer_a_missing_database_is_refused_at_once_and_created_on_request() {
    let cluster = Cluster::started();
    let bouncer = testkit::Bouncer::start(&cluster, testkit::PoolMode::Session);
    let env = bouncer.env(&cluster, "made_through_the_pooler");
    let outcome = Run::xtask(XTASK, &["wait-for-db", "--wait-timeout", "60"], &env).output();
    outcome.assert_code(5).assert_stderr_contains("--create-database");
    assert!(outcome.elapsed < std::time::Duration::from_secs(10), "took {:?}", outcome.elapsed);
    run(&["prestart", "--create-database"], &env, &Migrations::workspace()).assert_code(0);
    assert_eq!(cluster.psql("made_through_the_pooler", "SELECT count(*) FROM _sqlx_migrations"), "3");
}

/// (i) Behind PgBouncer without a fallback entry, a database it has no entry for is refused by
/// PgBouncer itself (08P01, the code of its transient refusals too): told from them by asking it
/// for a database that surely does not exist, at once (exit 5), with the fix; `--create-database`
/// says why it cannot help. A server that is down behind it is still waited for.
#[test]
fn behind_pgbouncer_without_a_fallback_an_unknown_database_is_refused_at_once() {
    let cluster = Cluster::started();
    let bouncer = testkit::Bouncer::start_without_fallback(&cluster, testkit::PoolMode::Session);
    let env = bouncer.env(&cluster, "not_in_the_pooler");
    let outcome = Run::xtask(XTASK, &["wait-for-db", "--wait-timeout", "60"], &env).output();
    outcome
        .assert_code(5)
        .assert_stderr_contains("answers for the database \"not_in_the_pooler\" as for one that does not exist")
        .assert_stderr_contains("pgbouncer.ini");
    assert!(outcome.elapsed < std::time::Duration::from_secs(10), "took {:?}", outcome.elapsed);
    run(&["prestart", "--create-database"], &env, &Migrations::workspace())
        .assert_code(5)
        .assert_stderr_contains("--create-database cannot make it through this pooler");
    // The database it knows, with the server down behind it: waited for, not refused.
    cluster.stop();
    let known = bouncer.env(&cluster, "app");
    Run::xtask(XTASK, &["wait-for-db", "--wait-timeout", "3"], &known).output().assert_code(4);
}
