//! Production topologies with real parts: Debian's PgBouncer in session and transaction mode,
//! a streaming replica made by `pg_basebackup -R` and promoted while prestart waits, a server
//! that takes no writes, and migrations over a direct connection apart from the app's.

use std::time::Duration;

use testkit::{Bouncer, Cluster, Migrations, PoolMode, Run, with};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn prestart(env: &[(String, String)], migrations: &Migrations, extra: &[&str]) -> Run {
    let source = migrations.path().to_str().expect("utf-8 path").to_owned();
    let mut args = vec!["prestart", "--source", &source];
    args.extend_from_slice(extra);
    Run::xtask(XTASK, &args, env)
}

/// Back to an empty database, for another run of every migration.
fn empty(cluster: &Cluster) {
    cluster.psql("app", "DROP SCHEMA public CASCADE; CREATE SCHEMA public");
}

#[test]
fn through_pgbouncer_in_session_mode_prestart_runs_reruns_and_runs_eight_at_once() {
    let cluster = Cluster::started();
    let bouncer = Bouncer::start(&cluster, PoolMode::Session);
    let migrations = Migrations::workspace();
    let env = bouncer.env(&cluster, "app");
    prestart(&env, &migrations, &[]).output().assert_code(0).assert_stderr_lacks("waiting:");
    prestart(&env, &migrations, &[])
        .output()
        .assert_code(0)
        .assert_stderr_contains("up to date: all 3 migrations were already applied");
    empty(&cluster);
    let runs: Vec<_> = (0..8).map(|_| prestart(&env, &migrations, &[]).spawn()).collect();
    for outcome in runs.into_iter().map(testkit::Running::wait) {
        outcome.assert_code(0);
    }
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM _sqlx_migrations"), "3");
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM users"), "1");
    assert!(!bouncer.log().contains("unsupported startup parameter"), "{}", bouncer.log());
}

#[test]
fn a_startup_parameter_the_pooler_refuses_fails_at_once_naming_the_pooler_setting() {
    let cluster = Cluster::started();
    let bouncer = Bouncer::start(&cluster, PoolMode::Session);
    let migrations = Migrations::workspace();
    let url = format!(
        "postgres://{}:{}@127.0.0.1:{}/app?sslmode=disable&options=-c%20statement_timeout%3D0",
        testkit::SUPERUSER,
        testkit::url_encoded(testkit::PASSWORD),
        bouncer.port
    );
    let env = with(cluster.env("app"), "DATABASE_URL", &url);
    let outcome = prestart(&env, &migrations, &["--wait-timeout", "60"]).output();
    outcome
        .assert_code(5)
        .assert_stderr_contains("unsupported startup parameter")
        .assert_stderr_contains("ignore_startup_parameters")
        .assert_stderr_lacks("waiting:");
    assert!(outcome.elapsed < Duration::from_secs(10), "took {:?}", outcome.elapsed);
}

#[test]
fn transaction_pooling_without_direct_settings_stops_before_migrating_and_names_the_fix() {
    let cluster = Cluster::started();
    let bouncer = Bouncer::start(&cluster, PoolMode::Transaction);
    let migrations = Migrations::workspace();
    let outcome = prestart(&bouncer.env(&cluster, "app"), &migrations, &[]).output();
    outcome
        .assert_code(5)
        .assert_stderr_contains("transaction pooling")
        .assert_stderr_contains("MIGRATION_DATABASE_URL");
    assert_eq!(cluster.psql("app", "SELECT to_regclass('_sqlx_migrations') IS NULL"), "t", "something was migrated");
}

#[test]
fn transaction_pooling_with_a_direct_connection_migrates_over_it() {
    let cluster = Cluster::started();
    let bouncer = Bouncer::start(&cluster, PoolMode::Transaction);
    let migrations = Migrations::workspace();
    let env = with(bouncer.env(&cluster, "app"), "MIGRATION_DATABASE_URL", &cluster.url("app"));
    prestart(&env, &migrations, &[])
        .output()
        .assert_code(0)
        .assert_stderr_contains("go over the direct connection of MIGRATION_DATABASE_URL");
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM _sqlx_migrations WHERE success"), "3");
    let runs: Vec<_> = (0..4).map(|_| prestart(&env, &migrations, &[]).spawn()).collect();
    for outcome in runs.into_iter().map(testkit::Running::wait) {
        outcome.assert_code(0);
    }
    // The POSTGRES_MIGRATION_* variables do the same over the POSTGRES_* ones.
    empty(&cluster);
    let env = with(bouncer.env(&cluster, "app"), "POSTGRES_MIGRATION_PORT", &cluster.port.to_string());
    prestart(&env, &migrations, &[])
        .output()
        .assert_code(0)
        .assert_stderr_contains("go over the direct connection of POSTGRES_MIGRATION_*");
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM _sqlx_migrations WHERE success"), "3");
}

#[test]
fn the_migration_lock_is_the_servers_database_behind_a_pooler_alias() {
    let cluster = Cluster::started();
    let bouncer = Bouncer::start(&cluster, PoolMode::Session);
    let migrations = Migrations::workspace();
    // sqlx's own lock, keyed by the database the server calls `app`.
    let holder = testkit::MigrationLock::take(&cluster, "app", "lock-holder-test");
    let env = bouncer.env(&cluster, Bouncer::ALIAS);
    let running = prestart(&env, &migrations, &["--wait-timeout", "60"]).spawn();
    running.wait_for_stderr("waiting for the migration lock held by pid", Duration::from_secs(30));
    drop(holder);
    running.wait().assert_code(0);
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM _sqlx_migrations WHERE success"), "3");
}

#[test]
fn a_hot_standby_is_waited_for_and_three_prestarts_go_on_once_it_is_promoted() {
    let primary = Cluster::started();
    let replica = primary.replica("");
    assert!(
        testkit::eventually(Duration::from_secs(30), || replica
            .log()
            .contains("ready to accept read-only connections")),
        "the replica did not start:\n{}",
        replica.log()
    );
    let migrations = Migrations::workspace();
    // Three at once, as the pods of a deployment during a failover.
    let runs: Vec<_> =
        (0..3).map(|_| prestart(&replica.env("app"), &migrations, &["--wait-timeout", "60"]).spawn()).collect();
    for running in &runs {
        running.wait_for_stderr("standby in recovery", Duration::from_secs(30));
    }
    replica.promote();
    for running in runs {
        running
            .wait()
            .assert_code(0)
            .assert_stderr_contains("a failover may be in progress")
            .assert_stderr_contains("==> seed initial data");
    }
    assert_eq!(replica.psql("app", "SELECT count(*) FROM _sqlx_migrations WHERE success"), "3");
    assert_eq!(replica.psql("app", "SELECT count(*) FROM users"), "1");
}

#[test]
fn a_server_that_takes_no_writes_is_not_ready_and_doctor_says_why() {
    let cluster = Cluster::started();
    cluster.psql("postgres", "ALTER SYSTEM SET default_transaction_read_only = on");
    cluster.reload();
    let migrations = Migrations::workspace();
    prestart(&cluster.env("app"), &migrations, &["--wait-timeout", "2"])
        .output()
        .assert_code(4)
        .assert_stderr_contains("default_transaction_read_only = on")
        .assert_stderr_contains("a replica or a reader endpoint");
    let doctor = Run::xtask(XTASK, &["doctor", "--json"], &cluster.env("app")).output();
    let report: serde_json::Value = serde_json::from_str(&doctor.stdout).expect("doctor --json");
    let writable = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["id"] == "postgres.writable")
        .expect("postgres.writable");
    assert_eq!(writable["status"], "fail", "{writable}");
    assert!(writable["message"].as_str().unwrap_or_default().contains("default_transaction_read_only"), "{writable}");
}

#[test]
fn migrations_run_as_the_owner_and_doctor_names_what_the_app_role_lacks() {
    let cluster = Cluster::started();
    cluster.psql("postgres", "CREATE ROLE schema_owner LOGIN PASSWORD '0wn3r-Xq7#pw'");
    cluster.psql("postgres", "CREATE ROLE app_user LOGIN PASSWORD '4pp-Zr9!kw'");
    cluster.psql("app", "ALTER SCHEMA public OWNER TO schema_owner");
    let migrations = Migrations::workspace();
    let env = [
        ("POSTGRES_USER", "app_user"),
        ("POSTGRES_PASSWORD", "4pp-Zr9!kw"),
        ("POSTGRES_MIGRATION_USER", "schema_owner"),
        ("POSTGRES_MIGRATION_PASSWORD", "0wn3r-Xq7#pw"),
    ]
    .into_iter()
    .fold(cluster.env("app"), |env, (key, value)| with(env, key, value));
    prestart(&env, &migrations, &[]).output().assert_code(0).assert_lacks_secret("0wn3r-Xq7#pw");
    assert_eq!(cluster.psql("app", "SELECT tableowner FROM pg_tables WHERE tablename = 'jobs'"), "schema_owner");

    let privileges = || {
        let outcome = Run::xtask(XTASK, &["doctor", "--json"], &env).output();
        outcome.assert_lacks_secret("4pp-Zr9!kw").assert_lacks_secret("0wn3r-Xq7#pw");
        let report: serde_json::Value = serde_json::from_str(&outcome.stdout).expect("doctor --json");
        report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["id"] == "postgres.app_privileges")
            .expect("postgres.app_privileges")
            .clone()
    };
    let check = privileges();
    assert_eq!(check["status"], "fail", "{check}");
    let message = check["message"].as_str().unwrap_or_default();
    assert!(message.contains("SELECT, INSERT, UPDATE, DELETE on jobs"), "{check}");
    assert!(message.contains("SELECT on _sqlx_migrations"), "{check}");
    assert!(!message.contains("INSERT, UPDATE, DELETE on _sqlx_migrations"), "{check}");

    cluster.psql(
        "app",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_user; \
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app_user",
    );
    let check = privileges();
    assert_eq!(check["status"], "warn", "{check}");
    assert!(check["hint"].as_str().unwrap_or_default().contains("ALTER DEFAULT PRIVILEGES FOR ROLE \"schema_owner\""));

    cluster.psql(
        "app",
        "ALTER DEFAULT PRIVILEGES FOR ROLE schema_owner IN SCHEMA public \
         GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO app_user",
    );
    assert_eq!(privileges()["status"], "ok");
}

/// PgBouncer on a Unix socket with the server's port number, in front of the server's socket:
/// the server sees a socket with its own port, as on a direct connection. The socket's folder
/// tells them apart (the server lists its own); taken for direct, transaction pooling let
/// migrations run with the lock on whatever session the pooler handed out.
#[test]
fn pgbouncer_on_a_unix_socket_is_not_taken_for_a_direct_connection() {
    let cluster = Cluster::started();
    let bouncer = Bouncer::start_on_socket(&cluster, PoolMode::Transaction);
    let socket = bouncer.socket_dir().expect("a socket").to_str().expect("utf-8").to_owned();
    let env = with(cluster.env("app"), "POSTGRES_SERVER", &socket);
    let migrations = Migrations::workspace();
    prestart(&env, &migrations, &[])
        .output()
        .assert_code(5)
        .assert_stderr_contains("transaction pooling")
        .assert_stderr_contains("MIGRATION_DATABASE_URL");
    assert_eq!(cluster.psql("app", "SELECT to_regclass('_sqlx_migrations') IS NULL"), "t", "something was migrated");
}
