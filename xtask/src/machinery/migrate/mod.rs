//! `cargo xtask migrate`, `migrate revert` and `migrate status`, and the migrate step of
//! prestart: the command line here; planning, applying, explaining and status in their own files,
//! and the migration lock in `crate::connection::lock`.

mod apply;
mod blockers;
mod control;
mod explain;
mod guard;
mod lock_wait;
mod one;
mod plan;
mod status;

use std::path::Path;
use std::time::Duration;

use anyhow::anyhow;
use backend::migrations::{MigrationSet, MigrationSettings};

use crate::settings::context::{DbArgs, SourceArgs};

use crate::base::exit::{Failure, fail};
use crate::base::workspace::display_path;
use crate::connection::session::{self, Use};

use apply::revert_step;
pub use apply::{first_read, migrate_step};
pub use explain::{MigrationFailed, drop_invalid_indexes_fix, invalid_indexes};
pub use plan::Plan;
use status::run_status;

const DEFAULT_STATEMENT_LOCK_TIMEOUT_SECS: u64 = 10;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    run: RunArgs,
}

/// What a run of migrations (up or down) needs: the database, the folder, the options, how far.
#[derive(clap::Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    options: MigrateOptions,
    #[command(flatten)]
    target: TargetArgs,
}

/// How far to go, and whether to go at all.
#[derive(clap::Args, Debug)]
struct TargetArgs {
    /// Stop at this version: apply only pending migrations up to it (migrate), or revert every
    /// applied migration above it, 0 for all (revert). It must be one of the migrations
    #[arg(long, value_name = "VERSION")]
    target_version: Option<i64>,
    /// Print what would run, in order, and change nothing
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// List migrations with their state; exit 0 when the database is up to date, 8 when not
    Status(StatusArgs),
    /// Revert the latest applied migration with its .down.sql file (--target-version: every one
    /// above that version)
    Revert(RunArgs),
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Print one JSON document instead of a table
    #[arg(long)]
    pub json: bool,
}

/// How the migrate step behaves; shared by `migrate` and `prestart`.
#[derive(clap::Args, Debug, Clone)]
pub struct MigrateOptions {
    /// Give up waiting for another session's migration lock after this many seconds (default: the
    /// wait timeout, so replicas wait while one of them migrates)
    #[arg(long = "migration-lock-timeout", alias = "lock-timeout", value_name = "SECS")]
    pub migration_lock_timeout: Option<u64>,
    /// Fail when the database has applied versions this code does not know (default: warn, as a
    /// newer release or a rollback leaves them)
    #[arg(long)]
    pub strict: bool,
    /// Give up a migration statement that waits this many seconds for another session's lock,
    /// naming that session, instead of hanging (and queueing every query behind it); 0 waits
    /// forever, as sqlx-cli does; a lock_timeout that a migration sets (for itself and the files
    /// after it), or that the role, the database or the URL's options set, wins
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_STATEMENT_LOCK_TIMEOUT_SECS)]
    pub statement_lock_timeout: u64,
}

impl MigrateOptions {
    /// The options with every default, for commands that migrate on the way to something else.
    pub fn defaults() -> Self {
        MigrateOptions {
            migration_lock_timeout: None,
            strict: false,
            statement_lock_timeout: DEFAULT_STATEMENT_LOCK_TIMEOUT_SECS,
        }
    }

    pub fn plan<'a>(
        &self,
        set: &'a MigrationSet,
        settings: &'a MigrationSettings,
        dir: &'a Path,
        wait: Duration,
    ) -> Plan<'a> {
        Plan {
            set,
            settings,
            dir,
            lock_timeout: self.migration_lock_timeout.map_or(wait, Duration::from_secs),
            statement_lock_timeout: Duration::from_secs(self.statement_lock_timeout),
            strict: self.strict,
            target: None,
            dry_run: false,
            release: None,
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Some(Action::Status(status)) => return run_status(status),
        Some(Action::Revert(revert)) => return run_revert(revert),
        None => {}
    }
    let RunArgs { db, source, options, target } = args.run;
    let loaded = db.load()?;
    // Listed (and the target checked, as sqlx-cli does before connecting) while the login waits on
    // the server (see prestart).
    let listed = async {
        let listing = source.list(&loaded.root).await?;
        target.check(&listing.dir, listing.versions(), false)?;
        Ok(listing)
    };
    session::run_alongside(&loaded, Use::Write, listed, async |session, listing| {
        let table = listing.settings.table_name.clone();
        // The files are read while the server answers the first read of the migrations table.
        let (first, (set, settings, dir)) =
            futures_util::future::try_join(first_read(session, &table, None), async { listing.read() }).await?;
        let plan = target.apply_to(options.plan(&set, &settings, &dir, loaded.wait_timeout), false)?;
        migrate_step(session, &plan, None, Some(first)).await
    })
}

fn run_revert(args: RunArgs) -> anyhow::Result<()> {
    let loaded = args.db.load()?;
    let (set, settings, dir) = args.source.load(&loaded.root)?;
    let plan = args.target.apply_to(args.options.plan(&set, &settings, &dir, loaded.wait_timeout), true)?;
    session::run(&loaded, Use::Write, async |session| revert_step(session, &plan).await)
}

impl TargetArgs {
    /// The plan with the target and dry run; a target no migration has changes nothing (as
    /// sqlx-cli, before connecting). For a revert, 0 means "all of them".
    fn apply_to<'a>(&self, plan: Plan<'a>, zero_means_all: bool) -> anyhow::Result<Plan<'a>> {
        self.check(plan.dir, plan.set.files.iter().map(|f| f.migration.version), zero_means_all)?;
        Ok(Plan { target: self.target_version, dry_run: self.dry_run, ..plan })
    }

    /// The target is one of `versions` (those of `dir`).
    fn check(&self, dir: &Path, versions: impl Iterator<Item = i64>, zero_means_all: bool) -> anyhow::Result<()> {
        let Some(target) = self.target_version.filter(|&t| !(zero_means_all && t == 0)) else { return Ok(()) };
        let known: Vec<i64> = versions.collect();
        if known.contains(&target) {
            return Ok(());
        }
        let known: Vec<String> = known.iter().map(ToString::to_string).collect();
        Err(fail(
            Failure::Migration,
            anyhow!(
                "--target-version {target}: no migration in {} has this version (the versions are {}); nothing was \
                 changed",
                display_path(dir),
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            ),
        ))
    }
}
