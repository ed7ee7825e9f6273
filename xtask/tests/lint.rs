//! `cargo xtask lint-migrations`: each rule fires on the change that hurts a live database and
//! stays quiet on the safe way to make it.

use testkit::{Cluster, Migrations, Run};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// Tables that exist before the migration under test.
const SETUP: &str = "CREATE TABLE users (id bigint PRIMARY KEY, email text, team_id bigint);\n\
                     CREATE TABLE teams (id bigint PRIMARY KEY);\n";

fn lint(migration: &str, extra: &[&str]) -> testkit::Outcome {
    let migrations = Migrations::empty();
    migrations.write("1_setup.sql", SETUP);
    migrations.write("2_change.sql", migration);
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    let mut args = vec!["lint-migrations", "--source", &source];
    args.extend_from_slice(extra);
    if !extra.contains(&"--env-file") {
        args.push("--all");
    }
    Run::xtask(XTASK, &args, &[]).output()
}

#[test]
fn each_rule_fires_on_the_unsafe_change_and_not_on_the_safe_one() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "create-index-non-concurrently",
            "CREATE INDEX users_email ON users (email);",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY users_email ON users (email);",
        ),
        (
            "add-column-not-null-without-default",
            "ALTER TABLE users ADD COLUMN age int NOT NULL;",
            "ALTER TABLE users ADD COLUMN age int NOT NULL DEFAULT 0;",
        ),
        (
            "alter-column-type",
            "ALTER TABLE users ALTER COLUMN email TYPE varchar(100);",
            "ALTER TABLE users ADD COLUMN email_v2 varchar(100);",
        ),
        (
            "set-not-null",
            "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
            "ALTER TABLE users ADD CONSTRAINT email_nn CHECK (email IS NOT NULL) NOT VALID;\n\
             ALTER TABLE users VALIDATE CONSTRAINT email_nn;\nALTER TABLE users ALTER COLUMN email SET NOT NULL;",
        ),
        (
            "constraint-without-not-valid",
            "ALTER TABLE users ADD CONSTRAINT users_team FOREIGN KEY (team_id) REFERENCES teams (id);",
            "ALTER TABLE users ADD CONSTRAINT users_team FOREIGN KEY (team_id) REFERENCES teams (id) NOT VALID;\n\
             ALTER TABLE users VALIDATE CONSTRAINT users_team;",
        ),
        (
            "constraint-without-not-valid",
            "ALTER TABLE users ADD CONSTRAINT positive CHECK (id > 0);",
            "ALTER TABLE users ADD CONSTRAINT positive CHECK (id > 0) NOT VALID;",
        ),
        ("rename-column", "ALTER TABLE users RENAME COLUMN email TO mail;", "ALTER TABLE users ADD COLUMN mail text;"),
        ("rename-table", "ALTER TABLE users RENAME TO accounts;", "CREATE TABLE accounts (id bigint PRIMARY KEY);"),
        (
            "drop-column",
            "ALTER TABLE users DROP COLUMN email;",
            "-- lint: allow drop-column\nALTER TABLE users DROP COLUMN email;",
        ),
        ("drop-table", "DROP TABLE teams;", "CREATE TABLE scratch (id int);\nDROP TABLE scratch;"),
        (
            "needs-no-transaction",
            "CREATE INDEX CONCURRENTLY users_email ON users (email);",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY users_email ON users (email);",
        ),
        (
            "no-transaction-single-statement",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY a ON users (email);\nCREATE INDEX CONCURRENTLY b ON users (team_id);",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY a ON users (email);",
        ),
        (
            "unparsed-statement",
            "DO $$ BEGIN PERFORM 1; END $$;",
            "-- lint: allow unparsed-statement\nDO $$ BEGIN PERFORM 1; END $$;",
        ),
    ];
    for (rule, unsafe_sql, safe_sql) in cases {
        let flagged = lint(unsafe_sql, &[]);
        flagged.assert_code(1);
        assert!(
            flagged.stdout.contains(&format!("2_change.sql:1: {rule}: "))
                || flagged.stdout.contains(&format!(": {rule}: ")),
            "{rule} did not fire:\n{}",
            flagged.stdout
        );
        assert!(flagged.stdout.contains("\n  safe: "), "{rule} gives no safe way:\n{}", flagged.stdout);
        let safe = lint(safe_sql, &[]);
        assert_eq!(safe.code, Some(0), "{rule}: the safe variant was reported:\n{}", safe.stdout);
    }
}

#[test]
fn a_byte_order_mark_hides_no_transaction_from_sqlx_and_so_from_the_linter() {
    // sqlx reads `-- no-transaction` from the raw text: behind a BOM the file runs in a transaction,
    // where CREATE INDEX CONCURRENTLY fails.
    let outcome = lint("\u{feff}-- no-transaction\nCREATE INDEX CONCURRENTLY users_email ON users (email);\n", &[]);
    outcome.assert_code(1);
    assert!(outcome.stdout.contains("2_change.sql:2: needs-no-transaction"), "{}", outcome.stdout);
    lint("-- no-transaction\nCREATE INDEX CONCURRENTLY users_email ON users (email);\n", &[]).assert_code(0);
}

#[test]
fn findings_name_file_and_line_and_later_statements_are_still_checked() {
    let outcome = lint("-- a comment\n\nDO $$ BEGIN END $$;\nALTER TABLE users\n  DROP COLUMN email;\n", &[]);
    outcome.assert_code(1);
    assert!(
        outcome.stdout.contains("2_change.sql:3: unparsed-statement: the linter cannot parse this statement"),
        "{}",
        outcome.stdout
    );
    assert!(outcome.stdout.contains("2_change.sql:4: drop-column: dropping email from users"), "{}", outcome.stdout);
    outcome.assert_stderr_contains("checks failed: 2 problems in 1 of 2 checked migrations");
}

#[test]
fn by_default_only_migrations_not_yet_applied_are_checked() {
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    migrations.write("1_setup.sql", SETUP);
    migrations.write("2_old.sql", "ALTER TABLE users DROP COLUMN team_id;\n");
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    Run::xtask(XTASK, &["migrate", "--source", &source], &cluster.env("app")).output().assert_code(0);
    migrations.write("3_new.sql", "ALTER TABLE users RENAME COLUMN email TO mail;\n");
    let outcome = Run::xtask(XTASK, &["lint-migrations", "--source", &source], &cluster.env("app")).output();
    outcome
        .assert_code(1)
        .assert_stderr_contains("lint 1 of 3 migrations")
        .assert_stderr_contains("not applied to the database yet");
    assert!(outcome.stdout.contains("3_new.sql:1: rename-column"), "{}", outcome.stdout);
    assert!(!outcome.stdout.contains("2_old.sql"), "an applied migration was linted:\n{}", outcome.stdout);
}

#[test]
fn the_projects_own_migrations_are_clean() {
    let workspace = testkit::workspace().join("migrations");
    let source = workspace.to_str().expect("utf-8").to_owned();
    Run::xtask(XTASK, &["lint-migrations", "--all", "--source", &source], &[]).output().assert_code(0);
}

#[test]
fn without_a_database_the_migrations_added_since_the_default_branch_are_checked() {
    let project = testkit::Project::new(XTASK);
    let git = |args: &[&str]| {
        let output = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(project.path())
            .output()
            .expect("git");
        assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    project.write("migrations/20261201000000_old_drop.sql", "ALTER TABLE users DROP COLUMN is_active;\n");
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "main"]);
    git(&["checkout", "-qb", "feature"]);
    project.write("migrations/20261202000000_committed.sql", "ALTER TABLE users RENAME COLUMN email TO mail;\n");
    git(&["add", "-A"]);
    git(&["commit", "-qm", "feature"]);
    project.write("migrations/20261203000000_uncommitted.sql", "DROP TABLE app_settings;\n");

    // No settings at all: the database cannot be asked, git is.
    let outcome = project.run(&["lint-migrations", "--env-file", "/dev/null"], &[]).output();
    outcome
        .assert_code(1)
        .assert_stderr_contains("lint 2 of 6 migrations")
        .assert_stderr_contains("the merge-base with main");
    assert!(outcome.stdout.contains("20261202000000_committed.sql:1: rename-column"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("20261203000000_uncommitted.sql:1: drop-table"), "{}", outcome.stdout);
    assert!(!outcome.stdout.contains("old_drop"), "a migration of the default branch was linted:\n{}", outcome.stdout);
}
