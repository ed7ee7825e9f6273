//! `cargo xtask sqlx-prepare`: a query edited without re-preparing fails `--check`, named;
//! preparing fixes it; the throwaway database is gone afterwards, also when prepare fails.
//! Each test runs in a copy of the workspace, building in the workspace's own target folder.

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

/// A copy of the workspace, and `cargo xtask sqlx-prepare ARGS` run in it against the test's
/// server, building in the workspace's own target folder: its dependencies are built already
/// (clippy and CI's own `sqlx-prepare --check` check them), and the copy's crates, at another
/// path, are units of their own there.
struct Copy {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Copy {
    fn new(cluster: &Cluster) -> Copy {
        let dir = tempfile::Builder::new().prefix("prestart-workspace-").tempdir().expect("temp dir");
        copy_workspace(dir.path());
        let mut env = cluster.env("app");
        env.push(("CARGO_TARGET_DIR".into(), target().to_str().expect("utf-8").into()));
        for key in ["CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"] {
            if let Some(value) = std::env::var_os(key) {
                env.push((key.into(), value.to_string_lossy().into_owned()));
            }
        }
        Copy { dir, env }
    }

    /// On the test's server, where the throwaway database is made and must be dropped again
    /// (the default, a throwaway cluster, is held by review.rs): the counts below see it.
    fn command(&self, args: &[&str]) -> Run {
        let mut args = args.to_vec();
        args.push("--build-on-server");
        Run::program(self.dir.path().join("xtask-bin"), &args, &self.env)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Edits backend/src/jobs.rs of the copy: `from` becomes `to`.
    fn edit_jobs(&self, from: &str, to: &str) {
        let jobs = self.path().join("backend/src/jobs.rs");
        let text = std::fs::read_to_string(&jobs).expect("read");
        assert!(text.contains(from), "jobs.rs holds {from}");
        std::fs::write(&jobs, text.replace(from, to)).expect("write");
    }
}

fn target() -> std::path::PathBuf {
    testkit::workspace().join("target")
}

#[test]
fn a_stale_query_fails_the_check_by_name_until_prepared() {
    let cluster = Cluster::started();
    let copy = Copy::new(&cluster);
    let run = |args: &[&str]| copy.command(args).output();

    // The committed .sqlx/ is all a build needs: no DATABASE_URL, SQLX_OFFLINE from .cargo/config.toml.
    // (That it matches the code, `sqlx-prepare --check` on the workspace itself proves in CI.)
    let offline = Command::new("cargo")
        .args(["check", "--quiet", "-p", "backend", "--features", "server"])
        .current_dir(copy.path())
        .env("CARGO_TARGET_DIR", target())
        .env_remove("DATABASE_URL")
        .env_remove("SQLX_OFFLINE")
        .output()
        .expect("cargo check");
    assert!(offline.status.success(), "the offline build failed: {}", String::from_utf8_lossy(&offline.stderr));

    copy.edit_jobs("FROM jobs WHERE id = $1", "FROM jobs WHERE id = $1 AND attempts >= 0");
    run(&["sqlx-prepare", "--check"])
        .assert_code(1)
        .assert_stderr_contains("not prepared: SELECT id, kind, payload")
        .assert_stderr_contains("AND attempts >= 0")
        .assert_stderr_contains("run `cargo xtask sqlx-prepare`");
    assert_eq!(throwaway_databases(&cluster), "0");

    run(&["sqlx-prepare"]).assert_code(0);
    run(&["sqlx-prepare", "--check"]).assert_code(0);
    assert_eq!(throwaway_databases(&cluster), "0");

    // A query the database rejects: prepare fails, and the throwaway database is dropped anyway.
    copy.edit_jobs("AND attempts >= 0", "AND no_such_column >= 0");
    run(&["sqlx-prepare"]).assert_code(1).assert_stderr_contains("no_such_column");
    assert_eq!(throwaway_databases(&cluster), "0");
}

/// Ctrl-C while cargo compiles for sqlx-cli: exit 130, the throwaway database dropped, no
/// compiler left running.
#[test]
fn a_signal_during_prepare_stops_cargo_and_drops_the_throwaway_database() {
    let cluster = Cluster::started();
    let copy = Copy::new(&cluster);
    let running = copy.command(&["sqlx-prepare"]).spawn();
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
