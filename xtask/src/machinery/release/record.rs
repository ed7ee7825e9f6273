//! The releases a database has served, recorded in the database itself beside the migrations
//! table (whose format stays sqlx's): each one's name, when it was first and last deployed, and
//! its queries. The newest ten are kept. The next release's migrations are checked against the
//! queries of the one recorded before it, which may still be serving (a rolling update) or serve
//! again (a rollback).

use sqlx::postgres::PgConnection;

use super::queries::Query;

/// The table's name, in the schema of the migrations table.
pub const TABLE: &str = "_prestart_releases";

/// How many releases the record keeps.
pub const KEPT: i64 = 10;

/// The record's table for the migrations table `migrations_table` (which may be qualified).
pub fn table_for(migrations_table: &str) -> String {
    match migrations_table.rsplit_once('.') {
        Some((schema, _)) => format!("{schema}.{TABLE}"),
        None => TABLE.to_owned(),
    }
}

/// A release as recorded.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub name: String,
    /// As the server prints them (RFC 3339, seconds).
    pub first_deployed: String,
    pub last_deployed: String,
    pub queries: Vec<Query>,
    /// False where this version cannot read the recorded queries (checked as none, and said).
    pub readable: bool,
}

/// The release recorded last, name and fingerprint, in the rows of the environment's record
/// (`crate::databases::environment::read_sql`), which the first read's message reads anyway: the
/// no-op run learns from it whether this release is recorded already, with these queries, in no
/// round trip of its own, and without opening this table (one more relation costs a fresh server
/// process 0.3-0.5 ms: pgbench -C, 2026-12-07). A record made before these columns has none, and
/// the release is recorded again.
pub fn newest_from_rows(rows: &[sqlx::postgres::PgRow]) -> Option<(String, String)> {
    let row = rows.first()?;
    let name: Option<String> = sqlx::Row::try_get(row, "release").ok()?;
    let fingerprint: Option<String> = sqlx::Row::try_get(row, "release_fingerprint").ok()?;
    Some((name?, fingerprint?))
}

/// Every recorded release, newest first; none where the table is missing.
pub async fn all(conn: &mut PgConnection, migrations_table: &str) -> Result<Vec<Recorded>, sqlx::Error> {
    let sql = format!(
        "SELECT name, pg_catalog.to_char(first_deployed AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
         pg_catalog.to_char(last_deployed AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), queries::text \
         FROM {} ORDER BY last_deployed DESC, name",
        table_for(migrations_table)
    );
    let rows = match sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *conn).await {
        Ok(rows) => rows,
        Err(error) if error.as_database_error().and_then(|e| e.code()).as_deref() == Some("42P01") => {
            return Ok(vec![]);
        }
        Err(error) => return Err(error),
    };
    rows.iter()
        .map(|row| {
            use sqlx::Row as _;
            let queries: String = row.try_get(3)?;
            let parsed: Option<Vec<Query>> = serde_json::from_str(&queries).ok();
            Ok(Recorded {
                name: row.try_get(0)?,
                first_deployed: row.try_get(1)?,
                last_deployed: row.try_get(2)?,
                readable: parsed.is_some(),
                queries: parsed.unwrap_or_default(),
            })
        })
        .collect()
}

/// The releases to check a migration against: those named, or else the newest recorded one, the
/// release deployed last, which still serves while this one rolls out. It may bear this release's
/// name (a redeploy, a `PRESTART_RELEASE` that names no version, a release named by its queries
/// whose queries did not change): its queries are still the ones serving. A name that is not
/// recorded is said by the caller.
pub fn previous<'a>(recorded: &'a [Recorded], named: &[String]) -> Vec<&'a Recorded> {
    if named.is_empty() {
        return recorded.first().into_iter().collect();
    }
    recorded.iter().filter(|r| named.contains(&r.name)).collect()
}

/// Records `name` with its queries as the newest release, and forgets all but the newest
/// [`KEPT`]. The table is made where it is missing (COMMENT takes its owner, which a later run's
/// role may not be). One simple query under the bounds of our reads.
pub async fn record(
    conn: &mut PgConnection,
    migrations_table: &str,
    name: &str,
    release_queries: &[Query],
) -> Result<(), sqlx::Error> {
    let table = table_for(migrations_table);
    let quoted_table = format!("'{}'", table.replace('\'', "''"));
    // The release recorded last is also written where the first read finds it (`newest_from_rows`).
    let environment = crate::databases::environment::table_for(migrations_table);
    let quoted_environment = format!("'{}'", environment.replace('\'', "''"));
    let queries = serde_json::to_string(release_queries).unwrap_or_else(|_| "[]".to_owned());
    let sql = format!(
        "{bound}SET LOCAL lock_timeout = {lock};\n\
         DO $prestart$ BEGIN IF pg_catalog.to_regclass({quoted_table}) IS NULL THEN\n\
             CREATE TABLE {table} (\n\
                 name text PRIMARY KEY,\n\
                 first_deployed timestamptz NOT NULL DEFAULT now(),\n\
                 last_deployed timestamptz NOT NULL DEFAULT now(),\n\
                 fingerprint text NOT NULL DEFAULT '',\n\
                 queries jsonb NOT NULL\n\
             );\n\
             COMMENT ON TABLE {table} IS 'The releases prestart migrated this database for, with their queries: the next release''s migrations are checked against them (docs/releases.md)';\n\
         ELSIF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute WHERE attrelid = pg_catalog.to_regclass({quoted_table}) \
             AND attname = 'fingerprint') THEN\n\
             ALTER TABLE {table} ADD COLUMN fingerprint text NOT NULL DEFAULT '';\n\
         END IF; END $prestart$;\n\
         INSERT INTO {table} (name, fingerprint, queries) VALUES ({name}, {fingerprint}, {queries}::jsonb) \
         ON CONFLICT (name) DO UPDATE SET last_deployed = pg_catalog.clock_timestamp(), \
         fingerprint = EXCLUDED.fingerprint, queries = EXCLUDED.queries;\n\
         DELETE FROM {table} WHERE name NOT IN (SELECT name FROM {table} ORDER BY last_deployed DESC, name LIMIT {KEPT});\n\
         DO $prestart$ BEGIN IF pg_catalog.to_regclass({quoted_environment}) IS NOT NULL THEN\n\
             IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute WHERE attrelid = pg_catalog.to_regclass({quoted_environment}) \
                 AND attname = 'release_fingerprint') THEN\n\
                 ALTER TABLE {environment} ADD COLUMN release text, ADD COLUMN release_fingerprint text;\n\
             END IF;\n\
             UPDATE {environment} SET release = {name}, release_fingerprint = {fingerprint};\n\
         END IF; END $prestart$",
        bound = backend::db::server_side_bound(),
        lock = backend::migrations::TABLE_LOCK_WAIT.as_millis(),
        name = backend::db::dollar_quoted(name),
        fingerprint = backend::db::dollar_quoted(&super::queries::fingerprint(release_queries)),
        queries = backend::db::dollar_quoted(&queries),
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *conn).await.map(|_| ())
}
