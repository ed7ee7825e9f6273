//! `CREATE INDEX` without `CONCURRENTLY` on a table that existed before the migration.

use sqlparser::ast::Statement;

use super::{FileContext, Rule, Violation};

pub struct CreateIndexNonConcurrently;

impl Rule for CreateIndexNonConcurrently {
    fn name(&self) -> &'static str {
        "create-index-non-concurrently"
    }

    fn check(&self, statement: &Statement, file: &FileContext<'_>) -> Option<Violation> {
        let Statement::CreateIndex(index) = statement else { return None };
        (!index.concurrently && file.is_existing(&index.table_name)).then(|| Violation {
            why: format!(
                "CREATE INDEX on {}, which exists before this migration, blocks every write to it until the index is built",
                index.table_name
            ),
            safe: "CREATE INDEX CONCURRENTLY, alone in a migration whose first line is `-- no-transaction`".into(),
        })
    }
}
