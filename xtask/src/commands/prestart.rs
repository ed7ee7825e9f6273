//! `cargo xtask prestart`: wait for the database, migrate, seed. What the compose `prestart`
//! service and the Kubernetes init container run; backend and worker start only after exit 0.

use std::cell::OnceCell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use backend::migrations::{MigrationSet, MigrationSettings};

use crate::base::exit::{Failure, fail};
use crate::base::ui;
use crate::connection::session::{self, Use};
use crate::connection::wait::database_missing;
use crate::machinery::migrate::{MigrateOptions, first_read, migrate_step};
use crate::machinery::seed::{Ahead, required_superuser, seed_step};
use crate::settings::context::{DbArgs, Listing, SourceArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub migrate: MigrateOptions,
    #[command(flatten)]
    pub seeds: crate::machinery::seed::SeedArgs,
    /// Create the database when it does not exist (if the role may), then go on (Rails'
    /// `db:prepare`); off by default, so a typo in POSTGRES_DB is not a new empty database
    #[arg(long)]
    pub create_database: bool,
    /// Check pending migrations against the queries of these recorded releases (default: the one
    /// recorded before this release); see docs/releases.md
    #[arg(long, value_name = "RELEASE", num_args = 1..)]
    pub compatible_with: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    // Everything that can be checked without the database is checked before waiting for it: the
    // settings and the seed's files here, the rest (see `prepared`) while the login waits on the
    // server; a mistake there is still said before any wait ends (see `session::open_beside`).
    let loaded = args.db.load()?;
    let superuser = required_superuser(&loaded.settings)?;
    let seed_files = args.seeds.load(&loaded.root)?;
    crate::machinery::release::Release::check_name(loaded.settings.release.as_deref())?;
    // What was read, kept past the session for the drift note of a failed migration.
    let sources: OnceCell<(MigrationSet, MigrationSettings, PathBuf)> = OnceCell::new();
    // One dedicated connection serves all three steps: no pool, and no second handshake.
    let steps = || {
        session::run_alongside(&loaded, Use::Write, prepared(&args, &loaded), async |session, prepared: Prepared| {
            let Prepared { this, listing } = prepared;
            let release = crate::machinery::release::Options {
                this,
                compatible_with: args.compatible_with.clone(),
                refuse: !crate::databases::environment::is_local(loaded.settings.environment.as_deref()),
            };
            let table = listing.settings.table_name.clone();
            let mut seed = Ahead::new(superuser, &seed_files);
            let migrating = Instant::now();
            // The files are read while the server answers the first read of the migrations table.
            let (first, read) =
                futures_util::future::try_join(first_read(session, &table, Some(&seed)), async { listing.read() })
                    .await?;
            let (set, settings, dir) = sources.get_or_init(|| read);
            let plan = crate::machinery::migrate::Plan {
                release: Some(&release),
                ..args.migrate.plan(set, settings, dir, loaded.wait_timeout)
            };
            migrate_step(session, &plan, Some(&mut seed), Some(first)).await?;
            // After a long migration the server may have restarted; right after a short one, asking
            // would only cost the no-op run a round trip.
            if migrating.elapsed() > Duration::from_secs(1) {
                session.ensure_alive().await?;
            }
            seed_step(session, seed).await
        })
    };
    let done = match steps() {
        Err(error) if args.create_database && database_missing(&error) => {
            // No database is made for a folder that would fail the run afterwards (one whose file
            // cannot be read, say): it is read whole first.
            args.source.load(&loaded.root)?;
            crate::commands::database::create(&loaded)?;
            steps()
        }
        done => done,
    };
    done.map_err(|error| match sources.get() {
        Some((set, settings, _)) => with_drift_note(error, &loaded, set, settings),
        None => error,
    })?;
    let took = started.elapsed();
    ui::step_with(format!("database ready in {}", ui::duration(took)), &[("duration_ms", ui::ms(took))]);
    Ok(())
}

/// What a run needs before its first query and the database does not: this release (its queries
/// parsed), and the migrations folder listed (its names checked; its files are read while the
/// server answers the first query).
struct Prepared {
    this: crate::machinery::release::Release,
    listing: Listing,
}

/// [`Prepared`], made while the server starts our session (see `session::open_beside`): a third
/// of a millisecond of a no-op run's that used to come before the connection. A failure still
/// ends the run without waiting for the database, and is the one said.
async fn prepared(args: &Args, loaded: &crate::settings::context::Loaded) -> anyhow::Result<Prepared> {
    let this = crate::machinery::release::Release::this(loaded.settings.release.as_deref())?;
    let listing = args.source.list(&loaded.root).await?;
    Ok(Prepared { this, listing })
}

/// A failed migration says whether the database drifted from its migrations: "someone changed
/// the tables by hand" is a common cause, and this saves the user a second tool.
fn with_drift_note(
    error: anyhow::Error,
    loaded: &crate::settings::context::Loaded,
    set: &backend::migrations::MigrationSet,
    settings: &backend::migrations::MigrationSettings,
) -> anyhow::Error {
    // Only where a migration's SQL failed, and not where the failure itself explains the schema:
    // a migration without a transaction left its first statements applied, a lock wait ran out.
    let sql_failed =
        error.downcast_ref::<crate::machinery::migrate::MigrationFailed>().is_some_and(|f| !f.explains_the_schema);
    if !sql_failed {
        return error;
    }
    let note = match crate::commands::schema::drift_note(loaded, set, settings) {
        Ok(Some(note)) => note,
        Ok(None) => return error,
        Err(interrupted) => return interrupted,
    };
    let causes: Vec<String> = error.chain().skip(1).map(ToString::to_string).collect();
    fail(Failure::Migration, anyhow::anyhow!("{}\n  drift: {note}", causes.join(": ")))
}
