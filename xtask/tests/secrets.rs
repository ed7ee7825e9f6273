//! A password never reaches any output: random secrets, in every settings field that holds one
//! and in every malformed shape of a `.env` line or URL, through every command that reads settings.

use proptest::prelude::*;
use testkit::{Cluster, Run};

/// Every command that reads the settings, with a short wait so an unreachable server costs little.
const COMMANDS: &[&[&str]] = &[
    &["prestart", "--wait-timeout", "1"],
    &["wait-for-db", "--wait-timeout", "1"],
    &["migrate", "--wait-timeout", "1"],
    &["migrate", "status", "--wait-timeout", "1"],
    &["seed", "--wait-timeout", "1"],
    &["doctor"],
    &["doctor", "--json"],
    &["sqlx-prepare", "--check", "--wait-timeout", "1"],
];

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

#[test]
fn no_secret_reaches_any_output() {
    // One server for every case: a wrong password is refused by a real server, not a stub.
    let cluster = Cluster::started();
    let config = ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() };
    let secrets = "[a-zA-Z0-9 !#$%&()*+,./:;<=>?@^_{|}~\"'\\\\-]{10,24}";
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&(secrets, 0..SHAPES.len()), |(secret, shape)| {
        let dir = tempfile::tempdir().expect("temp dir");
        let env_file = dir.path().join(".env");
        std::fs::write(&env_file, settings_file(&cluster, SHAPES[shape], &secret)).expect("write .env");
        let env_file = env_file.to_str().expect("utf-8 path");
        for command in COMMANDS {
            let mut args = command.to_vec();
            args.extend(["--env-file", env_file]);
            let outcome = Run::xtask(env!("CARGO_BIN_EXE_xtask"), &args, &[]).output();
            outcome.assert_lacks_secret(&secret);
            prop_assert!(outcome.code != Some(0), "{command:?} succeeded with a wrong password");
        }
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
