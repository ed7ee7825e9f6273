//! Throwaway PostgreSQL clusters on this machine, and throwaway databases. The clusters are
//! where drift, doctor and a failed migration's note build the schema the migrations produce, so
//! that the server being diagnosed is only read. The databases (schema dump, sqlx-prepare, and
//! drift's `--shadow-on-server`) are made on a server for one piece of work and dropped on
//! every path. Replaying migrations there would run their cluster-wide statements again on it
//! (`ALTER ROLE ... SET`, `CREATE SUBSCRIPTION`, `ALTER SYSTEM`), and create and drop a database
//! on production on every doctor run.
//!
//! A cluster is copied from a template made once per major version (initdb is most of the cost),
//! started with no TCP listener (its Unix socket in a private folder), without fsync, and, as
//! root, in a network namespace of its own: a migration that connects out (dblink, a
//! subscription) reaches nothing from it. It is stopped and deleted on every path: dropped by a
//! cancellation, its removal runs as a cleanup the process waits for.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use backend::config::{DatabaseSettings, Env};
use xshell::Shell;

use crate::context::Loaded;
use crate::database::{MAINTENANCE_DATABASE, Template, create_database, drop_database, sqlstate, target};
use crate::dev_db::DevCluster;
use crate::diagnose::is_loopback;
use crate::exit::{Failure, fail};
use crate::interrupt::{ActiveBackend, interruptible};
use crate::migrate::migrate_step;
use crate::session::Session;
use crate::ui;

/// Each connection to the maintenance database: a server that stops answering costs seconds.
const MAINTENANCE_TIMEOUT: Duration = Duration::from_secs(10);

/// The bootstrap superuser of every throwaway cluster.
const SUPERUSER: &str = "postgres";
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
fn major_of(dir: &Path) -> Option<u32> {
    let output = std::process::Command::new(dir.join("postgres")).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace().find_map(|word| word.split('.').next()?.parse().ok())
}

/// How a server binary is run: as the server's OS user when we are root, in a network namespace
/// of its own when we can make one.
#[derive(Debug, Clone)]
struct Runner {
    run_as: Option<&'static str>,
    /// The server user's uid, when we run as root.
    server_uid: Option<u32>,
    isolated: bool,
}

impl Runner {
    fn for_this_process() -> anyhow::Result<Runner> {
        if current_uid() != 0 {
            return Ok(Runner { run_as: None, server_uid: None, isolated: false });
        }
        let id = std::process::Command::new("id").args(["-u", SERVER_OS_USER]).output().context("cannot run id")?;
        let Some(uid) = id.status.success().then(|| String::from_utf8_lossy(&id.stdout).trim().parse().ok()).flatten()
        else {
            bail!(
                "we run as root and there is no `{SERVER_OS_USER}` OS user to run the throwaway server as (PostgreSQL \
                 refuses root): create one (useradd -r {SERVER_OS_USER})"
            );
        };
        let isolated = std::process::Command::new("unshare")
            .args(["--net", "--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        Ok(Runner { run_as: Some(SERVER_OS_USER), server_uid: Some(uid), isolated })
    }

    /// `program args...` as the server user, isolated when it can be.
    fn command(&self, program: &Path, isolate: bool) -> tokio::process::Command {
        let mut words: Vec<std::ffi::OsString> = Vec::new();
        if isolate && self.isolated {
            words.extend(["unshare".into(), "--net".into(), "--".into()]);
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

fn current_uid() -> u32 {
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
            .arg(&options);
        if let Err(error) = run(&mut start, "start the throwaway cluster").await {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
            return Err(anyhow!("{error:#}; its log says:\n  {}", tail.join("\n  ")));
        }
        Ok(cluster)
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

    /// Stops the server at once (nothing in it is worth a checkpoint) and deletes its folder. The
    /// work runs as a cleanup the process waits for, so it finishes even when this is cancelled.
    pub async fn stop(mut self) {
        self.stopped = true;
        let done = crate::interrupt::spawn_cleanup(stop_and_delete(
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
            crate::interrupt::spawn_cleanup(stop_and_delete(
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

/// The cluster template of `bin`'s version, made once: initdb is most of a cluster's start, and
/// copying the template the rest, so its WAL segments are 1 MB, not 16.
async fn template(bin: &Binaries, runner: &Runner) -> anyhow::Result<PathBuf> {
    let cache = cache_dir(runner)?;
    let template = cache.join(format!("template-{}-wal1", bin.major));
    if template.join("PG_VERSION").is_file() {
        return Ok(template);
    }
    ui::line(format!("make a cluster template for PostgreSQL {} in {} (once)", bin.major, cache.display()));
    let building = cache.join(format!("template-{}.{}", bin.major, std::process::id()));
    let mut initdb = runner.command(&bin.dir.join("initdb"), false);
    initdb
        .args([
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
            "--wal-segsize=1",
            "-U",
            SUPERUSER,
            "-D",
        ])
        .arg(&building);
    let made = run(&mut initdb, "initdb").await;
    if let Err(error) = made {
        let _ = std::fs::remove_dir_all(&building);
        return Err(error);
    }
    // Another run may have made it meanwhile: either copy serves.
    if std::fs::rename(&building, &template).is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    Ok(template)
}

/// Where templates are kept: the user's cache folder, or as root a private folder under
/// /var/tmp that the server user owns.
fn cache_dir(runner: &Runner) -> anyhow::Result<PathBuf> {
    let uid = runner.server_uid;
    if uid.is_some() {
        let dir = PathBuf::from("/var/tmp/prestart-cluster-templates");
        claim(&dir, uid)?;
        return Ok(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    let dir = base.join(format!("prestart-{}", current_uid()));
    claim(&dir, Some(current_uid()))?;
    Ok(dir)
}

/// `dir` made with mode 0700 for `owner` (the server user as root, else us), or taken as it is
/// when it is a real folder (not a link) of that user or us that nobody else may write to:
/// nobody else may plant a template there.
fn claim(dir: &Path, server_uid: Option<u32>) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            if let Some(uid) = server_uid {
                std::os::unix::fs::chown(dir, Some(uid), None)
                    .with_context(|| format!("cannot hand {} to the server user", dir.display()))?;
            }
            Ok(())
        }
        Err(e) => Err(anyhow!("cannot inspect {}: {e}", dir.display())),
        Ok(meta) => {
            let owner_ok = Some(meta.uid()) == server_uid || meta.uid() == current_uid();
            if !meta.is_dir() || !owner_ok || meta.mode() & 0o022 != 0 {
                bail!(
                    "{} exists but is not a private folder of the server user: someone else may have made it; remove it \
                     (rm -rf {}) and run again",
                    dir.display(),
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

/// A new folder `prefix<random>` in `parent`, mode 0700, owned by the server user when we are root.
fn private_dir(parent: &Path, prefix: &str, server_uid: Option<u32>) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    for attempt in 0..16u32 {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let dir = parent.join(format!("{prefix}{}-{nanos}-{attempt}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                if let Some(uid) = server_uid {
                    std::os::unix::fs::chown(&dir, Some(uid), None)
                        .with_context(|| format!("cannot hand {} to the server user", dir.display()))?;
                }
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(anyhow!("cannot create a folder in {}: {e}", parent.display())),
        }
    }
    bail!("cannot create a private folder in {}", parent.display())
}

/// Runs `command` to its end; its stderr says why it failed.
async fn run(command: &mut tokio::process::Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .with_context(|| format!("cannot {what}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(anyhow!("cannot {what}: {}", String::from_utf8_lossy(&output.stderr).trim()))
}

/// The configured server if it answers, else the local cluster of `dev-db`: where throwaway
/// databases are made. Returns the maintenance database's settings.
pub fn scratch_server(sh: &Shell, loaded: &Loaded) -> anyhow::Result<DatabaseSettings> {
    let db = target(loaded);
    let maintenance = db.with_database(MAINTENANCE_DATABASE);
    let probe =
        crate::interrupt::block_on(backend::db::connect_once(&maintenance, "prestart-scratch", Duration::from_secs(2)));
    match probe {
        Ok(_) => Ok(maintenance),
        Err(backend::db::Failure::Fatal(fatal)) => Err(fail(Failure::Refused, anyhow!("{maintenance}: {fatal}"))),
        Err(backend::db::Failure::Retry(reason)) if is_loopback(db.host()) => {
            ui::line(format!(
                "the configured server does not answer ({reason}): using the local cluster of target/dev-db/"
            ));
            DevCluster::new(sh)?.start(&db, None)?;
            Ok(maintenance)
        }
        Err(backend::db::Failure::Retry(reason)) => Err(fail(
            Failure::Unreachable,
            anyhow!(
                "{db} does not answer ({reason}): start it, or set {}=localhost to use a local cluster",
                db.host_variable()
            ),
        )),
    }
}

/// The settings for a throwaway database `name` on the server that migrations go to (the direct
/// one where the app's settings name a pooler, which would not know the new database).
pub fn throwaway_target(loaded: &Loaded, name: &str) -> Loaded {
    loaded.for_migrations().as_ref().unwrap_or(loaded).with_database(name)
}

/// A database name no other run picks, on this machine or another: init containers of many pods
/// are all pid 1.
pub fn throwaway_name(purpose: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    format!("{purpose}_{}_{nanos}", std::process::id())
}

/// Runs `work` in a new database `name` on `server`, dropped on every path: failures, SIGINT or
/// SIGTERM (which stop the server-side work of `work` first), and `work` being cancelled or
/// panicking, as when an outer signal handler or timeout drops it.
pub async fn in_throwaway<T>(
    server: &DatabaseSettings,
    name: &str,
    active: &ActiveBackend,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let mut admin = backend::db::connect_once(server, "prestart-scratch", MAINTENANCE_TIMEOUT)
        .await
        .map_err(|e| fail(Failure::Refused, anyhow!("cannot connect to {server}: {e}")))?;
    // Armed before the create: a signal may cancel us after the server created the database
    // but before the answer came, and a create that timed out may still finish on the server.
    let guard = Throwaway { server: server.clone(), name: name.to_owned() };
    if let Err(error) = create_database(&mut admin.conn, name, Template::Pristine).await {
        if sqlstate(&error) == "42P04" {
            // Not ours: leave it.
            std::mem::forget(guard);
        }
        return Err(fail(
            Failure::Refused,
            anyhow::Error::new(error).context(format!("{server}: create database {name}")),
        ));
    }
    drop(admin);
    let result = interruptible(server, active, work).await;
    // After a signal the drop gets the cleanup budget, no more; a second signal ends it sooner.
    let bound = if crate::interrupt::received().is_some() { crate::interrupt::CLEANUP_BUDGET } else { Duration::MAX };
    if tokio::time::timeout(bound, drop_or_warn(server, name)).await.is_err() {
        ui::warn(format!(
            "the throwaway database {name} was not dropped within {} s: drop it by hand",
            bound.as_secs()
        ));
    }
    // Dropped already (or given up on, and said so); a cancellation during that drop leaves it
    // to the guard.
    std::mem::forget(guard);
    result
}

/// Drops the throwaway database when dropped itself: the path where `in_throwaway` was cut short.
/// The drop runs on the runtime's worker, and the process waits for it before exiting, within
/// its cleanup budget (a second signal ends it at once).
struct Throwaway {
    server: DatabaseSettings,
    name: String,
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), std::mem::take(&mut self.name));
        crate::interrupt::spawn_cleanup(async move { drop_or_warn(&server, &name).await });
    }
}

async fn drop_or_warn(server: &DatabaseSettings, name: &str) {
    // Housekeeping: said only when it needs the user.
    if let Err(e) = drop_throwaway(server, name).await {
        ui::warn(format!("could not drop the throwaway database {name}: {e:#}; drop it by hand"));
    }
}

/// Ends the sessions still connected to `database`, then drops it, on a connection of its own.
async fn drop_throwaway(server: &DatabaseSettings, database: &str) -> anyhow::Result<()> {
    let mut admin = backend::db::connect_once(server, "prestart-scratch", MAINTENANCE_TIMEOUT)
        .await
        .map_err(|e| anyhow!("cannot connect to {server}: {e}"))?;
    drop_database(&mut admin.conn, database, true).await.with_context(|| format!("{server}: drop database {database}"))
}

/// A fresh session on a throwaway database, brought up to date by prestart's own migrate step.
pub async fn migrated_session<'a>(
    target: &'a Loaded,
    active: &'a ActiveBackend,
    plan: &crate::migrate::Plan<'_>,
) -> anyhow::Result<Session<'a>> {
    let mut session = Session::open(target, active).await?;
    session.make_stoppable();
    migrate_step(&mut session, plan, None, None).await?;
    Ok(session)
}
