//! The figures of a server that goes away: a hot standby promoted, a Patroni switchover, the
//! detection of a server that comes up, and how fast a signal stops a run.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use xshell::Shell;

use super::bench_settings;
use super::figures::Figure;
use super::{Bench, PASSWORD, free_port};
use crate::base::ui;
use crate::base::workspace::{cargo, root};
use crate::databases::dev_db::DevCluster;
use std::path::PathBuf;

impl Bench {
    /// From `pg_ctl promote` returning to prestart's exit, prestart having waited on the hot
    /// standby (a replica made by `pg_basebackup -R`, new for each trial).
    pub(super) fn after_promote(&self, sh: &Shell, trials: usize) -> anyhow::Result<Figure> {
        ui::step(format!("prestart on a hot standby, from promote to exit ({trials} trials)"));
        let source = root().join("migrations");
        let source = source.to_str().context("non-UTF-8 path")?;
        let bin = crate::databases::dev_db::ensure_server_bindir(sh)?;
        let scratch = ServerScratch::new(sh)?;
        let run_as = scratch.run_as;
        let mut samples = Vec::new();
        for trial in 0..trials {
            let replica = scratch.dir.join(format!("replica-{trial}"));
            let port = free_port()?;
            let server = |program: &str| -> xshell::Cmd<'_> {
                let program = bin.join(program);
                match run_as {
                    Some(user) => xshell::cmd!(sh, "runuser -u {user} -- {program}"),
                    None => xshell::cmd!(sh, "{program}"),
                }
            };
            let primary_port = self.port.to_string();
            // -R writes primary_conninfo, for the copy to stream from the primary as a hot standby.
            server("pg_basebackup")
                .args("-h 127.0.0.1 -U postgres -R -X stream -c fast --no-sync".split(' '))
                .args(["-p", &primary_port, "-D"])
                .arg(&replica)
                .env("PGPASSWORD", PASSWORD)
                .quiet()
                .run()?;
            // -R wrote primary_conninfo; the primary's own port and socket folder came with the copy.
            let conf = replica.join("postgresql.auto.conf");
            let mut text = std::fs::read_to_string(&conf)?;
            text.push_str(&format!("port = {port}\nunix_socket_directories = '{}'\n", replica.display()));
            std::fs::write(&conf, text)?;
            server("pg_ctl")
                .args(["start", "-w", "-t", "60", "-D"])
                .arg(&replica)
                .arg("-l")
                .arg(replica.join("log"))
                .quiet()
                .ignore_stdout()
                .run()?;
            let mut child =
                self.command_on(port, "noop", &["prestart", "--source", source, "--wait-timeout", "60"]).spawn()?;
            std::thread::sleep(Duration::from_millis(500));
            if child.try_wait()?.is_some() {
                bail!("prestart did not wait on the hot standby");
            }
            // prestart may finish before `pg_ctl promote -w` returns: its exit is timed apart.
            let waiter = std::thread::spawn(move || child.wait().map(|status| (status, Instant::now())));
            server("pg_ctl").args(["promote", "-w", "-D"]).arg(&replica).quiet().ignore_stdout().run()?;
            let promoted = Instant::now();
            let (status, exited) = waiter.join().map_err(|_| anyhow::anyhow!("the waiting thread panicked"))??;
            // Negative when prestart was done before pg_ctl said the promotion was.
            let latency = match exited.checked_duration_since(promoted) {
                Some(after) => after.as_secs_f64(),
                None => -promoted.duration_since(exited).as_secs_f64(),
            };
            samples.push(latency * 1000.0);
            let _ = server("pg_ctl")
                .args(["stop", "-m", "immediate", "-D"])
                .arg(&replica)
                .quiet()
                .ignore_stdout()
                .ignore_stderr()
                .run();
            let _ = std::fs::remove_dir_all(&replica);
            if !status.success() {
                bail!("prestart failed after the promotion");
            }
        }
        Ok(Figure::new("hot standby: prestart's exit after pg_ctl promote -w returns", samples, "ms")
            .target(100.0, "< 100 ms"))
    }

    /// The two failover figures on a real HA cluster, measured by testkit's `switchover_figures`
    /// (the harness stays in the test support crate): from the end of a switchover to the exit of
    /// a prestart started mid-switchover, and to the backend's first successful write. Skipped,
    /// with a line, where the HA parts are missing.
    pub(super) fn through_switchovers(&self, sh: &Shell) -> anyhow::Result<Vec<Figure>> {
        ui::step("switchovers on a Patroni cluster behind HAProxy: prestart and the backend (3 trials each)");
        cargo(sh, &["build", "--quiet", "--package", "backend", "--features", "server", "--bin", "backend"]).run()?;
        cargo(sh, &["build", "--quiet", "--package", "testkit", "--bin", "switchover_figures"]).run()?;
        let (backend, source) = (root().join("target/debug/backend"), root().join("migrations"));
        let output = Command::new(root().join("target/debug/switchover_figures"))
            .arg(&self.binary)
            .arg(backend)
            .arg(source)
            .stderr(Stdio::inherit())
            .output()?;
        match output.status.code() {
            Some(0) => {}
            Some(2) => {
                ui::line("no failover figures (see the line above)");
                return Ok(Vec::new());
            }
            _ => bail!("the switchover figures failed ({})", output.status),
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let figures = text.lines().filter_map(|line| {
            let ["figure", name, "ms", samples] = line.split('\t').collect::<Vec<_>>()[..] else { return None };
            let samples = samples.split(',').filter_map(|s| s.parse().ok()).collect();
            Some(Figure::new(name, samples, "ms").reference("issue 21"))
        });
        Ok(figures.collect())
    }

    /// From the moment `pg_isready` first succeeds to the moment `wait-for-db` exits.
    pub(super) fn detection_latency(&self, cluster: &DevCluster<'_>, trials: usize) -> anyhow::Result<Figure> {
        ui::step(format!("wait detection latency ({trials} trials)"));
        let mut samples = Vec::new();
        for _ in 0..trials {
            cluster.halt()?;
            let mut child = self.command("postgres", &["wait-for-db", "--wait-timeout", "60"]).spawn()?;
            std::thread::sleep(Duration::from_millis(300));
            cluster.start_in_background()?;
            let ready_at = loop {
                if cluster.is_ready(self.port) {
                    break Instant::now();
                }
            };
            let status = child.wait()?;
            let exited_at = Instant::now();
            if !status.success() {
                bail!("wait-for-db failed");
            }
            // Negative when prestart noticed readiness before the pg_isready loop did.
            let latency = match exited_at.checked_duration_since(ready_at) {
                Some(after) => after.as_secs_f64(),
                None => -ready_at.duration_since(exited_at).as_secs_f64(),
            };
            samples.push(latency * 1000.0);
        }
        Ok(Figure::new("wait detection latency (max column: p95)", samples, "ms").target(50.0, "median < 50 ms"))
    }

    /// From SIGTERM to exit, while a migration runs on the server: the terminate from a second
    /// connection included, which must have worked.
    pub(super) fn stop_time(&self, trials: usize) -> anyhow::Result<Figure> {
        ui::step(format!("SIGTERM during a migration, until prestart has exited ({trials} trials)"));
        let source = self.work.join("migrations-slow");
        std::fs::create_dir_all(&source)?;
        std::fs::write(source.join("1_slow.sql"), "SELECT pg_sleep(60);\n")?;
        let source = source.to_str().context("non-UTF-8 path")?;
        let db = bench_settings(self.port, "stop")?;
        let mut samples = Vec::new();
        for _ in 0..trials {
            self.fresh_database("stop")?;
            let mut child = self.command("stop", &["migrate", "--source", source]).stderr(Stdio::piped()).spawn()?;
            let running = crate::base::interrupt::block_on(async {
                let mut watcher = backend::db::connect_once(&db, "prestart-bench", Duration::from_secs(5))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(30) {
                    let count: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'prestart' AND query LIKE '%pg_sleep(60)%'",
                    )
                    .fetch_one(&mut watcher.conn)
                    .await?;
                    if count == 1 {
                        return anyhow::Ok(true);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                anyhow::Ok(false)
            })?;
            if !running {
                let _ = child.kill();
                bail!("the migration never started on the server");
            }
            let sent = Instant::now();
            Command::new("kill").arg("-TERM").arg(child.id().to_string()).status()?;
            let output = child.wait_with_output()?;
            samples.push(sent.elapsed().as_secs_f64() * 1000.0);
            let stderr = String::from_utf8_lossy(&output.stderr);
            if output.status.code() != Some(143) || !stderr.contains("stopped server process") {
                bail!("prestart did not stop its server process:\n{stderr}");
            }
        }
        Ok(Figure::new("SIGTERM mid-migration to exit", samples, "ms").target(1000.0, "< 1 s"))
    }
}

/// A fresh folder in the temporary folder for a replica or a pooler, handed to the OS user the
/// server programs and PgBouncer run as when we are root (they refuse root); removed at the end.
pub(super) struct ServerScratch {
    pub(super) dir: PathBuf,
    pub(super) run_as: Option<&'static str>,
}

impl ServerScratch {
    pub(super) fn new(sh: &Shell) -> anyhow::Result<ServerScratch> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        let dir = std::env::temp_dir().join(format!("prestart-bench-{}-{nanos}", std::process::id()));
        // create_dir, not create_dir_all: a folder someone made beforehand is refused.
        std::fs::create_dir(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let is_root = xshell::cmd!(sh, "id -u").quiet().read().is_ok_and(|uid| uid.trim() == "0");
        let scratch = ServerScratch { dir, run_as: is_root.then_some("postgres") };
        scratch.hand_over(sh)?;
        Ok(scratch)
    }

    /// Gives what is in the folder to the server's OS user.
    pub(super) fn hand_over(&self, sh: &Shell) -> anyhow::Result<()> {
        if let Some(user) = self.run_as {
            let dir = &self.dir;
            xshell::cmd!(sh, "chown -R {user} {dir}").quiet().run()?;
        }
        Ok(())
    }
}

impl Drop for ServerScratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process that is stopped with the value, on every path out.
pub(super) struct KillOnDrop(pub(super) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SIGTERM, which runuser passes on; SIGKILL would leave its child running.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}
