//! Several transactional migrations in one simple-query message, each in a transaction of its
//! own that carries its lock check, its `SET LOCAL lock_timeout` and its row of the migrations
//! table (the execution time measured by the server): a fresh database costs one round trip per
//! batch, where sqlx's `apply` costs five per migration (BEGIN, the SQL, the row, COMMIT, the
//! `UPDATE` of `execution_time`).
//!
//! Why this is as safe as one at a time: the server runs the statements of a message in order and
//! stops at the first error, so the migrations before a failing one are committed with their
//! rows, the failing one is rolled back whole and none after it runs; a syntax error anywhere
//! rejects the whole message before anything runs. Each commit but the last is asynchronous
//! (`SET LOCAL synchronous_commit = off`): the last one's flush, or the explicit one after a
//! failure, makes the WAL of all before it durable, and a crash before that loses whole
//! migrations with their rows, never part of one. A failure is never explained from the batch:
//! the failing migration runs again alone (its transaction rolled back), and `run_one` explains
//! it with its file and line as ever.

use std::time::Duration;

use backend::config::DatabaseSettings;
use backend::db::Ready;
use backend::migrations::MigrationFile;
use futures_util::TryStreamExt as _;
use sqlx::Row as _;
use sqlx::migrate::MigrateError;

use super::apply::Prefix;
use super::blockers::Blockers;
use super::explain::{commits_itself, explain_failure};
use super::plan::Plan;
use crate::exit::{Failure, fail};
use crate::ui;

/// The most SQL one message carries: enough for hundreds of ordinary migrations, little enough
/// that a failed batch's rerun of its first part stays quick.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// How many of `pending`, from the first, may go in one message: transactional files whose SQL
/// holds no COMMIT of its own, up to [`MAX_BATCH_BYTES`]. Fewer than two are run alone, where a
/// lost connection leaves no doubt about the COMMIT (sqlx sends it only after the SQL answered).
pub fn batchable(pending: &[&MigrationFile]) -> usize {
    let mut bytes = 0;
    let count = pending
        .iter()
        .take_while(|file| {
            bytes += file.migration.sql.as_str().len();
            !file.migration.no_tx && !commits_itself(file.migration.sql.as_str()) && bytes <= MAX_BATCH_BYTES
        })
        .count();
    if count >= 2 { count } else { 0 }
}

/// Where a batch stopped on an error of its SQL.
pub struct Stopped {
    /// How many of the batch, from the first, are committed with their rows.
    pub applied: usize,
    /// The one that failed, counted from the batch's first: `applied`, or a later one when a
    /// syntax error in it rejected the whole message.
    pub failing: usize,
}

/// Applies `files` in one message. An error of their SQL comes back as [`Stopped`], after the
/// server's transaction is rolled back and what committed is made durable; a lost connection is
/// a migration failure, explained, that a failover may retry.
pub async fn apply_batch(
    ready: &mut Ready,
    files: &[&MigrationFile],
    prefix: Prefix,
    plan: &Plan<'_>,
    db: &DatabaseSettings,
    applied_here: &mut usize,
) -> anyhow::Result<Result<(), Stopped>> {
    let table = plan.settings.table_name.as_str();
    let (sql, starts) = message(files, prefix, table);
    let (first, last) = (files[0].name(), files[files.len() - 1].name());
    ui::line(format!("applying {first} .. {last} ({}, each in its own transaction, in one round trip)", files.len()));
    let process = ready.process.pid;
    let conn = &mut ready.conn;
    let blockers = Blockers::default();
    let mut committed = 0;
    let ran = tokio::select! {
        ran = stream_batch(conn, sql, files, &mut committed) => ran,
        never = blockers.watch(db, process) => match never {},
    };
    *applied_here += committed;
    let Err(error) = ran else { return Ok(Ok(())) };
    if let Some(lost) = super::apply::lost_connection(&error) {
        // The one that ran: committed or not, the table says (read on a new connection), and a
        // failover's retry reads it again under the lock before it goes on.
        let file = files[committed];
        let left = super::apply::what_was_left(conn, db, table, file, super::apply::Direction::Apply).await;
        let error = MigrateError::ExecuteMigration(error, file.migration.version);
        let mut explained = explain_failure(error, file, 0, &blockers, plan, ("applying", "applied"), left);
        explained.cut_off = Some(lost);
        return Err(fail(Failure::Migration, explained));
    }
    // The failed transaction (if the message got as far as one) ends; the asynchronous commits
    // before it are flushed by one synchronous commit that has a transaction id.
    let settle = sqlx::raw_sql("ROLLBACK; SELECT pg_catalog.txid_current()").execute(&mut *conn);
    backend::db::bounded(settle).await.map_err(|e| fail(Failure::Migration, e))?;
    let rejected_whole = committed == 0;
    let failing = match error.as_database_error().and_then(position) {
        Some(at) if rejected_whole => starts.iter().rposition(|&start| start < at).unwrap_or(0),
        _ => committed,
    };
    Ok(Err(Stopped { applied: committed, failing }))
}

/// Sends the message and reads its answers: each migration's row (from `RETURNING`), then its
/// INSERT's and its COMMIT's completions; a migration counts once its COMMIT has answered.
async fn stream_batch(
    conn: &mut sqlx::PgConnection,
    sql: String,
    files: &[&MigrationFile],
    committed: &mut usize,
) -> Result<(), sqlx::Error> {
    let mut stream = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_many(conn);
    // The execution time of the migration whose row came back, and the completions seen since.
    let mut inserted: Option<(i64, u8)> = None;
    while let Some(answer) = stream.try_next().await? {
        match answer {
            sqlx::Either::Right(row) if row.try_column(APPLIED_COLUMN).is_ok() => {
                inserted = Some((row.try_get(EXECUTION_TIME_COLUMN)?, 0));
            }
            // Rows of the migration's own SQL (a SELECT in it).
            sqlx::Either::Right(_) => {}
            sqlx::Either::Left(_) => {
                let Some((nanos, seen)) = inserted.as_mut() else { continue };
                *seen += 1;
                // The INSERT's completion, then the COMMIT's.
                if *seen == 2 {
                    let file = files[*committed];
                    let took = Duration::from_nanos(u64::try_from(*nanos).unwrap_or(0));
                    ui::line(format!(
                        "applied {} {} ({})",
                        file.migration.version,
                        file.migration.description,
                        ui::duration(took)
                    ));
                    *committed += 1;
                    inserted = None;
                }
            }
        }
    }
    Ok(())
}

const APPLIED_COLUMN: &str = "prestart_applied";
const EXECUTION_TIME_COLUMN: &str = "prestart_execution_time";
/// The setting that holds when a migration of the batch started, for its transaction only.
const STARTED: &str = "prestart.started";

/// The message, and where each migration's SQL starts in it (in characters, as the server counts
/// an error's position).
fn message(files: &[&MigrationFile], prefix: Prefix, table: &str) -> (String, Vec<usize>) {
    let mut sql = String::new();
    let mut starts = Vec::with_capacity(files.len());
    let mut chars = 0;
    for (index, file) in files.iter().enumerate() {
        let migration = &file.migration;
        let last = index + 1 == files.len();
        // Its start, for the execution time: `now()` is the message's start, not the BEGIN's.
        let also = format!(
            "{}PERFORM pg_catalog.set_config('{STARTED}', EXTRACT(EPOCH FROM pg_catalog.clock_timestamp())::text, true);",
            if last { "" } else { "PERFORM pg_catalog.set_config('synchronous_commit', 'off', true); " }
        );
        let head = format!("BEGIN;\n{}", prefix.sql(&also));
        chars += head.chars().count();
        starts.push(chars);
        let body = migration.sql.as_str();
        chars += body.chars().count();
        // sqlx's row, with the time its SQL took measured by the server.
        let tail = format!(
            "\n;\nINSERT INTO {table} (version, description, success, checksum, execution_time) VALUES ({}, {}, TRUE, \
             pg_catalog.decode('{}', 'hex'), ((EXTRACT(EPOCH FROM pg_catalog.clock_timestamp()) \
             - pg_catalog.current_setting('{STARTED}')::numeric) * 1000000000)::bigint) RETURNING version AS {APPLIED_COLUMN}, execution_time AS {EXECUTION_TIME_COLUMN};\n\
             COMMIT;\n",
            migration.version,
            backend::db::dollar_quoted(&migration.description),
            hex(&migration.checksum)
        );
        chars += tail.chars().count();
        sql.push_str(&head);
        sql.push_str(body);
        sql.push_str(&tail);
    }
    (sql, starts)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The character (0-based) an error points at, if it points.
fn position(error: &dyn sqlx::error::DatabaseError) -> Option<usize> {
    let pg = error.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?;
    match pg.position()? {
        sqlx::postgres::PgErrorPosition::Original(at) => Some(at.saturating_sub(1)),
        sqlx::postgres::PgErrorPosition::Internal { .. } => None,
    }
}
