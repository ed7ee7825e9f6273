//! What a failed migration left behind, in words: the file, the line, the server's message, and
//! the indexes an interrupted `CREATE INDEX CONCURRENTLY` left INVALID.

use anyhow::anyhow;
use backend::schema::MigrationFile;
use sqlx::migrate::MigrateError;
use sqlx::postgres::{PgConnection, PgDatabaseError, PgErrorPosition};

use super::blockers::Blockers;
use super::plan::Plan;
use crate::context::display_path;

/// Names the file, Postgres's message and SQLSTATE, and the line when Postgres gives a position.
/// `offset`: the characters sent before the file's SQL, which Postgres's error position counts.
pub fn explain_failure(
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
