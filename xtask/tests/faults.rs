//! Faults injected for real: a killed server, a restarted one, a statement stuck behind another
//! session's lock, an interrupted CREATE INDEX CONCURRENTLY. Nothing is lost or left half done.

use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::{Cluster, Migrations, Run, Session, eventually};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn run(command: &str, cluster: &Cluster, migrations: &Migrations, extra: &[&str]) -> Run {
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    let mut args = vec![command, "--source", &source];
    args.extend_from_slice(extra);
    Run::xtask(XTASK, &args, &cluster.env("app"))
}

fn setup(cluster: &Cluster, sql: &str) {
    cluster.psql("app", sql);
}

#[test]
fn a_statement_stuck_behind_a_lock_fails_naming_the_blocking_session() {
    let cluster = Cluster::started();
    setup(&cluster, "CREATE TABLE accounts (id int)");
    let migrations = Migrations::empty();
    migrations.write("1_add_column.sql", "ALTER TABLE accounts ADD COLUMN note text;\n");
    let _holder = Session::open(
        &cluster,
        "SET application_name = 'long-report'; BEGIN; LOCK TABLE accounts IN ACCESS SHARE MODE;",
    );
    assert!(eventually(Duration::from_secs(10), || {
        cluster.psql("app", "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'long-report' AND state = 'idle in transaction'") == "1"
    }));
    let outcome = run("migrate", &cluster, &migrations, &["--statement-lock-timeout", "2"]).output();
    outcome
        .assert_code(6)
        .assert_stderr_contains("canceling statement due to lock timeout (SQLSTATE 55P03)")
        .assert_stderr_contains("it waited 2 s (--statement-lock-timeout) for a lock held by pid")
        .assert_stderr_contains("(long-report, idle in transaction, its transaction open for")
        .assert_stderr_lacks("LOCK TABLE accounts")
        .assert_stderr_contains("nothing of it was applied");
    assert_eq!(
        cluster.psql("app", "SELECT count(*) FROM information_schema.columns WHERE table_name = 'accounts'"),
        "1"
    );
}

#[test]
fn a_server_restart_while_waiting_for_the_migration_lock_costs_a_reconnect() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    let holder = testkit::MigrationLock::take(&cluster, "app", "lock-holder-test");
    let running = run("prestart", &cluster, &migrations, &["--wait-timeout", "60"]).spawn();
    running.wait_for_stderr("waiting for the migration lock held by pid", Duration::from_secs(20));
    cluster.stop();
    drop(holder);
    cluster.start();
    let outcome = running.wait();
    outcome
        .assert_code(0)
        .assert_stderr_contains("waiting for the migration lock held by pid")
        .assert_stderr_contains("lost the connection before migrating");
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM _sqlx_migrations WHERE success"), "3");
}

#[test]
fn a_server_killed_mid_migration_leaves_no_partial_schema_and_the_rerun_applies_it() {
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    migrations.write("1_slow.sql", "CREATE TABLE half (id int);\nSELECT pg_sleep(30);\n");
    let running = run("migrate", &cluster, &migrations, &["--wait-timeout", "5"]).spawn();
    assert!(eventually(Duration::from_secs(15), || {
        cluster.psql(
            "app",
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' AND application_name = 'prestart'",
        ) == "1"
    }));
    let postmaster = cluster.postmaster_pid().to_string();
    assert!(Command::new("kill").args(["-KILL", &postmaster]).status().expect("kill").success());
    let outcome = running.wait();
    outcome.assert_code(6).assert_stderr_contains("1_slow.sql").assert_stderr_contains("nothing of it was applied");
    // The postmaster is gone; its children follow. Start it again: crash recovery runs.
    assert!(eventually(Duration::from_secs(15), || !cluster.data().join("postmaster.pid").exists()
        || Command::new("kill").args(["-0", &postmaster]).stderr(Stdio::null()).status().is_ok_and(|s| !s.success())));
    let _ = std::fs::remove_file(cluster.data().join("postmaster.pid"));
    cluster.start();
    assert_eq!(cluster.psql("app", "SELECT to_regclass('half') IS NULL"), "t", "a partial schema survived the crash");
    migrations.write("1_slow.sql", "CREATE TABLE half (id int);\n");
    run("migrate", &cluster, &migrations, &[]).output().assert_code(0);
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM _sqlx_migrations"), "1");
    assert_eq!(cluster.psql("app", "SELECT to_regclass('half') IS NOT NULL"), "t");
}

#[test]
fn an_interrupted_create_index_concurrently_is_reported_with_the_fix() {
    let cluster = Cluster::started();
    setup(&cluster, "CREATE TABLE events (x int); INSERT INTO events SELECT generate_series(1, 1000)");
    let migrations = Migrations::empty();
    migrations.write("1_index.sql", "-- no-transaction\nCREATE INDEX CONCURRENTLY events_x ON events (x);\n");
    // An open transaction with a snapshot makes CREATE INDEX CONCURRENTLY wait after it has
    // registered the (still INVALID) index.
    let reader = Session::open(&cluster, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM events;");
    assert!(eventually(Duration::from_secs(10), || {
        cluster.psql(
            "app",
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' AND backend_xmin IS NOT NULL",
        ) == "1"
    }));
    let running = run("migrate", &cluster, &migrations, &[]).spawn();
    assert!(eventually(Duration::from_secs(15), || {
        cluster
            .psql("app", "SELECT count(*) FROM pg_index WHERE NOT indisvalid AND indexrelid = to_regclass('events_x')")
            == "1"
    }));
    running.signal("TERM");
    running.wait().assert_code(143);
    drop(reader);

    let rerun = run("migrate", &cluster, &migrations, &[]).output();
    rerun
        .assert_code(6)
        .assert_stderr_contains("relation \"events_x\" already exists")
        .assert_stderr_contains("INVALID indexes are left behind (events_x)")
        .assert_stderr_contains("DROP INDEX CONCURRENTLY events_x;");
    cluster.psql("app", "DROP INDEX CONCURRENTLY events_x");
    run("migrate", &cluster, &migrations, &[]).output().assert_code(0);
    assert_eq!(cluster.psql("app", "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('events_x')"), "t");
}

#[test]
fn create_index_concurrently_outwaits_an_old_transaction_longer_than_the_lock_timeout() {
    let cluster = Cluster::started();
    setup(&cluster, "CREATE TABLE events (x int); INSERT INTO events SELECT generate_series(1, 1000)");
    let migrations = Migrations::empty();
    migrations.write("1_index.sql", "-- no-transaction\nCREATE INDEX CONCURRENTLY events_x ON events (x);\n");
    migrations.write("2_table.sql", "CREATE TABLE after_index (id int);\n");
    let reader = Session::open(&cluster, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM events;");
    assert!(eventually(Duration::from_secs(10), || {
        cluster.psql("app", "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'") == "1"
    }));
    let running = run("migrate", &cluster, &migrations, &["--statement-lock-timeout", "1"]).spawn();
    // The index waits for the reader's transaction through a lock wait, for longer than the
    // statement lock timeout, and must not be cancelled for it.
    let waited = eventually(Duration::from_secs(20), || {
        cluster.psql(
            "app",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'prestart' AND wait_event_type = 'Lock' \
             AND now() - query_start > interval '2 seconds'",
        ) == "1"
    });
    assert!(waited, "the index never waited for the old transaction: {:?}", running.wait());
    drop(reader);
    running.wait().assert_code(0).assert_stderr_contains("applied 2 table");
    assert_eq!(cluster.psql("app", "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('events_x')"), "t");
    // The migration after it ran with the lock timeout, which ended with its transaction.
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM _sqlx_migrations"), "2");
}

/// A CA and a server certificate for 127.0.0.1 signed by it, installed in the cluster with ssl on.
fn enable_tls(cluster: &Cluster) -> std::path::PathBuf {
    let dir = cluster.scratch();
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("openssl (install it: apt-get install openssl)");
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=prestart test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("san");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
    for file in ["server.crt", "server.key"] {
        std::fs::copy(dir.join(file), cluster.data().join(file)).expect("copy into the data folder");
    }
    testkit::set_mode(&cluster.data().join("server.key"), 0o600);
    let _ = Command::new("chown")
        .args(["postgres"])
        .arg(cluster.data().join("server.key"))
        .arg(cluster.data().join("server.crt"))
        .status();
    cluster.write_conf("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'");
    dir.join("ca.crt")
}

#[test]
fn tls_with_a_self_signed_certificate() {
    let cluster = Cluster::started();
    cluster.stop();
    let ca = enable_tls(&cluster);
    cluster.start();
    let wait = |mode: &str, root_cert: Option<&std::path::Path>| {
        let mut run = Run::xtask(XTASK, &["wait-for-db", "--wait-timeout", "5"], &cluster.env("app"))
            .env("POSTGRES_SSLMODE", mode);
        if let Some(cert) = root_cert {
            run = run.env("POSTGRES_SSLROOTCERT", cert.to_str().expect("utf-8"));
        }
        run.output()
    };
    wait("require", None).assert_code(0);
    wait("verify-full", None)
        .assert_code(5)
        .assert_stderr_contains("TLS failed")
        .assert_stderr_contains("set POSTGRES_SSLROOTCERT to the CA certificate that signed it")
        .assert_stderr_lacks("waiting:");
    wait("verify-full", Some(&ca)).assert_code(0);

    // A server that accepts only encrypted connections, and a client that turned TLS off.
    std::fs::write(
        cluster.data().join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
    )
    .expect("pg_hba");
    cluster.reload();
    wait("disable", None)
        .assert_code(5)
        .assert_stderr_contains("accepts only encrypted connections")
        .assert_stderr_contains("POSTGRES_SSLMODE=require");
}

#[test]
fn a_connection_dropped_during_the_seed_leaves_nothing_half_seeded() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    run("migrate", &cluster, &migrations, &[]).output().assert_code(0);
    // An uncommitted settings row makes the seed wait inside its transaction, after it has
    // inserted the superuser.
    let holder =
        Session::open(&cluster, "BEGIN; INSERT INTO app_settings (key, value) VALUES ('jobs.max_attempts', '5');");
    assert!(eventually(Duration::from_secs(10), || cluster
        .psql("app", "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND granted")
        != "0"));
    let running = run("prestart", &cluster, &migrations, &[]).spawn();
    assert!(eventually(Duration::from_secs(15), || {
        cluster.psql(
            "app",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'prestart' AND wait_event_type = 'Lock'",
        ) == "1"
    }));
    cluster.psql("app", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'prestart'");
    // The same server ended the session: no failover, so not seeded again.
    running
        .wait()
        .assert_code(7)
        .assert_stderr_contains("nothing was seeded")
        .assert_stderr_contains("not seeded again");
    drop(holder);
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM users"), "0", "the superuser survived a failed seed");
    run("prestart", &cluster, &migrations, &[]).output().assert_code(0);
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM users"), "1");
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM app_settings"), "2");
}

#[test]
fn a_migration_never_runs_on_a_session_without_the_migration_lock() {
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    // A migration that lets go of every advisory lock, as one reaching through a transaction
    // pooler would find the lock on another session: the check after its SQL, in its own
    // transaction, rolls it back, and the next one does not run.
    migrations.write("1_unlock.sql", "CREATE TABLE before_unlock (id int);\nSELECT pg_advisory_unlock_all();\n");
    migrations.write("2_table.sql", "CREATE TABLE after_unlock (id int);\n");
    run("migrate", &cluster, &migrations, &[])
        .output()
        .assert_code(6)
        .assert_stderr_contains("1_unlock.sql")
        .assert_stderr_contains("does not hold the migration lock, so the migration was not applied")
        .assert_stderr_contains("nothing of it was applied");
    assert_eq!(
        cluster.psql("app", "SELECT to_regclass('before_unlock') IS NULL AND to_regclass('after_unlock') IS NULL"),
        "t"
    );
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM _sqlx_migrations"), "0");

    // A `-- no-transaction` file is checked on its own, before and after it runs: one that lets
    // go of the lock is said to have run without it, and the next one does not run.
    cluster.create_database("other");
    cluster.psql("other", "CREATE TABLE events (x int)");
    migrations.write("1_unlock.sql", "-- no-transaction\nSELECT pg_advisory_unlock_all();\n");
    migrations.write("2_table.sql", "-- no-transaction\nCREATE INDEX CONCURRENTLY events_x ON events (x);\n");
    run("migrate", &cluster, &migrations, &[])
        .env("POSTGRES_DB", "other")
        .output()
        .assert_code(6)
        .assert_stderr_contains("1_unlock.sql ran, but this connection is now on another server session than the one holding the migration lock");
    assert_eq!(cluster.psql("other", "SELECT to_regclass('events_x') IS NULL"), "t");
}

#[test]
fn a_server_process_that_stops_answering_costs_a_reconnect_not_the_run() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    let holder = testkit::MigrationLock::take(&cluster, "app", "lock-holder-test");
    let running = run("prestart", &cluster, &migrations, &["--wait-timeout", "90"]).spawn();
    running.wait_for_stderr("waiting for the migration lock held by pid", Duration::from_secs(30));
    // The server process behind prestart's connection stops answering, as behind a paused VM or
    // a NAT that forgot the connection: its next query gets no answer, ever.
    let pid = cluster.psql("app", "SELECT pid FROM pg_stat_activity WHERE application_name = 'prestart'");
    assert!(Command::new("kill").args(["-STOP", &pid]).status().expect("kill").success());
    running.wait_for_stderr("(the server sent no answer within 10 s): connecting again", Duration::from_secs(30));
    drop(holder);
    let outcome = running.wait();
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    outcome.assert_code(0);
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM _sqlx_migrations WHERE success"), "3");
}

/// The pid of the session running `pg_sleep` for prestart, once it runs.
fn sleeping_migration(cluster: &Cluster) -> String {
    let query = "SELECT pid FROM pg_stat_activity WHERE query LIKE '%pg_sleep(%' AND application_name = 'prestart'";
    let mut pid = String::new();
    assert!(
        eventually(Duration::from_secs(15), || {
            pid = cluster.psql("app", query);
            !pid.is_empty()
        }),
        "the migration never ran"
    );
    pid
}

/// A server restarted mid-migration, as a switchover ends the old primary's sessions (57P01),
/// is another server instance when it answers again: the transactional migration, rolled back
/// by the server, runs again there and is applied once.
#[test]
fn a_restart_mid_migration_runs_it_again_on_the_new_instance() {
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    migrations.write("1_slow.sql", "CREATE TABLE again (id int);\nSELECT pg_sleep(2);\n");
    let running = run("migrate", &cluster, &migrations, &["--wait-timeout", "60"]).spawn();
    sleeping_migration(&cluster);
    cluster.stop();
    cluster.start();
    running
        .wait()
        .assert_code(0)
        .assert_stderr_contains("lost the connection while applying 1_slow.sql")
        .assert_stderr_contains("another server instance: going on");
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM _sqlx_migrations WHERE success"), "1");
    assert_eq!(cluster.psql("app", "SELECT to_regclass('again') IS NOT NULL"), "t");
}

/// A crash restart (a backend died; the postmaster reinitialises) keeps the server instance:
/// the migration may be what crashed it, so it is not run again, and the run says what is left.
#[test]
fn a_crash_restart_mid_migration_is_not_run_again() {
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    migrations.write("1_slow.sql", "CREATE TABLE crashed (id int);\nSELECT pg_sleep(30);\n");
    let running = run("migrate", &cluster, &migrations, &["--wait-timeout", "60"]).spawn();
    let pid = sleeping_migration(&cluster);
    assert!(Command::new("kill").args(["-SEGV", &pid]).status().expect("kill").success());
    running
        .wait()
        .assert_code(6)
        .assert_stderr_contains("1_slow.sql")
        .assert_stderr_contains("it was not run again")
        .assert_stderr_lacks("another server instance");
    assert!(eventually(Duration::from_secs(30), || cluster
        .psql_command("app")
        .arg("-c")
        .arg("SELECT 1")
        .output()
        .is_ok_and(|o| o.status.success())));
    assert_eq!(cluster.psql("app", "SELECT to_regclass('crashed') IS NULL"), "t");
}

/// A restart during the seed (a switchover ends every session) leaves another server instance:
/// the seed, one transaction that inserts what is missing, runs again whole, and once. The row
/// the seed waits for is held by a prepared transaction, which outlives the restart: with a
/// session of its own, the fast shutdown ended it too, and the seed, granted its lock in that
/// moment, could commit before its own session ended.
#[test]
fn a_restart_during_the_seed_seeds_again_on_the_new_instance() {
    let cluster = Cluster::stopped();
    cluster.write_conf("max_prepared_transactions = 2");
    cluster.start();
    cluster.create_database("app");
    let migrations = Migrations::workspace();
    run("migrate", &cluster, &migrations, &[]).output().assert_code(0);
    cluster.psql(
        "app",
        "BEGIN; INSERT INTO app_settings (key, value) VALUES ('jobs.max_attempts', '5'); PREPARE TRANSACTION 'holder'",
    );
    let running = run("prestart", &cluster, &migrations, &["--wait-timeout", "60"]).spawn();
    let seed_waits = || {
        eventually(Duration::from_secs(15), || {
            cluster.psql(
                "app",
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'prestart' AND wait_event_type = 'Lock'",
            ) == "1"
        })
    };
    assert!(seed_waits());
    cluster.stop();
    cluster.start();
    // The seed runs again on the new instance, and waits for the same row until it is let go.
    assert!(seed_waits());
    cluster.psql("app", "ROLLBACK PREPARED 'holder'");
    running
        .wait()
        .assert_code(0)
        .assert_stderr_contains("lost the connection while seeding")
        .assert_stderr_contains("another server instance: going on");
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM users"), "1");
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM app_settings"), "2");
}
