//! `cargo xtask database create|drop|reset|setup`, with sqlx-cli's meanings, through the
//! maintenance database (`postgres`) with the same credentials; and the throwaway databases that
//! `sqlx-prepare` and `schema` build their work in.

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use backend::config::DatabaseSettings;
use backend::db::bounded;

use crate::base::exit::{Failure, fail};
use crate::base::sql::sqlstate;
use crate::base::ui;
use crate::connection::session::{self, Session, Use};
use crate::databases::ddl::{MAINTENANCE_DATABASE, Template, create_database, database_exists, drop_database, target};
use crate::machinery::migrate::{MigrateOptions, migrate_step};
use crate::settings::context::{DbArgs, Loaded, SourceArgs};

/// How long `drop` and `reset` wait for a server's first answer before the usual wait: to tell a
/// standby, which never takes a drop, at once.
const STANDBY_PROBE: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Create the database of the settings if it does not exist
    Create(CreateArgs),
    /// Drop the database (only with ENVIRONMENT=local unless --force; asks first on a terminal)
    Drop(DropArgs),
    /// Drop the database, then set it up again (same guards as drop)
    Reset(ResetArgs),
    /// Create the database if it does not exist, then apply the migrations
    Setup(SetupArgs),
}

#[derive(clap::Args, Debug)]
struct CreateArgs {
    #[command(flatten)]
    db: DbArgs,
}

#[derive(clap::Args, Debug)]
struct DropArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    guard: DropGuard,
}

#[derive(clap::Args, Debug)]
struct DropGuard {
    /// Drop even though ENVIRONMENT is not `local`
    #[arg(long)]
    force: bool,
    /// Do not ask for confirmation on a terminal
    #[arg(short = 'y', long)]
    yes: bool,
}

#[derive(clap::Args, Debug)]
struct ResetArgs {
    #[command(flatten)]
    drop: DropArgs,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    options: MigrateOptions,
}

#[derive(clap::Args, Debug)]
struct SetupArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    options: MigrateOptions,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Action::Create(args) => create(&args.db.load()?),
        Action::Drop(args) => {
            let loaded = args.db.load()?;
            refuse_a_standby(&loaded)?;
            let name = confirm_drop(&loaded, &args.guard)?;
            drop_command(&loaded, &name)
        }
        Action::Reset(args) => {
            let loaded = args.drop.db.load()?;
            // What setup needs is read before anything is dropped: a broken folder stops here.
            args.source.load(&loaded.root)?;
            refuse_a_standby(&loaded)?;
            let name = confirm_drop(&loaded, &args.drop.guard)?;
            drop_command(&loaded, &name)?;
            setup(&loaded, &args.source, &args.options)
        }
        Action::Setup(args) => setup(&args.db.load()?, &args.source, &args.options),
    }
}

/// Creates the database of `loaded` unless it exists; says which happened.
pub fn create(loaded: &Loaded) -> anyhow::Result<()> {
    let name = target(loaded).database().to_owned();
    let maintenance = loaded.with_database(MAINTENANCE_DATABASE);
    let created = session::run(&maintenance, Use::Write, async |session| {
        ui::step(format!("create database {name}"));
        if exists(session, &name).await? {
            ui::line(format!("database {name} already exists"));
            return Ok(false);
        }
        match create_database(&mut session.ready.conn, &name, Template::Default).await {
            Ok(()) => ui::line(format!("created database {name}")),
            // Another replica's prestart created it a moment ago.
            Err(e) if matches!(sqlstate(&e).as_str(), "42P04" | "23505") => {
                ui::line(format!("database {name} already exists (created meanwhile)"));
                return Ok(false);
            }
            Err(e) => return Err(explain(e, &name, "create", session.settings())),
        }
        Ok(true)
    })?;
    if created {
        // Ours since a moment ago: it serves the environment of these settings.
        let table = backend::migrations::MigrationSettings::load(&loaded.root)
            .map_err(|e| fail(Failure::Config, e))?
            .table_name;
        let environment = loaded.settings.environment.as_deref();
        session::run(loaded, Use::Write, async |session| {
            // Made a moment ago: fresh, where it may be local at all.
            let fresh = crate::databases::environment::may_be_recorded_local(session.settings(), session.context());
            let record =
                crate::databases::environment::record(&mut session.ready.conn, &table, environment, fresh, None);
            bounded(record).await.map(|_| ()).map_err(|e| {
                fail(
                    Failure::Refused,
                    anyhow!("cannot record ENVIRONMENT in {name}: {}", backend::db::describe_error(&e)),
                )
            })
        })?;
    }
    Ok(())
}

/// Drops `name` (the database whose record was read, or with `--force` the configured one) on the
/// server migrations go to.
fn drop_command(loaded: &Loaded, name: &str) -> anyhow::Result<()> {
    let maintenance = loaded.for_migrations().as_ref().unwrap_or(loaded).with_database(MAINTENANCE_DATABASE);
    session::run(&maintenance, Use::Write, async |session| {
        ui::step(format!("drop database {name}"));
        if !exists(session, name).await? {
            ui::line(format!("database {name} does not exist: nothing to drop"));
            return Ok(());
        }
        let dropped = drop_database(&mut session.ready.conn, name, false).await;
        dropped.map_err(|e| explain(e, name, "drop", session.settings()))?;
        ui::line(format!("dropped database {name}"));
        Ok(())
    })
}

fn setup(loaded: &Loaded, source: &SourceArgs, options: &MigrateOptions) -> anyhow::Result<()> {
    let (set, settings, dir) = source.load(&loaded.root)?;
    create(loaded)?;
    let plan = options.plan(&set, &settings, &dir, loaded.wait_timeout);
    session::run(loaded, Use::Write, async |session| migrate_step(session, &plan, None, None).await)
}

/// A standby never takes the drop, and waiting will not make it (a failover is no time for a
/// drop): refused at once when the server answers as one. A server that does not answer is left
/// to the usual wait.
fn refuse_a_standby(loaded: &Loaded) -> anyhow::Result<()> {
    let target = loaded.for_migrations();
    let db = &target.as_ref().unwrap_or(loaded).settings.database;
    let name = db.database().to_owned();
    // A few seconds for a server that is starting: its first answer tells.
    // Out of the run's one wait budget: the probe's time is waiting too.
    let started = std::time::Instant::now();
    let until = started + STANDBY_PROBE.min(loaded.wait_left());
    let probe = async {
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match backend::db::connect_once(db, "prestart-drop", backend::db::ATTEMPT_TIMEOUT.min(left)).await {
                Ok(ready) => return Some(ready),
                Err(backend::db::Failure::Retry(_)) if std::time::Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(200).min(left)).await;
                }
                Err(_) => return None,
            }
        }
    };
    let probed = crate::base::interrupt::block_on(crate::base::interrupt::unless_signalled(async { Ok(probe.await) }))?;
    loaded.spend_waiting(started.elapsed());
    let Some(ready) = probed else { return Ok(()) };
    match ready.server.read_only_reason() {
        None => Ok(()),
        Some(reason) => Err(fail(
            Failure::Refused,
            anyhow!(
                "refusing to drop {name} on {db}: {}; nothing was dropped\n  fix: point the settings at the primary",
                reason.detail
            ),
        )),
    }
}

/// `drop` and `reset` destroy data: only where both the settings and the database itself say
/// `ENVIRONMENT=local` (see `crate::databases::environment`), unless `--force`; and after a yes on a
/// terminal unless `-y`. The name to drop: the database whose record said local (its
/// `current_database()`, which a pooler's alias may hide), or with `--force` the configured one.
fn confirm_drop(loaded: &Loaded, guard: &DropGuard) -> anyhow::Result<String> {
    let db = target(loaded);
    let mut name = db.database().to_owned();
    let environment = loaded.settings.environment.as_deref();
    if !crate::databases::environment::is_local(environment) && !guard.force {
        let said = environment.map_or_else(|| "ENVIRONMENT is not set".to_owned(), |e| format!("ENVIRONMENT={e}"));
        return Err(fail(
            Failure::Config,
            anyhow!(
                "refusing to drop {db}: {said}, and dropping is for ENVIRONMENT=local; pass --force if you mean to \
                 destroy this database and all its data"
            ),
        ));
    }
    if !guard.force
        && let Some(recorded_in) = refuse_unless_recorded_local(loaded, &db)?
    {
        name = recorded_in;
    }
    if guard.yes {
        return Ok(name);
    }
    if !std::io::stdin().is_terminal() {
        return Err(fail(
            Failure::Config,
            anyhow!("refusing to drop {db} without asking, and there is no terminal to ask on: pass -y to confirm"),
        ));
    }
    eprint!("drop database {} on {}:{} and all its data? [y/N] ", db.database(), db.host(), db.port());
    // Read on a thread of its own, raced with the signal listener: Ctrl-C at the question ends
    // the run at once, rather than after Enter.
    let answer = crate::base::interrupt::block_on(crate::base::interrupt::unless_signalled(async {
        let read = tokio::task::spawn_blocking(|| {
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer).map(|_| answer)
        });
        read.await.context("cannot read the answer")?.context("cannot read the answer")
    }))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(name)
    } else {
        Err(fail(Failure::Config, anyhow!("not dropped: the answer was not yes (-y skips the question)")))
    }
}

/// The database must say itself that it is local: its record (see `crate::databases::environment`), not
/// the settings, which may point at another database than their ENVIRONMENT describes. Read on
/// the server migrations go to, with the name of the database that holds it; `None` when there
/// is no such database (drop then says so).
fn refuse_unless_recorded_local(loaded: &Loaded, db: &DatabaseSettings) -> anyhow::Result<Option<String>> {
    let table =
        backend::migrations::MigrationSettings::load(&loaded.root).map_err(|e| fail(Failure::Config, e))?.table_name;
    let on_target = loaded.for_migrations();
    let recorded = session::run(on_target.as_ref().unwrap_or(loaded), Use::Write, async |session| {
        let name: String = bounded(
            sqlx::query_scalar("SELECT pg_catalog.current_database()::text").fetch_one(&mut session.ready.conn),
        )
        .await
        .map_err(|e| fail(Failure::Refused, e))?;
        let recorded = bounded(crate::databases::environment::recorded(&mut session.ready.conn, &table))
            .await
            .map_err(|e| fail(Failure::Refused, e))?;
        Ok((name, recorded))
    });
    let (name, recorded) = match recorded {
        Ok(read) => read,
        // Nothing to protect: drop says the database does not exist.
        Err(error) if crate::connection::wait::database_missing(&error) => return Ok(None),
        Err(error) => return Err(error),
    };
    let where_ = format!("database {name} on {}:{}", db.host(), db.port());
    let said = match &recorded {
        Some(recorded) if crate::databases::environment::is_local(recorded.environment.as_deref()) => {
            return Ok(Some(name));
        }
        Some(recorded) => format!("it records {}", recorded.describe()),
        None => format!(
            "it has no record of its environment ({} is missing: `database create` writes it, and prestart and \
             migrate write ENVIRONMENT=local only into a database they migrate from empty)",
            crate::databases::environment::table_for(&table)
        ),
    };
    Err(fail(
        Failure::Config,
        anyhow!(
            "refusing to drop {where_}: {said}, whatever ENVIRONMENT says here (an exported DATABASE_URL may point \
             elsewhere than this .env describes)\n  fix: pass --force if you mean to destroy this database and all its \
             data"
        ),
    ))
}

async fn exists(session: &mut Session<'_>, name: &str) -> anyhow::Result<bool> {
    database_exists(&mut session.ready.conn, name).await.map_err(|e| fail(Failure::Refused, e))
}

/// What a refused `CREATE` or `DROP DATABASE` means, and the fix.
fn explain(error: sqlx::Error, name: &str, verb: &str, server: &DatabaseSettings) -> anyhow::Error {
    let code = sqlstate(&error);
    let fix = match code.as_ref() {
        "42501" => format!(
            "the role {} may not {verb} databases: grant it (ALTER ROLE \"{}\" CREATEDB), or ask whoever runs the \
             server to {verb} {name}",
            server.user(),
            server.user()
        ),
        "55006" => "other sessions are connected to it: stop backend and worker (and any psql) first".to_owned(),
        _ => "see the server's message above".to_owned(),
    };
    let said =
        error.as_database_error().map_or_else(|| error.to_string(), |e| format!("{} (SQLSTATE {code})", e.message()));
    fail(Failure::Refused, anyhow!("cannot {verb} database {name}: {said}\n  fix: {fix}"))
}
