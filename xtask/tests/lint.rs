//! `cargo xtask lint-migrations`: each rule fires on the change that hurts a live database and
//! stays quiet on the safe way to make it, in agreement with the real `squawk` (PyPI's squawk-cli,
//! the version of the squawk crates, which `cargo xtask test` installs into target/tools/).

use std::path::PathBuf;

use testkit::{Cluster, Migrations, Run};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// Tables (and objects) that exist before the migration under test.
const SETUP: &str = "CREATE TABLE users (id bigint PRIMARY KEY, email text, team_id bigint);\n\
                     CREATE TABLE teams (id bigint PRIMARY KEY);\n\
                     CREATE TABLE events (id bigint NOT NULL, at timestamptz);\n";

/// Lints `files` (after the setup) with `--all`, or with `extra` in its place.
fn lint_files(files: &[&str], extra: &[&str]) -> testkit::Outcome {
    let migrations = Migrations::empty();
    migrations.write("1_setup.sql", SETUP);
    for (index, sql) in files.iter().enumerate() {
        migrations.write(&format!("{}_change.sql", index + 2), sql);
    }
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    let mut args = vec!["lint-migrations", "--source", &source];
    args.extend_from_slice(extra);
    if !extra.contains(&"--env-file") {
        args.push("--all");
    }
    Run::xtask(XTASK, &args, &[]).output()
}

fn lint(migration: &str, extra: &[&str]) -> testkit::Outcome {
    lint_files(&[migration], extra)
}

/// The version of a package in Cargo.lock.
fn locked_version(package: &str) -> String {
    let lock = std::fs::read_to_string(testkit::workspace().join("Cargo.lock")).expect("Cargo.lock");
    let entry = lock.split("[[package]]").find(|p| p.contains(&format!("name = \"{package}\"\n"))).expect(package);
    entry.lines().find_map(|l| l.strip_prefix("version = ")).expect("a version").trim_matches('"').to_owned()
}

/// The rules `squawk` reports on `sql`, run as sqlx would run the file; `None` when squawk is not
/// installed.
fn squawk(sql: &str) -> Option<Vec<String>> {
    squawk_with(sql, &[])
}

fn squawk_with(sql: &str, extra: &[&str]) -> Option<Vec<String>> {
    let program = testkit::workspace().join("target/tools/squawk-cli/bin/squawk");
    if !program.is_file() {
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("change.sql");
    std::fs::write(&file, sql).expect("write");
    let mut command = std::process::Command::new(&program);
    command.args(["--reporter", "json"]).args(extra);
    if !sql.starts_with("-- no-transaction") {
        command.arg("--assume-in-transaction");
    }
    let output = command.arg(&file).current_dir(dir.path()).output().expect("run squawk");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("squawk's JSON: {e}\n{}", String::from_utf8_lossy(&output.stdout)));
    Some(
        report
            .as_array()
            .expect("an array")
            .iter()
            .filter_map(|v| v["rule_name"].as_str().map(str::to_owned))
            .collect(),
    )
}

/// One rule: the change that hurts, and the safe way (one or more files, in order). `knows_more`:
/// where squawk, reading the last file alone, differs because we know better, and why.
struct Case {
    rule: &'static str,
    bad: &'static str,
    safe: &'static [&'static str],
    knows_more: Option<(Differs, &'static str)>,
}

#[derive(Clone, Copy, PartialEq)]
enum Differs {
    /// squawk fires on the safe way too.
    OnSafe,
    /// squawk is quiet on the change that hurts.
    OnBad,
}

const fn case(rule: &'static str, bad: &'static str, safe: &'static [&'static str]) -> Case {
    Case { rule, bad, safe, knows_more: None }
}

const fn ours(rule: &'static str, bad: &'static str, safe: &'static [&'static str], why: &'static str) -> Case {
    Case { rule, bad, safe, knows_more: Some((Differs::OnSafe, why)) }
}

/// Every squawk rule on by default, and ours.
const CASES: &[Case] = &[
    // Locking.
    case(
        "require-concurrent-index-creation",
        "CREATE INDEX users_email ON users (email);",
        &["-- no-transaction\nCREATE INDEX CONCURRENTLY users_email ON users (email);"],
    ),
    case(
        "require-concurrent-index-deletion",
        "DROP INDEX users_email;",
        &["-- no-transaction\nDROP INDEX CONCURRENTLY users_email;"],
    ),
    case(
        "constraint-missing-not-valid",
        "ALTER TABLE users ADD CONSTRAINT positive CHECK (id > 0);",
        &[
            "ALTER TABLE users ADD CONSTRAINT positive CHECK (id > 0) NOT VALID;",
            "ALTER TABLE users VALIDATE CONSTRAINT positive;",
        ],
    ),
    case(
        "adding-field-with-default",
        "ALTER TABLE users ADD COLUMN token uuid DEFAULT gen_random_uuid();",
        &["ALTER TABLE users ADD COLUMN active boolean DEFAULT true;"],
    ),
    case(
        "adding-foreign-key-constraint",
        "ALTER TABLE users ADD CONSTRAINT users_team FOREIGN KEY (team_id) REFERENCES teams (id);",
        &[
            "ALTER TABLE users ADD CONSTRAINT users_team FOREIGN KEY (team_id) REFERENCES teams (id) NOT VALID;",
            "ALTER TABLE users VALIDATE CONSTRAINT users_team;",
        ],
    ),
    case(
        "changing-column-type",
        "ALTER TABLE users ALTER COLUMN email TYPE varchar(100);",
        &["ALTER TABLE users ADD COLUMN email_v2 text;"],
    ),
    ours(
        "adding-not-nullable-field",
        "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
        &[
            "ALTER TABLE users ADD CONSTRAINT email_nn CHECK (email IS NOT NULL) NOT VALID;",
            "ALTER TABLE users VALIDATE CONSTRAINT email_nn;",
            "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
        ],
        "the check validated by an earlier migration",
    ),
    case(
        "adding-serial-primary-key-field",
        "ALTER TABLE events ADD PRIMARY KEY (id);",
        &[
            "-- no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY events_pkey ON events (id);",
            "ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY USING INDEX events_pkey;",
        ],
    ),
    case(
        "disallowed-unique-constraint",
        "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email);",
        &[
            "-- no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY users_email_key ON users (email);",
            "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE USING INDEX users_email_key;",
        ],
    ),
    case(
        "ban-create-domain-with-constraint",
        "CREATE DOMAIN positive_int AS bigint CHECK (VALUE > 0);",
        &["CREATE DOMAIN positive_int AS bigint;"],
    ),
    case(
        "ban-alter-domain-with-add-constraint",
        "ALTER DOMAIN email_address ADD CONSTRAINT has_at CHECK (VALUE LIKE '%@%');",
        &["ALTER TABLE users ADD CONSTRAINT email_has_at CHECK (email LIKE '%@%') NOT VALID;"],
    ),
    case(
        "require-concurrent-partition-detach",
        "ALTER TABLE measurements DETACH PARTITION measurements_2025;",
        &["-- no-transaction\nALTER TABLE measurements DETACH PARTITION measurements_2025 CONCURRENTLY;"],
    ),
    case(
        "require-concurrent-reindex",
        "REINDEX INDEX users_pkey;",
        &["-- no-transaction\nREINDEX INDEX CONCURRENTLY users_pkey;"],
    ),
    ours(
        "require-lock-timeout",
        "-- no-transaction\nALTER TABLE users ADD COLUMN note text;",
        &["ALTER TABLE users ADD COLUMN note text;"],
        "prestart sets lock_timeout for each transactional migration",
    ),
    // Breaking old code.
    case(
        "renaming-column",
        "ALTER TABLE users RENAME COLUMN email TO mail;",
        &["ALTER TABLE users ADD COLUMN mail text;"],
    ),
    case(
        "renaming-table",
        "ALTER TABLE users RENAME TO accounts;",
        &["CREATE TABLE accounts (id bigint PRIMARY KEY);"],
    ),
    case(
        "ban-drop-column",
        "ALTER TABLE users DROP COLUMN email;",
        &["-- squawk-ignore ban-drop-column\nALTER TABLE users DROP COLUMN email;"],
    ),
    ours(
        "ban-drop-table",
        "DROP TABLE teams;",
        &["CREATE TABLE scratch (id bigint);\nDROP TABLE scratch;"],
        "a table created earlier in the file has no users",
    ),
    case(
        "ban-drop-database",
        "-- no-transaction\nDROP DATABASE old;",
        &["-- no-transaction\n-- squawk-ignore ban-drop-database\nDROP DATABASE old;"],
    ),
    case(
        "ban-drop-not-null",
        "ALTER TABLE events ALTER COLUMN id DROP NOT NULL;",
        &[
            "-- lint: allow ban-drop-not-null\n-- squawk-ignore ban-drop-not-null\nALTER TABLE events ALTER COLUMN id DROP NOT NULL;",
        ],
    ),
    case(
        "adding-required-field",
        "ALTER TABLE users ADD COLUMN age bigint NOT NULL;",
        &["ALTER TABLE users ADD COLUMN age bigint NOT NULL DEFAULT 0;"],
    ),
    case("ban-truncate-cascade", "TRUNCATE teams CASCADE;", &["TRUNCATE teams;"]),
    case("ban-drop-view", "DROP VIEW active_users;", &["CREATE VIEW active_users AS SELECT id FROM users;"]),
    case(
        "ban-drop-function",
        "DROP FUNCTION touch();",
        &["CREATE FUNCTION touch() RETURNS int LANGUAGE sql AS 'SELECT 1';"],
    ),
    case("ban-drop-type", "DROP TYPE mood;", &["CREATE TYPE mood AS ENUM ('ok');"]),
    case(
        "ban-drop-default",
        "ALTER TABLE users ALTER COLUMN email DROP DEFAULT;",
        &["ALTER TABLE users ALTER COLUMN email SET DEFAULT '';"],
    ),
    case("ban-drop-schema", "DROP SCHEMA reporting;", &["CREATE SCHEMA reporting;"]),
    case("ban-drop-sequence", "DROP SEQUENCE invoice_numbers;", &["CREATE SEQUENCE invoice_numbers;"]),
    case("ban-drop-domain", "DROP DOMAIN email_address;", &["CREATE DOMAIN email_address AS text;"]),
    ours(
        "ban-drop-constraint",
        "ALTER TABLE users DROP CONSTRAINT users_pkey;",
        &[
            "ALTER TABLE users ADD CONSTRAINT email_nn CHECK (email IS NOT NULL) NOT VALID;",
            "ALTER TABLE users VALIDATE CONSTRAINT email_nn;",
            "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
            "ALTER TABLE users DROP CONSTRAINT email_nn;",
        ],
        "the column's NOT NULL guarantees what the dropped check did",
    ),
    case(
        "ban-drop-generated-expression",
        "ALTER TABLE users ALTER COLUMN total DROP EXPRESSION;",
        &["CREATE TABLE totals (id bigint, doubled bigint GENERATED ALWAYS AS (id * 2) STORED);"],
    ),
    case(
        "renaming-object",
        "ALTER SEQUENCE invoice_numbers RENAME TO invoices_seq;",
        &["CREATE SEQUENCE invoices_seq;"],
    ),
    case("ban-set-schema", "ALTER TABLE users SET SCHEMA archive;", &["CREATE SCHEMA archive;"]),
    case(
        "ban-alter-identity",
        "ALTER TABLE events ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;",
        &["CREATE TABLE tickets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY);"],
    ),
    case("ban-drop-extension", "DROP EXTENSION hstore;", &["CREATE EXTENSION IF NOT EXISTS hstore;"]),
    // How the file runs.
    case(
        "transaction-nesting",
        "BEGIN;\nALTER TABLE users ADD COLUMN note text;\nCOMMIT;",
        &["ALTER TABLE users ADD COLUMN note text;"],
    ),
    case(
        "ban-uncommitted-transaction",
        "-- no-transaction\nBEGIN;\nALTER TABLE users ADD COLUMN note text;",
        &["ALTER TABLE users ADD COLUMN note text;"],
    ),
    Case {
        rule: "needs-no-transaction",
        bad: "CREATE INDEX CONCURRENTLY users_email ON users (email);",
        safe: &["-- no-transaction\nCREATE INDEX CONCURRENTLY users_email ON users (email);"],
        knows_more: Some((
            Differs::OnBad,
            "squawk assumes a one-statement file runs outside a transaction; sqlx runs it in one",
        )),
    },
    case(
        "no-transaction-single-statement",
        "-- no-transaction\nCREATE INDEX CONCURRENTLY a ON users (email);\nCREATE INDEX CONCURRENTLY b ON users (team_id);",
        &["-- no-transaction\nCREATE INDEX CONCURRENTLY a ON users (email);"],
    ),
    // Wrong or unreadable SQL.
    case(
        "identifier-too-long",
        "CREATE TABLE a_table_name_that_is_much_longer_than_the_sixty_three_bytes_postgres_keeps (id bigint);",
        &["CREATE TABLE a_short_name (id bigint);"],
    ),
    case(
        "ban-duplicate-column-assignments",
        "UPDATE users SET email = 'a', email = 'b';",
        &["UPDATE users SET email = 'a';"],
    ),
    case(
        "unused-ignore",
        "-- squawk-ignore no-such-rule\nALTER TABLE users ADD COLUMN note text;",
        &["-- squawk-ignore ban-drop-column\nALTER TABLE users DROP COLUMN email;"],
    ),
    Case {
        rule: "adding-exclude-constraint",
        bad: "ALTER TABLE users ADD CONSTRAINT one_email EXCLUDE USING btree (email WITH =);",
        safe: &["CREATE TABLE bookings (room int, EXCLUDE USING btree (room WITH =));"],
        knows_more: Some((Differs::OnBad, "squawk 2.70 flags it; the pinned 2.68 has no such rule")),
    },
    ours(
        "unparsed-statement",
        "ALTER TABLE users ADD COLUMN;",
        &["-- lint: allow unparsed-statement\nALTER TABLE users ADD COLUMN;"],
        "`-- lint: allow` is ours; squawk cannot be told to let a syntax error pass",
    ),
];

/// squawk's name for what one of ours finds, where squawk has one.
fn squawk_name(rule: &str) -> Option<&str> {
    match rule {
        "unparsed-statement" => Some("syntax-error"),
        "needs-no-transaction" => Some("ban-concurrent-index-creation-in-transaction"),
        "no-transaction-single-statement" | "adding-exclude-constraint" => None,
        other => Some(other),
    }
}

fn fired(outcome: &testkit::Outcome, rule: &str) -> bool {
    outcome.stdout.contains(&format!(": {rule}: ")) || outcome.stdout.contains(&format!(": {rule} (note): "))
}

#[test]
fn each_rule_fires_on_the_unsafe_change_and_not_on_the_safe_one_and_squawk_agrees() {
    let mut table = vec!["| rule | ours bad | squawk bad | ours safe | squawk safe |".to_owned()];
    let mut squawk_missing = false;
    for case in CASES {
        let flagged = lint(case.bad, &[]);
        assert_eq!(flagged.code, Some(1), "{}: the unsafe change passed:\n{}", case.rule, flagged.stdout);
        assert!(fired(&flagged, case.rule), "{} did not fire:\n{}", case.rule, flagged.stdout);
        assert!(flagged.stdout.contains("\n  safe: "), "{} gives no safe way:\n{}", case.rule, flagged.stdout);
        let safe = lint_files(case.safe, &[]);
        assert_eq!(safe.code, Some(0), "{}: the safe variant was reported:\n{}{}", case.rule, safe.stdout, safe.stderr);

        let last = case.safe.last().expect("a safe file");
        let (theirs_bad, theirs_safe) = match squawk_name(case.rule).map(|name| (name, squawk(case.bad), squawk(last)))
        {
            Some((name, Some(bad), Some(safe))) => {
                let (bad, safe) = (bad.iter().any(|r| r == name), safe.iter().any(|r| r == name));
                let differs = case.knows_more.map(|(side, _)| side);
                assert_eq!(bad, differs != Some(Differs::OnBad), "{}: squawk on the unsafe change", case.rule);
                assert_eq!(safe, differs == Some(Differs::OnSafe), "{}: squawk on the safe variant", case.rule);
                (if bad { "fires" } else { "quiet" }, if safe { "fires" } else { "quiet" })
            }
            Some(_) => {
                squawk_missing = true;
                ("not run", "not run")
            }
            None => ("no such rule", "no such rule"),
        };
        let note = case.knows_more.map(|(_, why)| format!(" ({why})")).unwrap_or_default();
        table.push(format!("| {} | fires | {theirs_bad} | quiet | {theirs_safe}{note} |", case.rule));
    }
    println!("{}", table.join("\n"));
    let program = testkit::workspace().join("target/tools/squawk-cli/bin/squawk");
    if let Ok(output) = std::process::Command::new(&program).arg("--version").output() {
        let version = String::from_utf8_lossy(&output.stdout);
        let locked = locked_version("squawk-linter");
        assert_eq!(version.trim(), format!("squawk {locked}"), "target/tools/squawk-cli is not the crates' version");
    }
    if squawk_missing {
        eprintln!(
            "squawk is not installed in target/tools/squawk-cli: agreement with it was not checked (`cargo xtask test` \
             installs it)"
        );
    }
}

/// Rules off by default, each with a change it fires on once turned on.
const TURNED_ON: &[(&str, &str)] = &[
    ("prefer-bigint-over-int", "CREATE TABLE counters (n int);"),
    ("prefer-bigint-over-smallint", "CREATE TABLE counters (n smallint);"),
    ("prefer-identity", "CREATE TABLE counters (id serial);"),
    ("prefer-robust-stmts", "-- no-transaction\nCREATE INDEX CONCURRENTLY users_email ON users (email);"),
    ("prefer-text-field", "CREATE TABLE counters (name varchar(10));"),
    ("prefer-timestamp-tz", "CREATE TABLE counters (at timestamp);"),
    ("ban-char-field", "CREATE TABLE counters (code char(3));"),
    ("require-enum-value-ordering", "ALTER TYPE mood ADD VALUE 'meh';"),
    ("require-table-schema", "CREATE TABLE counters (n bigint);"),
    ("require-statement-timeout", "ALTER TABLE users ADD COLUMN note text;"),
    ("ban-drop-trigger", "DROP TRIGGER users_touch ON users;"),
    ("ban-drop-index", "-- no-transaction\nDROP INDEX CONCURRENTLY users_email;"),
    ("ban-set-default", "ALTER TABLE users ALTER COLUMN email SET DEFAULT '';"),
    ("ban-disable-trigger", "ALTER TABLE users DISABLE TRIGGER users_touch;"),
    ("ban-revoke", "REVOKE SELECT ON users FROM reporting;"),
    ("ban-add-enum-value", "ALTER TYPE mood ADD VALUE 'meh' AFTER 'ok';"),
    ("ban-add-column", "ALTER TABLE users ADD COLUMN note text;"),
    (
        "ban-concurrent-index-creation-in-transaction",
        "CREATE INDEX CONCURRENTLY a ON users (email);\nCREATE INDEX CONCURRENTLY b ON users (team_id);",
    ),
];

#[test]
fn rules_off_by_default_fire_once_a_squawk_toml_turns_them_on_as_in_squawk() {
    for (rule, sql) in TURNED_ON {
        let project = tempfile::tempdir().expect("temp dir");
        let migrations = project.path().join("migrations");
        std::fs::create_dir(&migrations).expect("mkdir");
        std::fs::write(migrations.join("1_setup.sql"), SETUP).expect("write");
        std::fs::write(migrations.join("2_change.sql"), sql).expect("write");
        let source = migrations.to_str().expect("utf-8");
        let args = ["lint-migrations", "--all", "--source", source];
        let off = Run::xtask(XTASK, &args, &[]).output();
        assert!(!fired(&off, rule), "{rule} is on by default:\n{}", off.stdout);
        std::fs::write(project.path().join(".squawk.toml"), format!("included_rules = [\"{rule}\"]\n")).expect("write");
        let on = Run::xtask(XTASK, &args, &[]).output();
        assert!(fired(&on, rule), "{rule} does not fire once turned on:\n{}{}", on.stdout, on.stderr);
        if let Some(theirs) = squawk_with(sql, &["--include", rule]) {
            assert!(theirs.iter().any(|r| r == rule), "{rule}: squawk does not fire on {sql:?}: {theirs:?}");
        }
    }
}

#[test]
fn every_rule_on_by_default_has_a_case_and_a_line_in_the_docs() {
    let docs = std::fs::read_to_string(testkit::workspace().join("docs/linting.md")).expect("docs/linting.md");
    let listed = Run::xtask(XTASK, &["lint-migrations", "--list-rules"], &[]).output();
    listed.assert_code(0);
    for line in listed.stdout.lines() {
        let (name, on) = line.split_once(' ').expect("name and state");
        assert!(docs.contains(&format!("| `{name}` | {on} |")), "docs/linting.md lacks the row of {name} ({on})");
        // prefer-repack speaks only for PostgreSQL 19 and later, which have REPACK (CONCURRENTLY);
        // breaks-previous-release needs a release before (`--against`): tests/releases.rs holds it.
        if on == "on" && !["prefer-repack", "breaks-previous-release"].contains(&name) {
            assert!(CASES.iter().any(|c| c.rule == name), "{name} is on by default and has no case");
        }
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
    let outcome = lint("-- a comment\n\nALTER TABLE users ADD COLUMN;\nALTER TABLE users\n  DROP COLUMN email;\n", &[]);
    outcome.assert_code(1);
    assert!(
        outcome.stdout.contains("2_change.sql:3: unparsed-statement: the linter cannot parse this statement"),
        "{}",
        outcome.stdout
    );
    assert!(outcome.stdout.contains("2_change.sql:5: ban-drop-column: Dropping a column"), "{}", outcome.stdout);
    outcome.assert_stderr_contains("checks failed: 2 problems in 1 of 2 checked migrations");
}

#[test]
fn json_and_github_annotations_have_stable_fields() {
    let outcome = lint("-- a comment\nALTER TABLE users RENAME COLUMN email TO mail;\n", &["--format", "json"]);
    outcome.assert_code(1);
    let report: serde_json::Value = serde_json::from_str(&outcome.stdout).expect("JSON on stdout");
    let finding = &report[0];
    assert!(finding["file"].as_str().expect("file").ends_with("2_change.sql"), "{finding}");
    assert_eq!((finding["line"].as_u64(), finding["column"].as_u64()), (Some(2), Some(19)), "{finding}");
    assert_eq!(finding["rule"], "renaming-column");
    assert_eq!(finding["severity"], "warning");
    assert!(finding["message"].as_str().is_some_and(|m| !m.is_empty()) && finding["safe"].is_string(), "{finding}");
    assert_eq!(finding["table"], "users");

    let outcome = lint("ALTER TABLE users RENAME COLUMN email TO mail;\n", &["--format", "github"]);
    outcome.assert_code(1);
    let line = outcome.stdout.lines().next().expect("an annotation");
    assert!(line.starts_with("::warning file=") && line.contains(",line=1,col=19,title=renaming-column::"), "{line}");
    assert!(line.contains("%0Asafe: "), "{line}");
}

#[test]
fn a_squawk_toml_beside_the_migrations_turns_rules_on_and_off() {
    let project = tempfile::tempdir().expect("temp dir");
    let migrations = project.path().join("migrations");
    std::fs::create_dir(&migrations).expect("mkdir");
    std::fs::write(migrations.join("1_setup.sql"), SETUP).expect("write");
    std::fs::write(migrations.join("2_change.sql"), "ALTER TABLE users DROP COLUMN email;\nCREATE TABLE n (id int);\n")
        .expect("write");
    let source = migrations.to_str().expect("utf-8");
    let run = || Run::xtask(XTASK, &["lint-migrations", "--all", "--source", source], &[]).output();
    let outcome = run();
    assert!(fired(&outcome, "ban-drop-column") && !fired(&outcome, "prefer-bigint-over-int"), "{}", outcome.stdout);
    std::fs::write(
        project.path().join(".squawk.toml"),
        "excluded_rules = [\"ban-drop-column\"]\nincluded_rules = [\"prefer-bigint-over-int\"]\n",
    )
    .expect("write");
    let outcome = run();
    assert!(!fired(&outcome, "ban-drop-column") && fired(&outcome, "prefer-bigint-over-int"), "{}", outcome.stdout);
    outcome.assert_stderr_contains(".squawk.toml");
    std::fs::write(project.path().join(".squawk.toml"), "excluded_rules = [\"no-such-rule\"]\n").expect("write");
    run().assert_code(3).assert_stderr_contains("unknown rule no-such-rule");
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
    assert!(outcome.stdout.contains("3_new.sql:1: renaming-column"), "{}", outcome.stdout);
    assert!(!outcome.stdout.contains("2_old.sql"), "an applied migration was linted:\n{}", outcome.stdout);
}

#[test]
fn tables_made_by_earlier_pending_migrations_get_no_locking_findings() {
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    migrations.write("1_setup.sql", SETUP);
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    Run::xtask(XTASK, &["migrate", "--source", &source], &cluster.env("app")).output().assert_code(0);
    // Rows, so the finding on users is no note about an empty table.
    cluster.psql("app", "INSERT INTO users VALUES (1, 'a@example.com', NULL)");
    migrations.write("2_new_table.sql", "CREATE TABLE invoices (id bigint PRIMARY KEY, total bigint);\n");
    migrations.write(
        "3_index.sql",
        "CREATE INDEX invoices_total ON invoices (total);\nALTER TABLE invoices ALTER COLUMN total SET NOT NULL;\n\
         CREATE INDEX users_email ON users (email);\n",
    );
    let outcome = Run::xtask(XTASK, &["lint-migrations", "--source", &source], &cluster.env("app")).output();
    outcome.assert_code(1);
    assert!(outcome.stdout.contains("3_index.sql:3: require-concurrent-index-creation"), "{}", outcome.stdout);
    assert!(
        !outcome.stdout.contains("3_index.sql:1:") && !outcome.stdout.contains("3_index.sql:2:"),
        "{}",
        outcome.stdout
    );
}

#[test]
fn the_database_tells_table_sizes_big_tables_rank_first_and_an_empty_one_is_harmless() {
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    migrations.write("1_setup.sql", SETUP);
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    Run::xtask(XTASK, &["migrate", "--source", &source], &cluster.env("app")).output().assert_code(0);
    cluster.psql(
        "app",
        "INSERT INTO users SELECT g, 'u' || g || '@example.com' FROM generate_series(1, 20000) g; ANALYZE users; \
         CREATE UNIQUE INDEX users_email_idx ON users (email)",
    );
    migrations.write(
        "2_change.sql",
        "ALTER TABLE teams ALTER COLUMN id TYPE numeric;\nALTER TABLE users ALTER COLUMN email TYPE varchar(200);\n\
         ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email);\n",
    );
    let outcome = Run::xtask(XTASK, &["lint-migrations", "--source", &source], &cluster.env("app")).output();
    outcome.assert_code(1).assert_stderr_contains("with the database's facts: PostgreSQL");
    let users = outcome.stdout.find("2_change.sql:2: changing-column-type").expect(&outcome.stdout);
    let teams = outcome.stdout.find("2_change.sql:1: changing-column-type (note)").expect(&outcome.stdout);
    assert!(users < teams, "the big table does not rank first:\n{}", outcome.stdout);
    assert!(outcome.stdout.contains("(users is ") && outcome.stdout.contains("about 20000 rows"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("teams is empty on the database"), "{}", outcome.stdout);
    assert!(
        outcome
            .stdout
            .contains("the database has CREATE UNIQUE INDEX users_email_idx ON public.users USING btree (email)")
            && outcome.stdout.contains("`ADD CONSTRAINT ... USING INDEX users_email_idx`"),
        "{}",
        outcome.stdout
    );
    outcome.assert_stderr_contains("2 problems in 1 of 1 checked migrations");
}

#[test]
fn a_table_locked_right_now_costs_the_facts_not_the_lint() {
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    migrations.write("1_setup.sql", SETUP);
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    Run::xtask(XTASK, &["migrate", "--source", &source], &cluster.env("app")).output().assert_code(0);
    migrations.write("2_change.sql", "ALTER TABLE users RENAME COLUMN email TO mail;\n");
    let _holder = testkit::Session::open(&cluster, "BEGIN; LOCK TABLE teams IN ACCESS EXCLUSIVE MODE;");
    assert!(
        testkit::eventually(std::time::Duration::from_secs(10), || {
            cluster.psql(
                "app",
                "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation = 'teams'::regclass",
            ) == "1"
        }),
        "the lock was not taken"
    );
    let started = std::time::Instant::now();
    let outcome = Run::xtask(XTASK, &["lint-migrations", "--source", &source], &cluster.env("app")).output();
    outcome.assert_code(1).assert_stderr_contains("the database's version and table sizes are not used");
    assert!(outcome.stdout.contains("2_change.sql:1: renaming-column"), "{}", outcome.stdout);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "the lint waited {:?}", started.elapsed());
}

#[test]
fn locks_are_measured_statement_by_statement_on_a_throwaway_copy() {
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    migrations.write("1_setup.sql", SETUP);
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    Run::xtask(XTASK, &["migrate", "--source", &source], &cluster.env("app")).output().assert_code(0);
    migrations.write(
        "2_new.sql",
        "CREATE TABLE invoices (id bigint PRIMARY KEY);\nALTER TABLE invoices ADD COLUMN total bigint;\n",
    );
    migrations.write(
        "3_old.sql",
        "-- lint: allow require-concurrent-index-creation\nCREATE INDEX users_email ON users (email);\n\
         -- lint: allow adding-serial-primary-key-field\nALTER TABLE events ADD PRIMARY KEY (id);\n",
    );
    migrations
        .write("4_concurrently.sql", "-- no-transaction\nCREATE INDEX CONCURRENTLY users_team ON users (team_id);\n");
    migrations.write(
        "5_rewrite.sql",
        "-- lint: allow changing-column-type\nALTER TABLE users ALTER COLUMN team_id TYPE int;\n\
         -- lint: allow adding-not-nullable-field\nALTER TABLE users ALTER COLUMN email SET NOT NULL;\n",
    );
    let outcome = Run::xtask(XTASK, &["lint-migrations", "--locks", "--source", &source], &cluster.env("app")).output();
    outcome.assert_code(1).assert_stderr_contains(
        "4 statements scan or rewrite a table that existed before under a lock that blocks writes (measured)",
    );
    let out = &outcome.stdout;
    println!("{out}");
    assert!(out.contains("ACCESS EXCLUSIVE on table invoices, new in this deploy: blocks nobody yet"), "{out}");
    assert!(out.contains("SHARE on table users, existed before: blocks writes, not reads"), "{out}");
    assert!(out.contains("ACCESS EXCLUSIVE on table events, existed before: blocks reads and writes"), "{out}");
    assert!(out.contains("it scans table users under SHARE: every write waits for the whole of it"), "{out}");
    assert!(out.contains("it scans table events under ACCESS EXCLUSIVE: every read and write waits"), "{out}");
    assert!(out.contains("it rewrites table users under ACCESS EXCLUSIVE"), "{out}");
    assert!(out.contains("it scans table users under ACCESS EXCLUSIVE"), "{out}");
    // Autocommit: sampled from a second session while the build runs (a quick one may be missed).
    assert!(out.contains("4_concurrently.sql (-- no-transaction, autocommit):"), "{out}");
    assert!(out.contains("sampled while it ran"), "{out}");
    assert!(
        out.contains("SHARE UPDATE EXCLUSIVE on table users, existed before: blocks neither reads nor writes"),
        "{out}"
    );
    // The database being checked is only read.
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM pg_class WHERE relname IN ('invoices', 'users_email')"), "0");
}

#[test]
fn the_projects_own_migrations_are_clean() {
    let workspace = testkit::workspace().join("migrations");
    let source = workspace.to_str().expect("utf-8").to_owned();
    Run::xtask(XTASK, &["lint-migrations", "--all", "--source", &source], &[]).output().assert_code(0);
}

/// A careful team's folder: `-- no-transaction` files with one CREATE INDEX CONCURRENTLY each, NOT
/// VALID then VALIDATE, expand and contract. A finding here is a false alarm.
const CAREFUL: &[(&str, &str)] = &[
    (
        "10_orders.sql",
        "CREATE TABLE orders (\n    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n    customer_id bigint NOT NULL,\n    total_cents bigint NOT NULL DEFAULT 0,\n    created_at timestamptz NOT NULL DEFAULT now()\n);\nCREATE INDEX orders_customer ON orders (customer_id);\n",
    ),
    (
        "11_customers.sql",
        "CREATE TABLE customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL);\n",
    ),
    (
        "20_orders_customer_fk.sql",
        "ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id) NOT VALID;\n",
    ),
    ("21_validate_orders_customer_fk.sql", "ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_fk;\n"),
    (
        "22_orders_created_at_idx.sql",
        "-- no-transaction\nCREATE INDEX CONCURRENTLY orders_created_at ON orders (created_at);\n",
    ),
    (
        "23_customers_email_key_idx.sql",
        "-- no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY customers_email_key ON customers (lower(email));\n",
    ),
    // Expand: a new column, nullable, with a constant default (metadata only since PostgreSQL 11).
    ("30_orders_status.sql", "ALTER TABLE orders ADD COLUMN status text DEFAULT 'new';\n"),
    (
        "31_orders_status_nn.sql",
        "ALTER TABLE orders ADD CONSTRAINT orders_status_nn CHECK (status IS NOT NULL) NOT VALID;\n",
    ),
    ("32_validate_orders_status_nn.sql", "ALTER TABLE orders VALIDATE CONSTRAINT orders_status_nn;\n"),
    (
        "33_orders_status_not_null.sql",
        "ALTER TABLE orders ALTER COLUMN status SET NOT NULL;\nALTER TABLE orders DROP CONSTRAINT orders_status_nn;\n",
    ),
    (
        "34_orders_status_check.sql",
        "ALTER TABLE orders ADD CONSTRAINT orders_status_known CHECK (status IN ('new', 'paid', 'shipped')) NOT VALID;\n",
    ),
    ("35_validate_orders_status_check.sql", "ALTER TABLE orders VALIDATE CONSTRAINT orders_status_known;\n"),
    ("40_orders_total_v2.sql", "ALTER TABLE orders ADD COLUMN total numeric(12, 2);\n"),
    (
        "41_orders_total_v2_idx.sql",
        "-- no-transaction\nCREATE INDEX CONCURRENTLY orders_total ON orders (total) WHERE total IS NOT NULL;\n",
    ),
    // Contract, once no running code reads the old column; the team says so where it drops it.
    (
        "50_drop_orders_total_cents.sql",
        "-- squawk-ignore ban-drop-column -- no release since 40 reads it\nALTER TABLE orders DROP COLUMN total_cents;\n",
    ),
    ("51_drop_orders_customer_idx.sql", "-- no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS orders_customer;\n"),
];

#[test]
fn a_careful_teams_folder_has_no_finding() {
    let migrations = Migrations::empty();
    for (name, sql) in CAREFUL {
        migrations.write(name, sql);
    }
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    let outcome = Run::xtask(XTASK, &["lint-migrations", "--all", "--source", &source], &[]).output();
    assert_eq!(outcome.code, Some(0), "false alarms:\n{}{}", outcome.stdout, outcome.stderr);
    // As a deploy against a live database: the first half applied and the tables full, the rest
    // pending, checked with the database's facts and measured on a throwaway copy.
    let cluster = Cluster::started();
    let first_half = Migrations::empty();
    for (name, sql) in CAREFUL.iter().filter(|(name, _)| *name < "30") {
        first_half.write(name, sql);
    }
    let half = first_half.path().to_str().expect("utf-8").to_owned();
    Run::xtask(XTASK, &["migrate", "--source", &half], &cluster.env("app")).output().assert_code(0);
    cluster.psql(
        "app",
        "INSERT INTO customers (email) SELECT 'c' || g || '@example.com' FROM generate_series(1, 1000) g; \
         INSERT INTO orders (customer_id, total_cents) SELECT 1 + g % 1000, g FROM generate_series(1, 5000) g; ANALYZE",
    );
    let outcome = Run::xtask(XTASK, &["lint-migrations", "--locks", "--source", &source], &cluster.env("app")).output();
    assert_eq!(outcome.code, Some(0), "false alarms on the deploy:\n{}{}", outcome.stdout, outcome.stderr);
    outcome.assert_stderr_contains("lint 10 of 16 migrations").assert_stderr_contains("with the database's facts");
    // Its ACCESS EXCLUSIVE locks are catalog changes, held for an instant; none scans or rewrites.
    assert!(outcome.stdout.contains("(on orders: for an instant, no scan and no rewrite)"), "{}", outcome.stdout);
    assert!(!outcome.stdout.contains("under ACCESS EXCLUSIVE"), "{}", outcome.stdout);
    // And it applies: the folder is valid PostgreSQL, run the way prestart runs it.
    Run::xtask(XTASK, &["migrate", "--source", &source], &cluster.env("app")).output().assert_code(0);
}

/// A schema in the shapes real ones have, for pg_dump to print.
const CORPUS_SCHEMA: &str = "
CREATE SCHEMA billing;
CREATE TYPE billing.state AS ENUM ('draft', 'open', 'paid');
CREATE DOMAIN billing.cents AS bigint CHECK (VALUE >= 0);
CREATE SEQUENCE billing.invoice_number START 1000;
CREATE TABLE billing.customers (
    id serial PRIMARY KEY,
    email text NOT NULL,
    name text,
    search tsvector GENERATED ALWAYS AS (to_tsvector('english', coalesce(name, ''))) STORED,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE billing.invoices (
    id bigserial PRIMARY KEY,
    number bigint NOT NULL DEFAULT nextval('billing.invoice_number'),
    customer_id integer NOT NULL REFERENCES billing.customers (id) ON DELETE CASCADE,
    state billing.state NOT NULL DEFAULT 'draft',
    total billing.cents NOT NULL DEFAULT 0,
    lines jsonb NOT NULL DEFAULT '[]',
    paid_at timestamptz,
    CHECK (state <> 'paid' OR paid_at IS NOT NULL),
    UNIQUE (number)
);
ALTER SEQUENCE billing.invoice_number OWNED BY billing.invoices.number;
CREATE UNIQUE INDEX customers_email_key ON billing.customers (lower(email));
CREATE INDEX invoices_open ON billing.invoices (customer_id) WHERE state = 'open';
CREATE INDEX customers_search ON billing.customers USING gin (search);
CREATE INDEX customers_name_trgm ON billing.customers USING gin (name gin_trgm_ops);
CREATE TEXT SEARCH CONFIGURATION billing.plain (COPY = pg_catalog.simple);
CREATE FUNCTION billing.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.paid_at := coalesce(NEW.paid_at, now());
    RETURN NEW;
END
$$;
CREATE TRIGGER invoices_paid BEFORE UPDATE OF state ON billing.invoices
    FOR EACH ROW WHEN (NEW.state = 'paid') EXECUTE FUNCTION billing.touch();
CREATE VIEW billing.open_invoices AS SELECT id, customer_id, total FROM billing.invoices WHERE state = 'open';
CREATE MATERIALIZED VIEW billing.totals AS SELECT customer_id, sum(total) AS total FROM billing.invoices GROUP BY 1;
CREATE TABLE billing.events (id bigint GENERATED BY DEFAULT AS IDENTITY, at timestamptz NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE billing.events_2026 PARTITION OF billing.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE POLICY own_invoices ON billing.invoices USING (customer_id = current_setting('app.customer')::int);
ALTER TABLE billing.invoices ENABLE ROW LEVEL SECURITY;
COMMENT ON TABLE billing.invoices IS 'One row per invoice; lines holds its items';
COMMENT ON COLUMN billing.invoices.total IS 'In cents';
GRANT SELECT ON billing.open_invoices TO PUBLIC;
";

fn pg_dump() -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/pg_dump"))
        .filter(|p| p.is_file())
        .max();
    newest.unwrap_or_else(|| PathBuf::from("pg_dump"))
}

#[test]
fn a_pg_dump_of_a_realistic_schema_is_read_to_the_last_statement() {
    let cluster = Cluster::started();
    // Twelve copies in schemas of their own: a dump the size of a real application's.
    let schemas: String = (1..=12).map(|i| CORPUS_SCHEMA.replace("billing", &format!("billing_{i}"))).collect();
    cluster.psql("app", &format!("CREATE EXTENSION IF NOT EXISTS pg_trgm;\n{schemas}"));
    let output = std::process::Command::new(pg_dump())
        .args(["--schema-only", "--no-owner", "-d", &cluster.url("app")])
        .output()
        .expect("run pg_dump");
    assert!(output.status.success(), "pg_dump: {}", String::from_utf8_lossy(&output.stderr));
    // psql's meta-commands (`\restrict`, since pg_dump 15.14) are not SQL.
    let dump: String = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.starts_with('\\'))
        .map(|l| format!("{l}\n"))
        .collect();
    for shape in ["OWNED BY", "nextval(", "WHERE (state", "lower(email)", "CREATE TRIGGER", "TEXT SEARCH", "COMMENT ON"]
    {
        assert!(dump.contains(shape), "the dump lacks {shape}:\n{dump}");
    }
    let migrations = Migrations::empty();
    migrations.write("1_dump.sql", &dump);
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    let outcome =
        Run::xtask(XTASK, &["lint-migrations", "--all", "--source", &source, "--format", "json"], &[]).output();
    let report: serde_json::Value = serde_json::from_str(&outcome.stdout).expect("JSON");
    let unread: Vec<&serde_json::Value> =
        report.as_array().expect("array").iter().filter(|f| f["rule"] == "unparsed-statement").collect();
    let statements = dump.matches(";\n").count();
    let rules: Vec<String> =
        report.as_array().into_iter().flatten().map(|f| format!("{}:{}", f["line"], f["rule"])).collect();
    println!("{statements} statements in the dump, {} unread; findings: {rules:?}", unread.len());
    assert!(unread.is_empty(), "statements of valid PostgreSQL the linter cannot read: {unread:#?}");
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
    assert!(outcome.stdout.contains("20261202000000_committed.sql:1: renaming-column"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("20261203000000_uncommitted.sql:1: ban-drop-table"), "{}", outcome.stdout);
    assert!(!outcome.stdout.contains("old_drop"), "a migration of the default branch was linted:\n{}", outcome.stdout);
}
