//! `cargo xtask lint-migrations`: which files to check, and the report.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use backend::migrations::{MigrationFile, MigrationSet, MigrationSettings};
use xshell::{Shell, cmd};

use super::breaks_previous_release::Previous;
use super::facts::Facts;
use super::report::{self, Format};
use super::rules::{Own, RuleId};
use super::{Config, Engine, Outcome};
use crate::base::exit::{Failure, fail};
use crate::base::ui;
use crate::base::workspace::display_path;
use crate::settings::context::{SettingsArgs, SourceArgs};

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
    /// How to print the findings
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Also apply the checked migrations to a throwaway copy of the schema in a throwaway cluster
    /// on this machine (never on the database), and print the lock each statement takes
    #[arg(long)]
    locks: bool,
    /// Print every rule and whether it is on (with this folder's .squawk.toml), then exit
    #[arg(long)]
    list_rules: bool,
    /// Check the migrations added since REF (a git ref of the deployed release) against REF's
    /// queries (its .sqlx), on a throwaway copy of the schema REF's migrations build
    /// (breaks-previous-release)
    #[arg(long, value_name = "REF", conflicts_with = "all")]
    against: Option<String>,
    /// Check the selected migrations against the queries of another build's .sqlx folder
    #[arg(long, value_name = "DIR", conflicts_with = "against")]
    previous_queries: Option<PathBuf>,
    /// Where the queries live, for --against (default: `.sqlx` at the top of the git repository
    /// the migrations folder is in, where sqlx-cli writes them for a workspace)
    #[arg(long, value_name = "DIR")]
    sqlx_dir: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    args.settings.check_named_file()?;
    let root = crate::base::workspace::root();
    let (set, settings, dir) = args.source.load(&root)?;
    let config = Config::load(&dir, &root).map_err(|e| fail(Failure::Config, e))?;
    if args.list_rules {
        for rule in super::rules::RuleId::all() {
            println!("{rule} {}", if config.enabled.contains(&rule) { "on" } else { "off" });
        }
        return Ok(());
    }
    // --all checks the files, not a deploy: no database is asked (it may not even be this project's).
    let database =
        if args.all { Err("--all checks every file".to_owned()) } else { ask_database(&args, &settings.table_name) };
    let previous = previous_release(&args, &dir, &settings)?;
    let (selected, basis): (BTreeSet<i64>, String) = match previous.as_ref().and_then(Previous::versions) {
        Some(theirs) => (
            set.files.iter().map(|f| f.migration.version).filter(|v| !theirs.contains(v)).collect(),
            format!("the ones added since {}", args.against.as_deref().unwrap_or_default()),
        ),
        None if args.all => {
            (set.files.iter().map(|f| f.migration.version).collect(), "every migration (--all)".to_owned())
        }
        None => select(&database, &set, &root, &dir),
    };
    let facts = database.as_ref().ok().and_then(|(_, facts)| facts.as_ref());
    ui::step(format!("lint {} of {} migrations in {}: {basis}", selected.len(), set.files.len(), display_path(&dir)));
    if let Some(source) = &config.source {
        ui::line(format!("rules as {} sets them", display_path(source)));
    }
    if let Some(facts) = facts {
        ui::line(format!("with the database's facts: PostgreSQL {}, its table sizes", facts.version_text));
    }
    let mut outcome = lint_set(&set, &config, facts, |file| selected.contains(&file.migration.version), !args.all);
    if let Some(previous) = &previous
        && config.enabled.contains(&RuleId::Own(Own::BreaksPreviousRelease))
    {
        let roles = facts.map(|f| f.roles.as_slice()).unwrap_or_default();
        outcome.findings.extend(against_previous(previous, &set, &selected, &settings, roles)?);
    }
    outcome.rank();
    if outcome.moot_lock_timeout > 0 {
        ui::line(format!(
            "require-lock-timeout left out in {} transactional {}: prestart sets lock_timeout for each (--statement-lock-timeout)",
            outcome.moot_lock_timeout,
            if outcome.moot_lock_timeout == 1 { "file" } else { "files" }
        ));
    }
    let rendered = report::render(args.format, &outcome.findings);
    if !rendered.is_empty() || args.format == Format::Json {
        println!("{rendered}");
    }
    let measured = if args.locks {
        let applied: BTreeSet<i64> = match &database {
            Ok((applied, _)) => applied.clone(),
            Err(_) => set.files.iter().map(|f| f.migration.version).filter(|v| !selected.contains(v)).collect(),
        };
        let roles = facts.map(|f| f.roles.as_slice()).unwrap_or_default();
        super::locks::measure(&set, &settings, &applied, roles, !args.all, args.format == Format::Text)?
    } else {
        0
    };
    verdict(&outcome, selected.len(), measured)
}

/// The run's end: "no problems", or an error that counts them (exit 2).
fn verdict(outcome: &Outcome, checked: usize, measured: usize) -> anyhow::Result<()> {
    let failing = outcome.failing();
    if failing == 0 && measured == 0 {
        ui::line("no problems");
        return Ok(());
    }
    let files: BTreeSet<&PathBuf> =
        outcome.findings.iter().filter(|f| f.severity != super::rules::Severity::Note).map(|f| &f.file).collect();
    let mut summary = format!(
        "{failing} {} in {} of {} checked migrations",
        if failing == 1 { "problem" } else { "problems" },
        files.len(),
        checked
    );
    if measured > 0 {
        summary.push_str(&format!(
            "; {measured} {} a table that existed before under a lock that blocks writes (measured)",
            if measured == 1 { "statement scans or rewrites" } else { "statements scan or rewrite" }
        ));
    }
    Err(fail(Failure::ChecksFailed, anyhow!(summary)))
}

/// The release `--against` or `--previous-queries` names, if either does.
fn previous_release(args: &Args, dir: &Path, settings: &MigrationSettings) -> anyhow::Result<Option<Previous>> {
    Ok(match (&args.against, &args.previous_queries) {
        (Some(reference), _) => Some(Previous::from_git(reference, dir, args.sqlx_dir.as_deref(), settings)?),
        (None, Some(queries)) => Some(Previous::from_dir(queries)?),
        (None, None) => None,
    })
}

/// `breaks-previous-release` for the selected files, on the schema the others build.
fn against_previous(
    previous: &Previous,
    set: &MigrationSet,
    selected: &BTreeSet<i64>,
    settings: &MigrationSettings,
    roles: &[String],
) -> anyhow::Result<Vec<super::Finding>> {
    let (pending, applied): (Vec<&MigrationFile>, Vec<&MigrationFile>) =
        set.files.iter().partition(|f| selected.contains(&f.migration.version));
    super::breaks_previous_release::check(previous, &applied, &pending, settings, roles)
}

/// Lints the whole set in version order (so later files see what earlier ones did), reporting
/// only the files `report` picks. With `deploy`, the picked files are one deploy: tables an
/// earlier one creates are new to the later ones.
pub fn lint_set(
    set: &MigrationSet,
    config: &Config,
    facts: Option<&Facts>,
    report: impl Fn(&MigrationFile) -> bool,
    deploy: bool,
) -> Outcome {
    let mut engine = Engine::new(config, facts);
    let mut outcome = Outcome::default();
    for file in &set.files {
        let path = file.path.clone().unwrap_or_else(|| PathBuf::from(file.name()));
        let picked = report(file);
        engine.lint(&path, file.migration.sql.as_str(), file.migration.no_tx, picked, deploy && picked, &mut outcome);
    }
    outcome
}

/// The migrations not applied yet when the database answers; else those added since the
/// merge-base with the default branch, plus uncommitted ones; else all.
fn select(
    database: &Result<(BTreeSet<i64>, Option<Facts>), String>,
    set: &MigrationSet,
    root: &Path,
    dir: &Path,
) -> (BTreeSet<i64>, String) {
    let why_not = match database {
        Ok((applied, _)) => {
            let pending = set.files.iter().map(|f| f.migration.version).filter(|v| !applied.contains(v)).collect();
            return (pending, "the ones not applied to the database yet".into());
        }
        Err(why_not) => why_not,
    };
    // Never a silent change of mode: which files are checked depends on it.
    crate::base::ui::line(format!("the database is not used to tell what is applied: {why_not}"));
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

/// The database's facts, bounded (their read sets a short lock_timeout; this bounds the rest).
pub async fn read_facts(conn: &mut sqlx::PgConnection) -> Result<Facts, String> {
    match tokio::time::timeout(FACTS_BOUND, Facts::read(conn)).await {
        Ok(Ok(facts)) => Ok(facts),
        Ok(Err(error)) => Err(backend::db::describe_error(&error)),
        Err(_) => Err(format!("reading them took more than {} s (a lock?)", FACTS_BOUND.as_secs())),
    }
}

/// How long the database's facts may take to read.
const FACTS_BOUND: Duration = Duration::from_secs(3);

/// What the database has applied, and its facts (when its catalog can be read), or why it cannot
/// tell.
fn ask_database(args: &Args, table: &str) -> Result<(BTreeSet<i64>, Option<Facts>), String> {
    let loaded = args.settings.load().map_err(|e| format!("the settings do not load ({e:#})"))?;
    let db = &loaded.settings.database;
    crate::base::interrupt::block_on(async {
        let mut ready = backend::db::connect_once(db, "prestart-lint", Duration::from_secs(3))
            .await
            .map_err(|e| format!("{db} does not answer ({e})"))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let rows = match crate::connection::lock::read_applied(&mut ready.conn, table, deadline).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(error)) => return Err(format!("{table} cannot be read ({})", backend::db::describe_error(&error))),
            Err(locked) => return Err(format!("{locked:#}")),
        };
        // Facts refine the findings; without them the lint is the same as with no database.
        let facts = match read_facts(&mut ready.conn).await {
            Ok(facts) => Some(facts),
            Err(why) => {
                ui::line(format!("the database's version and table sizes are not used: {why}"));
                None
            }
        };
        Ok((rows.into_iter().map(|r| r.version).collect(), facts))
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
