//! A release's queries described on one schema, nothing executed: PostgreSQL's Parse/Describe of
//! each (with the parameter types the code binds, as the release's own connections send them),
//! the NOT NULL of each result column's table column, and the required columns an INSERT leaves
//! out. Inside a migration's transaction the description sees its uncommitted DDL; it runs under
//! a savepoint, as a fresh session of the same login would (no role, search_path or other setting
//! a migration made: `RESET ALL` under the savepoint, undone with it), and leaves the transaction
//! as it found it.

use std::collections::HashMap;

use sqlx::postgres::{PgConnection, PgTypeInfo};
use sqlx::{Column as _, Executor as _, Statement as _, TypeInfo as _};

use super::queries::Query;

/// One query on one schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    Described(Vec<ResultColumn>),
    /// The server refused to prepare it: its SQLSTATE and message.
    Failed {
        code: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultColumn {
    pub name: String,
    pub type_oid: u32,
    pub type_name: String,
    /// The table column it comes from, and whether that column is NOT NULL.
    pub origin: Option<(u32, i16)>,
    pub not_null: Option<bool>,
}

/// The queries of one release on one schema: their shapes, and for each INSERT the required
/// columns (NOT NULL, no default, not identity or generated) of its table that it leaves out.
#[derive(Debug, Clone)]
pub struct Described {
    pub shapes: Vec<Shape>,
    pub omitted: Vec<Vec<String>>,
}

/// Statements prepared between two clearings of sqlx's statement cache (100 by default): under
/// it, no statement is closed one round trip at a time as the cache evicts it.
const CHUNK: usize = 90;

const OUTER: &str = "prestart_release_check";
const INNER: &str = "prestart_release_query";

/// How long one description may take, and wait for a lock (a table another session holds
/// exclusively): bounds of the check's own, whatever the migration or the role set.
const BOUNDS: &str = "SET LOCAL statement_timeout = 10000; SET LOCAL lock_timeout = 5000";

/// Describes `queries` on the schema `conn` sees; `in_transaction`: inside a migration's open
/// transaction, which it leaves as it found it (outside one, in a transaction of its own, rolled
/// back). `lenient`: any refusal of the server is the query's failure (statements of unknown
/// origin, whose failure before a migration only takes them out of the check).
pub async fn describe(
    conn: &mut PgConnection,
    queries: &[Query],
    inserts: &[Option<super::insert::Target>],
    (in_transaction, lenient): (bool, bool),
) -> Result<Described, sqlx::Error> {
    let begin = if in_transaction { "" } else { "BEGIN; " };
    let enter = format!(
        "{begin}SAVEPOINT {OUTER}; RESET ALL; SET LOCAL SESSION AUTHORIZATION DEFAULT; SET LOCAL ROLE NONE; \
         {BOUNDS}; SAVEPOINT {INNER}"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(enter)).execute(&mut *conn).await?;
    let described = describe_in(conn, queries, inserts, lenient).await;
    let leave = match in_transaction {
        true => format!("ROLLBACK TO SAVEPOINT {OUTER}; RELEASE SAVEPOINT {OUTER}"),
        false => "ROLLBACK".to_owned(),
    };
    let left = sqlx::raw_sql(sqlx::AssertSqlSafe(leave)).execute(&mut *conn).await.map(|_| ());
    let cleared = sqlx::Connection::clear_cached_statements(&mut *conn).await;
    let described = described?;
    left?;
    cleared?;
    Ok(described)
}

async fn describe_in(
    conn: &mut PgConnection,
    queries: &[Query],
    inserts: &[Option<super::insert::Target>],
    lenient: bool,
) -> Result<Described, sqlx::Error> {
    sqlx::Connection::clear_cached_statements(&mut *conn).await?;
    let types = resolve_types(conn, queries).await?;
    let mut shapes = Vec::with_capacity(queries.len());
    for (index, query) in queries.iter().enumerate() {
        if index > 0 && index % CHUNK == 0 {
            sqlx::Connection::clear_cached_statements(&mut *conn).await?;
        }
        shapes.push(prepare(conn, query, &types, lenient).await?);
    }
    add_not_null(conn, &mut shapes).await?;
    let omitted = omitted_columns(conn, inserts).await?;
    Ok(Described { shapes, omitted })
}

/// The OID of every parameter type the queries name, `None` for a type the schema lacks.
/// The OID of every parameter type the queries name, `None` for a type the schema lacks: looked
/// up by `pg_type.typname` as sqlx writes it (exact case; `x[]` is `_x`), among the types the
/// session sees, with no function that raises on a name it cannot parse; `oid N` is N.
async fn resolve_types(
    conn: &mut PgConnection,
    queries: &[Query],
) -> Result<HashMap<String, Option<u32>>, sqlx::Error> {
    let mut names: Vec<String> = queries.iter().flat_map(|q| q.parameters.iter().cloned()).collect();
    names.sort();
    names.dedup();
    let oids: Vec<Option<i64>> = sqlx::query_scalar(
        "SELECT (SELECT t.oid::int8 FROM pg_catalog.pg_type t WHERE t.typname = CASE WHEN x.n LIKE '%[]' \
         THEN '_' || pg_catalog.left(x.n, -2) ELSE x.n END AND pg_catalog.pg_type_is_visible(t.oid) LIMIT 1) \
         FROM unnest($1::text[]) WITH ORDINALITY AS x(n, i) ORDER BY x.i",
    )
    .bind(&names)
    .fetch_all(&mut *conn)
    .await?;
    Ok(names
        .into_iter()
        .zip(oids)
        .map(|(name, oid)| {
            let given = name.strip_prefix("oid ").and_then(|n| n.parse::<u32>().ok());
            let oid = given.or_else(|| oid.and_then(|o| u32::try_from(o).ok()));
            (name, oid)
        })
        .collect())
}

async fn prepare(
    conn: &mut PgConnection,
    query: &Query,
    types: &HashMap<String, Option<u32>>,
    lenient: bool,
) -> Result<Shape, sqlx::Error> {
    let mut parameters = Vec::with_capacity(query.parameters.len());
    for name in &query.parameters {
        match types.get(name).copied().flatten() {
            Some(oid) => parameters.push(PgTypeInfo::with_oid(sqlx::postgres::types::Oid(oid))),
            None => {
                return Ok(Shape::Failed { code: "42704".into(), message: format!("type \"{name}\" does not exist") });
            }
        }
    }
    let sql = sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(query.query.clone()));
    match (&mut *conn).prepare_with(sql, &parameters).await {
        Ok(statement) => Ok(Shape::Described(
            statement
                .columns()
                .iter()
                .map(|column| ResultColumn {
                    name: column.name().to_owned(),
                    type_oid: column.type_info().oid().map_or(0, |o| o.0),
                    type_name: column.type_info().name().to_ascii_lowercase(),
                    origin: column.relation_id().map(|o| o.0).zip(column.relation_attribute_no()),
                    not_null: None,
                })
                .collect(),
        )),
        Err(sqlx::Error::Database(error)) if lenient || says_the_query_is_wrong(error.code().as_deref()) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ROLLBACK TO SAVEPOINT {INNER}"))).execute(&mut *conn).await?;
            Ok(Shape::Failed {
                code: error.code().unwrap_or_default().into_owned(),
                message: error.message().to_owned(),
            })
        }
        // A cancelled statement, a lock not granted, a deadlock, a lost connection: nothing about
        // the query, so no finding; the check itself failed.
        Err(other) => Err(other),
    }
}

/// Whether a SQLSTATE says that the query no longer fits the schema: syntax error or access rule
/// violation (42: an undefined column, table, function or type, a datatype mismatch), data
/// exception (22: a literal that no longer fits its type, as a dropped enum value), feature not
/// supported (0A). Any other class says something about the server or the session.
fn says_the_query_is_wrong(code: Option<&str>) -> bool {
    code.is_some_and(|code| ["42", "22", "0A"].iter().any(|class| code.starts_with(class)))
}

/// Fills in whether each result column's table column is NOT NULL, in one query.
async fn add_not_null(conn: &mut PgConnection, shapes: &mut [Shape]) -> Result<(), sqlx::Error> {
    let origins: Vec<(u32, i16)> = shapes
        .iter()
        .flat_map(|shape| match shape {
            Shape::Described(columns) => columns.iter().filter_map(|c| c.origin).collect(),
            Shape::Failed { .. } => Vec::new(),
        })
        .collect();
    if origins.is_empty() {
        return Ok(());
    }
    let relations: Vec<i64> = origins.iter().map(|(r, _)| i64::from(*r)).collect();
    let columns: Vec<i16> = origins.iter().map(|(_, a)| *a).collect();
    let rows: Vec<(i64, i16, bool)> = sqlx::query_as(
        "SELECT c.r, c.a, x.attnotnull FROM unnest($1::int8[], $2::int2[]) AS c(r, a) \
         JOIN pg_catalog.pg_attribute x ON x.attrelid = c.r::oid AND x.attnum = c.a",
    )
    .bind(&relations)
    .bind(&columns)
    .fetch_all(&mut *conn)
    .await?;
    let not_null: HashMap<(i64, i16), bool> = rows.into_iter().map(|(r, a, n)| ((r, a), n)).collect();
    for shape in shapes {
        if let Shape::Described(columns) = shape {
            for column in columns {
                column.not_null = column.origin.and_then(|(r, a)| not_null.get(&(i64::from(r), a)).copied());
            }
        }
    }
    Ok(())
}

/// For each INSERT, the required columns of its table that its column list leaves out.
async fn omitted_columns(
    conn: &mut PgConnection,
    inserts: &[Option<super::insert::Target>],
) -> Result<Vec<Vec<String>>, sqlx::Error> {
    let mut omitted = vec![Vec::new(); inserts.len()];
    let tables: Vec<String> = inserts.iter().map(|t| t.as_ref().map(|t| t.table.clone()).unwrap_or_default()).collect();
    if inserts.iter().all(Option::is_none) {
        return Ok(omitted);
    }
    // A table name that no longer resolves fails the INSERT's own description.
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT t.i, a.attname::text FROM unnest($1::text[]) WITH ORDINALITY AS t(name, i) \
         JOIN pg_catalog.pg_attribute a ON t.name <> '' AND a.attrelid = pg_catalog.to_regclass(t.name) \
         WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull AND NOT a.atthasdef \
         AND a.attidentity = '' AND a.attgenerated = '' ORDER BY t.i, a.attnum",
    )
    .bind(&tables)
    .fetch_all(&mut *conn)
    .await?;
    for (ordinal, column) in rows {
        let index = usize::try_from(ordinal - 1).unwrap_or(usize::MAX);
        if let Some(Some(target)) = inserts.get(index)
            && !target.names(&column)
        {
            omitted[index].push(column);
        }
    }
    Ok(omitted)
}
