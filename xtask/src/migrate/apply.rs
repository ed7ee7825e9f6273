//! Applying and reverting migrations under the migration lock: in batches where `batch` allows
//! (several transactional migrations in one message), otherwise one at a time through sqlx's
//! `Migrate`; either way the table, the checksums and the transaction handling stay sqlx-cli's.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use backend::config::DatabaseSettings;
use backend::db::{Ready, bounded};
use backend::migrations::{AppliedRow, Followed, MigrationFile, Status};
use sqlx::migrate::{Migrate, MigrateError, Migration};
use sqlx::postgres::PgConnection;

use super::batch::{apply_batch, batchable};
use super::blockers::Blockers;
use super::explain::{Left, commits_itself, explain_failure, invalid_indexes_note};
use super::plan::{Plan, refuse_inconsistent, to_revert};
use crate::context::display_path;
use crate::exit::{Failure, fail};
use crate::lock::{self, NOT_LOCKED, NOT_LOCKED_FIX};
use crate::session::{Resumed, Session};
use crate::ui;

/// The first read of a migrate step, without the lock (most runs have nothing to apply; the lock
/// is taken only to apply, and under it the table is read again): the applied rows, and what a
/// no-op run needs besides in the same round trip, the seed's check and then the environment
/// record (whose table may be missing).
pub struct FirstRead {
    applied: Vec<AppliedRow>,
    seed_check: Option<Followed>,
    environment: Followed,
    started: Instant,
}

pub async fn first_read(
    session: &mut Session<'_>,
    table: &str,
    seed: Option<&crate::seed::Ahead<'_>>,
) -> anyhow::Result<FirstRead> {
    let started = Instant::now();
    let seed_check = seed.map(crate::seed::Ahead::check_sql);
    let environment = crate::environment::read_sql(table);
    let then: Vec<&str> = seed_check.iter().map(String::as_str).chain([environment.as_str()]).collect();
    let (applied, mut followed) = session.read_applied_and(table, &then).await?;
    let environment = followed.pop().unwrap_or(Followed::NotRead);
    Ok(FirstRead { applied, seed_check: followed.pop(), environment, started })
}

/// Applies pending migrations under the migration lock, which is released on every path. `seed`:
/// prestart's seed step, whose work this does ahead where it can (see `seed::Ahead`). `first`:
/// the [`first_read`] of the caller, which ran it beside other work; `None` reads it here.
pub async fn migrate_step(
    session: &mut Session<'_>,
    plan: &Plan<'_>,
    seed: Option<&mut crate::seed::Ahead<'_>>,
    first: Option<FirstRead>,
) -> anyhow::Result<()> {
    let table = &plan.settings.table_name;
    let first = match first {
        Some(first) => first,
        None => first_read(session, table, seed.as_deref()).await?,
    };
    ui::step(format!("migrate from {} ({} migrations)", display_path(plan.dir), plan.set.files.len()));
    let FirstRead { applied, seed_check, environment, started } = first;
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
        if let (Some(seed), Some(check)) = (seed, &seed_check) {
            seed.found(check, &session.ready.process);
        }
        let recorded = match environment {
            Followed::Rows(rows) => crate::environment::from_rows(&rows).ok(),
            Followed::Missing => Some(None),
            Followed::NotRead => None,
        };
        record_environment(session, plan, applied.is_empty(), recorded).await;
        let total = plan.set.files.len();
        ui::line(match plan.target {
            Some(target) => format!("up to date at --target-version {target} ({})", ui::duration(started.elapsed())),
            None => {
                format!("up to date: all {total} migrations were already applied ({})", ui::duration(started.elapsed()))
            }
        });
        return Ok(());
    }
    if applied.is_empty()
        && let Some(seed) = seed
    {
        // A fresh database: the seed's account is surely missing.
        seed.hash_in_background();
    }
    let mut retries = 0;
    // Counted across the passes a failover makes: each applies what the one before did not.
    let mut applied_here = 0;
    loop {
        lock::acquire(session, plan.lock_timeout).await?;
        // The key of the server this connection reached: after a reconnect during the wait for
        // the lock, the lock was taken on that connection with its database's key.
        let key = lock::key(&session.ready.server.database);
        let db = session.settings();
        let deadline = Instant::now() + session.wait_left();
        let mut ran_on = session.ready.server.clone();
        // What tells a failover from a crash restart after a connection that just broke; one
        // query per pass that has migrations to apply, none on the no-op path.
        ran_on.timeline = backend::db::read_timeline(&mut session.ready.conn).await;
        let result = apply_pending(&mut session.ready, plan, db, deadline, &mut applied_here).await;
        // After a failed statement sqlx has queued the ROLLBACK, which runs before this.
        if result.is_ok() {
            // Read again: another run may have recorded since the read above.
            record_environment(session, plan, applied.is_empty(), None).await;
        }
        lock::release(&mut session.ready.conn, key).await;
        let Err(error) = result else { break };
        let Some((what, lost)) = cut_off(&error).filter(|_| retries < FAILOVER_RETRIES) else {
            return Err(error);
        };
        match session.resume_after(&ran_on, &lost, &what).await {
            Resumed::Again => retries += 1,
            // No server came back in time: what the migration left is the news, and the wait's
            // end a note on it.
            Resumed::Gone(gone) => {
                return Err(with_note(
                    error,
                    &format!("no server answered again before the deadline: {}", root_cause(&gone)),
                ));
            }
            Resumed::NotAFailover(why) => {
                return Err(with_note(error, &format!("{why}: it was not run again; rerun once the cause is known")));
            }
        }
    }
    let applied = applied_here;
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

/// `error` with a note, kept a migration failure (exit 6) when it is one.
fn with_note(mut error: anyhow::Error, note: &str) -> anyhow::Error {
    match error.downcast_mut::<super::MigrationFailed>() {
        Some(failed) => {
            failed.note(note);
            error
        }
        None => error.context(note.to_owned()),
    }
}

/// The innermost message of an error, without the kinds stacked on it.
fn root_cause(error: &anyhow::Error) -> String {
    error.root_cause().to_string().lines().next().unwrap_or_default().to_owned()
}

/// How many times one run goes on after a failover cut it off: each needs evidence of one, so
/// this only bounds a cluster that keeps failing over.
const FAILOVER_RETRIES: u32 = 5;

/// What a failover cut off, and why: a transactional migration (applied again, after the table
/// is read under the lock), or the work under the lock before any migration of this pass ran.
fn cut_off(error: &anyhow::Error) -> Option<(String, Lost)> {
    if let Some(failed) = error.downcast_ref::<super::MigrationFailed>() {
        return failed.cut_off.clone().map(|lost| (format!("while applying {}", failed.name), lost));
    }
    let NothingRanYet(lost) = error.downcast_ref::<NothingRanYet>()?;
    lost_connection(lost).map(|lost| ("under the migration lock".to_owned(), lost))
}

/// A query under the lock before this pass applied anything (preparing the table, reading it):
/// what it lost is safe to do again. Anything after a migration ran is not marked so.
#[derive(Debug)]
struct NothingRanYet(sqlx::Error);

impl std::fmt::Display for NothingRanYet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for NothingRanYet {}

/// Reverts applied migrations with their down files, under the migration lock: the latest one,
/// or every one above the target. Each one to revert must have a down file, checked before
/// anything runs.
pub async fn revert_step(session: &mut Session<'_>, plan: &Plan<'_>) -> anyhow::Result<()> {
    ui::step(format!("revert with the down files of {}", display_path(plan.dir)));
    let started = Instant::now();
    if plan.dry_run {
        let applied = session.read_applied(&plan.settings.table_name).await?;
        let downs = to_revert(plan, &applied)?;
        for down in &downs {
            ui::line(format!("would revert {}", down.name()));
        }
        ui::line(format!("dry run: {} to revert, nothing was changed", downs.len()));
        return Ok(());
    }
    lock::acquire(session, plan.lock_timeout).await?;
    let key = lock::key(&session.ready.server.database);
    let db = session.settings();
    let deadline = Instant::now() + session.wait_left();
    let result = revert_under_lock(&mut session.ready, plan, db, deadline).await;
    lock::release(&mut session.ready.conn, key).await;
    if result.is_ok() {
        record_environment(session, plan, false, None).await;
    }
    let reverted = result?;
    ui::line(format!("reverted {reverted} in {}", ui::duration(started.elapsed())));
    Ok(())
}

async fn revert_under_lock(
    ready: &mut Ready,
    plan: &Plan<'_>,
    db: &DatabaseSettings,
    deadline: Instant,
) -> anyhow::Result<usize> {
    let applied = read_under_lock(ready, plan, deadline).await?;
    let downs = to_revert(plan, &applied)?;
    let prefix = Prefix { key: lock::key(&ready.server.database), lock_timeout: plan.statement_lock_timeout };
    for down in &downs {
        run_one(ready, down, prefix, plan, db, Direction::Revert).await?;
    }
    Ok(downs.len())
}

/// Checks what is applied, then applies what is pending; returns how many were applied.
async fn apply_pending(
    ready: &mut Ready,
    plan: &Plan<'_>,
    db: &DatabaseSettings,
    deadline: Instant,
    applied_here: &mut usize,
) -> anyhow::Result<()> {
    let conn = &mut ready.conn;
    let table = plan.settings.table_name.as_str();
    let prepare = async {
        for schema in &plan.settings.create_schemas {
            conn.create_schema_if_not_exists(schema).await?;
        }
        conn.ensure_migrations_table(table).await
    };
    tokio::time::timeout(backend::db::QUERY_TIMEOUT, prepare)
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
        .map_err(|e| match e {
            MigrateError::Execute(e) => fail(Failure::Migration, NothingRanYet(e)),
            other => fail(Failure::Migration, other),
        })?;
    let applied = lock::read_applied(&mut ready.conn, table, deadline)
        .await?
        .map_err(|e| fail(Failure::Migration, NothingRanYet(e)))?;
    let status = Status::compare(plan.set, &applied);
    refuse_inconsistent(&status, plan)?;

    plan.check_target_not_below(&applied)?;
    let pending = plan.to_apply(&status);
    plan.report_skipped(&status);
    let prefix = Prefix { key: lock::key(&ready.server.database), lock_timeout: plan.statement_lock_timeout };
    // In batches where they allow it; a migration a batch stopped at runs again alone, which
    // explains its failure with its file and line (or applies it, if what failed was passing).
    let mut next = 0;
    let mut batch_before = pending.len();
    while next < pending.len() {
        let batch = batchable(&pending[next..batch_before]);
        if batch == 0 {
            run_one(ready, pending[next], prefix, plan, db, Direction::Apply).await?;
            *applied_here += 1;
            next += 1;
            batch_before = pending.len();
            continue;
        }
        if let Err(stopped) = apply_batch(ready, &pending[next..next + batch], prefix, plan, db, applied_here).await? {
            // Up to the failing one: after a syntax error that rejected the whole message, those
            // before it are batched again.
            batch_before = next + stopped.failing;
            next += stopped.applied;
        } else {
            next += batch;
        }
    }
    if !pending.is_empty() {
        // A migration may have set its own lock_timeout for the session (SET, not SET LOCAL):
        // what runs next (the seed) gets the server's default again.
        let reset = sqlx::raw_sql("RESET lock_timeout").execute(&mut ready.conn);
        bounded(reset).await.map_err(|e| fail(Failure::Migration, e))?;
    }
    Ok(())
}

/// Records the run's `ENVIRONMENT` in the database (see `crate::environment`); `fresh`: nothing
/// was applied to it before this run. Not recording only makes `database drop` refuse it, so a
/// failure is a warning. `already_read`: the record as a read a moment ago found it.
async fn record_environment(
    session: &mut Session<'_>,
    plan: &Plan<'_>,
    fresh: bool,
    already_read: Option<Option<crate::environment::Recorded>>,
) {
    let environment = session.environment();
    let table = &plan.settings.table_name;
    let recording = crate::environment::record(&mut session.ready.conn, table, environment, fresh, already_read);
    let recorded = bounded(recording);
    match recorded.await {
        Ok(crate::environment::Recording::Current) => {}
        Ok(crate::environment::Recording::KeptNotLocal(recorded)) => ui::warn(format!(
            "these settings say ENVIRONMENT=local, but the database records {}: it is kept (is a production \
             DATABASE_URL exported in this shell?); if this really is a local database, delete the record by hand \
             (DELETE FROM {})",
            recorded.describe(),
            crate::environment::table_for(&plan.settings.table_name)
        )),
        Err(error) => ui::warn(format!(
            "could not record ENVIRONMENT in {} ({}): `cargo xtask database drop` and `reset` will refuse this \
             database without --force",
            crate::environment::table_for(&plan.settings.table_name),
            backend::db::describe_error(&error)
        )),
    }
}

/// The applied rows, read again under the lock: a lost connection lost the lock too, so it ends
/// the run rather than reconnecting.
async fn read_under_lock(ready: &mut Ready, plan: &Plan<'_>, deadline: Instant) -> anyhow::Result<Vec<AppliedRow>> {
    lock::read_applied(&mut ready.conn, &plan.settings.table_name, deadline)
        .await?
        .map_err(|e| fail(Failure::Migration, e))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    Apply,
    Revert,
}

/// Applies one migration, or reverts one with its down file, under the lock the session holds;
/// logs it, and explains a failure with the file, the line and what is left behind.
async fn run_one(
    ready: &mut Ready,
    file: &MigrationFile,
    prefix: Prefix,
    plan: &Plan<'_>,
    db: &DatabaseSettings,
    direction: Direction,
) -> anyhow::Result<()> {
    let process = ready.process.pid;
    let key = lock::key(&ready.server.database);
    let conn = &mut ready.conn;
    let table = plan.settings.table_name.as_str();
    let (doing, done) = match direction {
        Direction::Apply => ("applying", "applied"),
        Direction::Revert => ("reverting", "reverted"),
    };
    ui::line(format!("{doing} {}", file.name()));
    // A `-- no-transaction` file gets no prefix (it would put CREATE INDEX CONCURRENTLY in a
    // transaction block): the lock is checked on its own first.
    if file.migration.no_tx && !on_locked_session(conn, key, process).await? {
        return Err(fail(Failure::Migration, anyhow!("{}: {NOT_LOCKED}\n  fix: {NOT_LOCKED_FIX}", file.name())));
    }
    let prefix = prefix.sql("");
    let migration = with_lock_timeout(&file.migration, &prefix);
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
            let left = if file.migration.no_tx {
                Left::PartlyApplied
            } else if commits_itself(file.migration.sql.as_str()) {
                Left::CommittedPart
            } else if matches!(error, MigrateError::ExecuteMigration(..)) {
                // Its own SQL failed: sqlx never sent the COMMIT.
                Left::Nothing
            } else {
                what_was_left(conn, db, table, file, direction).await
            };
            // Cut off by a failover (or a restart): safe to run again where nothing of it stayed
            // half done, and what it did is read back under the lock before it runs again.
            let cut_off = connection_lost(&error)
                .filter(|_| !file.migration.no_tx && left != Left::CommittedPart && direction == Direction::Apply);
            let mut explained = explain_failure(error, file, offset, &blockers, plan, (doing, done), left);
            explained.cut_off = cut_off;
            if file.migration.no_tx
                && let Some(note) = invalid_indexes_note(conn).await
            {
                explained.note(&note);
            }
            return Err(fail(Failure::Migration, explained));
        }
    };
    // Its statements went in a message of their own: if a pooler gave that message another
    // server session (one that a probe took for session pooling, wrongly), it is said, not hidden.
    if file.migration.no_tx && !on_locked_session(conn, key, process).await? {
        return Err(fail(
            Failure::Migration,
            anyhow!(
                "{} ran, but this connection is now on another server session than the one holding the migration \
                 lock: a pooler shares server sessions, so it may have run without the lock\n  fix: {NOT_LOCKED_FIX}",
                file.name()
            ),
        ));
    }
    ui::line(format!("{done} {} {} ({})", file.migration.version, file.migration.description, ui::duration(elapsed)));
    Ok(())
}

/// What a failover or a restart does to a running migration: its connection ends (57P01, a
/// reset, an EOF), or the node it reaches can no longer write (25006). The reason, if so.
fn connection_lost(error: &MigrateError) -> Option<Lost> {
    let (MigrateError::ExecuteMigration(error, _) | MigrateError::Execute(error)) = error else { return None };
    lost_connection(error)
}

/// A lost connection, or a server that turned read-only under it; `None` for an error of the
/// SQL itself, or a bound of ours (a slow server is not a lost one).
pub fn lost_connection(error: &sqlx::Error) -> Option<Lost> {
    let how = backend::db::lost_to_failover(error)?;
    Some(Lost { reason: backend::db::describe_error(error), how })
}

/// Why a connection was lost to a migration.
#[derive(Debug, Clone)]
pub struct Lost {
    pub reason: String,
    pub how: backend::db::LostHow,
}

/// Whether the server session behind `conn` is still `process`, the one that took the lock, and
/// holds it: a `-- no-transaction` file cannot carry the check in its own message (`CREATE
/// INDEX CONCURRENTLY` refuses to share one), so it is checked before and after.
async fn on_locked_session(conn: &mut PgConnection, key: i64, process: i32) -> anyhow::Result<bool> {
    let sql = format!("SELECT {} AND pg_catalog.pg_backend_pid() = {process}", lock::held_by_this_session(key));
    bounded(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(conn)).await.map_err(|e| fail(Failure::Migration, e))
}

/// Whether a transactional migration that failed after its SQL ran is in the table after all:
/// sqlx commits, then updates `execution_time`, and a COMMIT's answer can be lost. Read back, on
/// a new connection when this one is gone, not assumed.
pub(super) async fn what_was_left(
    conn: &mut PgConnection,
    db: &DatabaseSettings,
    table: &str,
    file: &MigrationFile,
    direction: Direction,
) -> Left {
    let sql = format!("SELECT true FROM {table} WHERE version = $1");
    let read = async |conn: &mut PgConnection| {
        let row = sqlx::query_scalar::<_, bool>(sqlx::AssertSqlSafe(sql.clone())).bind(file.migration.version);
        bounded(row.fetch_optional(conn)).await
    };
    let mut found = read(conn).await;
    if found.is_err()
        && let Ok(mut fresh) = backend::db::connect_once(db, "prestart-check", Duration::from_secs(2)).await
    {
        found = read(&mut fresh.conn).await;
    }
    match (found, direction) {
        (Ok(None), Direction::Apply) | (Ok(Some(_)), Direction::Revert) => Left::Nothing,
        (Ok(Some(_)), Direction::Apply) | (Ok(None), Direction::Revert) => Left::Done,
        (Err(_), _) => Left::Unknown,
    }
}

/// What goes before a transactional migration's SQL, in the same query, so it costs no round
/// trip: first a check that this server session holds the migration lock (behind a transaction
/// pooler the lock may sit on another session, and then the migration must not run), then
/// `SET LOCAL lock_timeout`, which ends with the migration's transaction (a migration that sets
/// its own comes later and wins), then what the caller adds (`also`, PL/pgSQL); all one statement.
#[derive(Debug, Clone, Copy)]
pub(super) struct Prefix {
    key: i64,
    lock_timeout: Duration,
}

impl Prefix {
    pub(super) fn sql(self, also: &str) -> String {
        let lock_timeout = self.lock_timeout.as_millis();
        lock::require_held(
            self.key,
            &format!("PERFORM pg_catalog.set_config('lock_timeout', '{lock_timeout}', true); {also}"),
        )
    }
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
