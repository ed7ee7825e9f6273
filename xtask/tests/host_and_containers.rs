//! One `.env` for the host and the compose containers: what each side makes of it.

use testkit::{Cluster, Migrations, Run, with};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// `POSTGRES_SERVER=host.docker.internal`, as the seed writes it for compose: on a Linux host the
/// name does not resolve, and it means this machine, so host commands go through loopback and
/// say so once.
#[test]
fn host_docker_internal_on_the_host_is_this_machine() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    let env = with(cluster.env("app"), "POSTGRES_SERVER", "host.docker.internal");
    let outcome = Run::xtask(XTASK, &["prestart", "--context", "host", "--source", &source], &env).output();
    outcome.assert_code(0).assert_stderr_contains(
        "POSTGRES_SERVER=host.docker.internal is the compose containers' name for this machine",
    );
    assert_eq!(
        outcome.stderr.matches("compose containers' name").count(),
        1,
        "said more than once:\n{}",
        outcome.stderr
    );
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM _sqlx_migrations WHERE success"), "3");
}

/// lint-migrations that cannot use the database says why, rather than checking other files
/// without a word.
#[test]
fn lint_says_why_the_database_is_not_used() {
    let cluster = Cluster::started();
    let env = with(cluster.env("app"), "POSTGRES_PASSWORD", "wrong");
    Run::xtask(XTASK, &["lint-migrations"], &env)
        .output()
        .assert_stderr_contains("the database is not used to tell what is applied")
        .assert_stderr_contains("password");
}
