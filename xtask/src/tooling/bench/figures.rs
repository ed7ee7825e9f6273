//! A figure: its samples, its target, how it is measured (wall time and peak memory) and printed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::bench_settings;
use anyhow::Context as _;
use anyhow::bail;

/// One line of the table.
pub(super) struct Figure {
    name: String,
    samples: Vec<f64>,
    unit: &'static str,
    target: Option<(f64, &'static str)>,
    /// Said in the target column of a row without a limit of its own.
    note: &'static str,
}

impl Figure {
    pub(super) fn new(name: impl Into<String>, mut samples: Vec<f64>, unit: &'static str) -> Self {
        samples.sort_by(f64::total_cmp);
        Figure { name: name.into(), samples, unit, target: None, note: "" }
    }

    /// A row to compare with, with no target of its own.
    pub(super) fn reference(mut self, note: &'static str) -> Self {
        self.note = note;
        self
    }

    pub(super) fn target(mut self, limit: f64, text: &'static str) -> Self {
        self.target = Some((limit, text));
        self
    }

    pub(super) fn percentile(&self, p: f64) -> f64 {
        let index = ((self.samples.len() as f64 - 1.0) * p).round() as usize;
        self.samples.get(index).copied().unwrap_or(f64::NAN)
    }
}

pub(super) fn print_table(figures: &[Figure]) {
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

/// What the figures depend on: cores, the server's version and durability settings.
pub(super) fn describe_machine(port: u16) -> anyhow::Result<String> {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let (version, fsync, commit): (String, String, String) = crate::base::interrupt::block_on(async {
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

/// Wall time and success of one run.
pub(super) struct Measured {
    pub(super) wall: Duration,
    pub(super) success: bool,
}

pub(super) fn measured(command: &mut Command) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let status = command.status().context("cannot start the benchmarked program")?;
    Ok(Measured { wall: started.elapsed(), success: status.success() })
}

/// Peak RSS in MB, through GNU time: it forks its own small child, so the figure is the
/// program's alone. (wait4 from this process would report at least our own size: a spawned
/// child's peak includes the parent's memory it was cloned from.)
pub(super) fn peak_rss(command: &Command, work: &Path) -> anyhow::Result<Option<f64>> {
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

/// Negative when the event came before `end`.
pub(super) fn signed_ms(end: Instant, event: Instant) -> f64 {
    match event.checked_duration_since(end) {
        Some(after) => after.as_secs_f64() * 1000.0,
        None => -end.duration_since(event).as_secs_f64() * 1000.0,
    }
}
