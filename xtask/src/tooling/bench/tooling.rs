//! The figures of the project itself: the linter on a large schema, build times, the suite's time.

use std::path::Path;
use std::process::Command;

use xshell::Shell;

use super::figures::{Figure, measured};
use crate::base::ui;
use crate::base::workspace::{cargo, root};
use anyhow::Context as _;
use std::process::Stdio;
use std::time::Instant;

/// `lint-migrations --all` on one 200 KB schema file: squawk's parser and every rule on, and the
/// process start, as CI runs it.
pub(super) fn lint_schema(binary: &Path, dir: &Path, runs: usize) -> anyhow::Result<Figure> {
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
pub(super) fn schema_of_size(bytes: usize) -> String {
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

pub(super) fn build_times(sh: &Shell) -> anyhow::Result<Vec<Figure>> {
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
pub(super) fn suite_time(sh: &Shell) -> anyhow::Result<Figure> {
    ui::step("the test suite, built and warm (cargo xtask test, run twice, the second timed)");
    cargo(sh, &["xtask", "test"]).quiet().ignore_stdout().ignore_stderr().run().context("the test suite failed")?;
    let started = Instant::now();
    cargo(sh, &["xtask", "test"]).quiet().ignore_stdout().ignore_stderr().run().context("the test suite failed")?;
    Ok(Figure::new("cargo xtask test, warm", vec![started.elapsed().as_secs_f64()], "s").target(180.0, "< 3 min"))
}
