//! The files of throwaway clusters: the template made once per major version, the folders
//! only we may write to, and what a cancelled start leaves behind.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, anyhow, bail};

use super::{Binaries, Runner, SUPERUSER, current_uid};
use crate::base::ui;

/// The cluster template of `bin`'s version, made once: initdb is most of a cluster's start, and
/// copying the template the rest, so its WAL segments are 1 MB, not 16.
pub(super) async fn template(bin: &Binaries, runner: &Runner) -> anyhow::Result<PathBuf> {
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
    // Cancelled (a deadline, a signal), this future is dropped while initdb runs: the guard
    // ends initdb and removes its half-made folder.
    let leftover = Leftover(building.clone());
    run(&mut initdb, "initdb").await?;
    // Another run may have made it meanwhile: either copy serves (the guard removes ours).
    if std::fs::rename(&building, &template).is_ok() {
        std::mem::forget(leftover);
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
pub(super) fn private_dir(parent: &Path, prefix: &str, server_uid: Option<u32>) -> anyhow::Result<PathBuf> {
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
pub(super) async fn run(command: &mut tokio::process::Command, what: &str) -> anyhow::Result<()> {
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

/// A folder that a cut-short start leaves: when dropped, the processes working in it end and it
/// is removed.
struct Leftover(PathBuf);

impl Drop for Leftover {
    fn drop(&mut self) {
        // A killed initdb may still write a file or two before it is gone: killed and removed
        // until neither comes back, within two seconds.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let killed = kill_processes_in(&self.0);
            let removed = std::fs::remove_dir_all(&self.0).is_ok() || !self.0.exists();
            if (removed && killed == 0) || std::time::Instant::now() >= until {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Ends (SIGKILL) every process whose command line names `dir` or a path in it: initdb and its
/// `postgres --boot`, a postmaster that a cut-short `pg_ctl start` left starting, the `runuser`
/// and `unshare` before them. Read from /proc, so it finds them whoever their parent is now. How
/// many there were.
pub(super) fn kill_processes_in(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    let needle = dir.as_os_str().as_encoded_bytes();
    let ours = std::process::id();
    let pids: Vec<String> = entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let names_dir = cmdline.split(|&byte| byte == 0).any(|arg| arg.windows(needle.len()).any(|w| w == needle));
            (pid != ours && names_dir).then(|| pid.to_string())
        })
        .collect();
    if !pids.is_empty() {
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    pids.len()
}
