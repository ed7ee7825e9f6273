//! The migration lock, in one place: its advisory key (the one sqlx's Migrator takes), its
//! `pg_locks` condition, taking it with a polling try-lock, naming who holds it; and who holds a
//! lock on the migrations table itself.
//!
//! sqlx's Migrator takes a blocking `pg_advisory_lock` with no timeout and leaks it on errors.
//! We take the same key with a polling try-lock (so a service that migrates with sqlx's Migrator
//! at its start still excludes us), and release it on every path. sqlx-cli 0.9's `migrate run`
//! takes no lock at all: a sqlx-cli run beside ours is not excluded.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use backend::db::bounded;
use backend::migrations::{AppliedRow, Followed, applied_rows_and};
use sqlx::Row as _;
use sqlx::postgres::PgConnection;

use crate::base::exit::{Failure, fail};
use crate::base::ui;

/// Between two tries of the lock; cheap for the server.
pub const LOCK_POLL: Duration = Duration::from_millis(100);
/// How often to say who holds a lock while we wait for it.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// The key sqlx's Migrator locks: CRC-32 of the database name times a constant. The
/// name is the server's (`current_database()`), as sqlx takes it: behind a pooler's alias the
/// configured name differs, and the two would no longer exclude each other.
pub fn key(database: &str) -> i64 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32_ad9e * i64::from(CRC.checksum(database.as_bytes()))
}

/// The `pg_locks` rows (aliased `l`) of the advisory lock `key` in the current database, granted:
/// a bigint advisory key shows as classid (high half) and objid (low half), objsubid 1.
fn granted(key: i64) -> String {
    format!(
        "{} AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())",
        key_condition(key)
    )
}

fn key_condition(key: i64) -> String {
    format!(
        "l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
         AND l.classid = (({key}::bigint >> 32) & 4294967295)::oid AND l.objid = ({key}::bigint & 4294967295)::oid"
    )
}

/// The SQL condition that this server session holds the migration lock `key` (a session is in
/// one database: sent with every migration, it checks no more than that).
pub fn held_by_this_session(key: i64) -> String {
    format!(
        "EXISTS (SELECT FROM pg_catalog.pg_locks l WHERE l.pid = pg_catalog.pg_backend_pid() AND {})",
        key_condition(key)
    )
}

/// A statement, for the start of a migration's transaction, that fails with [`NOT_LOCKED`] unless
/// this server session holds the migration lock `key`, then runs `then` (PL/pgSQL of the caller's:
/// one statement costs the server less than several). Not by reading `pg_locks`, which copies
/// the server's whole lock table (a tenth of a millisecond, for each migration of a deploy): a
/// try for the same key at transaction level fails where another session holds it, and where it
/// succeeds no other session can take the lock until this transaction ends, so letting go of one
/// session-level hold and taking it back tells, with no window between, whether there was one.
/// All in one expression, so no cancel can land between letting go and taking back. (Were the
/// server to let go first, another session could take the lock meanwhile and the try would fail:
/// a refusal, never a migration without the lock.) Short, as what `pg_stat_activity` shows of a
/// running migration is its first kilobyte.
pub fn require_held(key: i64, then: &str) -> String {
    format!(
        "DO $prestart$ BEGIN \
         IF NOT (pg_catalog.pg_try_advisory_xact_lock({key}) AND pg_catalog.pg_advisory_unlock({key}) \
         AND pg_catalog.pg_try_advisory_lock({key})) THEN \
         RAISE EXCEPTION USING MESSAGE = '{NOT_LOCKED}', HINT = '{NOT_LOCKED_FIX}'; END IF; {then} END $prestart$;\n"
    )
}

/// Why a migration must not run on a session without the lock, and what to do.
pub const NOT_LOCKED: &str = "this server session does not hold the migration lock, so the migration was not applied: a \
     transaction pooler hands each transaction another session, or a migration released the lock";
pub const NOT_LOCKED_FIX: &str = "connect prestart to PostgreSQL directly (MIGRATION_DATABASE_URL), or remove pg_advisory_unlock calls from migrations";

/// What the server says of a session holding a lock: pid, application, since when, state. A role
/// without `pg_read_all_stats` sees only the pid of another role's session.
const DESCRIBE_HOLDER: &str = "SELECT l.pid, nullif(a.application_name, '') AS app, \
         to_char(coalesce(a.xact_start, a.backend_start) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS since, \
         a.state, a.usename::text AS role \
     FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid";

fn describe(row: &sqlx::postgres::PgRow) -> Result<String, sqlx::Error> {
    let pid: i32 = row.try_get("pid")?;
    let app: Option<String> = row.try_get("app")?;
    let since: Option<String> = row.try_get("since")?;
    let state: Option<String> = row.try_get("state")?;
    let role: Option<String> = row.try_get("role")?;
    Ok(match since {
        Some(since) => format!(
            "pid {pid} ({}, role {}, since {since}, {})",
            app.as_deref().unwrap_or("no application name"),
            role.as_deref().unwrap_or("unknown"),
            state.as_deref().unwrap_or("state unknown")
        ),
        None => format!(
            "pid {pid} (a session of another role; GRANT pg_read_all_stats to see its application and start time)"
        ),
    })
}

// The queries of a wait (who holds the lock, polled until it is ours) are simple queries, one
// message each: asked again and again, each in a transaction of its own, behind a transaction
// pooler each may reach another server session, where a statement prepared by the one before
// (named, or the unnamed one of a Parse sent ahead of its Bind) does not exist.

/// Who holds the advisory lock `key`: pid, application name, since when.
pub async fn holder(conn: &mut PgConnection, key: i64) -> Result<String, sqlx::Error> {
    let sql = format!("{DESCRIBE_HOLDER} WHERE {} LIMIT 1", granted(key));
    let row = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_optional(&mut *conn).await?;
    match row {
        Some(row) => describe(&row),
        None => Ok("a session that has just released it".to_owned()),
    }
}

/// Whether another session holds the advisory lock `key` (doctor asks; nothing is taken).
pub async fn is_held(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    let sql = format!("SELECT EXISTS (SELECT FROM pg_catalog.pg_locks l WHERE {})", granted(key));
    let row = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_one(conn).await?;
    row.try_get(0)
}

/// Who holds a lock on `table` that keeps a reader out (ACCESS EXCLUSIVE: `LOCK TABLE`, most
/// `ALTER TABLE`s), or waits for one ahead of us.
pub async fn table_holder(conn: &mut PgConnection, table: &str) -> Result<String, sqlx::Error> {
    let sql = format!(
        "{DESCRIBE_HOLDER} WHERE l.locktype = 'relation' AND l.relation = pg_catalog.to_regclass({}) \
         AND l.mode = 'AccessExclusiveLock' AND l.pid <> pg_catalog.pg_backend_pid() ORDER BY NOT l.granted LIMIT 1",
        crate::base::sql::quote_literal(table)
    );
    let row = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_optional(&mut *conn).await?;
    match row {
        Some(row) => describe(&row),
        None => Ok("a session that has just released it".to_owned()),
    }
}

/// The applied rows of `table`. While another session holds the table locked, names it and tries
/// again until `deadline`: each try gives up its place in the lock queue within a second (see
/// `applied_rows`), so nothing of ours stays queued behind that session. The error of a broken
/// connection comes back for the caller to reconnect or fail on.
pub async fn read_applied(
    conn: &mut PgConnection,
    table: &str,
    deadline: Instant,
) -> anyhow::Result<Result<Vec<AppliedRow>, sqlx::Error>> {
    Ok(read_applied_and(conn, table, &[], deadline).await?.map(|(rows, _)| rows))
}

/// [`read_applied`], and what each of `then` reads, in the same round trip (see `applied_rows_and`).
pub async fn read_applied_and(
    conn: &mut PgConnection,
    table: &str,
    then: &[&str],
    deadline: Instant,
) -> anyhow::Result<Result<(Vec<AppliedRow>, Vec<Followed>), sqlx::Error>> {
    let started = Instant::now();
    let mut last_report: Option<Instant> = None;
    loop {
        let error = match bounded(applied_rows_and(conn, table, then)).await {
            Ok(rows) => {
                if last_report.is_some() {
                    ui::line(format!("{table} is free again after {}", ui::duration(started.elapsed())));
                }
                return Ok(Ok(rows));
            }
            Err(error) if error.as_database_error().and_then(|e| e.code()).as_deref() == Some("55P03") => error,
            Err(error) => return Ok(Err(error)),
        };
        let holder = match bounded(table_holder(conn, table)).await {
            Ok(holder) => holder,
            Err(_) => return Ok(Err(error)),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(fail(
                Failure::Migration,
                anyhow!(
                    "{table} is still locked after {} by {holder}, so what is applied cannot be read and nothing was \
                     changed: let that session finish, or end it (SELECT pg_terminate_backend(pid)); --wait-timeout \
                     SECS waits longer",
                    ui::duration(started.elapsed())
                ),
            ));
        }
        if last_report.is_none_or(|at| at.elapsed() >= REPORT_EVERY) {
            last_report = Some(now);
            ui::line(format!("waiting: {table} is locked by {holder} ({} s left)", (deadline - now).as_secs()));
        }
    }
}

/// What a lost connection interrupted, for the reconnect line.
pub const BEFORE_MIGRATING: &str = "before migrating";

/// Releases the lock `key`; if the connection itself is gone, so is the lock.
pub async fn release(conn: &mut PgConnection, key: i64) {
    let _ = bounded(sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(conn)).await;
}
