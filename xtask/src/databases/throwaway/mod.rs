//! Throwaway PostgreSQL clusters on this machine, and throwaway databases. The clusters are
//! where drift, doctor and a failed migration's note build the schema the migrations produce, so
//! that the server being diagnosed is only read. The databases (schema dump, sqlx-prepare, and
//! drift's `--shadow-on-server`) are made on a server for one piece of work and dropped on
//! every path. Replaying migrations there would run their cluster-wide statements again on it
//! (`ALTER ROLE ... SET`, `CREATE SUBSCRIPTION`, `ALTER SYSTEM`), and create and drop a database
//! on production on every doctor run.
//!
//! A cluster is copied from a template made once per major version (initdb is most of the cost),
//! started with no TCP listener (its Unix socket in a private folder), without fsync, and in a
//! network namespace of its own (as root; as anyone else in a user namespace, where the kernel
//! allows it): a migration that connects out over TCP reaches nothing from it, and one that could
//! reach a Unix socket is not replayed at all (see `crate::base::replay`). It is stopped and deleted on every path: dropped by a
//! cancellation, its removal runs as a cleanup the process waits for.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use backend::config::{DatabaseSettings, Env};

use crate::base::ui;

mod database;
mod files;

pub use database::{in_throwaway, throwaway_name};
use files::{kill_processes_in, private_dir, run, template};

/// Each connection to the maintenance database: a server that stops answering costs seconds.
pub const MAINTENANCE_TIMEOUT: Duration = Duration::from_secs(10);

/// The bootstrap superuser of every throwaway cluster.
pub(super) const SUPERUSER: &str = "postgres";
/// The OS user the server runs as when we are root (PostgreSQL refuses root).
const SERVER_OS_USER: &str = "postgres";
/// Starting a copied cluster takes a fraction of a second; a loaded machine, more. Under the
/// 30 s that doctor and a failed migration's note give the whole drift check.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The server binaries of one PostgreSQL major version on this machine.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
    pub major: u32,
}

impl Binaries {
    /// The binaries of `wanted` (the live server's major version) when installed, else the newest;
    /// `None` when this machine has none (the init container's image, say).
    pub fn find(wanted: Option<u32>) -> Option<Binaries> {
        let mut found = candidates()
            .into_iter()
            .filter_map(|dir| Some(Binaries { major: major_of(&dir)?, dir }))
            .collect::<Vec<_>>();
        found.sort_by_key(|b| b.major);
        found.dedup_by_key(|b| b.major);
        match wanted.and_then(|w| found.iter().position(|b| b.major == w)) {
            Some(at) => Some(found.swap_remove(at)),
            None => found.pop(),
        }
    }
}

/// Folders that may hold `initdb` and `pg_ctl`: PATH's, Debian's, RHEL's (PGDG) and Homebrew's.
fn candidates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .filter_map(|d| d.canonicalize().ok())
        .collect();
    // A pg_ctl on PATH is often a link into a versioned folder.
    dirs = dirs
        .into_iter()
        .map(|d| {
            std::fs::canonicalize(d.join("pg_ctl")).ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or(d)
        })
        .collect();
    for (root, suffix) in [("/usr/lib/postgresql", "bin"), ("/opt/homebrew/opt", "bin"), ("/usr/local/opt", "bin")] {
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            dirs.push(entry.path().join(suffix));
        }
    }
    for entry in std::fs::read_dir("/usr").into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with("pgsql-") {
            dirs.push(entry.path().join("bin"));
        }
    }
    dirs.retain(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file() && d.join("postgres").is_file());
    // Each is asked its version by running it: once per folder.
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// The major version of the server binaries in `dir`, from `postgres --version`.
pub fn major_of(dir: &Path) -> Option<u32> {
    let output = std::process::Command::new(dir.join("postgres")).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace().find_map(|word| word.split('.').next()?.parse().ok())
}

/// How a server binary is run: as the server's OS user when we are root, in a network namespace
/// of its own when we can make one.
#[derive(Debug, Clone)]
pub(super) struct Runner {
    run_as: Option<&'static str>,
    /// The server user's uid, when we run as root.
    server_uid: Option<u32>,
    isolated: bool,
}

impl Runner {
    fn for_this_process() -> anyhow::Result<Runner> {
        if current_uid() != 0 {
            // A user namespace makes the network namespace without root, where the kernel allows
            // it; the server runs as this user, mapped to itself.
            let isolated = unshare_works(USER_NAMESPACE);
            return Ok(Runner { run_as: None, server_uid: None, isolated });
        }
        let id = std::process::Command::new("id").args(["-u", SERVER_OS_USER]).output().context("cannot run id")?;
        let Some(uid) = id.status.success().then(|| String::from_utf8_lossy(&id.stdout).trim().parse().ok()).flatten()
        else {
            bail!(
                "we run as root and there is no `{SERVER_OS_USER}` OS user to run the throwaway server as (PostgreSQL \
                 refuses root): create one (useradd -r {SERVER_OS_USER})"
            );
        };
        Ok(Runner { run_as: Some(SERVER_OS_USER), server_uid: Some(uid), isolated: unshare_works(&[]) })
    }

    /// `program args...` as the server user, isolated when it can be.
    fn command(&self, program: &Path, isolate: bool) -> tokio::process::Command {
        let mut words: Vec<std::ffi::OsString> = Vec::new();
        if isolate && self.isolated {
            words.push("unshare".into());
            if self.run_as.is_none() {
                words.extend(USER_NAMESPACE.iter().map(Into::into));
            }
            words.extend(["--net".into(), "--".into()]);
        }
        if let Some(user) = self.run_as {
            words.extend(["runuser".into(), "-u".into(), user.into(), "--".into()]);
        }
        words.push(program.into());
        // Not killed when dropped: as root the child is runuser, which does not pass SIGKILL on,
        // so the program would run on unseen. Each is bounded by itself (pg_ctl's -t), and the
        // cleanup stops whatever it started.
        let mut command = tokio::process::Command::new(&words[0]);
        command.args(&words[1..]).stdin(Stdio::null());
        command
    }
}

/// The options that make `unshare` create a user namespace in which this user stays itself.
const USER_NAMESPACE: &[&str] = &["--user", "--map-current-user"];

/// Whether `unshare [extra] --net` works here.
fn unshare_works(extra: &[&str]) -> bool {
    std::process::Command::new("unshare")
        .args(extra)
        .args(["--net", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(super) fn current_uid() -> u32 {
    // /proc/self/status says it without a libc call (unsafe code is denied in this workspace).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status.lines().find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(u32::MAX)
}

/// A running throwaway cluster; stopped and deleted by [`LocalCluster::stop`], or when dropped.
pub struct LocalCluster {
    dir: PathBuf,
    bin: Binaries,
    runner: Runner,
    stopped: bool,
}

impl LocalCluster {
    /// Starts a throwaway cluster with `bin`, and says which version and where.
    pub async fn start(bin: Binaries) -> anyhow::Result<LocalCluster> {
        let runner = Runner::for_this_process()?;
        let template = template(&bin, &runner).await?;
        let dir = private_dir(&std::env::temp_dir(), "prestart-throwaway-", runner.server_uid)?;
        // From here on the folder is removed however this ends.
        let cluster = LocalCluster { dir, bin, runner, stopped: false };
        let data = cluster.dir.join("data");
        run(
            cluster.runner.command(Path::new("cp"), false).arg("-a").arg(&template).arg(&data),
            "copy the cluster template",
        )
        .await?;
        let socket_dir = cluster.dir.display().to_string();
        let options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{socket_dir}' -c port=5432 -c fsync=off \
             -c full_page_writes=off -c synchronous_commit=off -c max_connections=20 -c shared_buffers=16MB \
             -c log_min_messages=warning"
        );
        let log = cluster.dir.join("server.log");
        let mut start = cluster.runner.command(&cluster.bin.dir.join("pg_ctl"), true);
        start
            .args(["start", "-w", "-t"])
            .arg(START_TIMEOUT.as_secs().to_string())
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(&options)
            // A connection the server itself makes without naming a host (dblink, a
            // subscription) reaches the throwaway, not libpq's default socket of this machine.
            .env("PGHOST", &socket_dir)
            .env("PGPORT", "5432");
        if let Err(error) = run(&mut start, "start the throwaway cluster").await {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
            return Err(anyhow!("{error:#}; its log says:\n  {}", tail.join("\n  ")));
        }
        Ok(cluster)
    }

    /// The server's major version.
    pub fn major(&self) -> u32 {
        self.bin.major
    }

    /// Whether servers on it can reach the network (not when it runs in a namespace of its own).
    pub fn isolated(&self) -> bool {
        self.runner.isolated
    }

    /// The bootstrap superuser's settings for `database`, over the cluster's Unix socket.
    pub fn settings(&self, database: &str) -> anyhow::Result<DatabaseSettings> {
        let socket_dir = self.dir.display().to_string();
        let env = Env::from_pairs([
            ("POSTGRES_SERVER", socket_dir.as_str()),
            ("POSTGRES_PORT", "5432"),
            ("POSTGRES_USER", SUPERUSER),
            ("POSTGRES_DB", database),
            ("POSTGRES_SSLMODE", "disable"),
        ]);
        DatabaseSettings::from_env(&env).map_err(|e| anyhow!("the throwaway cluster's settings: {e}"))
    }

    /// A connection to `database` in this cluster, as its superuser, named `application`.
    pub async fn connect(&self, database: &str, application: &str) -> anyhow::Result<backend::db::Ready> {
        let settings = self.settings(database)?;
        backend::db::connect_once(&settings, application, backend::db::ATTEMPT_TIMEOUT)
            .await
            .map_err(|e| anyhow!("cannot connect to the throwaway cluster: {e}"))
    }

    /// Stops the server at once (nothing in it is worth a checkpoint) and deletes its folder. The
    /// work runs as a cleanup the process waits for, so it finishes even when this is cancelled.
    pub async fn stop(mut self) {
        self.stopped = true;
        let done = crate::base::interrupt::spawn_cleanup(stop_and_delete(
            self.dir.clone(),
            self.bin.dir.clone(),
            self.runner.clone(),
        ));
        let _ = done.await;
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if !self.stopped {
            crate::base::interrupt::spawn_cleanup(stop_and_delete(
                self.dir.clone(),
                self.bin.dir.clone(),
                self.runner.clone(),
            ));
        }
    }
}

async fn stop_and_delete(dir: PathBuf, bin: PathBuf, runner: Runner) {
    let data = dir.join("data");
    let pid_file = data.join("postmaster.pid");
    // A start cut short may still be bringing a server up (pg_ctl's postmaster outlives pg_ctl):
    // give it a moment to show itself, so it is stopped rather than left running in a deleted
    // folder.
    if data.exists() && !pid_file.exists() {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if pid_file.exists() {
                break;
            }
        }
    }
    // Stopped and removed until neither the server nor the folder comes back.
    let mut failed = None;
    for _ in 0..25 {
        if pid_file.exists() {
            let mut stop = runner.command(&bin.join("pg_ctl"), false);
            stop.args(["stop", "-m", "immediate", "-w", "-t", "10", "-D"]).arg(&data);
            let _ = run(&mut stop, "stop the throwaway cluster").await;
        }
        // What a cut-short start left without a pid file: pg_ctl, a postmaster still starting.
        kill_processes_in(&dir);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => return,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
            Err(error) => failed = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(error) = failed {
        ui::warn(format!("could not delete the throwaway cluster in {} ({error}): delete it by hand", dir.display()));
    }
}
