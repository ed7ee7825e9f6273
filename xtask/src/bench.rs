//! `cargo xtask bench`: the figures behind every speed claim, measured on the release binary
//! against a real local cluster (kept under `target/bench-db/`, apart from `dev-db`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use backend::config::{DatabaseSettings, Env};
use xshell::Shell;

use crate::dev_db::{Audience, DevCluster};
use crate::ui;
use crate::workspace::{cargo, root};

mod peers;
mod release_check;

const PASSWORD: &str = "bench password";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Runs of the no-op prestart
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Trials of the wait detection latency
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Leave out the build-time figures (they clean and rebuild xtask)
    #[arg(long)]
    skip_build: bool,
    /// Also time the whole test suite, built and warm (`cargo xtask test`: a few minutes)
    #[arg(long)]
    suite: bool,
    /// Only the linter's row (no cluster needed)
    #[arg(long)]
    lint_only: bool,
    /// Only the side-by-side rows: prestart, sqlx-cli, dbmate and the floor
    #[arg(long)]
    side_by_side_only: bool,
    /// Only the release check's rows (and the no-op's and the drift check's, for reference)
    #[arg(long)]
    release_check_only: bool,
    /// Rounds of the side-by-side no-op (a quarter as many of the apply and of the late start)
    #[arg(long, default_value_t = 44)]
    rounds: usize,
}

/// One line of the table.
struct Figure {
    name: String,
    samples: Vec<f64>,
    unit: &'static str,
    target: Option<(f64, &'static str)>,
    /// Said in the target column of a row without a limit of its own.
    note: &'static str,
}

impl Figure {
    fn new(name: impl Into<String>, mut samples: Vec<f64>, unit: &'static str) -> Self {
        samples.sort_by(f64::total_cmp);
        Figure { name: name.into(), samples, unit, target: None, note: "" }
    }

    /// A row to compare with, with no target of its own.
    fn reference(mut self, note: &'static str) -> Self {
        self.note = note;
        self
    }

    fn target(mut self, limit: f64, text: &'static str) -> Self {
        self.target = Some((limit, text));
        self
    }

    fn percentile(&self, p: f64) -> f64 {
        let index = ((self.samples.len() as f64 - 1.0) * p).round() as usize;
        self.samples.get(index).copied().unwrap_or(f64::NAN)
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // The peers are handed it in a URL, and what they say on failure is printed.
    backend::redact::register(PASSWORD);
    let sh = Shell::new()?;
    let _root = sh.push_dir(root());
    ui::step("build the release binary");
    cargo(&sh, &["build", "--release", "--quiet", "--package", "xtask"]).run()?;
    let binary = root().join("target/release/xtask");
    let lint = lint_schema(&binary, &root().join("target/bench-lint"), args.runs)?;
    if args.lint_only {
        print_table(&[lint]);
        return Ok(());
    }

    let dir = root().join("target/bench-db");
    let cluster = DevCluster::in_dir(&sh, dir.clone())?;
    let port = free_port()?;
    let db = bench_settings(port, "bench")?;
    if cluster.exists() {
        cluster.destroy()?;
    }
    cluster.start(&db, Some(&Audience::ThisMachine))?;
    let bench = Bench { binary, port, work: dir.join("work") };
    std::fs::create_dir_all(&bench.work)?;

    let mut figures = vec![lint];
    let mut compared = None;
    let result = (|| -> anyhow::Result<()> {
        // The peers first: an install that fails is said before minutes of runs, and costs the
        // comparison, not the other figures.
        if args.release_check_only {
            figures.extend(bench.noop_prestart(args.runs)?);
            figures.push(bench.drift_check(args.runs.min(10))?);
            figures.extend(bench.release_check(args.runs.min(10))?);
            return Ok(());
        }
        let side_by_side = match peers::SideBySide::prepare(&sh, &bench) {
            Ok(side_by_side) => Some(side_by_side),
            Err(error) if !args.side_by_side_only => {
                ui::warn(format!("no side-by-side figures: {error:#}"));
                None
            }
            Err(error) => return Err(error),
        };
        if !args.side_by_side_only {
            figures.extend(bench.noop_prestart(args.runs)?);
            figures.push(bench.drift_check(args.runs.min(10))?);
            figures.extend(bench.release_check(args.runs.min(10))?);
            figures.push(bench.noop_through_pgbouncer(&sh, args.runs)?);
            figures.push(bench.detection_latency(&cluster, args.trials)?);
            figures.push(bench.after_promote(&sh, args.trials.min(5))?);
            figures.extend(bench.through_switchovers(&sh)?);
            figures.push(bench.concurrent_prestarts(16)?);
            figures.push(bench.stop_time(args.trials)?);
            if !args.skip_build {
                figures.extend(build_times(&sh)?);
            }
            if args.suite {
                figures.push(suite_time(&sh)?);
            }
        }
        if let Some(side_by_side) = &side_by_side {
            compared = Some(side_by_side.run(&cluster, args.rounds)?);
        }
        Ok(())
    })();
    let machine = describe_machine(port);
    let _ = cluster.destroy();
    result?;
    println!("{}", machine.unwrap_or_else(|e| format!("machine: unknown ({e})")));
    print_table(&figures);
    if let Some(compared) = compared {
        compared.print();
    }
    Ok(())
}

struct Bench {
    binary: PathBuf,
    port: u16,
    work: PathBuf,
}

impl Bench {
    fn env(&self, port: u16, database: &str) -> Vec<(String, String)> {
        superuser_env(port, database)
    }

    fn command(&self, database: &str, args: &[&str]) -> Command {
        self.command_on(self.port, database, args)
    }

    /// The binary against the server (or pooler) on `port`.
    fn command_on(&self, port: u16, database: &str, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command.args(args).args(["--env-file", "/dev/null", "--context", "host"]);
        command.envs(self.env(port, database)).stdout(Stdio::null()).stderr(Stdio::null());
        command
    }

    /// Runs `work` on a connection of its own to `database` on the bench's server.
    fn on_server<T>(
        &self,
        database: &str,
        work: impl AsyncFnOnce(&mut sqlx::PgConnection) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let db = bench_settings(self.port, database)?;
        crate::interrupt::block_on(async {
            let mut ready = backend::db::connect_once(&db, "prestart-bench", Duration::from_secs(5))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            work(&mut ready.conn).await
        })
    }

    /// The rows of `table` in `database`.
    fn count_rows(&self, database: &str, table: &str) -> anyhow::Result<i64> {
        let sql = format!("SELECT count(*) FROM {table}");
        self.on_server(database, async |conn| Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(conn).await?))
    }

    /// What the server and the kernel have to write goes to disk now, not under the next timed
    /// run: a checkpoint, then `sync` for what the kernel still holds.
    fn settle_disk(&self) -> anyhow::Result<()> {
        self.on_server("postgres", async |conn| Ok(sqlx::raw_sql("CHECKPOINT").execute(conn).await.map(drop)?))?;
        Command::new("sync").status().context("cannot run sync")?;
        Ok(())
    }

    fn fresh_database(&self, name: &str) -> anyhow::Result<()> {
        self.on_server("postgres", async |conn| {
            crate::database_ddl::drop_database(conn, name, true).await?;
            crate::database_ddl::create_database(conn, name, crate::database_ddl::Template::Default).await?;
            Ok(())
        })
    }

    /// The no-op's own figures: wall time and memory (the side-by-side rows compare it).
    fn noop_prestart(&self, runs: usize) -> anyhow::Result<Vec<Figure>> {
        ui::step(format!("no-op prestart on an up-to-date, seeded database ({runs} runs)"));
        self.fresh_database("noop")?;
        let source = root().join("migrations");
        let source = source.to_str().context("non-UTF-8 path")?;
        let args = ["prestart", "--source", source];
        let first = measured(&mut self.command("noop", &args))?;
        if !first.success {
            bail!("the first prestart failed");
        }
        let (mut wall, mut rss) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let run = measured(&mut self.command("noop", &args))?;
            if !run.success {
                bail!("a no-op prestart failed");
            }
            wall.push(run.wall.as_secs_f64() * 1000.0);
            rss.extend(peak_rss(&self.command("noop", &args), &self.work)?);
        }
        let mut figures = vec![Figure::new("no-op prestart: wall time", wall, "ms").target(50.0, "< 50 ms")];
        if rss.is_empty() {
            ui::line("no /usr/bin/time (apt-get install time): no peak RSS figures");
        } else {
            figures.push(Figure::new("no-op prestart: peak RSS", rss, "MB").target(20.0, "< 20 MB"));
        }
        Ok(figures)
    }

    /// `schema drift` on the project's migrated schema (the database of the no-op runs): the
    /// throwaway database, the migrations in it, both catalogs read and compared. doctor runs it.
    fn drift_check(&self, runs: usize) -> anyhow::Result<Figure> {
        ui::step(format!("schema drift on the project's schema ({runs} runs)"));
        let source = root().join("migrations");
        let args = ["schema", "drift", "--source", source.to_str().context("non-UTF-8 path")?];
        let mut wall = Vec::new();
        for _ in 0..runs {
            let run = measured(&mut self.command("noop", &args))?;
            if !run.success {
                bail!("schema drift found drift, or failed, on a database prestart just migrated");
            }
            wall.push(run.wall.as_secs_f64() * 1000.0);
        }
        Ok(Figure::new("schema drift on the project's schema (doctor's migrations.drift)", wall, "ms")
            .target(1000.0, "< 1 s"))
    }

    /// A no-op prestart through Debian's PgBouncer in session mode: the detection of the pooler
    /// (a second connection) is in it.
    fn noop_through_pgbouncer(&self, sh: &Shell, runs: usize) -> anyhow::Result<Figure> {
        ui::step(format!("no-op prestart through PgBouncer in session mode ({runs} runs)"));
        let scratch = ServerScratch::new(sh)?;
        let dir = &scratch.dir;
        let secret: String = self.on_server("postgres", async |conn| {
            Ok(sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")
                .fetch_one(conn)
                .await?)
        })?;
        let port = free_port()?;
        let mut command = crate::pgbouncer::prepare(
            dir,
            port,
            self.port,
            crate::pgbouncer::Pool { mode: "session", size: 20, sockets: None, fallback: true },
            "postgres",
            &secret,
            scratch.run_as,
        )
        .context("PgBouncer is needed for this figure: apt-get install pgbouncer")?;
        scratch.hand_over(sh)?;
        let mut bouncer = KillOnDrop(command.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(10) || bouncer.0.try_wait()?.is_some() {
                bail!("PgBouncer did not start; see {}", dir.join("pgbouncer.log").display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let source = root().join("migrations");
        let source = source.to_str().context("non-UTF-8 path")?;
        let mut samples = Vec::new();
        for _ in 0..runs {
            let run = measured(&mut self.command_on(port, "noop", &["prestart", "--source", source]))?;
            if !run.success {
                bail!("a no-op prestart through PgBouncer failed");
            }
            samples.push(run.wall.as_secs_f64() * 1000.0);
        }
        Ok(Figure::new("no-op prestart through PgBouncer (session mode)", samples, "ms").target(50.0, "< 50 ms"))
    }

    /// From `pg_ctl promote` returning to prestart's exit, prestart having waited on the hot
    /// standby (a replica made by `pg_basebackup -R`, new for each trial).
    fn after_promote(&self, sh: &Shell, trials: usize) -> anyhow::Result<Figure> {
        ui::step(format!("prestart on a hot standby, from promote to exit ({trials} trials)"));
        let source = root().join("migrations");
        let source = source.to_str().context("non-UTF-8 path")?;
        let bin = crate::dev_db::ensure_server_bindir(sh)?;
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
            server("pg_basebackup")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &primary_port,
                    "-U",
                    "postgres",
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "--no-sync",
                    "-D",
                ])
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

    /// The two failover figures on a real HA cluster (etcd, two Patroni nodes, HAProxy routing to
    /// the primary; testkit's harness, included below): from the end of a switchover (HAProxy
    /// routing to the new leader) to the exit of a prestart started mid-switchover, and to the
    /// backend's first successful write. Skipped, with a line, where the HA parts are missing.
    fn through_switchovers(&self, sh: &Shell) -> anyhow::Result<Vec<Figure>> {
        if let Err(missing) = ha::Programs::find() {
            ui::line(format!(
                "no failover figures: the HA parts are not installed ({} missing): {}",
                missing.join(", "),
                ha::INSTALL_HINT
            ));
            return Ok(Vec::new());
        }
        ui::step("switchovers on a Patroni cluster behind HAProxy: prestart and the backend (3 trials each)");
        let _ = HA_BINDIR.set(crate::dev_db::ensure_server_bindir(sh)?);
        cargo(sh, &["build", "--quiet", "--package", "backend", "--features", "server", "--bin", "backend"]).run()?;
        let backend = root().join("target/debug/backend");
        let source = root().join("migrations");
        let source = source.to_str().context("non-UTF-8 path")?.to_owned();
        // The harness asserts as tests do: a panic in it is this figure's failure, not the bench's end.
        let measured = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> anyhow::Result<Vec<Figure>> {
            let cluster = ha::Ha::start().context("the HA parts went missing")?;
            ui::line(format!("the HA cluster started in {}", ui::duration(cluster.started_in)));
            let mut prestart = Vec::new();
            for trial in 0..3 {
                let database = format!("switchover{trial}");
                cluster.psql("postgres", &format!("CREATE DATABASE {database}"));
                let before = cluster.times_marked_down(&cluster.leader());
                let switchover = cluster.start_switchover();
                cluster.wait_marked_down(&switchover.from, before);
                let args = ["prestart", "--source", source.as_str(), "--wait-timeout", "60"];
                let mut child = self.command_on(cluster.port, &database, &args).spawn()?;
                let waiter = std::thread::spawn(move || child.wait().map(|status| (status, Instant::now())));
                let end = switchover.finish(&cluster);
                let (status, exited) = waiter.join().map_err(|_| anyhow::anyhow!("the waiting thread panicked"))??;
                if !status.success() {
                    bail!("prestart started mid-switchover failed ({status})");
                }
                prestart.push(signed_ms(end, exited));
            }
            let bind = format!("127.0.0.1:{}", free_port()?);
            let mut service = Command::new(&backend);
            service.args(["--env-file", "/dev/null"]).envs(self.env(cluster.port, "switchover0"));
            let _api =
                KillOnDrop(service.env("BACKEND_BIND", &bind).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
            let write = || {
                let body = r#"{"kind":"echo","payload":{}}"#;
                crate::http::request("POST", &bind, "/api/jobs", Some(body)).is_ok_and(|(status, _)| status == 201)
            };
            let up = Instant::now();
            while !write() {
                if up.elapsed() > Duration::from_secs(30) {
                    bail!("the backend never took a write through HAProxy");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut backend_write = Vec::new();
            for _ in 0..3 {
                let end = cluster.switchover();
                while !write() {
                    if end.elapsed() > Duration::from_secs(30) {
                        bail!("the backend took no write within 30 s of a switchover");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                backend_write.push(end.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(vec![
                Figure::new("switchover end → prestart exits (started mid-switchover)", prestart, "ms")
                    .reference("issue 21"),
                Figure::new("switchover end → backend's first successful write", backend_write, "ms")
                    .reference("issue 21"),
            ])
        }));
        measured.unwrap_or_else(|panic| {
            let said = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()));
            Err(anyhow::anyhow!("the HA cluster failed: {}", said.unwrap_or_default()))
        })
    }

    /// From the moment `pg_isready` first succeeds to the moment `wait-for-db` exits.
    fn detection_latency(&self, cluster: &DevCluster<'_>, trials: usize) -> anyhow::Result<Figure> {
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
    fn stop_time(&self, trials: usize) -> anyhow::Result<Figure> {
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
            let running = crate::interrupt::block_on(async {
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

    fn concurrent_prestarts(&self, count: usize) -> anyhow::Result<Figure> {
        ui::step(format!("{count} prestarts at once on a fresh database (3 runs)"));
        let source = root().join("migrations");
        let source = source.to_str().context("non-UTF-8 path")?;
        let mut samples = Vec::new();
        for _ in 0..3 {
            self.fresh_database("crowd")?;
            let started = Instant::now();
            let children: Vec<_> = (0..count)
                .map(|_| self.command("crowd", &["prestart", "--source", source]).spawn())
                .collect::<Result<_, _>>()?;
            for mut child in children {
                if !child.wait()?.success() {
                    bail!("one of the concurrent prestarts failed");
                }
            }
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(Figure::new(format!("{count} prestarts at once, until the last exits"), samples, "ms")
            .target(2000.0, "< 2 s"))
    }
}

/// `lint-migrations --all` on one 200 KB schema file: squawk's parser and every rule on, and the
/// process start, as CI runs it.
fn lint_schema(binary: &Path, dir: &Path, runs: usize) -> anyhow::Result<Figure> {
    let schema = schema_of_size(200 * 1024);
    let statements = schema.matches(";\n").count();
    ui::step(format!("lint-migrations on a 200 KB schema ({statements} statements, {runs} runs)"));
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("1_schema.sql"), &schema)?;
    let source = dir.to_str().context("non-UTF-8 path")?;
    let mut wall = Vec::new();
    for _ in 0..runs {
        let mut command = Command::new(binary);
        command.args(["lint-migrations", "--all", "--source", source, "--format", "json"]);
        command.stdout(Stdio::null()).stderr(Stdio::null());
        // Its findings fail the check (exit 1): what is timed is reading them, not passing.
        wall.push(measured(&mut command)?.wall.as_secs_f64() * 1000.0);
    }
    Ok(Figure::new(format!("lint-migrations on a 200 KB schema ({statements} statements)"), wall, "ms")
        .target(100.0, "< 100 ms"))
}

/// A schema in the shapes real ones have (identity keys, foreign keys, checks, partial and
/// expression indexes, functions, triggers, comments), repeated up to `bytes`.
fn schema_of_size(bytes: usize) -> String {
    let mut sql = String::new();
    let mut i = 0;
    while sql.len() < bytes {
        sql.push_str(&format!(
            "CREATE TABLE t{i} (\n    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n    owner_id bigint,\n    \
             name text NOT NULL,\n    state text NOT NULL DEFAULT 'new' CHECK (state IN ('new', 'done')),\n    \
             payload jsonb NOT NULL DEFAULT '{{}}',\n    created_at timestamptz NOT NULL DEFAULT now()\n);\n\
             CREATE INDEX t{i}_open ON t{i} (owner_id) WHERE state = 'new';\n\
             CREATE UNIQUE INDEX t{i}_name ON t{i} (lower(name));\n\
             ALTER TABLE t{i} ADD CONSTRAINT t{i}_owner FOREIGN KEY (owner_id) REFERENCES t{i} (id) NOT VALID;\n\
             CREATE FUNCTION t{i}_touch() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n    \
             NEW.created_at := coalesce(NEW.created_at, now());\n    RETURN NEW;\nEND\n$$;\n\
             CREATE TRIGGER t{i}_touch BEFORE INSERT ON t{i} FOR EACH ROW EXECUTE FUNCTION t{i}_touch();\n\
             COMMENT ON TABLE t{i} IS 'Table {i}: one row per thing';\n\
             ALTER TABLE t{i} ALTER COLUMN payload SET STATISTICS 100;\n\n"
        ));
        i += 1;
    }
    sql
}

fn build_times(sh: &Shell) -> anyhow::Result<Vec<Figure>> {
    ui::step("build time of xtask (debug, as `cargo xtask` builds it)");
    let time = |args: &[&str]| -> anyhow::Result<f64> {
        let started = Instant::now();
        cargo(sh, args).quiet().ignore_stderr().run()?;
        Ok(started.elapsed().as_secs_f64())
    };
    cargo(sh, &["clean", "--package", "xtask"]).quiet().ignore_stderr().run()?;
    let cold = time(&["build", "--package", "xtask"])?;
    let migration = root()
        .join("migrations")
        .read_dir()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "sql"));
    if let Some(migration) = &migration {
        let text = std::fs::read(migration)?;
        std::fs::write(migration, &text)?;
    }
    let incremental = time(&["build", "--package", "xtask"])?;
    Ok(vec![
        Figure::new("cargo build -p xtask after cargo clean -p xtask", vec![cold], "s").target(30.0, "< 30 s"),
        Figure::new("cargo build -p xtask after touching a migration", vec![incremental], "s").target(2.0, "< 2 s"),
    ])
}

/// The whole test suite once built: `cargo xtask test` twice, the second run timed.
fn suite_time(sh: &Shell) -> anyhow::Result<Figure> {
    ui::step("the test suite, built and warm (cargo xtask test, run twice, the second timed)");
    cargo(sh, &["xtask", "test"]).quiet().ignore_stdout().ignore_stderr().run().context("the test suite failed")?;
    let started = Instant::now();
    cargo(sh, &["xtask", "test"]).quiet().ignore_stdout().ignore_stderr().run().context("the test suite failed")?;
    Ok(Figure::new("cargo xtask test, warm", vec![started.elapsed().as_secs_f64()], "s").target(180.0, "< 3 min"))
}

/// What the figures depend on: cores, the server's version and durability settings.
fn describe_machine(port: u16) -> anyhow::Result<String> {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let (version, fsync, commit): (String, String, String) = crate::interrupt::block_on(async {
        let settings = bench_settings(port, "postgres")?;
        let mut ready = backend::db::connect_once(&settings, "prestart-bench", Duration::from_secs(5))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let sql =
            "SELECT current_setting('server_version'), current_setting('fsync'), current_setting('synchronous_commit')";
        anyhow::Ok(sqlx::query_as(sql).fetch_one(&mut ready.conn).await?)
    })?;
    Ok(format!(
        "machine: {cores} cores, PostgreSQL {version} (fsync {fsync}, synchronous_commit {commit}); the migration and \
         concurrency figures follow the disk's fsync time, which varies by 20-30 % from run to run"
    ))
}

fn print_table(figures: &[Figure]) {
    println!("{:<70} {:>10} {:>10} {:>10}  target", "benchmark", "median", "min", "max");
    for figure in figures {
        let median = figure.percentile(0.5);
        let verdict = match figure.target {
            Some((limit, text)) => format!("{text} {}", if median < limit { "✓" } else { "✗" }),
            None => figure.note.to_owned(),
        };
        let max =
            if figure.name.starts_with("wait detection") { figure.percentile(0.95) } else { figure.percentile(1.0) };
        println!(
            "{:<70} {:>7.2} {:<2} {:>7.2} {:<2} {:>7.2} {:<2}  {verdict}",
            figure.name,
            median,
            figure.unit,
            figure.percentile(0.0),
            figure.unit,
            max,
            figure.unit
        );
    }
}

/// Wall time and success of one run.
struct Measured {
    wall: Duration,
    success: bool,
}

fn measured(command: &mut Command) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let status = command.status().context("cannot start the benchmarked program")?;
    Ok(Measured { wall: started.elapsed(), success: status.success() })
}

/// Peak RSS in MB, through GNU time: it forks its own small child, so the figure is the
/// program's alone. (wait4 from this process would report at least our own size: a spawned
/// child's peak includes the parent's memory it was cloned from.)
fn peak_rss(command: &Command, work: &Path) -> anyhow::Result<Option<f64>> {
    let time = Path::new("/usr/bin/time");
    if !time.is_file() {
        return Ok(None);
    }
    let report = work.join("time.out");
    let mut wrapped = Command::new(time);
    wrapped.args(["-f", "%M", "-o"]).arg(&report).arg(command.get_program()).args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if !wrapped.stdout(Stdio::null()).stderr(Stdio::null()).status()?.success() {
        bail!("the run measured for its memory failed");
    }
    let kilobytes: f64 = std::fs::read_to_string(&report)?.trim().lines().last().unwrap_or_default().parse()?;
    Ok(Some(kilobytes / 1024.0))
}

fn bench_settings(port: u16, database: &str) -> anyhow::Result<DatabaseSettings> {
    let port = port.to_string();
    let env = Env::from_pairs([
        ("POSTGRES_SERVER", "127.0.0.1"),
        ("POSTGRES_PORT", port.as_str()),
        ("POSTGRES_DB", database),
        ("POSTGRES_USER", "postgres"),
        ("POSTGRES_PASSWORD", PASSWORD),
        ("POSTGRES_SSLMODE", "disable"),
    ]);
    Ok(DatabaseSettings::from_env(&env)?)
}

/// A fresh folder in the temporary folder for a replica or a pooler, handed to the OS user the
/// server programs and PgBouncer run as when we are root (they refuse root); removed at the end.
struct ServerScratch {
    dir: PathBuf,
    run_as: Option<&'static str>,
}

impl ServerScratch {
    fn new(sh: &Shell) -> anyhow::Result<ServerScratch> {
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
    fn hand_over(&self, sh: &Shell) -> anyhow::Result<()> {
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
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SIGTERM, which runuser passes on; SIGKILL would leave its child running.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(program)).find(|p| p.is_file())
}

/// Negative when the event came before `end`.
fn signed_ms(end: Instant, event: Instant) -> f64 {
    match event.checked_duration_since(end) {
        Some(after) => after.as_secs_f64() * 1000.0,
        None => -end.duration_since(event).as_secs_f64() * 1000.0,
    }
}

/// testkit's HA harness, the same file: it takes what it needs from here (below), as in testkit.
#[allow(dead_code)]
#[path = "../../testkit/src/ha.rs"]
mod ha;

/// What ha.rs takes from testkit, the same file too.
#[allow(dead_code)]
#[path = "../../testkit/src/common.rs"]
mod common;
use common::{eventually, run_ok, superuser_env};

const SUPERUSER: &str = "postgres";
const FIRST_SUPERUSER_PASSWORD: &str = "bench superuser";
use crate::pgbouncer;
static HA_BINDIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn server_bindir() -> &'static Path {
    HA_BINDIR.get().expect("the server binaries are found before the HA cluster starts")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A free loopback port, as the harness wants one (testkit's claims it against other tests too;
/// the bench runs alone).
struct Port {
    number: u16,
}

fn claim_port() -> Port {
    Port { number: free_port().expect("a free port") }
}
