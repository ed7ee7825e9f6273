//! A password never reaches any output: random secrets, in every settings field that holds one
//! and in every malformed shape of a `.env` line or URL, through every command that reads settings.

use proptest::prelude::*;
use testkit::{Cluster, Project, Run};

/// Every command that reads the settings, with a short wait so an unreachable server costs little.
const COMMANDS: &[&[&str]] = &[
    &["prestart", "--wait-timeout", "1"],
    &["wait-for-db", "--wait-timeout", "1"],
    &["migrate", "--wait-timeout", "1"],
    &["migrate", "status", "--wait-timeout", "1"],
    &["seed", "--wait-timeout", "1"],
    &["doctor"],
    &["doctor", "--json"],
    // Built on the configured server only when asked: by default a throwaway cluster takes no password.
    &["sqlx-prepare", "--check", "--build-on-server", "--wait-timeout", "1"],
    &["schema", "dump", "--check", "--build-on-server", "--wait-timeout", "1"],
    &["schema", "drift", "--wait-timeout", "1"],
    &["schema", "drift", "--json", "--wait-timeout", "1"],
    &["database", "create", "--wait-timeout", "1"],
    &["database", "drop", "--yes", "--wait-timeout", "1"],
    &["database", "reset", "--yes", "--wait-timeout", "1"],
    &["database", "setup", "--wait-timeout", "1"],
    &["migrate", "revert", "--wait-timeout", "1"],
    &["lint-migrations"],
];

/// The commands that may succeed with a wrong password: they read the database only when it
/// answers.
const WITHOUT_DATABASE: &[&str] = &["lint-migrations"];

/// The ways a user writes a secret into `.env`, well-formed or not. `{S}` is the secret as typed,
/// `{E}` percent-encoded, `{P}` the cluster's port.
const SHAPES: &[&str] = &[
    "POSTGRES_PASSWORD={S}",
    "POSTGRES_PASSWORD=\"{S}\"",
    "POSTGRES_PASSWORD='{S}'",
    "POSTGRES_PASSWORD='{S}",
    "export POSTGRES_PASSWORD={S} # comment",
    "DATABASE_URL=postgres://postgres:{S}@127.0.0.1:{P}/app",
    "DATABASE_URL='postgres://postgres:{S}@127.0.0.1:{P}/app'",
    "DATABASE_URL='postgres://postgres:{E}@127.0.0.1:{P}/app'",
    "DATABASE_URL='postgres://postgres:{E}@127.0.0.1:notaport/app'",
    "DATABASE_URL='postgres://postgres:{E}@127.0.0.1:{P}/app?sslmode={E}'",
    "DATABASE_URL='postgres://postgres@127.0.0.1:{P}/app?password={E}'",
    "FIRST_SUPERUSER_PASSWORD={S}",
    "FIRST_SUPERUSER_PASSWORD='{S}'",
    "POSTGRES_PORT='{S}'",
    "POSTGRES_SSLMODE='{S}'",
    "{S}",
];

/// The line of [`settings_file`] that holds the shape.
const SHAPE_LINE: usize = 9;

/// `docker` with the compose v2 plugin, as far as doctor sees it: `docker compose config` rejects
/// the project with the message in `rejection` beside it.
const FAKE_DOCKER: &str = "#!/bin/sh\n\
case \"$1 $2\" in\n\
  \"compose version\") echo 'Docker Compose version v2.29.7'; exit 0 ;;\n\
esac\n\
cat \"$(dirname \"$0\")/rejection\" >&2\n\
exit 15\n";

fn settings_file(cluster: &Cluster, shape: &str, secret: &str) -> String {
    let line = shape
        .replace("{S}", secret)
        .replace("{E}", &testkit::url_encoded(secret))
        .replace("{P}", &cluster.port.to_string());
    format!(
        "POSTGRES_SERVER=127.0.0.1\nPOSTGRES_PORT={}\nPOSTGRES_DB=app\nPOSTGRES_USER=postgres\n\
         POSTGRES_PASSWORD=wrong-but-harmless\nPOSTGRES_SSLMODE=disable\nFIRST_SUPERUSER=admin@example.com\n\
         FIRST_SUPERUSER_PASSWORD=also-harmless\n{line}\nENVIRONMENT=local\n",
        cluster.port
    )
}

/// The secrets and settings shapes every case draws from: twelve cases, in two tests that run side
/// by side (the commands, and doctor's compose checks), each under a minute on a loaded machine.
fn cases(check: impl Fn(&Cluster, &str, &str) -> Result<(), proptest::test_runner::TestCaseError>) {
    // One server for every case: a wrong password is refused by a real server, not a stub.
    let cluster = Cluster::started();
    let config = ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() };
    let secrets = "[a-zA-Z0-9 !#$%&()*+,./:;<=>?@^_{|}~\"'\\\\-]{10,24}";
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&(secrets, 0..SHAPES.len()), |(secret, shape)| check(&cluster, SHAPES[shape], &secret));
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

#[test]
fn no_secret_reaches_any_commands_output() {
    cases(|cluster, shape, secret| {
        let dir = tempfile::tempdir().expect("temp dir");
        let env_file = dir.path().join(".env");
        std::fs::write(&env_file, settings_file(cluster, shape, secret)).expect("write .env");
        let env_file = env_file.to_str().expect("utf-8 path");
        for command in COMMANDS {
            let mut args = command.to_vec();
            args.extend(["--env-file", env_file]);
            let outcome = Run::xtask(env!("CARGO_BIN_EXE_xtask"), &args, &[]).output();
            outcome.assert_lacks_secret(secret);
            let may_succeed = WITHOUT_DATABASE.contains(&command[0]);
            prop_assert!(may_succeed || outcome.code != Some(0), "{command:?} succeeded with a wrong password");
        }
        Ok(())
    });
}

/// doctor's compose checks, in a project whose `.env` is that file: the compose tool of this
/// machine, and compose v2's parser, which quotes the file from the line it rejects on.
#[test]
fn no_secret_reaches_doctors_output() {
    cases(|cluster, shape, secret| {
        let project = Project::new(env!("CARGO_BIN_EXE_xtask"));
        let settings = settings_file(cluster, shape, secret);
        let env_file = project.write(".env", &settings);
        testkit::set_mode(&env_file, 0o600);
        project.write(
            "docker-compose.yml",
            &std::fs::read_to_string(testkit::workspace().join("docker-compose.yml")).expect("compose file"),
        );
        let rest: Vec<&str> = settings.lines().skip(SHAPE_LINE - 1).collect();
        let mut rejections = vec![format!(
            "failed to read {}: line {SHAPE_LINE}: unexpected character \"'\" in variable name near {:?}",
            env_file.display(),
            rest.join("\n")
        )];
        // A reader that prints the line it rejects as it is, where ours rejects the file too.
        if backend::config::read_env_file(&env_file).is_err() {
            rejections.push(format!("{}: line {SHAPE_LINE}: cannot parse {}", env_file.display(), rest[0]));
        }
        let path = std::env::var("PATH").expect("PATH");
        let mut paths = vec![path.clone()];
        for (i, rejection) in rejections.iter().enumerate() {
            let bin = project.path().join(format!("compose-v2-{i}"));
            project.write(&format!("compose-v2-{i}/rejection"), &format!("{rejection}\n"));
            let docker = project.write(&format!("compose-v2-{i}/docker"), FAKE_DOCKER);
            testkit::set_mode(&docker, 0o755);
            paths.push(format!("{}:{path}", bin.display()));
        }
        for path in paths {
            for args in [&["doctor"][..], &["doctor", "--json"]] {
                let outcome = project.run(args, &[("PATH".to_owned(), path.clone())]).output();
                outcome.assert_lacks_secret(secret);
                prop_assert!(outcome.code != Some(0), "{args:?} passed with a wrong password");
            }
        }
        Ok(())
    });
}

/// The folder of the PostgreSQL server binaries, found as xtask finds it.
fn server_bindir() -> std::path::PathBuf {
    let which = std::process::Command::new("which").arg("pg_ctl").output().expect("which");
    let found = std::path::PathBuf::from(String::from_utf8_lossy(&which.stdout).trim());
    if let Some(dir) = std::fs::canonicalize(&found).ok().and_then(|p| p.parent().map(std::path::Path::to_path_buf))
        && dir.join("initdb").is_file()
    {
        return dir;
    }
    let mut versions: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql")
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin)| bin.join("pg_ctl").is_file())
        .collect();
    versions.sort();
    versions.pop().expect("PostgreSQL server binaries").1
}

/// A folder of programs that write their environment to `NAME.env` beside them, then run `real`
/// (or exit 0 when it is empty), for a PATH that finds them first.
fn recording(dir: &std::path::Path, programs: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("folder");
    for (name, script) in programs {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\nenv > \"$(dirname \"$0\")/{name}.env\"\n{script}\n")).expect("write");
        testkit::set_mode(&path, 0o755);
    }
}

/// What the recorded program got of the environment, as `NAME=value` lines.
fn recorded(dir: &std::path::Path, name: &str) -> Vec<String> {
    let text =
        std::fs::read_to_string(dir.join(format!("{name}.env"))).unwrap_or_else(|e| panic!("{name} never ran: {e}"));
    text.lines().map(str::to_owned).collect()
}

/// Secrets of the settings and of the process that neither pg_dump nor cargo needs.
fn unrelated_secrets() -> Vec<(String, String)> {
    [
        ("FIRST_SUPERUSER", "admin@example.com"),
        ("FIRST_SUPERUSER_PASSWORD", "first superuser secret"),
        ("MIGRATION_SECRET_OF_ANOTHER_APP", "another app's secret"),
        ("PGSERVICEFILE", "/nonexistent/pg_service.conf"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[track_caller]
fn assert_only_needed(env: &[String], needed: &[&str]) {
    for line in env {
        let name = line.split('=').next().unwrap_or_default();
        let settings = name.starts_with("POSTGRES_")
            || name.starts_with("FIRST_SUPERUSER")
            || name.ends_with("DATABASE_URL") && !needed.contains(&name)
            || name.contains("SECRET")
            || name == "PGSERVICEFILE"
            || line.contains("secret");
        assert!(!settings, "passed on: {line}");
    }
    for name in needed {
        assert!(env.iter().any(|line| line.starts_with(&format!("{name}="))), "{name} not passed: {env:?}");
    }
}

/// pg_dump gets the connection and nothing else: no settings variable, and without a password
/// PGPASSFILE=/dev/null (not an empty PGPASSWORD, which sends libpq to ~/.pgpass).
#[test]
fn pg_dump_gets_no_secret_and_no_pgpass() {
    let cluster = Cluster::started();
    let dir = tempfile::tempdir().expect("temp dir");
    let bindir = server_bindir();
    let fake = dir.path().join("bin");
    let exec = |name: &str| format!("exec {} \"$@\"", bindir.join(name).display());
    recording(&fake, &[("pg_ctl", &exec("pg_ctl")), ("initdb", &exec("initdb")), ("pg_dump", &exec("pg_dump"))]);
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    std::fs::write(home.join(".pgpass"), "*:*:*:*:pgpass secret\n").expect(".pgpass");
    testkit::set_mode(&home.join(".pgpass"), 0o600);
    // Over the cluster's Unix socket, trusted: no password at all.
    let socket = cluster.data().parent().expect("cluster folder").display().to_string();
    let mut env = vec![
        ("POSTGRES_SERVER".to_owned(), socket),
        ("POSTGRES_PORT".to_owned(), cluster.port.to_string()),
        ("POSTGRES_DB".to_owned(), "app".to_owned()),
        ("POSTGRES_USER".to_owned(), testkit::SUPERUSER.to_owned()),
        ("PATH".to_owned(), format!("{}:{}", fake.display(), std::env::var("PATH").expect("PATH"))),
        ("HOME".to_owned(), home.display().to_string()),
    ];
    env.extend(unrelated_secrets());
    let output = dir.path().join("schema.sql");
    let args = ["schema", "dump", "--wait-timeout", "10", "--output", output.to_str().expect("utf-8")];
    Run::xtask(env!("CARGO_BIN_EXE_xtask"), &args, &env).output().assert_code(0);
    let got = recorded(&fake, "pg_dump");
    assert_only_needed(&got, &["PATH", "HOME", "PGSSLMODE"]);
    assert!(got.iter().any(|line| line == "PGPASSFILE=/dev/null"), "{got:?}");
    assert!(!got.iter().any(|line| line.starts_with("PGPASSWORD=")), "{got:?}");
}

/// `cargo sqlx` gets the throwaway database's DATABASE_URL and what cargo needs, no other setting.
#[test]
fn cargo_sqlx_gets_only_its_database_url() {
    let cluster = Cluster::started();
    let dir = tempfile::tempdir().expect("temp dir");
    let fake = dir.path().join("bin");
    let lock = std::fs::read_to_string(testkit::workspace().join("Cargo.lock")).expect("Cargo.lock");
    let version =
        lock.split("name = \"sqlx\"\nversion = \"").nth(1).and_then(|rest| rest.split('"').next()).expect("sqlx");
    // sqlx-cli as far as sqlx-prepare sees it: the locked version, with the sqlx-toml feature.
    let cargo = format!(
        "case \"$1 $2\" in\n  \"sqlx --version\") echo 'sqlx-cli-sqlx {version}' ;;\n  \"sqlx prepare\") cp \"$(dirname \"$0\")/cargo.env\" \"$(dirname \"$0\")/prepare.env\" ;;\nesac\nexit 0"
    );
    recording(&fake, &[("cargo", &cargo)]);
    let mut env = cluster.env("app");
    env.retain(|(key, _)| !key.starts_with("FIRST_SUPERUSER"));
    env.push(("POSTGRES_MIGRATION_PASSWORD".to_owned(), testkit::PASSWORD.to_owned()));
    env.push(("PATH".to_owned(), format!("{}:{}", fake.display(), std::env::var("PATH").expect("PATH"))));
    env.push(("CARGO_HOME".to_owned(), dir.path().join("cargo-home").display().to_string()));
    env.extend(unrelated_secrets());
    let args = ["sqlx-prepare", "--check", "--wait-timeout", "10"];
    Run::xtask(env!("CARGO_BIN_EXE_xtask"), &args, &env).output().assert_code(0);
    let got = recorded(&fake, "prepare");
    assert_only_needed(&got, &["PATH", "HOME", "CARGO_HOME", "DATABASE_URL", "SQLX_OFFLINE"]);
    assert!(
        got.iter().any(|line| line.starts_with("DATABASE_URL=postgres://") && line.contains("/sqlx%5Fprepare%5F")),
        "{got:?}"
    );
}
