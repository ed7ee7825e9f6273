//! What only the database can tell, when it answers (never required): the server's version (which
//! changes are metadata-only there), each table's size, so a finding on a 2 GB table says so and
//! ranks above one on an empty table, where a rewrite is harmless, and the unique indexes a new
//! UNIQUE or PRIMARY KEY constraint could take over instead of building its own under a lock.

use std::collections::HashMap;

use squawk_linter::{Rule as Squawk, Version};

use super::Finding;
use super::rules::{Kind, RuleId, Severity};

pub struct Facts {
    pub version: Version,
    /// `major.minor`, as the report says it.
    pub version_text: String,
    /// By table name (unqualified, as the rules name them); the biggest when schemas share a name.
    tables: HashMap<String, Size>,
    /// Valid unique indexes no constraint uses yet, by table: `(name, definition)`.
    unique_indexes: HashMap<String, Vec<(String, String)>>,
    /// The roles, by name: grants and owners in migrations name them, so `--locks` makes them too.
    pub roles: Vec<String>,
}

#[derive(Clone, Copy)]
struct Size {
    /// With its TOAST table, free space and visibility maps (what a rewrite copies).
    bytes: i64,
    /// The main fork alone: 0 for a table without rows (its TOAST index is 8 kB even then).
    heap: i64,
    /// pg_class's estimate; -1 for a table never analysed.
    rows: f64,
}

/// Tables, partitioned tables and materialized views outside the system schemas.
const TABLES: &str = "SELECT c.relname::text, pg_catalog.pg_table_size(c.oid), pg_catalog.pg_relation_size(c.oid), \
                      c.reltuples::float8 \
                      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                      WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                      AND n.nspname NOT LIKE 'pg\\_toast%'";

/// Valid unique indexes that back no constraint, outside the system schemas.
const UNIQUE_INDEXES: &str = "SELECT t.relname::text, i.relname::text, pg_catalog.pg_get_indexdef(i.oid) \
                              FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid \
                              JOIN pg_catalog.pg_class t ON t.oid = x.indrelid \
                              JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace \
                              WHERE x.indisunique AND x.indisvalid AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                              AND NOT EXISTS (SELECT FROM pg_catalog.pg_constraint c WHERE c.conindid = i.oid) \
                              ORDER BY 2";

impl Facts {
    /// The tables the database has, by name.
    pub fn table_names(&self) -> std::collections::HashSet<String> {
        self.tables.keys().cloned().collect()
    }

    /// Reads them in a read-only transaction whose lock_timeout is short: a table's size waits for
    /// its lock, and a migration running now may hold it, so a locked table fails the read quickly
    /// and leaves the connection usable (doctor goes on with it).
    pub async fn read(conn: &mut sqlx::PgConnection) -> Result<Facts, sqlx::Error> {
        use sqlx::Connection as _;
        let mut tx = conn.begin().await?;
        sqlx::raw_sql("SET TRANSACTION READ ONLY; SET LOCAL lock_timeout = '1s'").execute(&mut *tx).await?;
        let facts = Facts::read_in(&mut tx).await?;
        tx.commit().await?;
        Ok(facts)
    }

    async fn read_in(conn: &mut sqlx::PgConnection) -> Result<Facts, sqlx::Error> {
        let number: i32 =
            sqlx::query_scalar("SELECT current_setting('server_version_num')::int").fetch_one(&mut *conn).await?;
        let version_text = format!("{}.{}", number / 10000, number % 10000);
        let version = version_text.parse().unwrap_or_default();
        let rows: Vec<(String, i64, i64, f64)> = sqlx::query_as(TABLES).fetch_all(&mut *conn).await?;
        let mut tables: HashMap<String, Size> = HashMap::new();
        for (name, bytes, heap, rows) in rows {
            let size = Size { bytes, heap, rows };
            tables
                .entry(name)
                .and_modify(|s| {
                    if bytes > s.bytes {
                        *s = size
                    }
                })
                .or_insert(size);
        }
        let mut unique_indexes: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (table, name, definition) in
            sqlx::query_as::<_, (String, String, String)>(UNIQUE_INDEXES).fetch_all(&mut *conn).await?
        {
            unique_indexes.entry(table).or_default().push((name, definition));
        }
        let roles = sqlx::query_scalar("SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname !~ '^pg_'")
            .fetch_all(&mut *conn)
            .await?;
        Ok(Facts { version, version_text, tables, unique_indexes, roles })
    }

    /// Adds the table's size to a finding on it; on an empty table, a lock or a rewrite is
    /// harmless: the finding says so and fails nothing.
    pub fn weigh(&self, finding: &mut Finding) {
        let table = finding.table.clone().unwrap_or_default();
        if let RuleId::Squawk(Squawk::DisallowedUniqueConstraint | Squawk::AddingSerialPrimaryKeyField) = finding.rule
            && let Some(indexes) = self.unique_indexes.get(&table)
        {
            for (name, definition) in indexes {
                finding.safe.push_str(&format!(
                    "; the database has {definition}: if it covers these columns, `ADD CONSTRAINT ... USING INDEX \
                     {name}` takes it over without a scan"
                ));
            }
        }
        let Some(size) = self.tables.get(&table) else { return };
        finding.table_bytes = Some(size.bytes);
        if size.heap == 0 && finding.rule.kind() == Kind::Locking {
            finding.severity = Severity::Note;
            finding.message.push_str(&format!(
                " ({table} is empty on the database: the lock lasts an instant and a rewrite has nothing to copy, so \
                 this is harmless there)"
            ));
        } else if size.heap > 0 {
            let rows = if size.rows >= 0.0 { format!(", about {} rows", size.rows as i64) } else { String::new() };
            finding.message.push_str(&format!(" ({table} is {} on the database{rows})", human(size.bytes)));
        }
    }
}

/// 8 kB, 1.2 MB, 2.0 GB.
fn human(bytes: i64) -> String {
    let units = ["bytes", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} bytes") } else { format!("{value:.1} {}", units[unit]) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_as_people_say_them() {
        assert_eq!(super::human(8192), "8.0 kB");
        assert_eq!(super::human(2 * 1024 * 1024 * 1024), "2.0 GB");
        assert_eq!(super::human(10), "10 bytes");
    }
}
