//! One migration applied or reverted under the migration lock, as sqlx-cli does it: a
//! transactional file in one transaction with its row of the migrations table (BEGIN, its SQL as
//! one simple query, the row, COMMIT), a `-- no-transaction` file through sqlx's own `apply`.
//!
//! What prestart adds, and why it leaves sqlx-cli's results as they are (the oracle in
//! `tests/oracle.rs` holds both to the same rows, schema and migrations table):
//! - before the SQL, `SET LOCAL` statements only (no query: a file that opens with `SET
//!   TRANSACTION ISOLATION LEVEL` still may), which end with the transaction;
//! - after the SQL, in the same message, the check that this server session holds the
//!   migration lock: a statement that fails the transaction, so a migration run without the lock
//!   is rolled back rather than recorded;
//! - the execution time written with the row, where sqlx updates it after the COMMIT in a
//!   transaction of its own that waits for the disk (sqlx says the value is for lineage only);
//! - a commit that does not wait for the disk, for a file the parser proves commits with its row
//!   and that is not the last of the run: losing it in a crash loses the migration and its row
//!   together, never one without the other, and the next durable commit (the last migration's,
//!   or [`make_durable`] after a failure) flushes all before it.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use backend::config::DatabaseSettings;
use backend::db::{Ready, bounded};
use backend::migrations::MigrationFile;
use sqlx::Executor as _;
use sqlx::migrate::{Migrate, MigrateError, Migration};
use sqlx::postgres::PgConnection;

use super::blockers::Blockers;
use super::control::{Control, transaction_control};
use super::explain::{Left, explain_failure, invalid_indexes_note};
use super::guard::{Guard, Verdict};
use super::plan::Plan;
use crate::base::exit::{Failure, fail};
use crate::base::ui;
use crate::connection::lock::{self, NOT_LOCKED, NOT_LOCKED_FIX};
use crate::connection::session::{Lost, lost_connection};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    Apply,
    Revert,
}

/// Whether a migration's commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Commit {
    Durable,
    /// Only for a file whose [`Control`] is `Stays`; see the module's doc.
    Deferred,
}

/// Whether `file` commits atomically with its row, so that its commit may be [`Commit::Deferred`]
/// and a failover that cut it off may run it again.
pub(super) fn commits_with_its_row(file: &MigrationFile) -> bool {
    !file.migration.no_tx && transaction_control(file.migration.sql.as_str()) == Control::Stays
}

/// Applies one migration, or reverts one with its down file, under the lock the session holds;
/// logs it, and explains a failure with the file, the line and what is left behind.
pub(super) async fn run_one(
    ready: &mut Ready,
    file: &MigrationFile,
    prefix: Prefix,
    plan: &Plan<'_>,
    db: &DatabaseSettings,
    (direction, commit): (Direction, Commit),
    guard: Option<&Guard>,
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
    // A `-- no-transaction` file gets nothing around it (it would put CREATE INDEX CONCURRENTLY in
    // a transaction block): the lock is checked on its own, before and after.
    if file.migration.no_tx && !on_locked_session(conn, key, process).await? {
        return Err(fail(Failure::Migration, anyhow!("{}: {NOT_LOCKED}\n  fix: {NOT_LOCKED_FIX}", file.name())));
    }
    let (migration, offset) = prefix.around(&file.migration, commit);
    // A file the parser proves stays in its transaction goes in one message with its
    // transaction's statements and its row, then the COMMIT (see `apply_in_one_message`).
    let one_message = (direction == Direction::Apply && commits_with_its_row(file))
        .then(|| prefix.in_one_message(&file.migration, commit, table));
    let offset = one_message.as_ref().map_or(offset, |(_, offset)| *offset);
    let blockers = Blockers::default();
    let ran = tokio::select! {
        ran = async {
            match (direction, one_message) {
                (Direction::Apply, Some((sql, _))) => apply_in_one_message(conn, sql, file, guard).await,
                (Direction::Apply, None) if !migration.no_tx => apply_in_its_transaction(conn, table, &migration).await,
                (Direction::Apply, None) => conn.apply(table, &migration).await,
                (Direction::Revert, _) => conn.revert(table, &migration).await,
            }
        } => ran,
        never = blockers.watch(db, process) => match never {},
    };
    let elapsed = match ran {
        Ok(elapsed) => elapsed,
        Err(MigrateError::Source(source)) if source.is::<Refusal>() => {
            let findings = source.downcast::<Refusal>().map(|refusal| refusal.0).unwrap_or_default();
            return Err(super::guard::refused(file, &findings));
        }
        Err(MigrateError::Source(source)) if source.is::<CheckFailed>() => {
            return Err(fail(
                Failure::Migration,
                anyhow!(
                    "{}: {source}; the migration was rolled back, nothing of it was applied\n  fix: run prestart again \
                     (the check's statements are bounded: 10 s each, 5 s for a lock); if a session holds a lock on a \
                     table the release's queries read, it is named by `cargo xtask doctor`",
                    file.name()
                ),
            ));
        }
        Err(error) => return Err(failed(conn, db, file, (direction, offset), &blockers, plan, error).await),
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
    ui::line_with(
        format!("{done} {} {} ({})", file.migration.version, file.migration.description, ui::duration(elapsed)),
        &[("version", file.migration.version.into()), ("duration_ms", ui::ms(elapsed))],
    );
    Ok(())
}

/// A failed migration, explained: what it left, and whether a failover's retry may run it again.
async fn failed(
    conn: &mut PgConnection,
    db: &DatabaseSettings,
    file: &MigrationFile,
    (direction, offset): (Direction, usize),
    blockers: &Blockers,
    plan: &Plan<'_>,
    error: MigrateError,
) -> anyhow::Error {
    let table = plan.settings.table_name.as_str();
    let (doing, done) = match direction {
        Direction::Apply => ("applying", "applied"),
        Direction::Revert => ("reverting", "reverted"),
    };
    let control = transaction_control(file.migration.sql.as_str());
    let own_sql_failed = matches!(error, MigrateError::ExecuteMigration(..));
    let left = match (file.migration.no_tx, control) {
        (true, _) if own_sql_failed => Left::PartlyApplied,
        (false, Control::Ends) => Left::CommittedPart,
        // SQL the parser cannot read may end its transaction too: what is known is said.
        (false, Control::Unknown) if own_sql_failed => Left::PerhapsCommittedPart,
        // Its own SQL failed: the COMMIT was never sent.
        (false, _) if own_sql_failed => Left::Nothing,
        // What failed came after its SQL: its row, the COMMIT, sqlx's update of the time.
        _ => what_was_left(conn, db, table, file, direction).await,
    };
    // Cut off by a failover (or a restart): safe to run again only where the parser proves that
    // nothing of it can have committed without its row; what it did is read back under the lock
    // before it runs again.
    let mut cut_off = connection_lost(&error).filter(|_| {
        direction == Direction::Apply
            && control == Control::Stays
            && !file.migration.no_tx
            // What a connection out did (dblink, a program) no rollback undoes.
            && crate::base::replay::reaches_out(file.migration.sql.as_str()).is_none()
    });
    // 25006 is a failover's only where the server has turned standby: a migration's own
    // `SET default_transaction_read_only` or `SET TRANSACTION READ ONLY` gives it too.
    if cut_off.as_ref().is_some_and(|lost| lost.how == backend::db::LostHow::ReadOnly) && !in_recovery(conn).await {
        cut_off = None;
    }
    let mut explained = explain_failure(error, file, offset, blockers, plan, (doing, done), left);
    explained.cut_off = cut_off;
    if file.migration.no_tx
        && let Some(note) = invalid_indexes_note(conn).await
    {
        explained.note(&note);
    }
    fail(Failure::Migration, explained)
}

/// Whether the server behind `conn` is a standby now; `false` where it cannot say.
async fn in_recovery(conn: &mut PgConnection) -> bool {
    let asked = bounded(sqlx::raw_sql("SELECT pg_catalog.pg_is_in_recovery()").fetch_one(&mut *conn)).await;
    asked.and_then(|row| sqlx::Row::try_get::<bool, _>(&row, 0)).unwrap_or(false)
}

/// sqlx's `apply` of a transactional migration, statement for statement (BEGIN; the SQL as one
/// simple query; the row, a prepared INSERT; COMMIT), with the execution time measured up to the
/// row and written with it rather than by an UPDATE after the COMMIT.
async fn apply_in_its_transaction(
    conn: &mut PgConnection,
    table: &str,
    migration: &Migration,
) -> Result<Duration, MigrateError> {
    let start = Instant::now();
    let mut transaction = sqlx::Connection::begin(&mut *conn).await?;
    transaction
        .execute(migration.sql.clone())
        .await
        .map_err(|e| MigrateError::ExecuteMigration(e, migration.version))?;
    let took = i64::try_from(start.elapsed().as_nanos()).unwrap_or(i64::MAX);
    let row = format!(
        "INSERT INTO {table} ( version, description, success, checksum, execution_time ) VALUES ( $1, $2, TRUE, $3, $4 )"
    );
    sqlx::query(sqlx::AssertSqlSafe(row))
        .bind(migration.version)
        .bind(&*migration.description)
        .bind(&*migration.checksum)
        .bind(took)
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;
    Ok(start.elapsed())
}

/// A migration whose file the parser proves stays in its transaction, in one simple query (BEGIN,
/// the settings, its SQL, the lock check, its row, the time its SQL took measured by the server
/// from the message's start), then the COMMIT: two round trips where sqlx's steps take four. The
/// server runs a message's statements in order and stops at the first error, so the file and its
/// row stand or fall together, as under sqlx; a syntax error anywhere rejects the whole message
/// before anything runs. The COMMIT goes alone, as sqlx sends it: a connection lost before it
/// leaves nothing committed, and one lost waiting for its answer is read back by the caller.
///
/// With prestart's release check (`guard`), the open transaction is judged between the two: a
/// migration that breaks the release before is rolled back and refused ([`Refusal`]).
async fn apply_in_one_message(
    conn: &mut PgConnection,
    sql: String,
    file: &MigrationFile,
    guard: Option<&Guard>,
) -> Result<Duration, MigrateError> {
    let start = Instant::now();
    let version = file.migration.version;
    if let Err(error) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *conn).await {
        if backend::db::lost_to_failover(&error).is_none() {
            // Ends the failed transaction (none is open after a rejected message: a warning).
            let _ = bounded(sqlx::raw_sql("ROLLBACK").execute(&mut *conn)).await;
        }
        return Err(MigrateError::ExecuteMigration(error, version));
    }
    if let Some(guard) = guard {
        let verdict = guard.judge(conn, file, true).await;
        if !matches!(verdict, Ok(Verdict::Commit)) {
            let _ = bounded(sqlx::raw_sql("ROLLBACK").execute(&mut *conn)).await;
        }
        match verdict {
            Ok(Verdict::Commit) => {}
            Ok(Verdict::Refuse(findings)) => return Err(MigrateError::Source(Box::new(Refusal(findings)))),
            // A connection lost during the check lost the uncommitted migration with it: what a
            // failover's resume may run again.
            Err(error) if backend::db::lost_to_failover(&error).is_some() => return Err(MigrateError::Execute(error)),
            Err(error) => return Err(MigrateError::Source(Box::new(CheckFailed(error)))),
        }
    }
    sqlx::raw_sql("COMMIT").execute(&mut *conn).await.map_err(MigrateError::Execute)?;
    Ok(start.elapsed())
}

/// A migration the release check refused, rolled back: what it breaks.
#[derive(Debug)]
struct Refusal(Vec<crate::machinery::release::Finding>);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "breaks {} queries of the release before", self.0.len())
    }
}

impl std::error::Error for Refusal {}

/// The release check could not judge a migration (a statement cancelled, a lock not granted, a
/// connection lost): not a finding about the migration, which is rolled back.
#[derive(Debug)]
struct CheckFailed(sqlx::Error);

impl std::fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the release check could not describe the queries: {}", backend::db::describe_error(&self.0))
    }
}

impl std::error::Error for CheckFailed {}

/// Makes every commit before it durable: one commit that has a transaction id and waits for the
/// disk, whatever a migration left `synchronous_commit` at. After a run whose last migration
/// failed, the deferred commits of those before it are flushed before we say they are applied.
pub(super) async fn make_durable(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let flush = "BEGIN; SET LOCAL synchronous_commit = on; SELECT pg_catalog.txid_current(); COMMIT";
    bounded(sqlx::raw_sql(flush).execute(conn)).await.map(|_| ())
}

/// What a failover or a restart does to a running migration: its connection ends (57P01, a
/// reset, an EOF), or the node it reaches can no longer write (25006). The reason, if so.
fn connection_lost(error: &MigrateError) -> Option<Lost> {
    let (MigrateError::ExecuteMigration(error, _) | MigrateError::Execute(error)) = error else { return None };
    lost_connection(error)
}

/// Whether the server session behind `conn` is still `process`, the one that took the lock, and
/// holds it: a `-- no-transaction` file cannot carry the check in its own message (`CREATE
/// INDEX CONCURRENTLY` refuses to share one), so it is checked before and after.
async fn on_locked_session(conn: &mut PgConnection, key: i64, process: i32) -> anyhow::Result<bool> {
    // A simple query: a file's `DISCARD ALL` leaves no prepared statement of ours behind.
    let sql = format!("SELECT {} AND pg_catalog.pg_backend_pid() = {process}", lock::held_by_this_session(key));
    let row = bounded(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_one(conn)).await;
    row.and_then(|row| sqlx::Row::try_get(&row, 0)).map_err(|e| fail(Failure::Migration, e))
}

/// Whether a transactional migration that failed after its SQL ran is in the table after all:
/// a COMMIT's answer can be lost. Read back, on a new connection when this one is gone, not
/// assumed.
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

/// What goes around a transactional migration's SQL, in the same message, so it costs no round
/// trip. Before it, `SET LOCAL lock_timeout` (`--statement-lock-timeout`) and, for a
/// [`Commit::Deferred`] one, `SET LOCAL synchronous_commit = off`: settings only, so the
/// transaction has taken no snapshot when the file's first statement runs (`SET TRANSACTION
/// ISOLATION LEVEL` must come first), and local ones, gone with the transaction. After it, the
/// check that this server session holds the migration lock (behind a transaction pooler the lock
/// may sit on another session): it fails the transaction, so the migration and its row are
/// rolled back.
///
/// A setting is ours only until a file names it: from that file on, the file's own value (or the
/// server's) holds, as under sqlx-cli, where one file's `SET lock_timeout` reaches the next.
#[derive(Debug, Clone, Copy)]
pub(super) struct Prefix {
    key: i64,
    lock_timeout: Option<Duration>,
    may_defer: bool,
}

impl Prefix {
    /// `lock_timeout`: zero sets none.
    pub(super) fn new(key: i64, lock_timeout: Duration) -> Prefix {
        Prefix { key, lock_timeout: (!lock_timeout.is_zero()).then_some(lock_timeout), may_defer: true }
    }

    /// The prefix for `file`, and for the files after it what `file` leaves ours: a setting whose
    /// name appears anywhere in it (a SET, a set_config, a SHOW, a comment) is left alone from
    /// then on. A strict over-approximation of "the file sets or reads it".
    pub(super) fn for_file(&mut self, file: &MigrationFile) -> Prefix {
        let sql = file.migration.sql.as_str().to_ascii_lowercase();
        if sql.contains("lock_timeout") {
            self.lock_timeout = None;
        }
        if sql.contains("synchronous_commit") {
            self.may_defer = false;
        }
        *self
    }

    /// Whether a commit may be deferred under this prefix.
    pub(super) fn may_defer(self) -> bool {
        self.may_defer
    }

    /// The one message of [`apply_in_one_message`] and how many characters go before the file's
    /// SQL. The row is sqlx's (version, description, TRUE, checksum, execution time), written by
    /// literal: the description dollar-quoted, the checksum in hex.
    pub(super) fn in_one_message(self, migration: &Migration, commit: Commit, table: &str) -> (String, usize) {
        let (around, offset) = self.around(migration, commit);
        let checksum: String = migration.checksum.iter().map(|byte| format!("{byte:02x}")).collect();
        let row = format!(
            "INSERT INTO {table} ( version, description, success, checksum, execution_time ) VALUES ( {}, {}, TRUE, \
             pg_catalog.decode('{checksum}', 'hex'), ((pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() \
             - pg_catalog.statement_timestamp())) * 1000000000)::int8 );",
            migration.version,
            backend::db::dollar_quoted(&migration.description)
        );
        (format!("BEGIN;\n{}{row}", around.sql.as_str()), offset + "BEGIN;\n".len())
    }

    /// The migration to send, its checksum the file's, and how many characters go before its SQL
    /// (a server error's position counts them). A `-- no-transaction` migration gets nothing:
    /// `CREATE INDEX CONCURRENTLY` waits for older transactions through lock waits, which
    /// `lock_timeout` would cancel, leaving an INVALID index.
    pub(super) fn around(self, migration: &Migration, commit: Commit) -> (Migration, usize) {
        if migration.no_tx {
            return (migration.clone(), 0);
        }
        let mut before = String::new();
        if let Some(lock_timeout) = self.lock_timeout {
            before.push_str(&format!("SET LOCAL lock_timeout = {};\n", lock_timeout.as_millis()));
        }
        if commit == Commit::Deferred && self.may_defer {
            before.push_str("SET LOCAL synchronous_commit = off;\n");
        }
        // On a line of its own: the file may end inside a line comment.
        let after = format!("\n;\n{}", lock::require_held(self.key, ""));
        let sql = sqlx::AssertSqlSafe(format!("{before}{}{after}", migration.sql.as_str()));
        let offset = before.chars().count();
        (Migration { sql: sqlx::SqlSafeStr::into_sql_str(sql), ..migration.clone() }, offset)
    }
}
