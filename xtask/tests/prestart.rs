//! `cargo xtask prestart` against real PostgreSQL clusters, broken for real.

use std::time::Duration;

use testkit::{Cluster, Migrations, Run, eventually};

fn xtask(args: &[&str], env: &[(String, String)]) -> Run {
    Run::xtask(env!("CARGO_BIN_EXE_xtask"), args, env)
}

fn prestart(cluster: &Cluster, migrations: &Migrations, extra: &[&str]) -> Run {
    let source = migrations.path().to_str().expect("utf-8 path").to_owned();
    let mut args = vec!["prestart", "--source", &source];
    args.extend_from_slice(extra);
    xtask(&args, &cluster.env("app"))
}

#[test]
fn prepares_a_fresh_database_and_a_rerun_changes_nothing() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    let first = prestart(&cluster, &migrations, &[]).output();
    first
        .assert_code(0)
        .assert_stderr_contains("==> wait for the database")
        .assert_stderr_contains("applied 20261125090000 create users")
        .assert_stderr_contains("created the first superuser admin@example.com");
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM _sqlx_migrations WHERE success"), "3");
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM users WHERE is_superuser"), "1");
    let hash = cluster.psql("app", "SELECT hashed_password FROM users");
    assert!(hash.starts_with("$argon2id$"), "{hash}");

    let before = cluster.dump("app");
    let data_before =
        cluster.psql("app", "SELECT string_agg(key || '=' || value::text, ',' ORDER BY key) FROM app_settings");
    let second = prestart(&cluster, &migrations, &[]).output();
    second
        .assert_code(0)
        .assert_stderr_contains("up to date: all 3 migrations were already applied")
        .assert_stderr_contains("first superuser admin@example.com already exists; 0 default settings inserted");
    assert_eq!(cluster.dump("app"), before);
    assert_eq!(cluster.psql("app", "SELECT hashed_password FROM users"), hash, "the password hash was rewritten");
    assert_eq!(
        cluster.psql("app", "SELECT string_agg(key || '=' || value::text, ',' ORDER BY key) FROM app_settings"),
        data_before
    );
}

#[test]
fn waits_for_a_server_that_starts_later() {
    let cluster = Cluster::started();
    cluster.stop();
    let migrations = Migrations::workspace();
    let running = prestart(&cluster, &migrations, &["--wait-timeout", "60"]).spawn();
    running.wait_for_stderr("waiting: connection refused", Duration::from_secs(20));
    cluster.start();
    let outcome = running.wait();
    outcome
        .assert_code(0)
        .assert_stderr_contains("waiting: connection refused (attempt 1,")
        .assert_stderr_contains("likely cause: no PostgreSQL server listens on 127.0.0.1");
}

#[test]
fn waits_while_a_standby_refuses_connections_then_proceeds_once_promoted() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    cluster.stop();
    cluster.make_standby_without_hot_standby();
    cluster.start_no_wait();
    let running = prestart(&cluster, &migrations, &["--wait-timeout", "60"]).spawn();
    assert!(
        eventually(Duration::from_secs(20), || cluster.log().contains("database system is ready to accept read-only")
            || cluster.log().contains("entering standby mode")),
        "standby did not start:\n{}",
        cluster.log()
    );
    running.wait_for_stderr("(SQLSTATE 57P03)", Duration::from_secs(20));
    cluster.promote();
    let outcome = running.wait();
    outcome
        .assert_code(0)
        .assert_stderr_contains("(SQLSTATE 57P03)")
        .assert_stderr_contains("a standby that accepts no connections (hot_standby = off) until it is promoted")
        .assert_stderr_contains("applied 20261125090200 create jobs");
}

#[test]
fn gives_up_at_the_deadline_with_the_likely_cause() {
    let cluster = Cluster::stopped();
    let migrations = Migrations::workspace();
    let outcome = prestart(&cluster, &migrations, &["--wait-timeout", "2"]).output();
    outcome
        .assert_code(4)
        .assert_stderr_contains("error: database not reachable: postgres@127.0.0.1:")
        .assert_stderr_contains("did not become ready within")
        .assert_stderr_contains("likely cause: no PostgreSQL server listens on 127.0.0.1");
    assert!(outcome.elapsed < Duration::from_secs(10), "took {:?}", outcome.elapsed);
}

#[test]
fn a_wrong_password_fails_at_once_without_retrying() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    let outcome = prestart(&cluster, &migrations, &[]).env("POSTGRES_PASSWORD", "not the password").output();
    outcome
        .assert_code(5)
        .assert_stderr_contains("password authentication failed for user \"postgres\" (SQLSTATE 28P01)")
        .assert_stderr_contains("the password is wrong, or role \"postgres\" does not exist")
        .assert_stderr_contains("SELECT rolname FROM pg_roles WHERE rolname = 'postgres'")
        .assert_stderr_contains("a PostgreSQL data volume keeps the password it was first created with")
        .assert_stderr_lacks("waiting:");
    let attempts = cluster.log().matches("password authentication failed").count();
    assert_eq!(attempts, 1, "expected exactly one attempt, the server saw {attempts}:\n{}", cluster.log());
}

#[test]
fn a_missing_database_fails_at_once_with_the_command_that_creates_it() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    let outcome = prestart(&cluster, &migrations, &[]).env("POSTGRES_DB", "nosuchdb").output();
    outcome
        .assert_code(5)
        .assert_stderr_contains("database \"nosuchdb\" does not exist (SQLSTATE 3D000)")
        .assert_stderr_contains("cargo xtask database create, or prestart --create-database")
        .assert_stderr_lacks("waiting:");
}

#[test]
fn a_pg_hba_rejection_fails_at_once() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    let hba = cluster.data().join("pg_hba.conf");
    std::fs::write(&hba, "local all all trust\nhost all all 127.0.0.1/32 reject\n").expect("write pg_hba.conf");
    cluster.reload();
    let outcome = prestart(&cluster, &migrations, &[]).output();
    outcome.assert_code(5).assert_stderr_contains("pg_hba.conf").assert_stderr_contains("(SQLSTATE 28000)");
}

#[test]
fn libpq_variables_in_the_environment_are_ignored() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    // PGHOST and PGPORT point nowhere; they must not matter.
    prestart(&cluster, &migrations, &[])
        .env("PGHOST", "nowhere.invalid")
        .env("PGPORT", "1")
        .env("PGSSLMODE", "require")
        .output()
        .assert_code(0);
    // The right password in PGPASSWORD must not rescue a wrong POSTGRES_PASSWORD.
    prestart(&cluster, &migrations, &[])
        .env("POSTGRES_PASSWORD", "wrong")
        .env("PGPASSWORD", testkit::PASSWORD)
        .output()
        .assert_code(5);
}

#[test]
fn a_database_url_without_a_password_does_not_read_pgpass() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    let home = tempfile::tempdir().expect("home");
    let pgpass = home.path().join(".pgpass");
    std::fs::write(&pgpass, format!("*:*:*:*:{}\n", testkit::PASSWORD.replace(':', "\\:"))).expect("write .pgpass");
    testkit::set_mode(&pgpass, 0o600);
    let url = format!("postgres://postgres@127.0.0.1:{}/app?sslmode=disable", cluster.port);
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    let run = |env: Vec<(String, String)>| {
        xtask(&["prestart", "--source", &source], &env).env("HOME", home.path().to_str().expect("utf-8")).output()
    };
    let mut env = cluster.env("app");
    env.push(("DATABASE_URL".to_owned(), url));
    // The password in ~/.pgpass would work; it must not be used.
    run(env).assert_code(5).assert_stderr_contains("SQLSTATE 28P01");
    let mut env = cluster.env("app");
    env.retain(|(key, _)| key != "POSTGRES_PASSWORD");
    run(env).assert_code(5).assert_stderr_contains("SQLSTATE 28P01");
}

#[test]
fn prestart_wait_timeout_in_the_env_file_bounds_the_wait() {
    let cluster = Cluster::stopped();
    let migrations = Migrations::workspace();
    let env_file = cluster.scratch().join(".env");
    let text: String = cluster.env("app").iter().map(|(k, v)| format!("{k}='{v}'\n")).collect();
    std::fs::write(&env_file, format!("{text}PRESTART_WAIT_TIMEOUT=1\n")).expect("write .env");
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    let file = env_file.to_str().expect("utf-8").to_owned();
    let outcome = xtask(&["prestart", "--source", &source, "--env-file", &file], &[]).output();
    outcome.assert_code(4).assert_stderr_contains("(deadline 1 s)");
    // The command line wins over the file.
    let outcome = xtask(&["wait-for-db", "--env-file", &file, "--wait-timeout", "2"], &[]).output();
    outcome.assert_code(4).assert_stderr_contains("(deadline 2 s)");
}

#[test]
fn an_env_file_that_does_not_exist_is_a_configuration_error() {
    for command in [&["prestart"][..], &["doctor"], &["migrate", "status"], &["dev-db", "status"], &["lint-migrations"]]
    {
        let mut args = command.to_vec();
        args.extend(["--env-file", "/nonexistent/.env"]);
        let outcome = xtask(&args, &[]).output();
        outcome.assert_code(3).assert_stderr_contains("--env-file /nonexistent/.env: no such file");
    }
}

#[test]
fn a_database_url_with_an_encoded_password_works() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    let encoded = testkit::url_encoded(testkit::PASSWORD);
    let url = format!("postgres://postgres:{encoded}@127.0.0.1:{}/app?sslmode=disable", cluster.port);
    let env = [
        ("DATABASE_URL".to_owned(), url),
        ("FIRST_SUPERUSER".to_owned(), "admin@example.com".to_owned()),
        ("FIRST_SUPERUSER_PASSWORD".to_owned(), "first superuser secret".to_owned()),
    ];
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    xtask(&["prestart", "--source", &source], &env).output().assert_code(0);
}

/// The folder is listed while the connection starts, but a name it cannot use still ends the
/// run at once with exit 3, not after the wait for a server that is down (default deadline: 300 s).
#[test]
fn a_migrations_folder_that_cannot_be_used_fails_without_waiting_for_the_server() {
    let cluster = Cluster::stopped();
    for (file, expected) in [
        ("abc_not_a_version.sql", "error parsing migration filename \"abc_not_a_version.sql\""),
        ("20261125090000_again.sql", "two migrations share version 20261125090000"),
    ] {
        let migrations = Migrations::workspace();
        migrations.write(file, "SELECT 1;\n");
        let started = std::time::Instant::now();
        prestart(&cluster, &migrations, &[]).output().assert_code(3).assert_stderr_contains(expected);
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "it waited: {:?}", started.elapsed());
    }
}

/// The seed's files and this release's name are checked before the connection, and a mistake in
/// either ends the run at once with exit 3 and no wait; the migrations folder, listed while the
/// connection starts, is exit 3 too, even where the connection would have failed first.
#[test]
fn a_seed_folder_or_release_name_that_cannot_be_used_fails_without_waiting_for_the_server() {
    let cluster = Cluster::stopped();
    let migrations = Migrations::workspace();
    let missing = cluster.scratch().join("no-such-seeds");
    let missing = missing.to_str().expect("utf-8 path");
    let started = std::time::Instant::now();
    prestart(&cluster, &migrations, &["--seeds", missing])
        .output()
        .assert_code(3)
        .assert_stderr_contains("cannot read the seed folder")
        .assert_stderr_lacks("==> wait");
    let source = migrations.path().to_str().expect("utf-8 path").to_owned();
    let env = testkit::with(cluster.env("app"), "PRESTART_RELEASE", "v1 two words");
    xtask(&["prestart", "--source", &source], &env)
        .output()
        .assert_code(3)
        .assert_stderr_contains("PRESTART_RELEASE holds a character a release's name may not")
        .assert_stderr_lacks("==> wait");
    let migrations = Migrations::workspace();
    migrations.write("abc_not_a_version.sql", "SELECT 1;\n");
    prestart(&cluster, &migrations, &["--wait-timeout", "0"])
        .output()
        .assert_code(3)
        .assert_stderr_contains("error parsing migration filename");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "it waited: {:?}", started.elapsed());
}

/// A database whose `bytea_output` is `escape` (a legacy application's setting) is read as
/// sqlx-cli reads it: the no-op run and `migrate status` see the checksums, not a decoding error.
#[test]
fn a_database_that_prints_bytea_escaped_is_read_as_sqlx_cli_reads_it() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    prestart(&cluster, &migrations, &[]).output().assert_code(0);
    cluster.psql("postgres", "ALTER DATABASE app SET bytea_output = 'escape'");
    prestart(&cluster, &migrations, &[]).output().assert_code(0).assert_stderr_contains("up to date");
    let source = migrations.path().to_str().expect("utf-8 path").to_owned();
    let status = xtask(&["migrate", "status", "--source", &source], &cluster.env("app")).output();
    status.assert_code(0);
    assert_eq!(status.stdout.matches(" applied ").count(), 3, "{}", status.stdout);
}

/// A no-op run reads the seed's check with the migrations table; where that check cannot run yet
/// (a column the seed needs comes with a pending migration), the run migrates, then seeds.
#[test]
fn a_seed_check_that_needs_a_pending_migration_does_not_stop_it() {
    let cluster = Cluster::started();
    let migrations = Migrations::empty();
    migrations.write(
        "1_tables.sql",
        "CREATE TABLE users (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, hashed_password text NOT NULL, \
         is_superuser boolean NOT NULL DEFAULT false);\nCREATE TABLE app_settings (key text PRIMARY KEY, value jsonb NOT NULL);\n",
    );
    migrations.write(
        "2_email.sql",
        "ALTER TABLE users ADD COLUMN email text NOT NULL;\nCREATE UNIQUE INDEX users_email ON users (lower(email));\n",
    );
    let source = migrations.path().to_str().expect("utf-8 path").to_owned();
    xtask(&["migrate", "--source", &source, "--target-version", "1"], &cluster.env("app")).output().assert_code(0);
    prestart(&cluster, &migrations, &[]).output().assert_code(0).assert_stderr_contains("created the first superuser");
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM users"), "1");
}

#[test]
fn configuration_errors_name_the_variable_and_exit_3() {
    let cluster = Cluster::stopped();
    let migrations = Migrations::workspace();
    for (key, value, expected) in [
        ("POSTGRES_PORT", "abc", "POSTGRES_PORT is not a number"),
        ("POSTGRES_PORT", "70000", "POSTGRES_PORT is out of range"),
        ("POSTGRES_SERVER", "", "POSTGRES_SERVER is not set"),
        ("POSTGRES_SSLMODE", "sometimes", "POSTGRES_SSLMODE is not a known mode"),
        (
            "POSTGRES_SSLROOTCERT",
            "/nonexistent/root.crt",
            "POSTGRES_SSLROOTCERT names /nonexistent/root.crt, which cannot be read",
        ),
        ("POSTGRES_SSLROOTCERT", "/tmp", "POSTGRES_SSLROOTCERT names /tmp, which cannot be read (not a file)"),
        ("PRESTART_WAIT_TIMEOUT", "soon", "PRESTART_WAIT_TIMEOUT is not a whole number of seconds"),
        ("FIRST_SUPERUSER", "", "FIRST_SUPERUSER is not set"),
    ] {
        let outcome = prestart(&cluster, &migrations, &[]).env(key, value).output();
        outcome.assert_code(3).assert_stderr_contains(expected).assert_stderr_lacks("==> wait");
    }
}

#[test]
fn a_malformed_env_file_names_file_and_line_but_not_the_value() {
    let cluster = Cluster::stopped();
    let migrations = Migrations::workspace();
    let env_file = cluster.scratch().join(".env");
    std::fs::write(&env_file, format!("POSTGRES_DB=app\nPOSTGRES_PASSWORD='{}\nOTHER=1\n", testkit::PASSWORD))
        .expect("write .env");
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    let file = env_file.to_str().expect("utf-8").to_owned();
    let outcome = xtask(&["prestart", "--source", &source, "--env-file", &file], &[]).output();
    outcome.assert_code(3).assert_stderr_contains(".env line 2: cannot parse the value of POSTGRES_PASSWORD");
}

#[test]
fn sigterm_while_waiting_stops_within_a_second() {
    let cluster = Cluster::stopped();
    let migrations = Migrations::workspace();
    let running = prestart(&cluster, &migrations, &["--wait-timeout", "60"]).spawn();
    running.wait_for_stderr("waiting: connection refused", Duration::from_secs(20));
    let sent = std::time::Instant::now();
    running.signal("TERM");
    let outcome = running.wait();
    outcome.assert_code(143).assert_stderr_contains("error: interrupted by SIGTERM");
    assert!(sent.elapsed() < Duration::from_secs(2), "took {:?} to stop", sent.elapsed());
}

#[test]
fn eight_prestarts_at_once_all_succeed_and_apply_each_migration_once() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    let runs: Vec<_> = (0..8).map(|_| prestart(&cluster, &migrations, &[]).spawn()).collect();
    for outcome in runs.into_iter().map(testkit::Running::wait) {
        outcome.assert_code(0);
    }
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM _sqlx_migrations"), "3");
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM users"), "1");
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM app_settings"), "2");
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"), "0");
}

#[test]
fn sigint_while_waiting_exits_130() {
    let cluster = Cluster::stopped();
    let migrations = Migrations::workspace();
    let running = prestart(&cluster, &migrations, &["--wait-timeout", "60"]).spawn();
    running.wait_for_stderr("waiting: connection refused", Duration::from_secs(20));
    running.signal("INT");
    running.wait().assert_code(130).assert_stderr_contains("error: interrupted by SIGINT");
}

#[test]
fn a_misspelt_variable_is_named_with_the_file_in_use() {
    let cluster = Cluster::stopped();
    let migrations = Migrations::workspace();
    let env_file = cluster.scratch().join("staging.env");
    let lines: String = cluster
        .env("app")
        .iter()
        .map(|(key, value)| {
            let key = if key == "POSTGRES_SERVER" { "POSTGRES_SERVR" } else { key.as_str() };
            format!("{key}='{value}'\n")
        })
        .collect();
    std::fs::write(&env_file, lines).expect("write the env file");
    let file = env_file.to_str().expect("utf-8");
    let source = migrations.path().to_str().expect("utf-8");
    xtask(&["prestart", "--source", source, "--env-file", file], &[])
        .output()
        .assert_code(3)
        .assert_stderr_contains("POSTGRES_SERVER is not set (POSTGRES_SERVR is set: did you mean POSTGRES_SERVER?)")
        .assert_stderr_contains(&format!("set it in {file}"));
}

/// A runtime error has no position; the server names the table and column, and with them the
/// one statement of the file that touches both.
#[test]
fn an_error_without_a_position_names_its_statement() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    migrations.write(
        "20261201000000_people.sql",
        "CREATE TABLE people (nickname text);\nINSERT INTO people VALUES (NULL);\n",
    );
    prestart(&cluster, &migrations, &[]).output().assert_code(0);
    migrations.write(
        "20261201000001_nickname_required.sql",
        "ALTER TABLE people ADD COLUMN age int;\n\nALTER TABLE people\n  ALTER COLUMN nickname SET NOT NULL;\n",
    );
    prestart(&cluster, &migrations, &[])
        .output()
        .assert_code(6)
        .assert_stderr_contains(
            "20261201000001_nickname_required.sql:3: column \"nickname\" of relation \"people\" contains null values",
        )
        .assert_stderr_contains("in the statement on column nickname of table people");
}

/// In a container, a first attempt that meets the container's own empty loopback (the seed's
/// `localhost` mistake in compose) is unlikely to change by waiting: the default deadline
/// shrinks to 30 s and says so, while a deadline the user chose is kept.
#[test]
fn a_hopeless_wait_in_a_container_gives_up_early_unless_told_otherwise() {
    let cluster = Cluster::stopped();
    let migrations = Migrations::workspace();
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    let env = testkit::with(cluster.env("app"), "POSTGRES_SERVER", "localhost");
    let started = std::time::Instant::now();
    let outcome = xtask(&["prestart", "--context", "container", "--source", &source], &env).output();
    outcome
        .assert_code(4)
        .assert_stderr_contains("points at the container itself")
        .assert_stderr_contains("the deadline is now 30 s, not 300");
    // The cause is said once while it waits (then only the time left every 5 s), and once more in
    // the final error, which stands alone.
    assert_eq!(outcome.stderr.matches("likely cause:").count(), 2, "{}", outcome.stderr);
    assert!(outcome.stderr.matches("waiting: ").count() >= 6, "{}", outcome.stderr);
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(29) && took < Duration::from_secs(90), "took {took:?}");
    xtask(&["prestart", "--context", "container", "--wait-timeout", "2", "--source", &source], &env)
        .output()
        .assert_code(4)
        .assert_stderr_lacks("the deadline is now");
}
