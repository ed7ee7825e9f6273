//! sqlx-cli and prestart share one migrations table: each reads what the other wrote, and both
//! leave the same rows and the same schema. Needs sqlx-cli (`cargo xtask test` installs it).

use testkit::{Cluster, Migrations, Run};

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
    let info = sqlx_cli(&cluster, "app", &migrations, &["info"]);
    info.assert_code(0);
    assert_eq!(info.stdout.matches("installed").count(), 3, "{}", info.stdout);
    assert!(!info.stdout.contains("pending"), "{}", info.stdout);
    let rerun = sqlx_cli(&cluster, "app", &migrations, &["run"]);
    rerun.assert_code(0);
    assert!(!rerun.stdout.contains("Applied"), "sqlx-cli applied again what prestart applied:\n{}", rerun.stdout);

    sqlx_cli(&cluster, "by_cli", &migrations, &["run"]).assert_code(0);
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

/// `migrate --target-version`, `--dry-run` and `migrate revert`, case by case, by us and by
/// sqlx-cli on twin databases with the same folder: after each step both succeeded or both
/// failed, and both left the same rows and the same schema.
#[test]
fn target_versions_dry_runs_and_reverts_match_sqlx_cli_case_by_case() {
    let cluster = Cluster::started();
    cluster.create_database("by_cli");
    let migrations = Migrations::empty();
    for (version, table) in [(1, "a"), (2, "b"), (3, "c")] {
        migrations.write(&format!("{version}_{table}.up.sql"), &format!("CREATE TABLE {table} (id int);\n"));
        migrations.write(&format!("{version}_{table}.down.sql"), &format!("DROP TABLE {table};\n"));
    }
    let schema = |database: &str| -> String {
        cluster.dump(database).lines().filter(|line| !line.starts_with(|c: char| c.is_ascii_digit())).collect()
    };
    let tables = |database: &str| {
        cluster.psql(database, "SELECT coalesce(string_agg(tablename, ',' ORDER BY tablename), '') FROM pg_tables WHERE schemaname = 'public' AND tablename NOT IN ('_sqlx_migrations', '_prestart_environment', '_prestart_releases')")
    };
    // (arguments of `migrate`, whether it succeeds, the tables after it)
    let cases: &[(&[&str], bool, &str)] = &[
        (&["run", "--target-version", "2"], true, "a,b"),
        (&["run", "--target-version", "1"], false, "a,b"),
        (&["run", "--target-version", "99"], false, "a,b"),
        (&["run", "--dry-run"], true, "a,b"),
        (&["run", "--target-version", "2"], true, "a,b"),
        (&["revert", "--dry-run"], true, "a,b"),
        (&["revert", "--target-version", "3"], false, "a,b"),
        (&["revert", "--target-version", "99"], false, "a,b"),
        (&["revert", "--target-version", "2"], true, "a,b"),
        (&["revert", "--dry-run", "--target-version", "0"], true, "a,b"),
        (&["revert"], true, "a"),
        (&["run"], true, "a,b,c"),
        (&["revert", "--target-version", "1"], true, "a"),
        (&["revert", "--target-version", "0"], true, ""),
        (&["revert"], true, ""),
        (&["revert", "--target-version", "1"], false, ""),
        (&["run", "--target-version", "0"], false, ""),
        (&["run", "--target-version", "3"], true, "a,b,c"),
    ];
    for (args, succeeds, after) in cases {
        let ours: Vec<&str> = match args[0] {
            "run" => std::iter::once("migrate").chain(args[1..].iter().copied()).collect(),
            _ => std::iter::once("migrate").chain(args.iter().copied()).collect(),
        };
        let by_us = prestart(&cluster, "app", &migrations, &ours);
        let by_cli = sqlx_cli(&cluster, "by_cli", &migrations, args);
        assert_eq!(by_us.code == Some(0), *succeeds, "{ours:?}:\n{}", by_us.stderr);
        assert_eq!(by_cli.code == Some(0), *succeeds, "sqlx migrate {args:?}:\n{}{}", by_cli.stdout, by_cli.stderr);
        assert_eq!(tables("app"), *after, "after {ours:?}");
        assert_eq!(rows(&cluster, "app"), rows(&cluster, "by_cli"), "after {ours:?}");
        assert_eq!(schema("app"), schema("by_cli"), "after {ours:?}");
        if !succeeds {
            by_us.assert_stderr_contains("nothing was changed");
        }
    }
}

/// Where sqlx-cli would skip a migration without a down file and revert an older one, we stop
/// before anything runs and name it.
#[test]
fn a_migration_without_a_down_file_stops_the_revert_before_anything_runs() {
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    migrations.write("1_a.up.sql", "CREATE TABLE a ();\n");
    migrations.write("1_a.down.sql", "DROP TABLE a;\n");
    migrations.write("2_b.up.sql", "CREATE TABLE b ();\n");
    migrations.write("3_c.up.sql", "CREATE TABLE c ();\n");
    migrations.write("3_c.down.sql", "DROP TABLE c;\n");
    prestart(&cluster, "app", &migrations, &["migrate"]).assert_code(0);
    let before = rows(&cluster, "app");
    prestart(&cluster, "app", &migrations, &["migrate", "revert", "--target-version", "0"])
        .assert_code(6)
        .assert_stderr_contains("2_b.up.sql has no down file (2_b.down.sql beside it), so nothing was reverted");
    assert_eq!(rows(&cluster, "app"), before);
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM pg_tables WHERE tablename IN ('a', 'b', 'c')"), "3");
    // The latest alone has one: it goes.
    prestart(&cluster, "app", &migrations, &["migrate", "revert"])
        .assert_code(0)
        .assert_stderr_contains("reverted 3 c");
    assert_eq!(cluster.psql("app", "SELECT to_regclass('c') IS NULL"), "t");
}

/// `sqlx migrate ARGS` on `database`, the URL in the environment only.
fn sqlx_cli(cluster: &Cluster, database: &str, migrations: &Migrations, args: &[&str]) -> testkit::Outcome {
    let source = migrations.path().to_str().expect("utf-8 path");
    let env = [("DATABASE_URL".to_owned(), cluster.url(database))];
    let mut all = vec!["migrate"];
    all.extend_from_slice(args);
    all.extend(["--source", source]);
    let outcome = Run::program("sqlx", &all, &env).output();
    assert_ne!(outcome.code, None, "sqlx-cli was killed");
    outcome
}
