//! The release check's figures: what prestart's check costs a run that applies one migration
//! (the queries described on the schema before, and again in the migration's transaction), for
//! the template's own queries and for 200; that a no-op run does none; and the offline check
//! (`lint-migrations --previous-queries`), a throwaway schema build of the template included.

use std::process::Stdio;

use anyhow::{Context as _, bail};

use super::{Bench, Figure, measured, root};
use crate::base::ui;

const DATABASE: &str = "release_check";
const PENDING: &str = "20990101000000_bench_note.sql";

impl Bench {
    pub(super) fn release_check(&self, runs: usize) -> anyhow::Result<Vec<Figure>> {
        ui::step(format!("the release check of prestart, one pending migration ({runs} runs each)"));
        let source = self.work.join("release-check-migrations");
        let _ = std::fs::remove_dir_all(&source);
        std::fs::create_dir_all(&source)?;
        for entry in std::fs::read_dir(root().join("migrations"))?.flatten() {
            std::fs::copy(entry.path(), source.join(entry.file_name()))?;
        }
        let source = source.to_str().context("non-UTF-8 path")?.to_owned();
        self.fresh_database(DATABASE)?;
        let first = measured(&mut self.command(DATABASE, &["prestart", "--source", &source]))?;
        if !first.success {
            bail!("the first prestart failed");
        }
        let noop = self.command(DATABASE, &["prestart", "--source", &source]).stderr(Stdio::piped()).output()?;
        if String::from_utf8_lossy(&noop.stderr).contains("release check") {
            bail!("a no-op prestart ran the release check");
        }
        std::fs::write(std::path::Path::new(&source).join(PENDING), "ALTER TABLE jobs ADD COLUMN bench_note text;\n")?;
        let mut figures = Vec::new();
        for (label, queries) in [("the template's queries", None), ("200 queries", Some(200))] {
            self.record_release_before(queries)?;
            let mut spent = Vec::new();
            for _ in 0..runs {
                spent.push(self.one_checked_run(&source)?);
            }
            figures.push(
                Figure::new(format!("release check in prestart, {label}, one migration"), spent, "ms")
                    .target(50.0, "< 50 ms"),
            );
        }
        figures.push(self.offline_check(&source, runs)?);
        Ok(figures)
    }

    /// Records a release before this one: with this one's queries, or with `count` of its own.
    fn record_release_before(&self, count: Option<usize>) -> anyhow::Result<()> {
        let queries = match count {
            None => "(SELECT queries FROM _prestart_releases WHERE name <> 'bench-before' LIMIT 1)".to_owned(),
            Some(count) => format!("'{}'::jsonb", many_queries(count).replace('\'', "''")),
        };
        let sql = format!(
            "DELETE FROM _prestart_releases WHERE name = 'bench-before'; INSERT INTO _prestart_releases \
             (name, queries, first_deployed, last_deployed) VALUES ('bench-before', {queries}, now() - interval '1 day', \
             now() - interval '1 day')"
        );
        self.on_server(DATABASE, async |conn| {
            Ok(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(conn).await.map(drop)?)
        })
    }

    /// One prestart that applies the pending migration under the check; what the check cost, as
    /// the run says it. The migration is taken back after (untimed).
    fn one_checked_run(&self, source: &str) -> anyhow::Result<f64> {
        let output = self.command(DATABASE, &["prestart", "--source", source]).stderr(Stdio::piped()).output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            bail!("a checked prestart failed:\n{stderr}");
        }
        let spent = stderr
            .lines()
            .find_map(|line| line.trim().strip_prefix("release check: "))
            .and_then(|line| line.strip_suffix(" ms")?.rsplit(", ").next()?.parse::<f64>().ok())
            .with_context(|| format!("the run did not say what its release check cost:\n{stderr}"))?;
        let undo =
            "ALTER TABLE jobs DROP COLUMN bench_note; DELETE FROM _sqlx_migrations WHERE version = 20990101000000";
        self.on_server(DATABASE, async |conn| Ok(sqlx::raw_sql(undo).execute(conn).await.map(drop)?))?;
        Ok(spent)
    }

    /// `lint-migrations --previous-queries`: the applied migrations built in a throwaway cluster,
    /// the pending one applied there, the template's queries described before and after.
    fn offline_check(&self, source: &str, runs: usize) -> anyhow::Result<Figure> {
        let queries = root().join(".sqlx");
        let queries = queries.to_str().context("non-UTF-8 path")?;
        let args = ["lint-migrations", "--source", source, "--previous-queries", queries, "--env-file", "/dev/null"];
        // lint-migrations diagnoses no context: the bench's `command` would add one.
        let lint = || {
            let mut command = std::process::Command::new(&self.binary);
            command.args(args).envs(self.env(self.port, DATABASE)).stdout(Stdio::null()).stderr(Stdio::null());
            command
        };
        let mut wall = Vec::new();
        for _ in 0..runs.min(10) {
            let run = measured(&mut lint())?;
            if !run.success {
                let output = lint().stdout(Stdio::piped()).stderr(Stdio::piped()).output()?;
                bail!(
                    "lint-migrations --previous-queries failed on an additive migration:\n{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            wall.push(run.wall.as_secs_f64() * 1000.0);
        }
        Ok(Figure::new(
            "lint-migrations --previous-queries: a throwaway build of the template's schema and the check",
            wall,
            "ms",
        )
        .target(1000.0, "< 1 s"))
    }
}

/// `count` queries in the record's format, on the template's tables, each text its own.
fn many_queries(count: usize) -> String {
    let shapes: [(&str, &[&str]); 4] = [
        (
            "SELECT id, kind, payload, status::text AS status, attempts FROM jobs WHERE id = $1 AND attempts <> #",
            &["int8"],
        ),
        ("UPDATE jobs SET attempts = attempts + # WHERE id = $1 RETURNING id, attempts", &["int8"]),
        ("INSERT INTO jobs (kind, payload) VALUES ($1 || '#', $2) RETURNING id", &["text", "jsonb"]),
        ("SELECT key, value FROM app_settings WHERE key = $1 OR key = '#'", &["text"]),
    ];
    let queries: Vec<serde_json::Value> = (0..count)
        .map(|n| {
            let (query, parameters) = shapes[n % shapes.len()];
            serde_json::json!({
                "hash": format!("bench{n:04}"),
                "query": query.replace('#', &n.to_string()),
                "parameters": parameters,
                "columns": [],
            })
        })
        .collect();
    serde_json::Value::Array(queries).to_string()
}
