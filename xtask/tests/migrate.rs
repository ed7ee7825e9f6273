//! `cargo xtask migrate` and `migrate status`: sqlx-cli's files and table, checked and applied
//! under a lock that is bounded and always released.

use std::time::Duration;

use testkit::{Cluster, Migrations, Run, eventually};

fn xtask(args: &[&str], env: &[(String, String)]) -> Run {
    Run::xtask(env!("CARGO_BIN_EXE_xtask"), args, env)
}

fn migrate(cluster: &Cluster, migrations: &Migrations, extra: &[&str]) -> Run {
    let source = migrations.path().to_str().expect("utf-8 path").to_owned();
    let mut args = vec!["migrate", "--source", &source];
    args.extend_from_slice(extra);
    xtask(&args, &cluster.env("app"))
}

fn status(cluster: &Cluster, migrations: &Migrations, json: bool) -> testkit::Outcome {
    let source = migrations.path().to_str().expect("utf-8 path").to_owned();
    let mut args = vec!["migrate", "status", "--source", &source];
    if json {
        args.push("--json");
    }
    xtask(&args, &cluster.env("app")).output()
}

#[test]
fn status_reports_pending_then_up_to_date_and_newer_versions_do_not_make_it_stale() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    let before = status(&cluster, &migrations, false);
    before.assert_code(8).assert_stderr_contains("not applied: 20261125090000, 20261125090100, 20261125090200");
    assert!(before.stdout.contains("20261125090000   pending"), "{}", before.stdout);

    migrate(&cluster, &migrations, &[]).output().assert_code(0);
    let after = status(&cluster, &migrations, true);
    after.assert_code(0);
    let document: serde_json::Value = serde_json::from_str(&after.stdout).expect("status --json prints JSON");
    assert_eq!(document["up_to_date"], true);
    assert_eq!(document["table"], "_sqlx_migrations");
    let entries = document["migrations"].as_array().expect("migrations array");
    assert_eq!(entries.len(), 3);
    assert!(entries.iter().all(|e| e["state"] == "applied"));
    // RFC 3339 in UTC, to the second.
    for entry in entries {
        let installed_on = entry["installed_on"].as_str().expect("installed_on is a string");
        let shape: String = installed_on.chars().map(|c| if c.is_ascii_digit() { '9' } else { c }).collect();
        assert_eq!(shape, "9999-99-99T99:99:99Z", "{installed_on}");
    }

    // A newer release applied one more migration: still up to date for this code, with a warning
    // from migrate (an error with --strict).
    cluster.psql(
        "app",
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (20990101000000, 'from the future', true, '\\x00', 0)",
    );
    let with_newer = status(&cluster, &migrations, true);
    with_newer.assert_code(0);
    assert!(with_newer.stdout.contains("\"unknown\""), "{}", with_newer.stdout);
    migrate(&cluster, &migrations, &[]).output().assert_code(0).assert_stderr_contains(
        "warning: the database has applied a migration that this code does not have: 20990101000000",
    );
    migrate(&cluster, &migrations, &["--strict"]).output().assert_code(6).assert_stderr_contains("(--strict)");
}

#[test]
fn an_edited_applied_migration_is_refused_by_name() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    migrate(&cluster, &migrations, &[]).output().assert_code(0);
    let file = migrations.path().join("20261125090100_create_app_settings.sql");
    let sql = std::fs::read_to_string(&file).expect("read").replace("\n", "\r\n");
    std::fs::write(&file, sql).expect("write CRLF copy");
    migrate(&cluster, &migrations, &[])
        .output()
        .assert_code(6)
        .assert_stderr_contains("20261125090100_create_app_settings.sql changed after it was applied")
        .assert_stderr_contains("cargo xtask new-migration");
    let outcome = status(&cluster, &migrations, false);
    outcome.assert_code(8);
    assert!(outcome.stdout.contains("20261125090100   changed"), "{}", outcome.stdout);
}

/// Migrations go to the server in one message, each its own transaction: a syntax error in one
/// makes the server reject the whole message before anything runs, so those before it are
/// applied again in a batch of their own, and the failing one is named with its line.
#[test]
fn a_syntax_error_late_in_a_batch_applies_those_before_it_and_names_its_line() {
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    migrations.write("1_first.sql", "CREATE TABLE first (id int);\nSELECT pg_sleep(0.05);\n");
    migrations.write("2_second.sql", "CREATE TABLE second (id int);\n");
    migrations.write("3_typo.sql", "CREATE TABLE third (id int);\nCREATE TABEL fourth (id int);\n");
    migrations.write("4_never.sql", "CREATE TABLE never (id int);\n");
    let outcome = migrate(&cluster, &migrations, &[]).output();
    outcome
        .assert_code(6)
        .assert_stderr_contains("3_typo.sql:2: syntax error at or near \"TABEL\" (SQLSTATE 42601)")
        .assert_stderr_contains("applied 2 second");
    assert_eq!(
        cluster.psql("app", "SELECT string_agg(version::text, ',' ORDER BY version) FROM _sqlx_migrations"),
        "1,2"
    );
    assert_eq!(cluster.psql("app", "SELECT to_regclass('third') IS NULL AND to_regclass('never') IS NULL"), "t");
    // The execution time is the server's measure of the SQL alone (the first one sleeps 50 ms).
    assert_eq!(
        cluster.psql(
            "app",
            "SELECT execution_time BETWEEN 50000000 AND 5000000000 FROM _sqlx_migrations WHERE version = 1"
        ),
        "t"
    );
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"), "0");
}

#[test]
fn a_failing_migration_names_file_line_and_sqlstate_and_applies_nothing_of_itself() {
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    migrations.write("1_good.sql", "CREATE TABLE good (id int);\n");
    migrations
        .write("2_bad.sql", "-- a typo on line 3\nCREATE TABLE half (id int);\nINSERT INTO nowhere VALUES (1);\n");
    migrations.write("3_never.sql", "CREATE TABLE never (id int);\n");
    let outcome = migrate(&cluster, &migrations, &[]).output();
    outcome
        .assert_code(6)
        .assert_stderr_contains("2_bad.sql:3: relation \"nowhere\" does not exist (SQLSTATE 42P01)")
        .assert_stderr_contains("nothing of it was applied");
    assert_eq!(cluster.psql("app", "SELECT string_agg(version::text, ',') FROM _sqlx_migrations"), "1");
    assert_eq!(cluster.psql("app", "SELECT to_regclass('half') IS NULL AND to_regclass('never') IS NULL"), "t");
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"), "0");

    // Fixed, the rerun applies the rest.
    migrations.write("2_bad.sql", "-- fixed\nCREATE TABLE half (id int);\n");
    migrate(&cluster, &migrations, &[])
        .output()
        .assert_code(0)
        .assert_stderr_contains("applied 2, 1 were already applied");
}

#[test]
fn a_held_migration_lock_is_waited_for_a_bounded_time_naming_its_holder() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    let holder = testkit::MigrationLock::take(&cluster, "app", "lock-holder-test");
    // The old name of --migration-lock-timeout still works.
    let outcome = migrate(&cluster, &migrations, &["--lock-timeout", "1"]).output();
    outcome
        .assert_code(6)
        .assert_stderr_contains("waiting for the migration lock held by pid")
        .assert_stderr_contains("lock-holder-test")
        .assert_stderr_contains("the migration lock is still held after");
    assert_eq!(cluster.psql("app", "SELECT to_regclass('_sqlx_migrations') IS NULL"), "t");

    // Once released, the same command goes through.
    drop(holder);
    migrate(&cluster, &migrations, &["--migration-lock-timeout", "5"]).output().assert_code(0);
}

#[test]
fn sigterm_during_a_migration_stops_the_server_side_work_and_keeps_nothing() {
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    migrations.write("1_slow.sql", "CREATE TABLE slow_result (id int);\nSELECT pg_sleep(60);\n");
    let running = migrate(&cluster, &migrations, &[]).spawn();
    assert!(
        eventually(Duration::from_secs(15), || {
            cluster.psql("app", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND application_name = 'prestart'")
                == "1"
        }),
        "the migration never started"
    );
    let sent = std::time::Instant::now();
    running.signal("TERM");
    let outcome = running.wait();
    assert!(sent.elapsed() < Duration::from_secs(2), "took {:?} to stop", sent.elapsed());
    outcome.assert_code(143).assert_stderr_contains("rolled back and its locks were released");
    // Checked from the server's side: no session of ours, no lock, no table.
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'prestart'"), "0");
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"), "0");
    assert_eq!(cluster.psql("app", "SELECT to_regclass('slow_result') IS NULL"), "t");
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM _sqlx_migrations"), "0");
}

#[test]
fn sqlx_toml_table_name_and_ignored_characters_are_honoured() {
    let cluster = Cluster::started();
    let root = cluster.scratch();
    let migrations_dir = root.join("db-migrations");
    std::fs::create_dir_all(&migrations_dir).expect("mkdir");
    std::fs::write(
        root.join("sqlx.toml"),
        "[migrate]\ntable-name = \"schema_history\"\nmigrations-dir = \"db-migrations\"\nignored-chars = [\"\\r\", \"\\uFEFF\"]\n",
    )
    .expect("write sqlx.toml");
    let file = migrations_dir.join("1_first.sql");
    std::fs::write(&file, "CREATE TABLE first (id int);\n").expect("write");
    // The binary looks for sqlx.toml beside itself first: run a copy placed in that folder.
    let binary = root.join("xtask");
    std::fs::copy(env!("CARGO_BIN_EXE_xtask"), &binary).expect("copy binary");
    let run = |extra: &[&str]| {
        let mut command = std::process::Command::new(&binary);
        command.args(["migrate", "--context", "host", "--env-file", "/dev/null"]).args(extra).env_clear();
        command.envs(cluster.env("app")).env("PATH", std::env::var_os("PATH").unwrap_or_default());
        command.output().expect("run copy")
    };
    assert!(run(&[]).status.success());
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM schema_history"), "1");
    assert_eq!(cluster.psql("app", "SELECT to_regclass('_sqlx_migrations') IS NULL"), "t");
    // With \r ignored, a CRLF checkout of the same file keeps its checksum.
    std::fs::write(&file, "CREATE TABLE first (id int);\r\n").expect("write CRLF");
    let output = run(&[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// As sqlx-cli, a target no migration has is refused before connecting: with the server down it
/// fails at once (exit 6), not after the wait.
#[test]
fn a_target_version_no_migration_has_fails_without_waiting_for_the_server() {
    let cluster = Cluster::stopped();
    let migrations = Migrations::workspace();
    let started = std::time::Instant::now();
    migrate(&cluster, &migrations, &["--target-version", "999"])
        .output()
        .assert_code(6)
        .assert_stderr_contains("--target-version 999: no migration in");
    assert!(started.elapsed() < Duration::from_secs(30), "it waited: {:?}", started.elapsed());
}
