//! The differential oracle: every migration set of the corpus (`oracle/corpus.rs`) applied,
//! reverted and targeted by sqlx-cli (the version Cargo.lock pins, which `cargo xtask test`
//! installs) and by `cargo xtask migrate` on twin databases of one cluster, step by step. After
//! each step both succeeded or both failed (ours with a documented migration exit code), and
//! the schema (`pg_dump --schema-only` without prestart's own table), the rows of every table and
//! `_sqlx_migrations` (version, description, success, checksum) are equal. A random layer on
//! top strings shapes together, and a subset runs again with the server restarted under it.

mod corpus;

use std::time::Duration;

use corpus::{Set, Step};
use testkit::{Cluster, Migrations, Outcome, Run};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// The rows of every table but the migrations table and ours, each table's rows sorted.
const ROWS: &str = "SELECT coalesce(string_agg(n.nspname || '.' || c.relname || ': ' || query_to_xml(format(\
     'SELECT coalesce(string_agg(r::text, '' | '' ORDER BY r::text), '''') AS rows FROM %I.%I r', n.nspname, c.relname), \
     false, false, '')::text, E'\\n' ORDER BY n.nspname, c.relname), 'no tables') \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname !~ '^pg_(toast|temp)' AND c.relname NOT IN ('_sqlx_migrations', '_prestart_environment', '_prestart_releases')";

/// What sqlx-cli and we both write in `_sqlx_migrations`, wherever it is; not the times.
const MIGRATIONS: &str = "SELECT coalesce(string_agg(n.nspname || ': ' || query_to_xml(format(\
     'SELECT version, description, success, encode(checksum, ''hex'') AS checksum FROM %I.%I ORDER BY version', \
     n.nspname, c.relname), false, false, '')::text, E'\\n' ORDER BY n.nspname), 'no migrations table') \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relname = '_sqlx_migrations' AND c.relkind = 'r'";

/// What a database holds, as the oracle compares it.
fn state(cluster: &Cluster, database: &str) -> String {
    format!(
        "schema:\n{}\nrows:\n{}\nmigrations:\n{}",
        cluster.schema(database),
        cluster.psql(database, ROWS),
        cluster.psql(database, MIGRATIONS)
    )
}

fn sqlx_cli(cluster: &Cluster, database: &str, dir: &Migrations, step: Step) -> Outcome {
    let source = dir.path().to_str().expect("utf-8 path");
    let (command, target) = match step {
        Step::Run(target) => ("run", target),
        Step::Revert(target) => ("revert", target),
    };
    let target = target.map(|t| t.to_string());
    let mut args = vec!["migrate", command, "--source", source];
    if let Some(target) = &target {
        args.extend(["--target-version", target]);
    }
    let outcome = Run::program("sqlx", &args, &[("DATABASE_URL".to_owned(), cluster.url(database))]).output();
    assert_ne!(outcome.code, None, "sqlx-cli was killed");
    outcome
}

fn ours(cluster: &Cluster, database: &str, dir: &Migrations, step: Step) -> Outcome {
    let source = dir.path().to_str().expect("utf-8 path");
    let (revert, target) = match step {
        Step::Run(target) => (false, target),
        Step::Revert(target) => (true, target),
    };
    let target = target.map(|t| t.to_string());
    let mut args = vec!["migrate"];
    if revert {
        args.push("revert");
    }
    args.extend(["--source", source]);
    if let Some(target) = &target {
        args.extend(["--target-version", target]);
    }
    Run::xtask(XTASK, &args, &cluster.env(database)).output()
}

/// Success or failure; ours must fail with a documented code of a migration run (6, or 3 for a
/// folder that cannot be read), never a crash.
fn succeeded(ours: &Outcome) -> bool {
    match ours.code {
        Some(0) => true,
        Some(3 | 6) => false,
        other => panic!("exit {other:?} is no outcome migrate documents:\n{}", ours.stderr),
    }
}

fn write(set: &Set) -> Migrations {
    let dir = Migrations::empty();
    for (name, bytes) in &set.files {
        std::fs::write(dir.path().join(name), bytes).expect("write a migration");
    }
    dir
}

/// Twin databases for `set`, named after `tag` (sqlx-cli's, ours), each with the set's setup.
fn twins(cluster: &Cluster, set: &Set, tag: &str) -> (String, String) {
    let (by_cli, by_us) = (format!("cli_{tag}"), format!("us_{tag}"));
    for database in [&by_cli, &by_us] {
        cluster.create_database(database);
        if !set.setup.is_empty() {
            cluster.psql(database, set.setup);
        }
    }
    (by_cli, by_us)
}

/// Applies `set` with both tools on twin databases named after `tag`, step by step, and holds
/// every step's outcome and state equal: the first step where they differ, in words.
fn divergence(cluster: &Cluster, set: &Set, tag: &str) -> Option<String> {
    let (by_cli, by_us) = twins(cluster, set, tag);
    let dir = write(set);
    for (index, &step) in set.steps.iter().enumerate() {
        let cli = sqlx_cli(cluster, &by_cli, &dir, step);
        let us = ours(cluster, &by_us, &dir, step);
        if let Some(deviation) = &set.deviation {
            return deviates_as_said(cluster, &by_us, deviation, &cli, &us);
        }
        let context = format!(
            "set {:?}, step {index} ({step:?})\n--- sqlx-cli (exit {:?}):\n{}{}\n--- ours (exit {:?}):\n{}",
            set.name, cli.code, cli.stdout, cli.stderr, us.code, us.stderr
        );
        if (cli.code == Some(0)) != succeeded(&us) {
            return Some(format!("one tool failed, the other did not: {context}"));
        }
        let (theirs, ours) = (state(cluster, &by_cli), state(cluster, &by_us));
        if theirs != ours {
            return Some(format!("the states differ: {context}\n--- sqlx-cli's state:\n{theirs}\n--- ours:\n{ours}"));
        }
    }
    None
}

/// A set where sqlx-cli's result cannot be defended: sqlx-cli does what the deviation says of
/// it (so the test fails when it stops doing so), and ours does what it says instead.
fn deviates_as_said(
    cluster: &Cluster,
    by_us: &str,
    deviation: &corpus::Deviation,
    cli: &Outcome,
    us: &Outcome,
) -> Option<String> {
    let said = format!("({})\n--- sqlx-cli:\n{}{}\n--- ours:\n{}", deviation.why, cli.stdout, cli.stderr, us.stderr);
    if (cli.code == Some(0)) != deviation.sqlx_cli_succeeds {
        return Some(format!("sqlx-cli no longer does what the deviation says {said}"));
    }
    if us.code != Some(deviation.ours) {
        return Some(format!("ours exits {:?}, not {} {said}", us.code, deviation.ours));
    }
    let (query, expected) = deviation.check;
    let found = cluster.psql(by_us, query);
    (found != expected).then(|| format!("ours left `{found}`, not `{expected}` {said}"))
}

fn hold_equal(cluster: &Cluster, set: &Set, tag: &str) {
    if let Some(divergence) = divergence(cluster, set, tag) {
        panic!("{divergence}");
    }
}

/// The corpus in four parts, one cluster each, so that they run side by side; every set runs,
/// and every divergence is told.
fn part(of: usize) {
    let cluster = Cluster::started();
    let sets = corpus::all();
    assert!(sets.len() >= 40, "the corpus has {} sets", sets.len());
    let diverged: Vec<(&str, String)> = sets
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 4 == of)
        .filter_map(|(index, set)| divergence(&cluster, set, &index.to_string()).map(|d| (set.name.as_str(), d)))
        .collect();
    let names: Vec<&str> = diverged.iter().map(|(name, _)| *name).collect();
    let details: Vec<&str> = diverged.iter().map(|(_, detail)| detail.as_str()).collect();
    assert!(diverged.is_empty(), "{} sets diverge from sqlx-cli: {names:?}\n\n{}", names.len(), details.join("\n\n"));
}

#[test]
fn the_corpus_part_1_gives_sqlx_clis_results() {
    part(0);
}

#[test]
fn the_corpus_part_2_gives_sqlx_clis_results() {
    part(1);
}

#[test]
fn the_corpus_part_3_gives_sqlx_clis_results() {
    part(2);
}

#[test]
fn the_corpus_part_4_gives_sqlx_clis_results() {
    part(3);
}

/// The rows of the seed's tables differ by run (a password hash's salt, the times): counted.
const SEEDED_ROWS: &str =
    "SELECT (SELECT count(*) FROM users) || ' users, ' || (SELECT count(*) FROM app_settings) || ' settings'";

/// A release recorded before the run, in the record's documented format (docs/releases.md).
const A_RELEASE_BEFORE: &str = r#"CREATE TABLE _prestart_releases (name text PRIMARY KEY,
    first_deployed timestamptz NOT NULL DEFAULT now(), last_deployed timestamptz NOT NULL DEFAULT now(), queries jsonb NOT NULL);
INSERT INTO _prestart_releases (name, queries) VALUES ('oracle-before', '[
  {"hash": "0001", "query": "SELECT relname, relkind FROM pg_catalog.pg_class WHERE relname = $1", "parameters": ["text"],
   "columns": [{"name": "relname", "type": "name", "nullable": false}, {"name": "relkind", "type": "char", "nullable": false}]},
  {"hash": "0002", "query": "SELECT count(*) FROM pg_catalog.pg_namespace", "parameters": [],
   "columns": [{"name": "count", "type": "int8", "nullable": null}]},
  {"hash": "0003", "query": "INSERT INTO jobs (kind, payload) VALUES ($1, $2) RETURNING id", "parameters": ["text", "jsonb"],
   "columns": [{"name": "id", "type": "int8", "nullable": false}]}
]')"#;

/// `prestart` (wait, migrate, seed: the reads sent with the first query, the seed's check) against
/// sqlx-cli followed by `cargo xtask seed`, over every second set of the corpus, each after the
/// workspace's own migrations: the same outcome, schema, migrations table and rows (the seed's
/// tables counted), with the release check judging every migration in its transaction.
#[test]
fn prestart_gives_sqlx_clis_results_with_the_seed_after_them() {
    let cluster = Cluster::started();
    let workspace = Migrations::workspace();
    for (index, set) in corpus::all().iter().enumerate().filter(|(i, _)| i % 2 == 1) {
        let (by_cli, by_us) = twins(&cluster, set, &format!("prestart_{index}"));
        let dir = write(set);
        for entry in std::fs::read_dir(workspace.path()).expect("the workspace's migrations").flatten() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy a migration");
        }
        let source = dir.path().to_str().expect("utf-8 path");
        let Some(Step::Run(None)) = set.steps.first() else { continue };
        if set.deviation.is_some() {
            continue;
        }
        let cli = sqlx_cli(&cluster, &by_cli, &dir, Step::Run(None));
        let cli_ok =
            cli.code == Some(0) && Run::xtask(XTASK, &["seed"], &cluster.env(&by_cli)).output().code == Some(0);
        // prestart's release check, judging each migration in its own transaction before its
        // COMMIT, must leave the results as they are: a release recorded before this one, whose
        // queries prepare throughout (the catalog's) or on no schema before (the workspace's).
        cluster.psql(&by_us, A_RELEASE_BEFORE);
        let us = Run::xtask(XTASK, &["prestart", "--source", source], &cluster.env(&by_us)).output();
        assert!(
            us.stderr.contains("checking each migration against the 3 queries of release oracle-before"),
            "set {:?}: the release check did not run:\n{}",
            set.name,
            us.stderr
        );
        let us_ok = match us.code {
            Some(0) => true,
            Some(3 | 6 | 7) => false,
            other => panic!("set {:?}: prestart exit {other:?} is no outcome it documents:\n{}", set.name, us.stderr),
        };
        assert_eq!(
            cli_ok, us_ok,
            "set {:?}: one tool failed, the other did not:\n{}{}\n{}",
            set.name, cli.stdout, cli.stderr, us.stderr
        );
        let state = |database: &str| {
            let made = cluster
                .psql(database, "SELECT to_regclass('users') IS NOT NULL AND to_regclass('app_settings') IS NOT NULL");
            let seeded = if made == "t" { cluster.psql(database, SEEDED_ROWS) } else { "no seed tables".to_owned() };
            let rows = ROWS.replace("'_prestart_releases')", "'_prestart_releases', 'users', 'app_settings')");
            format!(
                "schema:\n{}\nrows:\n{}\nseeded: {seeded}\nmigrations:\n{}",
                cluster.schema(database),
                cluster.psql(database, &rows),
                cluster.psql(database, MIGRATIONS)
            )
        };
        assert_eq!(state(&by_cli), state(&by_us), "set {:?}:\n{}", set.name, us.stderr);
    }
}

/// The issue's reproduction, stated on its own: the file that commits itself runs once.
#[test]
fn a_file_that_commits_itself_runs_once() {
    let cluster = Cluster::started();
    let set =
        corpus::all().into_iter().find(|s| s.name == "ends its transaction: commit, then a comment").expect("set");
    hold_equal(&cluster, &set, "once");
    assert_eq!(cluster.psql("us_once", "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"), "1,100");
}

/// Random sequences of the corpus's shapes, one file each: a fixed seed in the suite (the same
/// cases every run), `PRESTART_ORACLE_CASES=N` for more, with a seed of the clock.
#[test]
fn random_sequences_of_shapes_give_sqlx_clis_results() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let shapes = shapes();
    let count = shapes.len();
    let cluster = Cluster::started();
    let cases: u32 = std::env::var("PRESTART_ORACLE_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(10);
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = if std::env::var_os("PRESTART_ORACLE_CASES").is_some() {
        TestRunner::new(config)
    } else {
        TestRunner::new_with_rng(config, proptest::test_runner::TestRng::deterministic_rng(config_algorithm()))
    };
    let case = std::cell::Cell::new(0);
    runner
        .run(&prop::collection::vec(0..count, 1..7), |picked| {
            let files: Vec<(String, String)> = std::iter::once(("0_base.sql".to_owned(), BASE.to_owned()))
                .chain(
                    picked
                        .iter()
                        .enumerate()
                        .map(|(i, &shape)| (format!("{}_shape_{shape}.sql", i + 1), shapes[shape].to_owned())),
                )
                .collect();
            let set = Set {
                name: format!("random {picked:?}"),
                files: files.into_iter().map(|(n, s)| (n, s.into_bytes())).collect(),
                steps: vec![Step::Run(None)],
                setup: "",
                deviation: None,
            };
            case.set(case.get() + 1);
            hold_equal(&cluster, &set, &format!("random_{}", case.get()));
            Ok(())
        })
        .expect("a random sequence of shapes");
}

fn config_algorithm() -> proptest::test_runner::RngAlgorithm {
    proptest::test_runner::RngAlgorithm::ChaCha
}

/// The tables the random shapes use.
const BASE: &str = "CREATE TABLE t (id int);\nCREATE SCHEMA IF NOT EXISTS app;\n";

/// One file's worth of SQL each, over `t`: passing, failing, committing, setting.
fn shapes() -> Vec<&'static str> {
    vec![
        "INSERT INTO t VALUES (1);\n",
        "INSERT INTO t VALUES (2);\nCOMMIT;\n",
        "INSERT INTO t VALUES (3);\nEND;\nINSERT INTO t VALUES (4);\n",
        "INSERT INTO t VALUES (5);\nROLLBACK;\n",
        "INSERT INTO t VALUES (6); COMMIT AND CHAIN; INSERT INTO t VALUES (7);\n",
        "INSERT INTO t VALUES (1/0);\n",
        "INSERT INTO t VALUES (8);\nCOMMIT;\nSELECT 1/0;\n",
        "-- no-transaction\nINSERT INTO t VALUES (9);\nSELECT 1/0;\n",
        "-- no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS t_id ON t (id);\n",
        "DO $$\nBEGIN\n  INSERT INTO t VALUES (10);\nEND;\n$$;\n",
        "SAVEPOINT s;\nINSERT INTO t VALUES (11);\nROLLBACK TO SAVEPOINT s;\n",
        "SET search_path TO app, public;\nCREATE TABLE IF NOT EXISTS placed (id int);\n",
        "RESET search_path;\n",
        "SET lock_timeout = '3s';\nINSERT INTO t SELECT extract(epoch FROM current_setting('lock_timeout')::interval)::int;\n",
        "",
        "-- only a comment\n",
        "INSERT INTO t VALUES (12);\r\nINSERT INTO t VALUES (13);\r\n",
        "CREATE TABLE (;\n",
    ]
}

/// The server restarted while a migration runs (the failover resume): the run goes on from what
/// the database records, and the rows and the migrations table are what one uninterrupted
/// sqlx-cli run leaves, each migration applied once.
#[test]
fn a_restart_inside_a_run_leaves_what_an_uninterrupted_sqlx_cli_run_leaves() {
    for slow in [1, 3, 5] {
        let cluster = Cluster::started();
        let files: Vec<(String, Vec<u8>)> =
            std::iter::once(("0_log.sql".to_owned(), b"CREATE TABLE log (n int);\n".to_vec()))
                .chain((1..=5).map(|n| {
                    let pause = if n == slow { "SELECT pg_sleep(2);\n" } else { "" };
                    (format!("{n}_step.sql"), format!("INSERT INTO log VALUES ({n});\n{pause}").into_bytes())
                }))
                .collect();
        let set = Set {
            name: format!("restart inside file {slow}"),
            files,
            steps: vec![Step::Run(None)],
            setup: "",
            deviation: None,
        };
        let dir = write(&set);
        cluster.create_database("cli");
        cluster.create_database("us");
        sqlx_cli(&cluster, "cli", &dir, Step::Run(None)).assert_code(0);

        let source = dir.path().to_str().expect("utf-8 path");
        let running = Run::xtask(XTASK, &["migrate", "--source", source], &cluster.env("us")).spawn();
        assert!(
            testkit::eventually(Duration::from_secs(20), || cluster.psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(2)%' AND pid <> pg_backend_pid()"
            ) != "0"),
            "the slow migration never started"
        );
        cluster.stop();
        cluster.start();
        let outcome = running.wait_within(Duration::from_secs(60));
        outcome.assert_code(0).assert_stderr_contains("going on from what the database records");
        assert_eq!(
            cluster.psql("us", "SELECT string_agg(n::text, ',' ORDER BY n) FROM log"),
            "1,2,3,4,5",
            "restart inside file {slow}:\n{}",
            outcome.stderr
        );
        assert_eq!(state(&cluster, "cli"), state(&cluster, "us"), "restart inside file {slow}:\n{}", outcome.stderr);
    }
}

/// A file that ends its own transaction is never run again after a restart cut it off: what it
/// committed would be committed twice. The run stops and says so.
#[test]
fn a_restart_inside_a_file_that_commits_itself_is_not_run_again() {
    let cluster = Cluster::started();
    let dir = Migrations::empty();
    dir.write("0_log.sql", "CREATE TABLE log (n int);\n");
    dir.write("1_commits.sql", "INSERT INTO log VALUES (1);\nCOMMIT;\nSELECT pg_sleep(2);\n");
    let source = dir.path().to_str().expect("utf-8 path");
    let running = Run::xtask(XTASK, &["migrate", "--source", source], &cluster.env("app")).spawn();
    assert!(testkit::eventually(Duration::from_secs(20), || cluster.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(2)%' AND pid <> pg_backend_pid()"
    ) != "0"));
    cluster.stop();
    cluster.start();
    let outcome = running.wait_within(Duration::from_secs(60));
    outcome.assert_code(6).assert_stderr_contains("COMMIT of its own");
    assert_eq!(cluster.psql("app", "SELECT string_agg(n::text, ',') FROM log"), "1");
}

/// Our own table stays beside sqlx's whatever a migration leaves in the session: a search_path
/// of the user's, a role.
#[test]
fn our_table_stays_beside_sqlxs_whatever_the_migrations_leave_in_the_session() {
    let cluster = Cluster::started();
    let dir = Migrations::empty();
    dir.write(
        "1_app.sql",
        "CREATE SCHEMA app;\nCREATE ROLE oracle_other;\nGRANT CREATE ON SCHEMA app TO oracle_other;\nGRANT ALL ON _sqlx_migrations TO oracle_other;\n",
    );
    dir.write("2_path.sql", "SET search_path TO app, public;\nSET ROLE oracle_other;\n");
    let source = dir.path().to_str().expect("utf-8 path");
    let env = testkit::with(cluster.env("app"), "ENVIRONMENT", "staging");
    Run::xtask(XTASK, &["migrate", "--source", source], &env).output().assert_code(0);
    assert_eq!(
        cluster.psql(
            "app",
            "SELECT string_agg(n.nspname || '.' || c.relname || ' ' || pg_get_userbyid(c.relowner), ',' ORDER BY c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname IN ('_sqlx_migrations', '_prestart_environment')"
        ),
        "public._prestart_environment postgres,public._sqlx_migrations postgres"
    );
    assert_eq!(cluster.psql("app", "SELECT environment FROM public._prestart_environment"), "staging");
}
