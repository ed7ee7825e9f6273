//! `cargo xtask new-migration`: sqlx-cli's naming, versions that always grow, names refused
//! with a reason, nothing overwritten.

use testkit::{Migrations, Run};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn new_migration(migrations: &Migrations, args: &[&str]) -> testkit::Outcome {
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    let mut all = vec!["new-migration", "--source", &source];
    all.extend_from_slice(args);
    Run::program(XTASK, &all, &[]).output()
}

fn files(migrations: &Migrations) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(migrations.path())
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn creates_a_simple_migration_with_a_timestamp_and_prints_its_path() {
    let migrations = Migrations::empty();
    let outcome = new_migration(&migrations, &["Add users Email-index"]);
    outcome.assert_code(0);
    let names = files(&migrations);
    assert_eq!(names.len(), 1);
    let name = &names[0];
    assert!(name.ends_with("_add_users_email_index.sql"), "{name}");
    let version = &name[..14];
    assert!(version.starts_with("20") && version.chars().all(|c| c.is_ascii_digit()), "{name}");
    assert!(outcome.stdout.trim().ends_with(name.as_str()), "{}", outcome.stdout);
    let text = std::fs::read_to_string(migrations.path().join(name)).expect("read");
    assert!(text.starts_with("-- add users email index\n"), "{text}");

    // As the README types it: several words, unquoted.
    let unquoted = Migrations::empty();
    new_migration(&unquoted, &["add", "users", "email", "index"]).assert_code(0);
    assert!(files(&unquoted)[0].ends_with("_add_users_email_index.sql"), "{:?}", files(&unquoted));
}

#[test]
fn versions_stay_above_the_newest_even_in_the_same_second_or_with_a_clock_behind() {
    let migrations = Migrations::empty();
    migrations.write("20991231235959_from_the_future.sql", "SELECT 1;\n");
    new_migration(&migrations, &["first"]).assert_code(0);
    new_migration(&migrations, &["second"]).assert_code(0);
    assert_eq!(
        files(&migrations),
        ["20991231235959_from_the_future.sql", "20991231235960_first.sql", "20991231235961_second.sql"]
    );
}

#[test]
fn follows_the_folders_style_and_the_flags() {
    let reversible = Migrations::empty();
    reversible.write("1_init.up.sql", "CREATE TABLE a (id int);\n");
    reversible.write("1_init.down.sql", "DROP TABLE a;\n");
    new_migration(&reversible, &["next"]).assert_code(0);
    assert_eq!(files(&reversible), ["1_init.down.sql", "1_init.up.sql", "2_next.down.sql", "2_next.up.sql"]);

    let simple = Migrations::empty();
    new_migration(&simple, &["concurrent index", "--no-transaction"]).assert_code(0);
    let name = files(&simple).pop().expect("one file");
    let text = std::fs::read_to_string(simple.path().join(&name)).expect("read");
    assert!(text.starts_with("-- no-transaction\n"), "{text}");
    new_migration(&simple, &["pair", "--reversible"]).assert_code(0);
    assert_eq!(
        files(&simple).iter().filter(|n| n.ends_with("_pair.up.sql") || n.ends_with("_pair.down.sql")).count(),
        2
    );
}

#[test]
fn refuses_names_that_are_not_plain_words() {
    let migrations = Migrations::empty();
    for bad in ["../escape", "a/b", "", "  ", "naïve", "x.sql"] {
        new_migration(&migrations, &[bad]).assert_code(3).assert_stderr_contains("use ASCII letters, digits, spaces");
    }
    new_migration(&migrations, &[&"a".repeat(120)]).assert_code(3).assert_stderr_contains("keep it under 100");
    assert!(files(&migrations).is_empty(), "a refused name left a file");
}

#[test]
fn no_version_can_follow_the_largest_one() {
    for (file, args) in [
        ("9223372036854775807_last.sql", &["next"][..]),
        ("9223372036854775807_last.up.sql", &["next"][..]),
        ("9223372036854775807_last.sql", &["next", "--reversible"][..]),
    ] {
        let migrations = Migrations::empty();
        migrations.write(file, "SELECT 1;\n");
        let outcome = new_migration(&migrations, args);
        outcome.assert_code(3).assert_stderr_contains(file).assert_stderr_contains("9223372036854775807");
        outcome.assert_stderr_lacks("panicked").assert_stderr_lacks("overflow");
        assert_eq!(files(&migrations), [file], "a refused version left a file");
    }
}
