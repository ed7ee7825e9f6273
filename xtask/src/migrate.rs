//! `cargo xtask migrate` and `migrate status`, and the migrate step of prestart.
//!
//! sqlx's Migrator takes a blocking `pg_advisory_lock` with no timeout and leaks it on errors.
//! We take the same key with a polling try-lock (so sqlx-cli and sqlx's Migrator still exclude
//! us), release it on every path, and apply each migration through sqlx's `Migrate` so the table,
//! the checksums and the transaction handling stay sqlx-cli's.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use backend::schema::{AppliedRow, MigrationFile, MigrationSet, MigrationSettings, State, Status, applied_rows};
use sqlx::Row;
use sqlx::migrate::{Migrate, MigrateError, Migration};
use sqlx::postgres::{PgConnection, PgDatabaseError, PgErrorPosition};

use backend::config::DatabaseSettings;
use backend::db::{Ready, bounded};
use backend::pooler::in_own_transaction;

use crate::context::{DbArgs, SourceArgs, display_path};
use crate::exit::{Failure, fail};
use crate::session::{self, Session, Use};
use crate::ui;

const DEFAULT_STATEMENT_LOCK_TIMEOUT_SECS: u64 = 10;
/// Between two tries of the lock; cheap for the server.
const LOCK_POLL: Duration = Duration::from_millis(100);
/// How often to say who holds the lock while we wait for it.
const LOCK_REPORT_EVERY: Duration = Duration::from_secs(5);

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
struct StatusArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    source: SourceArgs,
    /// Print one JSON document instead of a table
    #[arg(long)]
    json: bool,
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
    /// forever; a migration that sets its own lock_timeout wins
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
    let (set, settings, dir) = source.load(&loaded.root)?;
    let plan = target.apply_to(options.plan(&set, &settings, &dir, loaded.wait_timeout), false)?;
    session::run(&loaded, Use::Write, async |session| migrate_step(session, &plan).await)
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
        if let Some(target) = self.target_version.filter(|&t| !(zero_means_all && t == 0))
            && !plan.set.has_version(target)
        {
            let known = plan.set.files.iter().map(|f| f.migration.version.to_string()).collect::<Vec<_>>();
            return Err(fail(
                Failure::Migration,
                anyhow!(
                    "--target-version {target}: no migration in {} has this version (the versions are {}); nothing was \
                     changed",
                    display_path(plan.dir),
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                ),
            ));
        }
        Ok(Plan { target: self.target_version, dry_run: self.dry_run, ..plan })
    }
}

/// What to apply and how.
pub struct Plan<'a> {
    pub set: &'a MigrationSet,
    pub settings: &'a MigrationSettings,
    pub dir: &'a Path,
    pub lock_timeout: Duration,
    /// `lock_timeout` for migration statements; zero turns it off.
    pub statement_lock_timeout: Duration,
    pub strict: bool,
    /// `--target-version`: apply up to it, or revert down to it.
    pub target: Option<i64>,
    /// `--dry-run`: say what would run, change nothing.
    pub dry_run: bool,
}

impl Plan<'_> {
    /// The pending migrations to apply, in order: those up to the target.
    fn to_apply<'s>(&'s self, status: &Status) -> Vec<&'s MigrationFile> {
        self.set
            .files
            .iter()
            .filter(|f| status.with_state(State::Pending).any(|e| e.version == f.migration.version))
            .filter(|f| self.target.is_none_or(|target| f.migration.version <= target))
            .collect()
    }

    /// A target below what is applied is an error that changes nothing: migrate only goes up.
    fn check_target_not_below(&self, applied: &[AppliedRow]) -> anyhow::Result<()> {
        let latest = applied.iter().map(|r| r.version).max();
        match (self.target, latest) {
            (Some(target), Some(latest)) if target < latest => Err(fail(
                Failure::Migration,
                anyhow!(
                    "--target-version {target} is below the latest applied version {latest}, and migrate only goes up; \
                     nothing was changed\n  fix: `cargo xtask migrate revert --target-version {target}` goes down"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Names the pending migrations that the target leaves out.
    fn report_skipped(&self, status: &Status) {
        let Some(target) = self.target else { return };
        for entry in status.with_state(State::Pending).filter(|e| e.version > target) {
            ui::line(format!("skipped {} {}: above --target-version {target}", entry.version, entry.description));
        }
    }
}

/// What a lost connection interrupted, for the reconnect line.
const BEFORE_MIGRATING: &str = "before migrating";

/// Applies pending migrations under the migration lock, which is released on every path.
pub async fn migrate_step(session: &mut Session<'_>, plan: &Plan<'_>) -> anyhow::Result<()> {
    ui::step(format!("migrate from {} ({} migrations)", display_path(plan.dir), plan.set.files.len()));
    let started = Instant::now();
    // Most runs have nothing to apply: read the table without the lock, and take the lock only
    // to apply (under it, apply_pending reads the table again).
    let applied = loop {
        match bounded(applied_rows(&mut session.ready.conn, &plan.settings.table_name)).await {
            Ok(rows) => break rows,
            Err(error) => {
                session.reconnect_after(error, BEFORE_MIGRATING).await?.map_err(|e| fail(Failure::Migration, e))?
            }
        }
    };
    let status = Status::compare(plan.set, &applied);
    let pending = plan.to_apply(&status);
    if pending.is_empty() || plan.dry_run {
        refuse_inconsistent(&status, plan)?;
        plan.check_target_not_below(&applied)?;
        plan.report_skipped(&status);
        if plan.dry_run {
            for file in &pending {
                ui::line(format!("would apply {}", file.name()));
            }
            ui::line(format!("dry run: {} to apply, nothing was changed", pending.len()));
            return Ok(());
        }
        let total = plan.set.files.len();
        ui::line(match plan.target {
            Some(target) => format!("up to date at --target-version {target} ({})", ui::duration(started.elapsed())),
            None => {
                format!("up to date: all {total} migrations were already applied ({})", ui::duration(started.elapsed()))
            }
        });
        return Ok(());
    }
    acquire_lock(session, plan.lock_timeout).await?;
    // The key of the server this connection reached: after a reconnect during the wait for
    // the lock, the lock was taken on that connection with its database's key.
    let key = lock_key(&session.ready.server.database);
    let db = session.settings();
    let result = apply_pending(&mut session.ready, plan, db).await;
    let conn = &mut session.ready.conn;
    // After a failed statement sqlx has queued the ROLLBACK, which runs before this. If the
    // connection itself is gone, so is the lock.
    let _ = bounded(sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(&mut *conn)).await;
    let applied = result?;
    let total = plan.set.files.len();
    ui::line(match applied {
        // Another prestart applied them while we waited for the lock.
        0 => format!("up to date: all {total} migrations were applied meanwhile ({})", ui::duration(started.elapsed())),
        n => {
            let above_target =
                plan.target.map_or(0, |t| plan.set.files.iter().filter(|f| f.migration.version > t).count());
            let left_out =
                if above_target > 0 { format!(" and {above_target} left above the target") } else { String::new() };
            format!(
                "applied {n}, {} were already applied{left_out}, in {}",
                total.saturating_sub(n + above_target),
                ui::duration(started.elapsed())
            )
        }
    });
    Ok(())
}

/// Reverts applied migrations with their down files, under the migration lock: the latest one,
/// or every one above the target. Each one to revert must have a down file, checked before
/// anything runs.
async fn revert_step(session: &mut Session<'_>, plan: &Plan<'_>) -> anyhow::Result<()> {
    ui::step(format!("revert with the down files of {}", display_path(plan.dir)));
    let started = Instant::now();
    if plan.dry_run {
        let applied = bounded(applied_rows(&mut session.ready.conn, &plan.settings.table_name))
            .await
            .map_err(|e| fail(Failure::Migration, e))?;
        let downs = to_revert(plan, &applied)?;
        for down in &downs {
            ui::line(format!("would revert {}", down.name()));
        }
        ui::line(format!("dry run: {} to revert, nothing was changed", downs.len()));
        return Ok(());
    }
    acquire_lock(session, plan.lock_timeout).await?;
    let key = lock_key(&session.ready.server.database);
    let db = session.settings();
    let result = revert_under_lock(&mut session.ready, plan, db).await;
    let _ = bounded(sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(&mut session.ready.conn)).await;
    let reverted = result?;
    ui::line(format!("reverted {reverted} in {}", ui::duration(started.elapsed())));
    Ok(())
}

async fn revert_under_lock(ready: &mut Ready, plan: &Plan<'_>, db: &DatabaseSettings) -> anyhow::Result<usize> {
    let applied = bounded(applied_rows(&mut ready.conn, &plan.settings.table_name))
        .await
        .map_err(|e| fail(Failure::Migration, e))?;
    let downs = to_revert(plan, &applied)?;
    let prefix = migration_prefix(plan.statement_lock_timeout, lock_key(&ready.server.database));
    for down in &downs {
        run_one(ready, down, &prefix, plan, db, Direction::Revert).await?;
    }
    Ok(downs.len())
}

/// The down files to run, latest first; an error that changes nothing when the target is above
/// what is applied, or when one of them has no down file.
fn to_revert<'s>(plan: &'s Plan<'_>, applied: &[AppliedRow]) -> anyhow::Result<Vec<&'s MigrationFile>> {
    let status = Status::compare(plan.set, applied);
    refuse_inconsistent(&status, plan)?;
    let latest = applied.iter().map(|r| r.version).max().unwrap_or(0);
    let above = match plan.target {
        Some(target) if target > latest => {
            return Err(fail(
                Failure::Migration,
                anyhow!(
                    "--target-version {target} is above the latest applied version {latest}, and revert only goes \
                     down; nothing was changed\n  fix: `cargo xtask migrate --target-version {target}` goes up"
                ),
            ));
        }
        Some(target) => target,
        None => applied.iter().map(|r| r.version).filter(|&v| v < latest).max().unwrap_or(0),
    };
    let mut downs = Vec::new();
    for row in applied.iter().rev().filter(|r| r.version > above) {
        match plan.set.downs.get(&row.version) {
            Some(down) => downs.push(down),
            None => {
                let why = match plan.set.files.iter().find(|f| f.migration.version == row.version) {
                    Some(file) => format!(
                        "{} has no down file ({}_{}.down.sql beside it)",
                        file.name(),
                        row.version,
                        file.migration.description.replace(' ', "_")
                    ),
                    None => format!(
                        "{} ({}) is applied, but this code does not have it (a newer release applied it)",
                        row.version, row.description
                    ),
                };
                return Err(fail(
                    Failure::Migration,
                    anyhow!(
                        "{why}, so nothing was reverted\n  fix: write the down file (`cargo xtask new-migration \
                         --reversible` makes pairs), or revert with the code that has it"
                    ),
                ));
            }
        }
    }
    if applied.is_empty() {
        ui::line("no migration is applied: nothing to revert");
    } else if downs.is_empty() {
        ui::line(format!("already at version {above}: nothing to revert"));
    }
    Ok(downs)
}

/// The key sqlx's Migrator and sqlx-cli lock: CRC-32 of the database name times a constant. The
/// name is the server's (`current_database()`), as sqlx takes it: behind a pooler's alias the
/// configured name differs, and the two would no longer exclude each other.
pub fn lock_key(database: &str) -> i64 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32_ad9e * i64::from(CRC.checksum(database.as_bytes()))
}

/// Polls the lock until it is ours or `timeout` passes; a server restart while we wait (which
/// also ends the holder's session) costs a reconnect.
async fn acquire_lock(session: &mut Session<'_>, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last_report: Option<Instant> = None;
    loop {
        let key = lock_key(&session.ready.server.database);
        // The server ends this session, and frees the lock, if we are cut off mid-migration.
        let sql = format!("SELECT pg_try_advisory_lock($1), {}", backend::keepalive::server_side());
        let attempt: Result<(bool, i64), _> =
            bounded(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(key).fetch_one(&mut session.ready.conn)).await;
        let locked = match attempt {
            Ok((locked, _settings_made)) => locked,
            Err(error) => {
                session.reconnect_after(error, BEFORE_MIGRATING).await?.map_err(|e| fail(Failure::Migration, e))?;
                continue;
            }
        };
        let conn = &mut session.ready.conn;
        if locked {
            if last_report.is_some() {
                ui::line(format!("got the migration lock after {}", ui::duration(started.elapsed())));
            }
            return Ok(());
        }
        let timed_out = started.elapsed() >= timeout;
        let report_due = last_report.is_none_or(|at| at.elapsed() >= LOCK_REPORT_EVERY);
        if !(timed_out || report_due) {
            tokio::time::sleep(LOCK_POLL).await;
            continue;
        }
        let holder = bounded(lock_holder(conn, key)).await.unwrap_or_else(|e| format!("unknown session ({e})"));
        if timed_out {
            return Err(fail(
                Failure::Migration,
                anyhow!(
                    "the migration lock is still held after {} by {holder}: wait for it to finish, or end that session \
                     (SELECT pg_terminate_backend(pid)) if it is stuck; --migration-lock-timeout SECS waits longer",
                    ui::duration(started.elapsed())
                ),
            ));
        }
        last_report = Some(Instant::now());
        ui::line(format!(
            "waiting for the migration lock held by {holder} ({} s left)",
            timeout.saturating_sub(started.elapsed()).as_secs()
        ));
        tokio::time::sleep(LOCK_POLL).await;
    }
}

/// Who holds the advisory lock `key`: pid, application name, since when.
pub async fn lock_holder(conn: &mut PgConnection, key: i64) -> Result<String, sqlx::Error> {
    // A bigint advisory key shows in pg_locks as classid (high half) and objid (low half).
    let row = sqlx::query(
        "SELECT a.pid, coalesce(nullif(a.application_name, ''), 'no application name') AS app, \
                to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS since, \
                coalesce(a.state, 'unknown') AS state \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.classid = ((($1::bigint >> 32) & 4294967295))::oid \
           AND l.objid = (($1::bigint & 4294967295))::oid \
         LIMIT 1",
    )
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some(row) => format!(
            "pid {} ({}, connected since {}, {})",
            row.try_get::<i32, _>("pid")?,
            row.try_get::<String, _>("app")?,
            row.try_get::<String, _>("since")?,
            row.try_get::<String, _>("state")?
        ),
        None => "a session that has just released it".to_owned(),
    })
}

/// Checks what is applied, then applies what is pending; returns how many were applied.
async fn apply_pending(ready: &mut Ready, plan: &Plan<'_>, db: &DatabaseSettings) -> anyhow::Result<usize> {
    let conn = &mut ready.conn;
    let table = plan.settings.table_name.as_str();
    let prepare = async {
        for schema in &plan.settings.create_schemas {
            conn.create_schema_if_not_exists(schema).await?;
        }
        conn.ensure_migrations_table(table).await?;
        Ok::<_, MigrateError>(applied_rows(conn, table).await?)
    };
    let applied = tokio::time::timeout(backend::db::QUERY_TIMEOUT, prepare)
        .await
        .map_err(|_| {
            fail(
                Failure::Migration,
                anyhow!(
                    "the server sent no answer within {} s while preparing the migrations table",
                    backend::db::QUERY_TIMEOUT.as_secs()
                ),
            )
        })?
        .map_err(|e| fail(Failure::Migration, e))?;
    let status = Status::compare(plan.set, &applied);
    refuse_inconsistent(&status, plan)?;

    plan.check_target_not_below(&applied)?;
    let pending = plan.to_apply(&status);
    plan.report_skipped(&status);
    let prefix = migration_prefix(plan.statement_lock_timeout, lock_key(&ready.server.database));
    for file in &pending {
        run_one(ready, file, &prefix, plan, db, Direction::Apply).await?;
    }
    if !pending.is_empty() {
        // A migration may have set its own lock_timeout for the session (SET, not SET LOCAL):
        // what runs next (the seed) gets the server's default again.
        let reset = sqlx::raw_sql("RESET lock_timeout").execute(&mut ready.conn);
        bounded(reset).await.map_err(|e| fail(Failure::Migration, e))?;
    }
    Ok(pending.len())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Apply,
    Revert,
}

/// Applies one migration, or reverts one with its down file, under the lock the session holds;
/// logs it, and explains a failure with the file, the line and what is left behind.
async fn run_one(
    ready: &mut Ready,
    file: &MigrationFile,
    prefix: &str,
    plan: &Plan<'_>,
    db: &DatabaseSettings,
    direction: Direction,
) -> anyhow::Result<()> {
    let process = ready.process.pid;
    let key = lock_key(&ready.server.database);
    let conn = &mut ready.conn;
    let table = plan.settings.table_name.as_str();
    let (doing, done) = match direction {
        Direction::Apply => ("applying", "applied"),
        Direction::Revert => ("reverting", "reverted"),
    };
    ui::line(format!("{doing} {}", file.name()));
    // A `-- no-transaction` file gets no prefix (it would put CREATE INDEX CONCURRENTLY in a
    // transaction block): the lock is checked on its own first.
    if file.migration.no_tx {
        let sql = format!("SELECT {}", holds_lock(key));
        let locked: bool = bounded(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut *conn))
            .await
            .map_err(|e| fail(Failure::Migration, e))?;
        if !locked {
            return Err(fail(Failure::Migration, anyhow!("{}: {NOT_LOCKED}\n  fix: {NOT_LOCKED_FIX}", file.name())));
        }
    }
    let migration = with_lock_timeout(&file.migration, prefix);
    let blockers = Blockers::default();
    let ran = tokio::select! {
        ran = async {
            match direction {
                Direction::Apply => conn.apply(table, &migration).await,
                Direction::Revert => conn.revert(table, &migration).await,
            }
        } => ran,
        never = blockers.watch(db, process) => match never {},
    };
    let elapsed = match ran {
        Ok(elapsed) => elapsed,
        Err(error) => {
            let offset = if file.migration.no_tx { 0 } else { prefix.chars().count() };
            let mut explained = explain_failure(error, file, offset, &blockers, plan, done);
            if file.migration.no_tx
                && let Some(note) = invalid_indexes_note(conn).await
            {
                explained = anyhow!("{explained}\n  note: {note}");
            }
            return Err(fail(Failure::Migration, explained));
        }
    };
    ui::line(format!("{done} {} {} ({})", file.migration.version, file.migration.description, ui::duration(elapsed)));
    Ok(())
}

/// The SQL condition that this server session holds the migration lock `key`.
fn holds_lock(key: i64) -> String {
    format!(
        "EXISTS (SELECT FROM pg_catalog.pg_locks WHERE pid = pg_catalog.pg_backend_pid() AND locktype = 'advisory' \
         AND granted AND objsubid = 1 AND classid = (({key}::bigint >> 32) & 4294967295)::oid \
         AND objid = ({key}::bigint & 4294967295)::oid)"
    )
}

/// Why a migration must not run on a session without the lock, and what to do.
const NOT_LOCKED: &str = "this server session does not hold the migration lock, so the migration did not run: a \
     transaction pooler hands each transaction another session, or a migration released the lock";
const NOT_LOCKED_FIX: &str = "connect prestart to PostgreSQL directly (MIGRATION_DATABASE_URL), or remove pg_advisory_unlock calls from migrations";

/// What goes before a transactional migration's SQL, in the same query, so it costs no round
/// trip: first a check that this server session holds the migration lock (behind a transaction
/// pooler the lock may sit on another session, and then the migration must not run), then
/// `SET LOCAL lock_timeout`, which ends with the migration's transaction; a migration that sets
/// its own comes later and wins.
fn migration_prefix(timeout: Duration, key: i64) -> String {
    format!(
        "DO $prestart$ BEGIN IF NOT {} THEN RAISE EXCEPTION USING MESSAGE = '{NOT_LOCKED}', HINT = '{NOT_LOCKED_FIX}'; \
         END IF; END $prestart$;\nSET LOCAL lock_timeout = {};\n",
        holds_lock(key),
        timeout.as_millis()
    )
}

/// The migration with `prefix` before its SQL; its checksum stays the file's. A `-- no-transaction`
/// migration gets nothing: `CREATE INDEX CONCURRENTLY` waits for older transactions through lock
/// waits, which `lock_timeout` would cancel, leaving an INVALID index.
fn with_lock_timeout(migration: &Migration, prefix: &str) -> Migration {
    if migration.no_tx {
        return migration.clone();
    }
    let sql = sqlx::AssertSqlSafe(format!("{prefix}{}", migration.sql.as_str()));
    Migration { sql: sqlx::SqlSafeStr::into_sql_str(sql), ..migration.clone() }
}

/// Changed files and failed rows stop the run; versions unknown to this code warn (or stop,
/// with `--strict`).
fn refuse_inconsistent(status: &Status, plan: &Plan<'_>) -> anyhow::Result<()> {
    let table = &plan.settings.table_name;
    if let Some(failed) = status.with_state(State::Failed).next() {
        return Err(fail(
            Failure::Migration,
            anyhow!(
                "migration {} ({}) is recorded with success = false in {table}: sqlx since 0.7 never writes such a row \
                 (a failed migration leaves none), so an older sqlx-cli, another tool or a hand-made INSERT left it; \
                 check whether its changes are in the schema, finish or undo them by hand, then delete its row \
                 (DELETE FROM {table} WHERE version = {}) and rerun",
                failed.version,
                failed.description,
                failed.version
            ),
        ));
    }
    let changed: Vec<String> =
        status.with_state(State::Changed).map(|e| e.file.clone().unwrap_or_else(|| e.version.to_string())).collect();
    if !changed.is_empty() {
        return Err(fail(
            Failure::Migration,
            anyhow!(
                "{} changed after {} applied (the checksum differs): restore the applied version (git checkout -- {}) \
                 and put the change in a new migration (cargo xtask new-migration NAME); CRLF line endings or a BOM \
                 also change the checksum",
                changed.join(", "),
                if changed.len() == 1 { "it was" } else { "they were" },
                changed.iter().map(|f| format!("{}/{f}", display_path(plan.dir))).collect::<Vec<_>>().join(" ")
            ),
        ));
    }
    let unknown: Vec<String> =
        status.with_state(State::Unknown).map(|e| format!("{} ({})", e.version, e.description)).collect();
    if !unknown.is_empty() {
        let message = format!(
            "the database has applied {} that this code does not have: {}; a newer release ran against it, or this is a rollback",
            if unknown.len() == 1 { "a migration" } else { "migrations" },
            unknown.join(", ")
        );
        if plan.strict {
            return Err(fail(Failure::Migration, anyhow!("{message} (--strict)")));
        }
        ui::warn(message);
    }
    Ok(())
}

/// Names the file, Postgres's message and SQLSTATE, and the line when Postgres gives a position.
/// `offset`: the characters sent before the file's SQL, which Postgres's error position counts.
fn explain_failure(
    error: MigrateError,
    file: &MigrationFile,
    offset: usize,
    blockers: &Blockers,
    plan: &Plan<'_>,
    done: &str,
) -> anyhow::Error {
    let name = file.path.as_deref().map_or_else(|| file.name(), display_path);
    let partial = if file.migration.no_tx {
        "\n  note: this migration runs without a transaction: statements before the failing one stay applied; \
         make the file safe to rerun (IF NOT EXISTS) or undo them by hand"
            .to_owned()
    } else {
        format!("\n  nothing of it was {done}: its transaction rolled back")
    };
    let MigrateError::ExecuteMigration(sqlx::Error::Database(db), _) = &error else {
        return anyhow!("{name}: {error}{partial}");
    };
    let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() else {
        return anyhow!("{name}: {db}{partial}");
    };
    let sql = file.migration.sql.as_str();
    let line = match pg.position() {
        Some(PgErrorPosition::Original(position)) if position > offset => Some(line_of(sql, position - offset)),
        _ => None,
    };
    let mut message = match line {
        Some(line) => format!("{name}:{line}: {} (SQLSTATE {})", pg.message(), pg.code()),
        None => format!("{name}: {} (SQLSTATE {})", pg.message(), pg.code()),
    };
    if let Some(detail) = pg.detail() {
        message.push_str(&format!("\n  detail: {detail}"));
    }
    if let Some(hint) = pg.hint() {
        message.push_str(&format!("\n  hint: {hint}"));
    }
    if pg.code() == "55P03" {
        message.push_str(&format!(
            "\n  it waited {} s (--statement-lock-timeout) for a lock held by {}: let that transaction finish or end it \
             (SELECT pg_terminate_backend(pid)), then rerun; or raise --statement-lock-timeout",
            plan.statement_lock_timeout.as_secs(),
            blockers.describe()
        ));
    }
    message.push_str(&partial);
    anyhow!(message)
}

/// The 1-based line of a 1-based character position, as Postgres reports it.
fn line_of(sql: &str, position: usize) -> usize {
    sql.chars().take(position.saturating_sub(1)).filter(|&c| c == '\n').count() + 1
}

fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    let loaded = args.db.load()?;
    let (set, settings, _) = args.source.load(&loaded.root)?;
    let db = &loaded.settings.database;
    let status = session::run(&loaded, Use::Read, async |session| {
        let read = async |conn: &mut PgConnection| applied_rows(conn, &settings.table_name).await;
        bounded(in_own_transaction(&mut session.ready.conn, session.pooling, read))
            .await
            .map_err(|e| fail(Failure::Migration, e))
    })?;
    let status = Status::compare(&set, &status);
    if args.json {
        let document = serde_json::json!({
            "database": db.to_string(),
            "table": settings.table_name,
            "up_to_date": status.is_up_to_date(),
            "migrations": status.entries,
        });
        ui::print(format!("{}\n", serde_json::to_string_pretty(&document)?));
    } else {
        print_table(&status);
    }
    if status.is_up_to_date() {
        Ok(())
    } else {
        Err(fail(
            Failure::NotUpToDate,
            anyhow!("{}: run `cargo xtask migrate` (or prestart)", status.describe_problems()),
        ))
    }
}

fn print_table(status: &Status) {
    println!("{:<16} {:<8} {:<21} DESCRIPTION", "VERSION", "STATE", "APPLIED AT");
    for entry in &status.entries {
        let state = entry.state.name();
        println!(
            "{:<16} {:<8} {:<21} {}",
            entry.version,
            state,
            entry.installed_on.as_deref().unwrap_or("-"),
            entry.description
        );
    }
}

#[cfg(test)]
mod tests {
    use super::line_of;

    #[test]
    fn positions_map_to_lines() {
        let sql = "-- comment\nCREATE TABLE a ();\nSELEC 1;\n";
        assert_eq!(line_of(sql, 1), 1);
        assert_eq!(line_of(sql, 12), 2);
        assert_eq!(line_of(sql, sql.find("SELEC").expect("present") + 1), 3);
    }
}

/// The sessions that block our migration statement, watched from a second connection: once the
/// statement gives up, the server no longer says who blocked it.
#[derive(Default)]
struct Blockers(std::cell::RefCell<Vec<String>>);

impl Blockers {
    /// Never returns: raced against the migration, it ends when the migration does.
    async fn watch(&self, db: &DatabaseSettings, blocked_pid: i32) -> std::convert::Infallible {
        // Most migrations finish before this; only slow ones pay for a second connection.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut watcher = backend::db::connect_once(db, "prestart-watch", Duration::from_secs(5)).await.ok();
        loop {
            if let Some(ready) = watcher.as_mut() {
                let found: Result<Vec<(i32, String, String)>, _> = sqlx::query_as(
                    "SELECT pid, coalesce(nullif(application_name, ''), 'no application name'), \
                            coalesce(split_part(ltrim(query), E'\\n', 1), '') \
                     FROM pg_stat_activity WHERE pid = ANY (pg_blocking_pids($1))",
                )
                .bind(blocked_pid)
                .fetch_all(&mut ready.conn)
                .await;
                if let Ok(found) = found
                    && !found.is_empty()
                {
                    *self.0.borrow_mut() = found
                        .into_iter()
                        .map(|(pid, app, query)| {
                            format!("pid {pid} ({app}, running `{}`)", query.chars().take(80).collect::<String>())
                        })
                        .collect();
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn describe(&self) -> String {
        let found = self.0.borrow();
        if found.is_empty() { "another session".to_owned() } else { found.join(", ") }
    }
}

/// An interrupted or failed `CREATE INDEX CONCURRENTLY` leaves an INVALID index that makes the
/// rerun fail with "already exists"; name it and the fix.
async fn invalid_indexes_note(conn: &mut PgConnection) -> Option<String> {
    let invalid = invalid_indexes(conn).await.ok()?;
    (!invalid.is_empty()).then(|| {
        format!("INVALID indexes are left behind ({}): {}", invalid.join(", "), drop_invalid_indexes_fix(&invalid))
    })
}

/// Indexes left INVALID, by an interrupted or failed `CREATE INDEX CONCURRENTLY`.
pub async fn invalid_indexes(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT i.indexrelid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE NOT i.indisvalid AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    )
    .fetch_all(conn)
    .await
}

pub fn drop_invalid_indexes_fix(invalid: &[String]) -> String {
    format!(
        "drop them ({}), then rerun prestart, which creates them again",
        invalid.iter().map(|i| format!("DROP INDEX CONCURRENTLY {i};")).collect::<Vec<_>>().join(" ")
    )
}
