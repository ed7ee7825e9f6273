//! SQL text and the server's errors, shared by every layer: quoting, a SQLSTATE, and a failed
//! migration's error in one message (the file and line, the server's message, detail and hint).

use backend::migrations::MigrationFile;
use sqlx::migrate::MigrateError;
use sqlx::postgres::{PgDatabaseError, PgErrorPosition};

use crate::base::workspace::display_path;

/// A string literal (standard_conforming_strings, the default since PostgreSQL 9.1).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A name as an SQL identifier, whatever it holds.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SQLSTATE of a server error, or an empty string.
pub fn sqlstate(error: &sqlx::Error) -> String {
    error.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned()).unwrap_or_default()
}

/// The server's error inside a failed migration, when that is what failed.
pub fn postgres_error(error: &MigrateError) -> Option<&PgDatabaseError> {
    let MigrateError::ExecuteMigration(sqlx::Error::Database(db), _) = error else { return None };
    db.try_downcast_ref::<PgDatabaseError>()
}

/// A server error of the bookkeeping around a migration's SQL (its row, the COMMIT).
pub fn bookkeeping_error(error: &MigrateError) -> Option<&PgDatabaseError> {
    let MigrateError::Execute(sqlx::Error::Database(db)) = error else { return None };
    db.try_downcast_ref::<PgDatabaseError>()
}

/// The SQLSTATE of a failed migration's server error.
pub fn sqlstate_of(error: &MigrateError) -> Option<String> {
    postgres_error(error).map(|pg| pg.code().to_owned())
}

/// A failed migration in one message: the file and line, the server's message and SQLSTATE, its
/// detail and hint (what doctor's rehearsal and a failed run both say).
pub fn describe_failure(error: &MigrateError, file: &MigrationFile) -> String {
    match postgres_error(error) {
        Some(pg) => describe_postgres_error(pg, file, 0),
        None => format!("{}: {error}", file.path.as_deref().map_or_else(|| file.name(), display_path)),
    }
}

/// `file:line: message (SQLSTATE ...)`. An error raised while a statement runs (a NOT NULL
/// that rows break, say) has no position: the line is then the one statement that names the
/// error's table and column or constraint, when exactly one does.
pub fn describe_postgres_error(pg: &PgDatabaseError, file: &MigrationFile, offset: usize) -> String {
    let name = file.path.as_deref().map_or_else(|| file.name(), display_path);
    let sql = file.migration.sql.as_str();
    let line = match pg.position() {
        Some(PgErrorPosition::Original(position)) if position > offset => Some(line_of(sql, position - offset)),
        _ => line_naming(sql, pg.table(), pg.column().or(pg.constraint())),
    };
    let mut message = match line {
        Some(line) => format!("{name}:{line}: {} (SQLSTATE {})", pg.message(), pg.code()),
        None => format!("{name}: {} (SQLSTATE {})", pg.message(), pg.code()),
    };
    let object = match (pg.schema(), pg.table(), pg.column(), pg.constraint()) {
        (_, Some(table), Some(column), _) => Some(format!("column {column} of table {table}")),
        (_, Some(table), None, Some(constraint)) => Some(format!("constraint {constraint} on table {table}")),
        (_, Some(table), None, None) => Some(format!("table {table}")),
        _ => None,
    };
    if let (None, Some(object)) = (pg.position(), object) {
        message.push_str(&format!("\n  in the statement on {object}"));
    }
    if let Some(detail) = pg.detail() {
        message.push_str(&format!("\n  detail: {detail}"));
    }
    if let Some(hint) = pg.hint() {
        message.push_str(&format!("\n  hint: {hint}"));
    }
    message
}

/// The 1-based line where the only statement naming both `table` and `object` starts.
fn line_naming(sql: &str, table: Option<&str>, object: Option<&str>) -> Option<usize> {
    let (table, object) = (table?.to_ascii_lowercase(), object?.to_ascii_lowercase());
    let names = |text: &str, word: &str| {
        text.split(|c: char| !(c.is_alphanumeric() || c == '_')).any(|token| token.eq_ignore_ascii_case(word))
    };
    let mut starts = Vec::new();
    let mut line = 1;
    for statement in sql.split_inclusive(';') {
        let leading = statement.len() - statement.trim_start().len();
        let first_line = line + statement[..leading].matches('\n').count();
        if names(statement, &table) && names(statement, &object) {
            starts.push(first_line);
        }
        line += statement.matches('\n').count();
    }
    match starts.as_slice() {
        [only] => Some(*only),
        _ => None,
    }
}

/// The 1-based line of a 1-based character position, as Postgres reports it.
fn line_of(sql: &str, position: usize) -> usize {
    sql.chars().take(position.saturating_sub(1)).filter(|&c| c == '\n').count() + 1
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
