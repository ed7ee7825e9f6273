//! `cargo xtask lint-migrations`: which files to check, and the report.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use backend::migrations::{MigrationFile, MigrationSet};
use xshell::{Shell, cmd};

use super::{Finding, Linter, RULES, Rule};
use crate::context::{SettingsArgs, SourceArgs, display_path};
use crate::exit::{Failure, fail};
use crate::ui;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(flatten)]
    source: SourceArgs,
    /// Check every migration, not only the ones not applied yet (or, without a database, the
    /// ones added since the merge-base with the default branch)
    #[arg(long)]
    all: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    args.settings.check_named_file()?;
    let root = crate::context::root();
    let (set, settings, dir) = args.source.load(&root)?;
    let (selected, basis) = if args.all {
        (set.files.iter().map(|f| f.migration.version).collect(), "every migration (--all)".to_owned())
    } else {
        select(&args, &set, &settings.table_name, &root, &dir)
    };
    ui::step(format!("lint {} of {} migrations in {}: {basis}", selected.len(), set.files.len(), display_path(&dir)));
    let findings = lint_set(&set, RULES, |file| selected.contains(&file.migration.version));
    for finding in &findings {
        println!("{}", format_finding(finding));
    }
    if findings.is_empty() {
        ui::line("no problems");
        return Ok(());
    }
    let files: BTreeSet<&PathBuf> = findings.iter().map(|f| &f.file).collect();
    Err(fail(
        Failure::ChecksFailed,
        anyhow!(
            "{} {} in {} of {} checked migrations",
            findings.len(),
            if findings.len() == 1 { "problem" } else { "problems" },
            files.len(),
            selected.len()
        ),
    ))
}

/// Lints the whole set in version order (so later files see what earlier ones did), reporting
/// only the files `report` picks.
pub fn lint_set(set: &MigrationSet, rules: &[&dyn Rule], report: impl Fn(&MigrationFile) -> bool) -> Vec<Finding> {
    let mut linter = Linter::default();
    let mut findings = Vec::new();
    for file in &set.files {
        let path = file.path.clone().unwrap_or_else(|| PathBuf::from(file.name()));
        findings.extend(linter.lint(&path, file.migration.sql.as_str(), file.migration.no_tx, rules, report(file)));
    }
    findings
}

/// `file:line: rule: why` and the safe way on the next line.
pub fn format_finding(finding: &Finding) -> String {
    format!(
        "{}:{}: {}: {}\n  safe: {}",
        display_path(&finding.file),
        finding.line,
        finding.rule,
        finding.why,
        finding.safe
    )
}

/// The migrations not applied yet when the database answers; else those added since the
/// merge-base with the default branch, plus uncommitted ones; else all.
fn select(args: &Args, set: &MigrationSet, table: &str, root: &Path, dir: &Path) -> (BTreeSet<i64>, String) {
    let why_not = match applied_versions(args, table) {
        Ok(applied) => {
            let pending = set.files.iter().map(|f| f.migration.version).filter(|v| !applied.contains(v)).collect();
            return (pending, "the ones not applied to the database yet".into());
        }
        Err(why_not) => why_not,
    };
    // Never a silent change of mode: which files are checked depends on it.
    crate::ui::line(format!("the database is not used to tell what is applied: {why_not}"));
    match changed_since_default_branch(root, dir) {
        Some((names, base)) => {
            let chosen = set
                .files
                .iter()
                .filter(|f| {
                    names.iter().any(|n| Some(n.as_str()) == f.path.as_ref().and_then(|p| p.file_name()?.to_str()))
                })
                .map(|f| f.migration.version)
                .collect();
            (chosen, format!("the database does not answer; the ones added since {base} or not committed"))
        }
        None => (
            set.files.iter().map(|f| f.migration.version).collect(),
            "no database and no git history: all of them".into(),
        ),
    }
}

/// What the database has applied, or why it cannot tell.
fn applied_versions(args: &Args, table: &str) -> Result<BTreeSet<i64>, String> {
    let loaded = args.settings.load().map_err(|e| format!("the settings do not load ({e:#})"))?;
    let db = &loaded.settings.database;
    crate::interrupt::block_on(async {
        let mut ready = backend::db::connect_once(db, "prestart-lint", Duration::from_secs(3))
            .await
            .map_err(|e| format!("{db} does not answer ({e})"))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let rows = match crate::lock::read_applied(&mut ready.conn, table, deadline).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(error)) => return Err(format!("{table} cannot be read ({})", backend::db::describe_error(&error))),
            Err(locked) => return Err(format!("{locked:#}")),
        };
        Ok(rows.into_iter().map(|r| r.version).collect())
    })
}

/// File names in `dir` added since the merge-base with the default branch, and uncommitted ones.
fn changed_since_default_branch(root: &Path, dir: &Path) -> Option<(BTreeSet<String>, String)> {
    let sh = Shell::new().ok()?;
    let _root = sh.push_dir(root);
    cmd!(sh, "git rev-parse --git-dir").quiet().ignore_stdout().ignore_stderr().run().ok()?;
    let base_branch = ["origin/HEAD", "origin/main", "main", "origin/master", "master"].into_iter().find(|b| {
        cmd!(sh, "git rev-parse --verify --quiet {b}").quiet().ignore_stdout().ignore_stderr().run().is_ok()
    })?;
    let base = cmd!(sh, "git merge-base HEAD {base_branch}").quiet().ignore_stderr().read().ok()?;
    let added = cmd!(sh, "git diff --name-only --diff-filter=A {base} -- {dir}").quiet().ignore_stderr().read().ok()?;
    let uncommitted =
        cmd!(sh, "git status --porcelain --untracked-files=all -- {dir}").quiet().ignore_stderr().read().ok()?;
    let names = added
        .lines()
        .chain(uncommitted.lines().map(|l| l.get(3..).unwrap_or_default()))
        .filter_map(|path| Path::new(path.trim()).file_name()?.to_str().map(str::to_owned))
        .collect();
    Some((names, format!("the merge-base with {base_branch}")))
}
