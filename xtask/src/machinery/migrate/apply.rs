//! Applying and reverting migrations under the migration lock, one at a time as sqlx-cli does
//! (see `one`): the table, the checksums and the transaction handling stay sqlx-cli's.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use backend::config::DatabaseSettings;
use backend::db::{Ready, bounded};
use backend::migrations::{AppliedRow, Followed, MigrationFile, Status};
use sqlx::migrate::{Migrate, MigrateError};

use super::one::{Commit, Direction, Prefix, commits_with_its_row, make_durable, run_one};
use super::plan::{Plan, refuse_inconsistent, to_revert};
use crate::base::exit::{Failure, fail};
use crate::base::ui;
use crate::base::workspace::display_path;
use crate::connection::lock;
use crate::connection::session::{Lost, lost_connection};
use crate::connection::session::{Resumed, Session};

/// The first read of a migrate step, without the lock (most runs have nothing to apply; the lock
/// is taken only to apply, and under it the table is read again): the applied rows, and what a
/// no-op run needs besides in the same round trip, the seed's check and then the environment
/// record (whose table may be missing), which holds the newest recorded release too (see
/// `crate::machinery::release::record::newest_from_rows`).
pub struct FirstRead {
    applied: Vec<AppliedRow>,
    seed_check: Option<Followed>,
    environment: Followed,
    started: Instant,
}

pub async fn first_read(
    session: &mut Session<'_>,
    table: &str,
    seed: Option<&crate::machinery::seed::Ahead<'_>>,
) -> anyhow::Result<FirstRead> {
    let started = Instant::now();
    let seed_check = seed.map(crate::machinery::seed::Ahead::check_sql);
    let environment = crate::databases::environment::read_sql(table);
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
    seed: Option<&mut crate::machinery::seed::Ahead<'_>>,
    first: Option<FirstRead>,
) -> anyhow::Result<()> {
    let table = &plan.settings.table_name;
    let first = match first {
        Some(first) => first,
        None => first_read(session, table, seed.as_deref()).await?,
    };
    ui::step(format!("migrate from {} ({} migrations)", display_path(plan.dir), plan.set.files.len()));
    let status = Status::compare(plan.set, &first.applied);
    let pending = plan.to_apply(&status);
    if pending.is_empty() || plan.dry_run {
        return nothing_to_apply(session, plan, seed, first, &status, &pending).await;
    }
    if first.applied.is_empty()
        && let Some(seed) = seed
    {
        // A fresh database: the seed's account is surely missing.
        seed.hash_in_background();
    }
    let applied = apply_under_the_lock(session, plan, first.applied.is_empty()).await?;
    let total = plan.set.files.len();
    let started = first.started;
    let said = match applied {
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
    };
    ui::line_with(said, &[("applied", applied.into()), ("duration_ms", ui::ms(started.elapsed()))]);
    Ok(())
}

/// The no-op run (and the dry run): what the first read found is checked and recorded, without
/// the lock, and said in one line.
async fn nothing_to_apply(
    session: &mut Session<'_>,
    plan: &Plan<'_>,
    seed: Option<&mut crate::machinery::seed::Ahead<'_>>,
    first: FirstRead,
    status: &Status,
    pending: &[&MigrationFile],
) -> anyhow::Result<()> {
    let FirstRead { applied, seed_check, environment, started } = first;
    refuse_inconsistent(status, plan)?;
    plan.check_target_not_below(&applied)?;
    plan.report_skipped(status);
    if plan.dry_run {
        for file in pending {
            ui::line(format!("would apply {}", file.name()));
        }
        ui::line(format!("dry run: {} to apply, nothing was changed", pending.len()));
        return Ok(());
    }
    if let (Some(seed), Some(check)) = (seed, &seed_check) {
        seed.found(check, &session.ready.process);
    }
    let (recorded, newest) = match &environment {
        Followed::Rows(rows) => (
            crate::databases::environment::from_rows(rows).ok(),
            crate::machinery::release::record::newest_from_rows(rows),
        ),
        Followed::Missing => (Some(None), None),
        Followed::NotRead => (None, None),
    };
    record_environment(session, plan, applied.is_empty(), recorded).await;
    record_release(session, plan, newest).await;
    let total = plan.set.files.len();
    let took = started.elapsed();
    let said = match plan.target {
        Some(target) => format!("up to date at --target-version {target} ({})", ui::duration(took)),
        None => format!("up to date: all {total} migrations were already applied ({})", ui::duration(took)),
    };
    ui::line_with(said, &[("applied", 0.into()), ("duration_ms", ui::ms(took))]);
    Ok(())
}

/// Applies the pending migrations under the migration lock, released on every path; a failover
/// that cut a pass off costs a reconnect and another pass, which applies what the one before
/// did not. How many this run applied, across the passes.
async fn apply_under_the_lock(session: &mut Session<'_>, plan: &Plan<'_>, was_empty: bool) -> anyhow::Result<usize> {
    let mut retries = 0;
    let mut applied_here = 0;
    loop {
        super::lock_wait::acquire(session, plan.lock_timeout).await?;
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
            record_environment(session, plan, was_empty, None).await;
            record_release(session, plan, None).await;
        }
        lock::release(&mut session.ready.conn, key).await;
        let Err(error) = result else { return Ok(applied_here) };
        let Some((what, lost)) = cut_off(&error).filter(|_| retries < FAILOVER_RETRIES) else {
            return Err(error);
        };
        match session.resume_after(&ran_on, &lost, &what).await {
            Resumed::Again => retries += 1,
            // No server came back in time: what the migration left is the news, and the wait's
            // end a note on it.
            Resumed::Gone(gone) => {
                let note = format!("no server answered again before the deadline: {}", root_cause(&gone));
                return Err(with_note(error, &note));
            }
            Resumed::NotAFailover(why) => {
                return Err(with_note(error, &format!("{why}: it was not run again; rerun once the cause is known")));
            }
        }
    }
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
    super::lock_wait::acquire(session, plan.lock_timeout).await?;
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
    let mut ours = Prefix::new(lock::key(&ready.server.database), plan.statement_lock_timeout);
    for down in &downs {
        run_one(ready, down, ours.for_file(down), plan, db, (Direction::Revert, Commit::Durable), None).await?;
    }
    if !downs.is_empty() {
        forget_what_migrations_set(&mut ready.conn).await?;
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
    let applied = prepare_and_read(ready, plan, deadline).await?;
    let status = Status::compare(plan.set, &applied);
    refuse_inconsistent(&status, plan)?;
    plan.check_target_not_below(&applied)?;
    let pending = plan.to_apply(&status);
    plan.report_skipped(&status);
    if pending.is_empty() {
        return Ok(());
    }
    let statement_lock_timeout = lock_timeout_unless_configured(&mut ready.conn, plan.statement_lock_timeout).await?;
    let guard = super::guard::prepare(&mut ready.conn, plan).await?;
    let mut ours = Prefix::new(lock::key(&ready.server.database), statement_lock_timeout);
    let mut deferred = false;
    for (index, file) in pending.iter().enumerate() {
        if let Some(guard) = &guard
            && !commits_with_its_row(file)
        {
            let before = applied_before(plan, &applied, &pending[..index]);
            let judged = guard.before_running(&mut ready.conn, file, &before, plan.settings).await;
            if judged.is_err() && deferred {
                let _ = make_durable(&mut ready.conn).await;
            }
            judged?;
        }
        let prefix = ours.for_file(file);
        let commit = if index + 1 < pending.len() && prefix.may_defer() && commits_with_its_row(file) {
            deferred = true;
            Commit::Deferred
        } else {
            Commit::Durable
        };
        let ran = run_one(ready, file, prefix, plan, db, (Direction::Apply, commit), guard.as_ref()).await;
        if let Err(error) = ran {
            // What committed before it is made durable before the failure is told; a lost
            // connection leaves that to the server (a crash loses whole migrations with their rows).
            if deferred {
                let _ = make_durable(&mut ready.conn).await;
            }
            return Err(error);
        }
        *applied_here += 1;
    }
    if let Some(guard) = &guard {
        ui::line(guard.summary());
    }
    // The last commit may not have been ours to make durable (its file set synchronous_commit).
    if deferred {
        make_durable(&mut ready.conn).await.map_err(|e| fail(Failure::Migration, e))?;
    }
    // What the migrations left in the session (`SET search_path`, `SET ROLE`, a session
    // lock_timeout) is theirs: what runs next on it (the environment's record, the seed) gets the
    // session as it was before them. The migrations among themselves keep sqlx-cli's one session,
    // where a file's SET reaches the next.
    forget_what_migrations_set(&mut ready.conn).await
}

/// Makes the schemas and the migrations table where missing, then reads the applied rows under
/// the lock.
async fn prepare_and_read(ready: &mut Ready, plan: &Plan<'_>, deadline: Instant) -> anyhow::Result<Vec<AppliedRow>> {
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
    lock::read_applied(&mut ready.conn, table, deadline).await?.map_err(|e| fail(Failure::Migration, NothingRanYet(e)))
}

/// The files the schema has now: those applied before the run, and `done`, the pending ones this
/// run applied since.
fn applied_before<'a>(plan: &'a Plan<'_>, applied: &[AppliedRow], done: &[&MigrationFile]) -> Vec<&'a MigrationFile> {
    let has = |version: i64| {
        applied.iter().any(|row| row.version == version) || done.iter().any(|d| d.migration.version == version)
    };
    plan.set.files.iter().filter(|f| has(f.migration.version)).collect()
}

/// Records the run's `ENVIRONMENT` in the database (see `crate::databases::environment`); `fresh`: nothing
/// was applied to it before this run. Not recording only makes `database drop` refuse it, so a
/// failure is a warning. `already_read`: the record as a read a moment ago found it.
async fn record_environment(
    session: &mut Session<'_>,
    plan: &Plan<'_>,
    fresh: bool,
    already_read: Option<Option<crate::databases::environment::Recorded>>,
) {
    let environment = session.environment();
    let table = &plan.settings.table_name;
    let fresh = fresh && crate::databases::environment::may_be_recorded_local(session.settings(), session.context());
    let recording =
        crate::databases::environment::record(&mut session.ready.conn, table, environment, fresh, already_read);
    let recorded = bounded(recording);
    match recorded.await {
        Ok(crate::databases::environment::Recording::Current) => {}
        Ok(crate::databases::environment::Recording::KeptNotLocal(recorded)) => ui::warn(format!(
            "these settings say ENVIRONMENT=local, but the database records {}: it is kept (is a production \
             DATABASE_URL exported in this shell?); if this really is a local database, delete the record by hand \
             (DELETE FROM {})",
            recorded.describe(),
            crate::databases::environment::table_for(&plan.settings.table_name)
        )),
        Err(error) => ui::warn(format!(
            "could not record ENVIRONMENT in {} ({}): `cargo xtask database drop` and `reset` will refuse this \
             database without --force",
            crate::databases::environment::table_for(&plan.settings.table_name),
            backend::db::describe_error(&error)
        )),
    }
}

/// Records this release with its queries as the newest (prestart only), unless it is already
/// the `newest` recorded one (name and fingerprint of its queries): a no-op run of the release
/// deployed last writes nothing. Not
/// recording only leaves the next release unchecked against this one's queries: a warning.
async fn record_release(session: &mut Session<'_>, plan: &Plan<'_>, newest: Option<(String, String)>) {
    let Some(options) = plan.release else { return };
    let this = (options.this.name.clone(), crate::machinery::release::queries::fingerprint(&options.this.queries));
    if newest.as_ref() == Some(&this) {
        return;
    }
    let table = plan.settings.table_name.as_str();
    let recording = crate::machinery::release::record::record(
        &mut session.ready.conn,
        table,
        &options.this.name,
        &options.this.queries,
    );
    match bounded(recording).await {
        Ok(()) => ui::line(format!(
            "recorded release {} with its {} queries in {}",
            options.this.name,
            options.this.queries.len(),
            crate::machinery::release::record::table_for(table)
        )),
        Err(error) => ui::warn(format!(
            "could not record release {} in {} ({}): the next release's migrations will not be checked against its \
             queries",
            options.this.name,
            crate::machinery::release::record::table_for(table),
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

/// Puts the session's user, role and settings back as they were before the migrations ran
/// (`SET SESSION AUTHORIZATION DEFAULT` is allowed to every role: it goes back to the one that
/// logged in), and makes the keepalive settings of the lock's wait again.
async fn forget_what_migrations_set(conn: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    let sql = format!(
        "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; RESET ROLE; SELECT {}",
        backend::keepalive::server_side()
    );
    let reset = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(conn);
    bounded(reset).await.map(|_| ()).map_err(|e| fail(Failure::Migration, e))
}

/// `--statement-lock-timeout` for this run: none where the session already has a lock_timeout
/// of its own (set on the role or the database, or in the URL's `options`), which is the user's.
async fn lock_timeout_unless_configured(conn: &mut sqlx::PgConnection, ours: Duration) -> anyhow::Result<Duration> {
    if ours.is_zero() {
        return Ok(ours);
    }
    let read = bounded(sqlx::raw_sql("SELECT pg_catalog.current_setting('lock_timeout')").fetch_one(&mut *conn)).await;
    let setting: String = read.and_then(|row| sqlx::Row::try_get(&row, 0)).map_err(|e| fail(Failure::Migration, e))?;
    Ok(if setting == "0" { ours } else { Duration::ZERO })
}
