//! What a failed migration left behind, in words: the file, the line, the server's message, and
//! the indexes an interrupted `CREATE INDEX CONCURRENTLY` left INVALID.

use backend::migrations::MigrationFile;
use sqlx::migrate::MigrateError;
use sqlx::postgres::PgConnection;

use super::blockers::Blockers;
use super::plan::Plan;
use crate::base::sql::{bookkeeping_error, describe_postgres_error, postgres_error};
use crate::base::workspace::display_path;

/// What a failed migration left in the database, as far as is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// A `-- no-transaction` file: the statements before the failing one stay applied.
    PartlyApplied,
    /// Its SQL holds a COMMIT of its own: what came before it stays, unrecorded.
    CommittedPart,
    /// Its SQL could not be parsed, so whether it holds a COMMIT of its own is not known.
    PerhapsCommittedPart,
    /// Its transaction rolled back, and its row is not in the table (or, reverting, still is).
    Nothing,
    /// It committed and its row is in the table (or, reverting, gone): what failed came after
    /// the COMMIT (sqlx's `UPDATE ... execution_time`), or the COMMIT's answer was lost.
    Done,
    /// The connection is gone, and with it the way to tell whether the COMMIT happened.
    Unknown,
}

/// A failed migration's SQL, explained; the error a failed `run_one` carries.
#[derive(Debug)]
pub struct MigrationFailed {
    message: String,
    /// The failure itself says what the schema holds (what stayed applied, the lock that ran
    /// out): a drift note would only repeat it.
    pub explains_the_schema: bool,
    /// The file's name, for the line that says it is applied again.
    pub name: String,
    /// The connection was lost (or its server turned read-only) while a transactional migration
    /// ran or committed: the server rolled it back, or it committed and its row says so; either
    /// way running it again after reading the table under the lock is safe.
    pub cut_off: Option<crate::connection::session::Lost>,
}

impl std::fmt::Display for MigrationFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for MigrationFailed {}

impl MigrationFailed {
    pub fn note(&mut self, note: &str) {
        self.message.push_str(&format!("\n  note: {note}"));
    }
}

/// Names the file, Postgres's message and SQLSTATE, and the line when Postgres gives a position.
/// `offset`: the characters sent before the file's SQL, which Postgres's error position counts.
pub fn explain_failure(
    error: MigrateError,
    file: &MigrationFile,
    offset: usize,
    blockers: &Blockers,
    plan: &Plan<'_>,
    (doing, done): (&str, &str),
    left: Left,
) -> MigrationFailed {
    let name = file.path.as_deref().map_or_else(|| file.name(), display_path);
    let partial = match left {
        Left::PartlyApplied => {
            "\n  note: this migration runs without a transaction: statements before the failing one \
             stay applied; make the file safe to rerun (IF NOT EXISTS) or undo them by hand"
                .to_owned()
        }
        Left::CommittedPart => format!(
            "\n  note: its SQL holds a COMMIT of its own, so the statements before that COMMIT stay, while {} does \
             not record it: undo them by hand or make the file safe to rerun (and drop the COMMIT: sqlx runs each \
             file in a transaction, or write `-- no-transaction`)",
            plan.settings.table_name
        ),
        Left::PerhapsCommittedPart => format!(
            "\n  note: prestart's parser cannot read all of its SQL, so it cannot tell whether the file ends its \
             transaction itself (COMMIT, END): if it does, the statements before that stay while {} does not record \
             it; check, then make the file safe to rerun",
            plan.settings.table_name
        ),
        Left::Nothing => format!("\n  nothing of it was {done}: its transaction rolled back"),
        Left::Done => format!(
            "\n  it was {done} all the same: its transaction committed and {} records it; what failed came after \
             the COMMIT, so there is nothing to redo",
            plan.settings.table_name
        ),
        Left::Unknown => format!(
            "\n  the connection was lost while {doing} it, so whether its COMMIT happened is not known: rerun, which \
             reads {} and goes on from what it says",
            plan.settings.table_name
        ),
    };
    let mut explained = MigrationFailed {
        message: String::new(),
        explains_the_schema: left != Left::Nothing,
        name: file.name(),
        cut_off: None,
    };
    let Some(pg) = postgres_error(&error) else {
        explained.message = match bookkeeping_error(&error) {
            // Its SQL ran; writing (or deleting) its row did not: say the server's words.
            Some(pg) => format!(
                "{name}: its SQL ran, but the server refused the change to {}: {} (SQLSTATE {}){partial}",
                plan.settings.table_name,
                pg.message(),
                pg.code()
            ),
            None => format!("{name}: {error}{partial}"),
        };
        return explained;
    };
    let mut message = describe_postgres_error(pg, file, offset);
    if pg.code() == "55P03" {
        explained.explains_the_schema = true;
        message.push_str(&format!(
            "\n  it waited {} s (--statement-lock-timeout) for a lock held by {}: let that transaction finish or end it \
             (SELECT pg_terminate_backend(pid)), then rerun; or raise --statement-lock-timeout",
            plan.statement_lock_timeout.as_secs(),
            blockers.describe()
        ));
    }
    message.push_str(&partial);
    explained.message = message;
    explained
}

/// An interrupted or failed `CREATE INDEX CONCURRENTLY` leaves an INVALID index that makes the
/// rerun fail with "already exists"; name it and the fix.
pub async fn invalid_indexes_note(conn: &mut PgConnection) -> Option<String> {
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
