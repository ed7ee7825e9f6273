//! Statements from outside the code: what `pg_stat_statements` holds for this database (other
//! services, runtime-built queries, ORMs), checked like a release's queries, differentially (only
//! those that describe on the current schema count). Its texts are normalized (constants become
//! `$n`), so the server infers the parameters' types. Statements run once are left out: a
//! service's queries run again and again, while a backfill of an earlier migration, the seed's
//! first inserts or someone's query in psql ran once and would refuse a migration for nothing.

use sqlx::postgres::PgConnection;
use squawk_syntax::ast::Stmt;

use super::queries::Query;

/// How many statements are read, the most called first: each is described again inside every
/// migration's transaction, while it holds its locks.
const LIMIT: i64 = 200;

/// What `pg_stat_statements` gave: its DML statements, or why it gave none.
pub enum Statements {
    /// The statements, and what limits them (a role that sees only its own).
    Read(Vec<Query>, Option<String>),
    Unavailable(String),
}

/// The DML statements `pg_stat_statements` holds for the current database, leaving out those
/// whose text is one of `known` (a release's queries, checked already).
pub async fn read(conn: &mut PgConnection, known: &[&Query]) -> Result<Statements, sqlx::Error> {
    let schema: Option<String> = sqlx::query_scalar(
        "SELECT n.nspname::text FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
         WHERE e.extname = 'pg_stat_statements'",
    )
    .persistent(false)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(schema) = schema else {
        return Ok(Statements::Unavailable(
            "pg_stat_statements is not installed in this database (CREATE EXTENSION pg_stat_statements, with it in \
             shared_preload_libraries), so statements of other clients are not checked"
                .into(),
        ));
    };
    let all_visible: bool = sqlx::query_scalar(
        "SELECT rolsuper OR pg_catalog.pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') \
         FROM pg_catalog.pg_roles WHERE rolname = current_user",
    )
    .persistent(false)
    .fetch_one(&mut *conn)
    .await?;
    let sql = format!(
        "SELECT queryid::text, query FROM {}.pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) \
         AND calls > 1 ORDER BY calls DESC LIMIT {LIMIT}",
        quote_identifier(&schema)
    );
    let rows: Vec<(Option<String>, Option<String>)> = match sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .persistent(false)
        .fetch_all(&mut *conn)
        .await
    {
        Ok(rows) => rows,
        // 55000: installed but not loaded (shared_preload_libraries); 42501: not readable.
        Err(sqlx::Error::Database(error)) if matches!(error.code().as_deref(), Some("55000" | "42501")) => {
            return Ok(Statements::Unavailable(format!(
                "pg_stat_statements cannot be read ({} (SQLSTATE {})), so statements of other clients are not checked",
                error.message(),
                error.code().unwrap_or_default()
            )));
        }
        Err(error) => return Err(error),
    };
    let mut statements: Vec<Query> = rows
        .into_iter()
        .filter_map(|(id, text)| Some((id?, text?)))
        .filter(|(_, text)| is_dml(text) && !known.iter().any(|k| k.query.trim() == text.trim()))
        .map(|(id, text)| Query { hash: id, query: text, parameters: Vec::new(), columns: Vec::new() })
        .collect();
    statements.sort_by(|a, b| a.query.cmp(&b.query));
    statements.dedup_by(|a, b| a.query == b.query);
    let limited = (!all_visible).then(|| {
        "this role sees only its own statements there (grant it pg_read_all_stats to check other clients')".to_owned()
    });
    Ok(Statements::Read(statements, limited))
}

/// One statement that reads or writes rows (what an old client sends), by the parser.
fn is_dml(text: &str) -> bool {
    let parse = squawk_syntax::SourceFile::parse(text);
    let mut statements = parse.tree().stmts();
    let one = statements.next();
    parse.errors().is_empty()
        && statements.next().is_none()
        && matches!(one, Some(Stmt::Select(_) | Stmt::Insert(_) | Stmt::Update(_) | Stmt::Delete(_) | Stmt::Merge(_)))
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::is_dml;

    #[test]
    fn only_statements_that_read_or_write_rows_are_checked() {
        assert!(is_dml("SELECT title FROM reports WHERE id = $1"));
        assert!(is_dml("WITH x AS (SELECT 1) UPDATE t SET a = $1 FROM x"));
        assert!(is_dml("insert into t (a) values ($1)"));
        assert!(!is_dml("ALTER TABLE reports RENAME COLUMN title TO name"));
        assert!(!is_dml("SET search_path = $1"));
        assert!(!is_dml("<insufficient privilege>"));
    }
}
