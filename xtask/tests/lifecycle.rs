//! The migration lifecycle beyond applying: the database itself (create, drop, reset, setup,
//! `prestart --create-database`), `schema dump --check`, drift built by hand for each kind of
//! object, and `ignored-chars`, against real clusters.

use testkit::{Cluster, Migrations, Outcome, Run, with};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn run(args: &[&str], env: &[(String, String)], migrations: &Migrations) -> Outcome {
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    let mut all = args.to_vec();
    all.extend(["--source", &source]);
    Run::xtask(XTASK, &all, env).output()
}

fn database_exists(cluster: &Cluster, name: &str) -> bool {
    cluster.psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'")) == "1"
}

#[test]
fn database_create_drop_reset_and_setup_with_their_guards() {
    let cluster = Cluster::stopped();
    cluster.start();
    let migrations = Migrations::workspace();
    let env = with(cluster.env("shop"), "ENVIRONMENT", "local");
    let database = |args: &[&str], env: &[(String, String)]| {
        let mut all = vec!["database"];
        all.extend_from_slice(args);
        if matches!(args[0], "setup" | "reset") {
            run(&all, env, &migrations)
        } else {
            Run::xtask(XTASK, &all, env).output()
        }
    };

    database(&["create"], &env).assert_code(0).assert_stderr_contains("created database shop");
    assert!(database_exists(&cluster, "shop"));
    database(&["create"], &env).assert_code(0).assert_stderr_contains("database shop already exists");
    database(&["setup"], &env).assert_code(0).assert_stderr_contains("applied 3");
    cluster.psql("shop", "INSERT INTO app_settings (key, value) VALUES ('kept', '1')");

    // Outside ENVIRONMENT=local, drop and reset refuse without --force, and change nothing.
    let production = with(env.clone(), "ENVIRONMENT", "production");
    for command in ["drop", "reset"] {
        database(&[command, "-y"], &production)
            .assert_code(3)
            .assert_stderr_contains("refusing to drop")
            .assert_stderr_contains("ENVIRONMENT=production")
            .assert_stderr_contains("--force");
    }
    // Unset is not local, and without a terminal to ask on, -y must say yes.
    let unset: Vec<(String, String)> = env.iter().filter(|(k, _)| k != "ENVIRONMENT").cloned().collect();
    database(&["drop", "-y"], &unset).assert_code(3).assert_stderr_contains("ENVIRONMENT is not set");
    database(&["drop"], &env).assert_code(3).assert_stderr_contains("pass -y to confirm");
    assert_eq!(cluster.psql("shop", "SELECT count(*) FROM app_settings WHERE key = 'kept'"), "1");

    // A session still connected keeps a drop from happening, and the message says what to do.
    let mut holder = cluster.psql_command("shop");
    holder.args(["-c", "SELECT pg_sleep(30)"]);
    let mut holder = holder.spawn().expect("psql");
    assert!(testkit::eventually(std::time::Duration::from_secs(10), || {
        cluster.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop'") != "0"
    }));
    database(&["drop", "-y"], &env).assert_code(5).assert_stderr_contains("other sessions are connected to it");
    let _ = holder.kill();
    let _ = holder.wait();
    cluster.psql("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'shop'");

    // reset: drop, then create and migrate; the row is gone, the schema is back.
    let reset = database(&["reset", "-y"], &env);
    reset.assert_code(0).assert_stderr_contains("dropped database shop");
    // One run, one wait header: the reset's later connections say nothing while nothing waits.
    assert_eq!(reset.stderr.matches("wait for the database").count(), 1, "{}", reset.stderr);
    assert_eq!(cluster.psql("shop", "SELECT count(*) FROM app_settings WHERE key = 'kept'"), "0");
    assert_eq!(cluster.psql("shop", "SELECT count(*) FROM _sqlx_migrations"), "3");

    database(&["drop", "--force", "-y"], &production).assert_code(0).assert_stderr_contains("dropped database shop");
    assert!(!database_exists(&cluster, "shop"));
    database(&["drop", "-y"], &env).assert_code(0).assert_stderr_contains("does not exist: nothing to drop");
    // A broken migrations folder stops a reset before anything is dropped.
    database(&["create"], &env).assert_code(0);
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    let missing = format!("{source}/nowhere");
    Run::xtask(XTASK, &["database", "reset", "-y", "--source", &missing], &env).output().assert_code(3);
    assert!(database_exists(&cluster, "shop"), "reset dropped the database, then failed");
    database(&["drop", "-y"], &env).assert_code(0);

    // A role that may not create databases is told so, with the grant that fixes it.
    cluster.psql("postgres", &format!("CREATE ROLE clerk LOGIN PASSWORD '{}'", testkit::PASSWORD));
    let clerk = with(env.clone(), "POSTGRES_USER", "clerk");
    database(&["create"], &clerk)
        .assert_code(5)
        .assert_stderr_contains("permission denied to create database")
        .assert_stderr_contains("ALTER ROLE \"clerk\" CREATEDB");
    assert!(!database_exists(&cluster, "shop"));
}

#[test]
fn prestart_creates_a_missing_database_only_when_asked() {
    let cluster = Cluster::stopped();
    cluster.start();
    let migrations = Migrations::workspace();
    let env = cluster.env("fresh");
    run(&["prestart"], &env, &migrations)
        .assert_code(5)
        .assert_stderr_contains("3D000")
        .assert_stderr_contains("cargo xtask database create")
        .assert_stderr_contains("prestart --create-database");
    assert!(!database_exists(&cluster, "fresh"));
    run(&["prestart", "--create-database"], &env, &migrations)
        .assert_code(0)
        .assert_stderr_contains("created database fresh")
        .assert_stderr_contains("applied 3");
    // Once it exists the flag costs nothing.
    run(&["prestart", "--create-database"], &env, &migrations)
        .assert_code(0)
        .assert_stderr_lacks("create database")
        .assert_stderr_contains("up to date");
}

/// A migration whose text cannot be read (not UTF-8) is found once the files are read, after the
/// folder was listed: exit 3 naming the file, nothing applied, and no database created for it.
#[test]
fn a_migration_that_cannot_be_read_changes_nothing_and_creates_no_database() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    let broken = migrations.path().join("20261201000000_latin1.sql");
    std::fs::write(&broken, b"-- caf\xe9\nSELECT 1;\n").expect("write the file");
    run(&["prestart"], &cluster.env("app"), &migrations)
        .assert_code(3)
        .assert_stderr_contains("20261201000000_latin1.sql")
        .assert_stderr_contains("it is not UTF-8 text (byte 6 is not): save it as UTF-8");
    assert_eq!(cluster.psql("app", "SELECT to_regclass('_sqlx_migrations') IS NULL"), "t");
    run(&["prestart", "--create-database"], &cluster.env("fresh"), &migrations)
        .assert_code(3)
        .assert_stderr_contains("20261201000000_latin1.sql");
    assert!(!database_exists(&cluster, "fresh"));
}

#[test]
fn schema_dump_check_fails_when_a_migration_changed_the_schema() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    let env = cluster.env("app");
    let output = migrations.path().join("..").join(format!("schema-{}.sql", std::process::id()));
    let output = output.to_str().expect("utf-8").to_owned();
    let dump = |extra: &[&str]| {
        let mut args = vec!["schema", "dump", "--output", &output];
        args.extend_from_slice(extra);
        run(&args, &env, &migrations)
    };
    dump(&[]).assert_code(0).assert_stderr_contains("wrote");
    let written = std::fs::read_to_string(&output).expect("schema.sql");
    assert!(written.contains("CREATE TABLE public.users"), "{written}");
    for varying in ["Dumped from", "Dumped by", "\\restrict", "Owner: postgres", "GRANT "] {
        assert!(!written.contains(varying), "{varying:?} in the dump:\n{written}");
    }
    assert!(!written.contains("_sqlx_migrations"), "sqlx's table is not part of the schema:\n{written}");
    // Nothing varies by run: a second dump is the same, and the check passes.
    dump(&["--check"]).assert_code(0).assert_stderr_contains("matches");
    // The throwaway databases are gone.
    assert_eq!(cluster.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'prestart_%'"), "0");

    migrations.write("20991231000000_add_nickname.sql", "ALTER TABLE users ADD COLUMN nickname text;\n");
    dump(&["--check"])
        .assert_code(1)
        .assert_stderr_contains("does not match the schema the migrations produce")
        .assert_stderr_contains("nickname")
        .assert_stderr_contains("run `cargo xtask schema dump`");
    assert_eq!(std::fs::read_to_string(&output).expect("schema.sql"), written, "--check changed the file");
    let _ = std::fs::remove_file(&output);
}

/// What the migrations make: one object of each kind drift names.
const EVERY_KIND: &str = "\
CREATE EXTENSION citext;
CREATE SCHEMA billing;
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE SEQUENCE billing.invoice_numbers START 1000;
CREATE TABLE items (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    amount integer NOT NULL DEFAULT 1 CHECK (amount > 0),
    note text,
    feeling mood
);
CREATE INDEX items_name ON items (name);
CREATE VIEW big_items AS SELECT id, name FROM items WHERE amount > 10;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER items_touch BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION touch();
";

#[test]
fn drift_names_each_kind_of_change_made_by_hand() {
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    migrations.write("1_every_kind.sql", EVERY_KIND);
    let env = cluster.env("app");
    run(&["migrate"], &env, &migrations).assert_code(0);
    run(&["schema", "drift"], &env, &migrations).assert_code(0).assert_stderr_contains("no drift");

    // (statement by hand, kind, name, change)
    let changes = [
        ("CREATE TABLE by_hand (id int)", "table", "public.by_hand", "unexpected"),
        ("ALTER TABLE items ALTER COLUMN feeling TYPE text", "column", "public.items.feeling", "differs"),
        ("ALTER TABLE items ALTER COLUMN amount SET DEFAULT 7", "column", "public.items.amount", "differs"),
        ("ALTER TABLE items ALTER COLUMN note SET NOT NULL", "column", "public.items.note", "differs"),
        ("DROP INDEX items_name", "index", "public.items_name", "missing"),
        (
            "ALTER TABLE items DROP CONSTRAINT items_amount_check",
            "constraint",
            "public.items.items_amount_check",
            "missing",
        ),
        ("ALTER SEQUENCE billing.invoice_numbers INCREMENT BY 5", "sequence", "billing.invoice_numbers", "differs"),
        (
            "CREATE OR REPLACE VIEW big_items AS SELECT id, name FROM items WHERE amount > 100",
            "view",
            "public.big_items",
            "differs",
        ),
        (
            "CREATE OR REPLACE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END $$",
            "function",
            "public.touch()",
            "differs",
        ),
        ("DROP TRIGGER items_touch ON items", "trigger", "public.items.items_touch", "missing"),
        ("ALTER TYPE mood ADD VALUE 'meh'", "enum", "public.mood", "differs"),
        ("CREATE EXTENSION pg_trgm", "extension", "pg_trgm", "unexpected"),
        ("DROP EXTENSION citext", "extension", "citext", "missing"),
        ("CREATE SCHEMA scratch", "schema", "scratch", "unexpected"),
    ];
    for (sql, ..) in &changes {
        cluster.psql("app", sql);
    }
    let outcome = run(&["schema", "drift", "--json"], &env, &migrations);
    outcome.assert_code(9).assert_stderr_contains("someone changed it by hand");
    let report: serde_json::Value = serde_json::from_str(&outcome.stdout).expect("drift --json");
    let found: Vec<(String, String, String)> = report["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .map(|d| {
            let text = |key: &str| d[key].as_str().unwrap_or_default().to_owned();
            (text("kind"), text("name"), text("change"))
        })
        .collect();
    for (sql, kind, name, change) in &changes {
        let wanted = (kind.to_string(), name.to_string(), change.to_string());
        assert!(found.contains(&wanted), "{sql}: no {wanted:?} in {found:#?}");
    }
    // Each change is named once, and nothing else: the objects of extensions are not listed.
    assert_eq!(found.len(), changes.len(), "{found:#?}");

    let doctor =
        Run::xtask(XTASK, &["doctor", "--json", "--source", migrations.path().to_str().expect("utf-8")], &env).output();
    let check = doctor.doctor_check("migrations.drift");
    assert_eq!(check["status"], "warn", "{check}");
    assert!(check["message"].as_str().unwrap_or_default().contains("index public.items_name: missing"), "{check}");

    // A migration that fails on a drifted database says so.
    migrations.write("2_by_hand.sql", "CREATE TABLE by_hand (id int);\n");
    run(&["prestart"], &env, &migrations)
        .assert_code(6)
        .assert_stderr_contains("already exists")
        .assert_stderr_contains("drift: the database has drifted from its migrations")
        .assert_stderr_contains("table public.by_hand: not made by any migration");
    assert_eq!(cluster.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'prestart_%'"), "0");
}

#[test]
fn a_role_that_may_not_create_databases_gets_drift_from_a_local_cluster() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    run(&["migrate"], &cluster.env("app"), &migrations).assert_code(0);
    cluster.psql("postgres", &format!("CREATE ROLE reader LOGIN PASSWORD '{}'", testkit::PASSWORD));
    cluster.psql("app", "GRANT SELECT ON _sqlx_migrations TO reader");
    let reader = with(cluster.env("app"), "POSTGRES_USER", "reader");
    run(&["schema", "drift"], &reader, &migrations)
        .assert_code(0)
        .assert_stderr_contains("throwaway PostgreSQL 15 cluster on this machine")
        .assert_stderr_contains("no drift");
    // The old way, on the server itself, needs CREATEDB, and says so.
    run(&["schema", "drift", "--shadow-on-server"], &reader, &migrations)
        .assert_code(5)
        .assert_stderr_contains("permission denied to create database");
}

/// `ignored-chars` in sqlx.toml: a file that differs only in them (CRLF, a BOM) is the same
/// migration for migrate, migrate status, doctor and lint.
#[test]
fn files_that_differ_only_in_ignored_characters_are_the_same_migration() {
    let cluster = Cluster::started();
    let project = testkit::Project::new(XTASK);
    project.write("sqlx.toml", "[migrate]\nignored-chars = [\"\\r\", \"\\uFEFF\"]\n");
    let file = project
        .write("migrations/20991231000000_add_index.sql", "CREATE INDEX users_email_lower ON users (lower(email));\n");
    let env = cluster.env("app");
    let xtask = |args: &[&str]| Run::program(project.path().join("xtask"), args, &env).output();
    xtask(&["migrate"]).assert_code(0).assert_stderr_contains("applied 4");
    std::fs::write(&file, "\u{FEFF}CREATE INDEX users_email_lower ON users (lower(email));\r\n").expect("rewrite");
    xtask(&["migrate"]).assert_code(0).assert_stderr_contains("up to date");
    xtask(&["migrate", "status"]).assert_code(0);
    let doctor = xtask(&["doctor", "--json"]);
    for id in ["migrations.changed", "migrations.lint"] {
        let check = doctor.doctor_check(id);
        assert_eq!(check["status"], "ok", "{check}");
    }
    // lint checks what is not applied yet: the applied file stays applied.
    xtask(&["lint-migrations"]).assert_code(0);
}

/// SIGTERM while drift builds the expected schema in its throwaway cluster: the run ends as
/// interrupted, and the cluster is stopped and deleted.
#[test]
fn an_interrupted_drift_check_leaves_no_throwaway_cluster() {
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    migrations.write("1_slow.sql", "SELECT pg_sleep(3);\nCREATE TABLE slow ();\n");
    let env = cluster.env("app");
    run(&["migrate"], &env, &migrations).assert_code(0);
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    let scratch = tempfile::tempdir().expect("temp dir");
    testkit::set_mode(scratch.path(), 0o755);
    let running = Run::xtask(XTASK, &["schema", "drift", "--source", &source], &env)
        .env("TMPDIR", scratch.path().to_str().expect("utf-8"))
        .spawn();
    let throwaways = || std::fs::read_dir(scratch.path()).expect("scratch").count();
    let building =
        || cluster.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(3)%'");
    assert!(testkit::eventually(std::time::Duration::from_secs(20), || throwaways() == 1), "no throwaway cluster");
    running.wait_for_stderr("wait for the database", std::time::Duration::from_secs(10));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(building(), "0", "the migration ran on the live server");
    running.signal("TERM");
    running.wait_within(std::time::Duration::from_secs(20)).assert_code(143);
    assert_eq!(throwaways(), 0, "the throwaway cluster's folder is left");
    let left = std::process::Command::new("pgrep")
        .args(["-f", scratch.path().to_str().expect("utf-8")])
        .output()
        .expect("pgrep");
    assert!(left.stdout.is_empty(), "a throwaway server still runs: {}", String::from_utf8_lossy(&left.stdout));
}

/// A role that may not create databases gets drift through a shadow database it was given: it
/// must be empty, and is empty again after each use.
#[test]
fn drift_through_a_shadow_database_for_a_role_that_may_not_create_databases() {
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    migrations.write("1_every_kind.sql", EVERY_KIND);
    run(&["migrate"], &cluster.env("app"), &migrations).assert_code(0);
    cluster.psql("postgres", &format!("CREATE ROLE owner LOGIN PASSWORD '{}'", testkit::PASSWORD));
    cluster.psql("postgres", "CREATE DATABASE shadow OWNER owner");
    cluster.psql("app", "GRANT SELECT ON _sqlx_migrations TO owner");
    let owner = with(cluster.env("app"), "POSTGRES_USER", "owner");
    let drift = |extra: &[&str]| {
        let mut args = vec!["schema", "drift"];
        args.extend_from_slice(extra);
        run(&args, &owner, &migrations)
    };
    drift(&[]).assert_code(0).assert_stderr_contains("throwaway PostgreSQL");
    for _ in 0..2 {
        drift(&["--shadow-database", "shadow"]).assert_code(0).assert_stderr_contains("no drift");
    }
    let left = "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')";
    assert_eq!(cluster.psql("shadow", left), "0", "the shadow database was not emptied");
    cluster.psql("app", "ALTER TABLE items ALTER COLUMN note SET NOT NULL");
    drift(&["--shadow-database", "shadow"]).assert_code(9).assert_stderr_contains("column public.items.note: differs");
    // A database that holds something is refused, and keeps what it holds.
    drift(&["--shadow-database", "app"]).assert_code(3).assert_stderr_contains("is the database itself");
    cluster.psql("shadow", "CREATE TABLE precious (id int)");
    drift(&["--shadow-database", "shadow"]).assert_code(3).assert_stderr_contains("is not empty");
    assert_eq!(cluster.psql("shadow", "SELECT to_regclass('precious') IS NOT NULL"), "t");
}
