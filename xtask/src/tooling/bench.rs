//! `cargo xtask bench`: the figures behind every speed claim, measured on the release binary
//! against a real local cluster (kept under `target/bench-db/`, apart from `dev-db`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use backend::config::{DatabaseSettings, Env};
use xshell::Shell;

use crate::base::ui;
use crate::base::workspace::{cargo, root};
use crate::databases::dev_db::{Audience, DevCluster};
use figures::peak_rss;
use figures::{Figure, describe_machine, measured, print_table};
use standby::{KillOnDrop, ServerScratch};
use tooling::{build_times, lint_schema, suite_time};

mod figures;
mod peers;
mod release_check;
mod standby;
mod tooling;

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
    /// The settings every run of the binary gets: the bench cluster's superuser.
    fn env(&self, port: u16, database: &str) -> Vec<(String, String)> {
        [
            ("POSTGRES_SERVER", "127.0.0.1"),
            ("POSTGRES_PORT", &port.to_string()),
            ("POSTGRES_DB", database),
            ("POSTGRES_USER", "postgres"),
            ("POSTGRES_PASSWORD", PASSWORD),
            ("POSTGRES_SSLMODE", "disable"),
            ("FIRST_SUPERUSER", "admin@example.com"),
            ("FIRST_SUPERUSER_PASSWORD", "bench superuser"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
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
        crate::base::interrupt::block_on(async {
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
            crate::databases::ddl::drop_database(conn, name, true).await?;
            crate::databases::ddl::create_database(conn, name, crate::databases::ddl::Template::Default).await?;
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
        let mut command = crate::tooling::pgbouncer::prepare(
            dir,
            port,
            self.port,
            crate::tooling::pgbouncer::Pool { mode: "session", size: 20, sockets: None, fallback: true },
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

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(program)).find(|p| p.is_file())
}
