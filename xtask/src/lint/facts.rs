//! What only the database can tell, when it answers (never required): the server's version (which
//! changes are metadata-only there) and each table's size, so a finding on a 2 GB table says so and
//! ranks above one on an empty table, where a rewrite is harmless.

use std::collections::HashMap;

use squawk_linter::Version;

use super::Finding;
use super::rules::{Kind, Severity};

pub struct Facts {
    pub version: Version,
    /// `major.minor`, as the report says it.
    pub version_text: String,
    /// By table name (unqualified, as the rules name them); the biggest when schemas share a name.
    tables: HashMap<String, Size>,
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

impl Facts {
    pub async fn read(conn: &mut sqlx::PgConnection) -> Result<Facts, sqlx::Error> {
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
        Ok(Facts { version, version_text, tables })
    }

    /// Adds the table's size to a finding on it; on an empty table, a lock or a rewrite is
    /// harmless: the finding says so and fails nothing.
    pub fn weigh(&self, finding: &mut Finding) {
        let Some(size) = finding.table.as_ref().and_then(|t| self.tables.get(t)) else { return };
        let table = finding.table.as_deref().unwrap_or_default();
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
