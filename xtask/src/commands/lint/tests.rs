//! The engine's findings on SQL written here, file by file.

use super::*;

fn lint(sql: &str) -> Vec<Finding> {
    let config = Config::defaults();
    let mut outcome = Outcome::default();
    Engine::new(&config, None).lint(Path::new("x.sql"), sql, false, true, true, &mut outcome);
    outcome.findings
}

#[test]
fn lines_and_columns_count_from_one() {
    let lines = Lines::new("ab\ncdé\nf");
    assert_eq!(lines.position(0), (1, 1));
    assert_eq!(lines.position(4), (2, 2));
    assert_eq!(lines.position(8), (3, 1));
}

#[test]
fn tables_created_earlier_in_the_deploy_are_new() {
    let config = Config::defaults();
    let mut outcome = Outcome::default();
    let mut engine = Engine::new(&config, None);
    engine.lint(Path::new("1.sql"), "CREATE TABLE old (id bigint);", false, false, false, &mut outcome);
    engine.lint(Path::new("2.sql"), "CREATE TABLE fresh (id bigint);", false, false, true, &mut outcome);
    engine.lint(
        Path::new("3.sql"),
        "CREATE INDEX a ON fresh (id);\nCREATE INDEX b ON old (id);",
        false,
        true,
        true,
        &mut outcome,
    );
    let rules: Vec<(usize, String)> = outcome.findings.iter().map(|f| (f.line, f.rule.to_string())).collect();
    assert_eq!(rules, [(2, "require-concurrent-index-creation".to_owned())]);
}

/// Review 3e: what the linter let through.
#[test]
fn a_table_that_exists_is_not_new_by_if_not_exists_nor_a_list_by_its_first_name() {
    let config = Config::defaults();
    let mut outcome = Outcome::default();
    let mut engine = Engine::new(&config, None);
    engine.lint(Path::new("1.sql"), "CREATE TABLE users (id bigint);", false, false, false, &mut outcome);
    engine.lint(
        Path::new("2.sql"),
        "CREATE TABLE IF NOT EXISTS users (id bigint);
CREATE INDEX users_id ON users (id);
         CREATE TABLE fresh (id bigint);
DROP TABLE fresh, users;
         ALTER TABLE users ADD CONSTRAINT no_overlap EXCLUDE USING gist (id WITH =);",
        false,
        true,
        true,
        &mut outcome,
    );
    let rules: Vec<(usize, String)> = outcome.findings.iter().map(|f| (f.line, f.rule.to_string())).collect();
    assert!(rules.contains(&(2, "require-concurrent-index-creation".to_owned())), "{rules:?}");
    assert!(rules.contains(&(4, "ban-drop-table".to_owned())), "{rules:?}");
    assert!(rules.contains(&(5, "adding-exclude-constraint".to_owned())), "{rules:?}");
    // On a table the deploy makes, none of it is found.
    let fresh = lint(
        "CREATE TABLE IF NOT EXISTS fresh (id bigint);
CREATE INDEX fresh_id ON fresh (id);
         ALTER TABLE fresh ADD CONSTRAINT no_overlap EXCLUDE USING gist (id WITH =);",
    );
    assert!(fresh.is_empty(), "{:?}", fresh.iter().map(|f| f.rule.to_string()).collect::<Vec<_>>());
}

#[test]
fn an_allow_after_a_string_holding_two_dashes_is_read() {
    let findings = lint(
        "CREATE TABLE t (note text DEFAULT 'a--b');
CREATE INDEX t_note ON t (note); -- lint: allow require-concurrent-index-creation
",
    );
    // `t` is made in this deploy, so the index is fine already; on an old table the allow counts.
    assert!(findings.is_empty(), "{:?}", findings.iter().map(|f| f.rule.to_string()).collect::<Vec<_>>());
    let findings = lint(
        "SELECT 'a--b'; CREATE INDEX i ON old (x); -- lint: allow require-concurrent-index-creation
",
    );
    assert!(findings.is_empty(), "{:?}", findings.iter().map(|f| f.rule.to_string()).collect::<Vec<_>>());
    let findings = lint(
        "SELECT 'a--b'; CREATE INDEX i ON old (x);
",
    );
    assert_eq!(findings.len(), 1);
}

#[test]
fn lock_timeout_is_moot_in_a_transaction_and_outside_one_the_header_is_the_fix() {
    let config = Config::defaults();
    let mut outcome = Outcome::default();
    let mut engine = Engine::new(&config, None);
    let sql = "ALTER TABLE t ADD COLUMN c text;";
    engine.lint(Path::new("1.sql"), sql, false, true, true, &mut outcome);
    assert!(outcome.findings.is_empty() && outcome.moot_lock_timeout == 1);
    engine.lint(Path::new("2.sql"), &format!("-- no-transaction\n{sql}"), true, true, true, &mut outcome);
    assert_eq!(outcome.findings[0].rule.to_string(), "require-lock-timeout");
    assert!(outcome.findings[0].safe.contains("drop the `-- no-transaction` line"));
    engine.lint(
        Path::new("3.sql"),
        "-- no-transaction\nCREATE INDEX CONCURRENTLY i ON t (c);",
        true,
        true,
        true,
        &mut outcome,
    );
    assert_eq!(outcome.findings.len(), 1, "a CONCURRENTLY build is told to take a timeout");
}

#[test]
fn squawk_ignore_comments_work_for_our_rules_too() {
    let sql = "-- squawk-ignore needs-no-transaction -- run by hand\nCREATE INDEX CONCURRENTLY a ON t (b);";
    assert!(lint(sql).is_empty(), "{:?}", lint(sql));
    assert_eq!(lint("-- squawk-ignore no-such-rule\nSELECT 1;")[0].rule.to_string(), "unused-ignore");
}

#[test]
fn not_valid_is_not_offered_where_postgresql_refuses_it() {
    let rules: Vec<String> =
        lint("ALTER TABLE t ADD CONSTRAINT t_key UNIQUE (a);\nALTER TABLE t ADD CONSTRAINT c CHECK (a > 0);")
            .iter()
            .map(|f| format!("{}:{}", f.line, f.rule))
            .collect();
    assert_eq!(rules, ["1:disallowed-unique-constraint", "2:constraint-missing-not-valid"]);
}

proptest::proptest! {
    /// Arbitrary text is linted without a panic; what does not parse is reported.
    #[test]
    fn arbitrary_input_never_panics(sql in "\\PC{0,200}") {
        for finding in lint(&sql) {
            proptest::prop_assert!(finding.line >= 1 && finding.column >= 1);
        }
    }

    /// SQL-shaped input, closer to what the rules look at.
    #[test]
    fn sql_shaped_input_never_panics(
        words in proptest::collection::vec("(ALTER|TABLE|CREATE|INDEX|CONCURRENTLY|ON|ADD|COLUMN|DROP|NOT|NULL|VALID|CONSTRAINT|CHECK|t|x|;|\\(|\\)|,|--|\\n|\\$\\$)", 0..40)
    ) {
        let _ = lint(&words.join(" "));
    }
}
