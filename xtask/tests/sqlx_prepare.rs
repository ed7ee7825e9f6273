//! `cargo xtask sqlx-prepare`: a query edited without re-preparing fails `--check`, named;
//! preparing fixes it; the throwaway database is gone afterwards, also when prepare fails.
//! Runs in a copy of the workspace with a target folder of its own.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::{Cluster, Run};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// Copies the files git tracks (plus .sqlx) into `to`, and links the binary at its root.
fn copy_workspace(to: &Path) {
    let workspace = testkit::workspace();
    let files = Command::new("git").args(["ls-files", "-z"]).current_dir(&workspace).output().expect("git ls-files");
    for name in String::from_utf8_lossy(&files.stdout).split('\0').filter(|n| !n.is_empty()) {
        let (from, dest) = (workspace.join(name), to.join(name));
        if from.is_file() {
            std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
            std::fs::copy(&from, &dest).expect("copy");
        }
    }
    if std::fs::hard_link(XTASK, to.join("xtask-bin")).is_err() {
        std::fs::copy(XTASK, to.join("xtask-bin")).expect("copy xtask");
    }
}

fn throwaway_databases(cluster: &Cluster) -> String {
    cluster.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'sqlx_prepare_%'")
}

#[test]
fn a_stale_query_fails_the_check_by_name_until_prepared() {
    let cluster = Cluster::started();
    let copy = tempfile::Builder::new().prefix("prestart-workspace-").tempdir().expect("temp dir");
    copy_workspace(copy.path());
    // The workspace's own target folder: its dependencies are built already (clippy and CI's own
    // `sqlx-prepare --check` check them), and the copy's crates, at another path, are units of
    // their own there.
    let target = testkit::workspace().join("target");
    let command = |args: &[&str]| {
        let mut env = cluster.env("app");
        env.push(("CARGO_TARGET_DIR".into(), target.to_str().expect("utf-8").into()));
        for key in ["CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"] {
            if let Some(value) = std::env::var_os(key) {
                env.push((key.into(), value.to_string_lossy().into_owned()));
            }
        }
        // On the test's server, where the throwaway database is made and must be dropped again
        // (the default, a throwaway cluster, is held by review.rs): the counts below see it.
        let mut args = args.to_vec();
        args.push("--build-on-server");
        Run::program(copy.path().join("xtask-bin"), &args, &env)
    };
    let run = |args: &[&str]| command(args).output();

    run(&["sqlx-prepare", "--check"]).assert_code(0);
    assert_eq!(throwaway_databases(&cluster), "0");

    // The committed .sqlx/ is all a build needs: no DATABASE_URL, SQLX_OFFLINE from .cargo/config.toml.
    let offline = Command::new("cargo")
        .args(["check", "--quiet", "-p", "backend", "--features", "server"])
        .current_dir(copy.path())
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("DATABASE_URL")
        .env_remove("SQLX_OFFLINE")
        .output()
        .expect("cargo check");
    assert!(offline.status.success(), "the offline build failed: {}", String::from_utf8_lossy(&offline.stderr));

    let jobs = copy.path().join("backend/src/jobs.rs");
    let edited = std::fs::read_to_string(&jobs)
        .expect("read")
        .replace("FROM jobs WHERE id = $1", "FROM jobs WHERE id = $1 AND attempts >= 0");
    std::fs::write(&jobs, edited).expect("write");
    run(&["sqlx-prepare", "--check"])
        .assert_code(1)
        .assert_stderr_contains("not prepared: SELECT id, kind, payload")
        .assert_stderr_contains("AND attempts >= 0")
        .assert_stderr_contains("run `cargo xtask sqlx-prepare`");
    assert_eq!(throwaway_databases(&cluster), "0");

    run(&["sqlx-prepare"]).assert_code(0);
    run(&["sqlx-prepare", "--check"]).assert_code(0);

    // A query the database rejects: prepare fails, and the throwaway database is dropped anyway.
    let broken = std::fs::read_to_string(&jobs).expect("read").replace("AND attempts >= 0", "AND no_such_column >= 0");
    std::fs::write(&jobs, broken).expect("write");
    run(&["sqlx-prepare"]).assert_code(1).assert_stderr_contains("no_such_column");
    assert_eq!(throwaway_databases(&cluster), "0");

    // Ctrl-C while cargo compiles for sqlx-cli: exit 130, the throwaway database dropped, no
    // compiler left running. (.sqlx/ is sqlx-cli's to rewrite: it empties the folder first.)
    std::fs::write(&jobs, std::fs::read_to_string(&jobs).expect("read").replace(" AND no_such_column >= 0", ""))
        .expect("write");
    let running = command(&["sqlx-prepare"]).spawn();
    running.wait_for_stderr("prepare .sqlx/ (cargo sqlx prepare)", Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    running.signal("INT");
    running
        .wait()
        .assert_code(130)
        .assert_stderr_contains("error: interrupted by SIGINT")
        // Housekeeping is silent: the count below proves the drop.
        .assert_stderr_lacks("dropped sqlx_prepare_");
    assert_eq!(throwaway_databases(&cluster), "0");
    let copy_path = copy.path().to_str().expect("utf-8");
    assert!(
        testkit::eventually(Duration::from_secs(10), || !Command::new("pgrep")
            .args(["-f", copy_path])
            .status()
            .expect("pgrep")
            .success()),
        "processes of the interrupted prepare are still running"
    );
}
