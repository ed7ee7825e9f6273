//! sqlx-cli and prestart share one migrations table: each reads what the other wrote, and both
//! leave the same rows and the same schema. Needs sqlx-cli (`cargo xtask test` installs it).

use testkit::{Cluster, Migrations, Run};

/// `sqlx migrate ACTION` on `database`, the URL in the environment only.
fn sqlx_cli(cluster: &Cluster, database: &str, migrations: &Migrations, action: &str) -> testkit::Outcome {
    let source = migrations.path().to_str().expect("utf-8 path");
    let env = [("DATABASE_URL".to_owned(), cluster.url(database))];
    let outcome = Run::program("sqlx", &["migrate", action, "--source", source], &env).output();
    assert_ne!(outcome.code, None, "sqlx-cli was killed");
    outcome
}

fn prestart(cluster: &Cluster, database: &str, migrations: &Migrations, command: &[&str]) -> testkit::Outcome {
    let source = migrations.path().to_str().expect("utf-8 path").to_owned();
    let mut args = command.to_vec();
    args.extend(["--source", &source]);
    Run::xtask(env!("CARGO_BIN_EXE_xtask"), &args, &cluster.env(database)).output()
}

/// The rows both tools write, without the times that differ by run.
fn rows(cluster: &Cluster, database: &str) -> String {
    cluster.psql(database, "SELECT string_agg(version || ' ' || description || ' ' || success || ' ' || encode(checksum, 'hex'), E'\\n' ORDER BY version) FROM _sqlx_migrations")
}

#[test]
fn sqlx_cli_reads_what_prestart_applied_and_prestart_reads_what_sqlx_cli_applied() {
    assert!(
        std::process::Command::new("sqlx").arg("--version").output().is_ok_and(|o| o.status.success()),
        "sqlx-cli is not installed: run the tests with `cargo xtask test`, which installs it"
    );
    let cluster = Cluster::started();
    cluster.create_database("by_cli");
    let migrations = Migrations::workspace();

    prestart(&cluster, "app", &migrations, &["migrate"]).assert_code(0);
    let info = sqlx_cli(&cluster, "app", &migrations, "info");
    info.assert_code(0);
    assert_eq!(info.stdout.matches("installed").count(), 3, "{}", info.stdout);
    assert!(!info.stdout.contains("pending"), "{}", info.stdout);
    let rerun = sqlx_cli(&cluster, "app", &migrations, "run");
    rerun.assert_code(0);
    assert!(!rerun.stdout.contains("Applied"), "sqlx-cli applied again what prestart applied:\n{}", rerun.stdout);

    sqlx_cli(&cluster, "by_cli", &migrations, "run").assert_code(0);
    prestart(&cluster, "by_cli", &migrations, &["migrate"])
        .assert_code(0)
        .assert_stderr_contains("up to date: all 3 migrations were already applied");
    prestart(&cluster, "by_cli", &migrations, &["migrate", "status"]).assert_code(0);

    assert_eq!(rows(&cluster, "app"), rows(&cluster, "by_cli"));
    // The schema, without the rows of the migrations table (their times differ by run).
    let schema = |database: &str| -> String {
        cluster.dump(database).lines().filter(|line| !line.starts_with(|c: char| c.is_ascii_digit())).collect()
    };
    assert_eq!(schema("app"), schema("by_cli"));
}
