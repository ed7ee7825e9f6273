//! The running release survives the deploy (issue 31): release v1 of this workspace (its queries
//! on `jobs`, built into the binary) is deployed by prestart, then v2 comes with one more
//! migration. A migration that breaks a query of v1 is refused with exit 6 and leaves the schema
//! and `_sqlx_migrations` as they were; an additive one passes without a word; a contract step
//! passes with its line; the offline check of `lint-migrations --against` finds the same.

use testkit::{Cluster, Migrations, Outcome, Project, Run};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn prestart(release: &str, env: &[(String, String)], migrations: &Migrations) -> Outcome {
    let source = migrations.path().to_str().expect("utf-8");
    let env = testkit::with(env.to_vec(), "PRESTART_RELEASE", release);
    Run::xtask(XTASK, &["prestart", "--source", source], &env).output()
}

/// A database with release v1 deployed: the workspace's migrations, its queries recorded.
fn v1_deployed(cluster: &Cluster, database: &str) -> (Vec<(String, String)>, Migrations) {
    cluster.create_database(database);
    let env = cluster.env(database);
    let migrations = Migrations::workspace();
    prestart("v1", &env, &migrations).assert_code(0).assert_stderr_contains("recorded release v1 with its 6 queries");
    (env, migrations)
}

/// The schema and the migrations table, to hold a refused run to "nothing changed".
fn state(cluster: &Cluster, database: &str) -> String {
    format!(
        "{}\n{}",
        cluster.schema(database),
        cluster.psql(database, "SELECT string_agg(version::text, ',' ORDER BY version) FROM _sqlx_migrations")
    )
}

#[test]
fn a_migration_that_breaks_the_release_before_is_refused_and_leaves_nothing() {
    let cluster = Cluster::started();
    for (name, sql, says) in [
        ("rename", "ALTER TABLE jobs RENAME COLUMN kind TO job_kind;\n", "column \"kind\" does not exist"),
        (
            "bigint",
            "ALTER TABLE jobs ALTER COLUMN attempts TYPE bigint;\n",
            "`attempts` changes type from int4 to int8",
        ),
        (
            "tenant",
            "ALTER TABLE jobs ADD COLUMN tenant text NOT NULL;\n",
            "leaves out `tenant`, which becomes NOT NULL without a default",
        ),
        (
            "rename_outside_a_transaction",
            "-- no-transaction\nALTER TABLE jobs RENAME COLUMN kind TO job_kind;\n",
            "checked on a throwaway copy of the schema first",
        ),
    ] {
        let database = format!("refused_{name}");
        let (env, migrations) = v1_deployed(&cluster, &database);
        let before = state(&cluster, &database);
        migrations.write(&format!("20990101000000_{name}.sql"), sql);
        prestart("v2", &env, &migrations)
            .assert_code(6)
            .assert_stderr_contains(&format!("20990101000000_{name}.sql would break"))
            .assert_stderr_contains("of release v1")
            .assert_stderr_contains(says)
            .assert_stderr_contains("docs/releases.md")
            .assert_stderr_contains("nothing of it was applied");
        assert_eq!(state(&cluster, &database), before, "{name}: the refused run changed the database");
        // v2 was not recorded: the next attempt is checked against v1 again.
        assert_eq!(cluster.psql(&database, "SELECT string_agg(name, ',') FROM _prestart_releases"), "v1");
    }
}

#[test]
fn additive_migrations_pass_without_a_finding_and_earlier_files_commit_before_a_refusal() {
    let cluster = Cluster::started();
    let (env, migrations) = v1_deployed(&cluster, "additive");
    migrations.write("20990101000000_note.sql", "ALTER TABLE jobs ADD COLUMN note text;\n");
    migrations.write("20990101000001_tags.sql", "CREATE TABLE tags (id bigint PRIMARY KEY, name text NOT NULL);\n");
    migrations.write(
        "20990101000002_index.sql",
        "-- no-transaction\nCREATE INDEX CONCURRENTLY jobs_kind_idx ON jobs (kind);\n",
    );
    let outcome = prestart("v2", &env, &migrations);
    outcome.assert_code(0).assert_stderr_contains("checking each migration against the 6 queries of release v1");
    outcome.assert_stderr_lacks("would break").assert_stderr_lacks("warning");
    // v3 adds a column and then renames one: the first commits, the second is refused.
    migrations.write("20990102000000_level.sql", "ALTER TABLE jobs ADD COLUMN level int;\n");
    migrations.write("20990102000001_rename.sql", "ALTER TABLE jobs RENAME COLUMN payload TO body;\n");
    prestart("v3", &env, &migrations).assert_code(6).assert_stderr_contains("of release v2");
    assert_eq!(
        cluster.psql("additive", "SELECT max(version) FROM _sqlx_migrations"),
        "20990102000000",
        "the file before the refused one stays applied, as sqlx-cli would leave it"
    );
    assert_eq!(
        cluster.psql("additive", "SELECT count(*) FROM information_schema.columns WHERE column_name = 'body'"),
        "0"
    );
}

#[test]
fn a_contract_step_passes_with_its_line_and_a_column_made_nullable_is_only_reported() {
    let cluster = Cluster::started();
    let (env, migrations) = v1_deployed(&cluster, "contract");
    migrations.write("20990101000000_nullable.sql", "ALTER TABLE jobs ALTER COLUMN kind DROP NOT NULL;\n");
    prestart("v2", &env, &migrations)
        .assert_code(0)
        .assert_stderr_contains("its result column `kind`, read as NOT NULL, may now be NULL (reported, not refused");
    migrations.write(
        "20990102000000_drop_kind.sql",
        "-- v2 reads kind no more\n-- prestart: contract\nALTER TABLE jobs DROP COLUMN kind;\n",
    );
    prestart("v3", &env, &migrations)
        .assert_code(0)
        .assert_stderr_contains("20990102000000_drop_kind.sql is a contract step (`-- prestart: contract`): applied although it breaks 4 queries of the release before");
    assert_eq!(
        cluster.psql("contract", "SELECT count(*) FROM information_schema.columns WHERE column_name = 'kind'"),
        "0"
    );
}

#[test]
fn the_record_keeps_ten_releases_a_no_op_writes_nothing_and_local_only_warns() {
    let cluster = Cluster::started();
    let (env, migrations) = v1_deployed(&cluster, "record");
    let stamp = "SELECT last_deployed FROM _prestart_releases WHERE name = 'v1'";
    let before = cluster.psql("record", stamp);
    prestart("v1", &env, &migrations).assert_code(0).assert_stderr_lacks("recorded release");
    assert_eq!(cluster.psql("record", stamp), before, "a no-op run of the newest release wrote its record");
    for n in 2..=12 {
        prestart(&format!("v{n}"), &env, &migrations).assert_code(0);
    }
    assert_eq!(
        cluster.psql("record", "SELECT string_agg(name, ',' ORDER BY last_deployed DESC) FROM _prestart_releases"),
        "v12,v11,v10,v9,v8,v7,v6,v5,v4,v3"
    );
    let source = migrations.path().to_str().expect("utf-8");
    let unknown = Run::xtask(XTASK, &["prestart", "--source", source, "--compatible-with", "v1"], &env);
    migrations.write("20990101000000_rename.sql", "ALTER TABLE jobs RENAME COLUMN kind TO job_kind;\n");
    unknown.output().assert_code(6).assert_stderr_contains("--compatible-with v1: no release of that name is recorded");
    // A laptop's database serves no earlier release: said, and applied.
    let local = testkit::with(env.clone(), "ENVIRONMENT", "local");
    prestart("v13", &local, &migrations)
        .assert_code(0)
        .assert_stderr_contains("breaks 4 queries of the release before (applied: ENVIRONMENT=local");
}

#[test]
fn lint_migrations_against_a_git_ref_reports_a_rename() {
    let project = Project::new(XTASK);
    project.write(".env", "");
    for entry in std::fs::read_dir(testkit::workspace().join(".sqlx")).expect(".sqlx").flatten() {
        let query = std::fs::read_to_string(entry.path()).expect("a query file");
        project.write(&format!(".sqlx/{}", entry.file_name().to_str().expect("utf-8")), &query);
    }
    let git = |args: &[&str]| {
        let status = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(project.path())
            .output()
            .expect("git");
        assert!(status.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&status.stderr));
    };
    git(&["init", "-q"]);
    git(&["add", "migrations", ".sqlx"]);
    git(&["commit", "-qm", "v1"]);
    project.write("migrations/20990101000000_rename.sql", "ALTER TABLE jobs RENAME COLUMN kind TO job_kind;\n");
    let lint = |format: &str| {
        Run::program(project.path().join("xtask"), &["lint-migrations", "--against", "HEAD", "--format", format], &[])
            .output()
    };
    let text = lint("text");
    text.assert_code(1).assert_stderr_contains("the ones added since HEAD");
    assert!(
        text.stdout.contains("migrations/20990101000000_rename.sql:1: breaks-previous-release: HEAD (")
            && text.stdout.contains("column \"kind\" does not exist"),
        "{}",
        text.stdout
    );
    let json: serde_json::Value = serde_json::from_str(&lint("json").stdout).expect("json");
    let rules: Vec<&str> = json.as_array().expect("array").iter().filter_map(|f| f["rule"].as_str()).collect();
    assert_eq!(rules.iter().filter(|r| **r == "breaks-previous-release").count(), 4, "{json}");
    // Additive: nothing to say.
    std::fs::remove_file(project.path().join("migrations/20990101000000_rename.sql")).expect("remove");
    project.write("migrations/20990101000000_note.sql", "ALTER TABLE jobs ADD COLUMN note text;\n");
    lint("text").assert_code(0);
    // A ref git does not know is the user's mistake: said, exit 3.
    Run::program(project.path().join("xtask"), &["lint-migrations", "--against", "no-such-release"], &[])
        .output()
        .assert_code(3)
        .assert_stderr_contains("--against no-such-release: not a commit of the git repository");
}

#[test]
fn statements_of_other_clients_in_pg_stat_statements_are_checked_too() {
    let cluster = Cluster::stopped();
    cluster.write_conf("shared_preload_libraries = 'pg_stat_statements'");
    cluster.start();
    cluster.create_database("statements");
    let env = cluster.env("statements");
    let migrations = Migrations::workspace();
    migrations.write("20990101000000_reports.sql", "CREATE TABLE reports (id int PRIMARY KEY, title text);\n");
    // Without the extension in the database, the run says so and goes on.
    prestart("v1", &env, &migrations).assert_code(0).assert_stderr_contains("pg_stat_statements is not installed");
    cluster.psql("statements", "CREATE EXTENSION pg_stat_statements");
    // A reporting service that is no release of ours, with a query built at run time.
    cluster.psql("statements", "SELECT title FROM reports WHERE id = 7");
    cluster.psql("statements", "SELECT title FROM reports WHERE id = 8");
    // Run once, by hand: not a client's query, left out.
    cluster.psql("statements", "SELECT id, title FROM reports");
    migrations.write("20990102000000_rename.sql", "ALTER TABLE reports RENAME COLUMN title TO name;\n");
    prestart("v2", &env, &migrations)
        .assert_code(6)
        .assert_stderr_contains("statements of this database's clients to check too")
        .assert_stderr_contains("of pg_stat_statements")
        .assert_stderr_contains("`SELECT title FROM reports WHERE id = $1`: no longer prepares")
        .assert_stderr_lacks("SELECT id, title FROM reports`");
    assert_eq!(
        cluster.psql("statements", "SELECT count(*) FROM information_schema.columns WHERE column_name = 'title'"),
        "1"
    );
}

/// What a contract step of a run breaks is said of it alone: the files after it in the same run
/// are judged on what they change (a review's finding: every later file was refused).
#[test]
fn a_contract_step_does_not_spoil_the_files_after_it_in_the_same_run() {
    let cluster = Cluster::started();
    let (env, migrations) = v1_deployed(&cluster, "contract_then_more");
    migrations.write("20990101000000_drop_error.sql", "-- prestart: contract\nALTER TABLE jobs DROP COLUMN error;\n");
    migrations.write("20990101000001_note.sql", "ALTER TABLE jobs ADD COLUMN note text;\n");
    let outcome = prestart("v2", &env, &migrations);
    outcome.assert_code(0).assert_stderr_contains("20990101000000_drop_error.sql is a contract step");
    outcome.assert_stderr_lacks("20990101000001_note.sql breaks").assert_stderr_lacks("would break");
    assert_eq!(cluster.psql("contract_then_more", "SELECT max(version) FROM _sqlx_migrations"), "20990101000001");
}

/// The release deployed last is what serves during the rollout, whatever its name: a redeploy
/// under the same name (a `PRESTART_RELEASE` that names no version, a release named by its
/// unchanged queries) is checked against it, not against an older one or none.
#[test]
fn a_release_under_the_name_of_the_one_serving_is_checked_against_it() {
    let cluster = Cluster::started();
    let (env, migrations) = v1_deployed(&cluster, "same_name");
    migrations.write("20990101000000_rename.sql", "ALTER TABLE jobs RENAME COLUMN kind TO job_kind;\n");
    prestart("v1", &env, &migrations).assert_code(6).assert_stderr_contains("of release v1");
}

/// When the check itself cannot run (here a lock another session holds on a table the release's
/// queries read), nothing is applied, and the run says that the check failed, not the migration.
#[test]
fn a_check_that_cannot_run_applies_nothing_and_says_so() {
    let cluster = Cluster::started();
    let (env, migrations) = v1_deployed(&cluster, "locked");
    let mut holder = cluster.psql_command("locked");
    holder.args(["-c", "BEGIN; LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60)"]);
    let mut holder = holder.spawn().expect("psql");
    assert!(testkit::eventually(std::time::Duration::from_secs(10), || {
        cluster.psql("locked", "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND granted AND relation = 'jobs'::regclass")
            == "1"
    }));
    migrations.write("20990101000000_settings_note.sql", "ALTER TABLE app_settings ADD COLUMN note text;\n");
    let outcome = prestart("v2", &env, &migrations);
    let _ = holder.kill();
    let _ = holder.wait();
    outcome
        .assert_code(6)
        .assert_stderr_contains("the release check could not describe the queries")
        .assert_stderr_contains("nothing was applied");
    assert_eq!(cluster.psql("locked", "SELECT count(*) FROM _sqlx_migrations"), "3");
}

/// The no-op learns the release recorded last from the environment's record it reads anyway (no
/// relation more to open); a record made before those columns costs one write, then none. A
/// release's name is a tag, a version or a commit: anything else is a configuration error.
#[test]
fn a_no_op_reads_the_release_from_the_environments_record_and_a_name_is_checked() {
    let cluster = Cluster::started();
    let (env, migrations) = v1_deployed(&cluster, "older_record");
    cluster
        .psql("older_record", "ALTER TABLE _prestart_environment DROP COLUMN release, DROP COLUMN release_fingerprint");
    prestart("v1", &env, &migrations).assert_code(0).assert_stderr_contains("recorded release v1");
    prestart("v1", &env, &migrations).assert_code(0).assert_stderr_lacks("recorded release");
    assert_eq!(cluster.psql("older_record", "SELECT release FROM _prestart_environment"), "v1");
    prestart("v1; DROP TABLE jobs", &env, &migrations)
        .assert_code(3)
        .assert_stderr_contains("PRESTART_RELEASE holds a character a release's name may not")
        .assert_stderr_lacks("DROP TABLE");
}
