//! `ALTER COLUMN ... TYPE` on an existing table.

use sqlparser::ast::{AlterColumnOperation, AlterTableOperation, Statement};

use super::{FileContext, Rule, Violation, alter_of_existing};

pub struct AlterColumnType;

impl Rule for AlterColumnType {
    fn name(&self) -> &'static str {
        "alter-column-type"
    }

    fn check(&self, statement: &Statement, file: &FileContext<'_>) -> Option<Violation> {
        let alter = alter_of_existing(statement, file)?;
        alter.operations.iter().find_map(|operation| match operation {
            AlterTableOperation::AlterColumn { column_name, op: AlterColumnOperation::SetDataType { .. } } => Some(Violation {
                why: format!(
                    "changing the type of {}.{column_name} rewrites the table under an ACCESS EXCLUSIVE lock (reads and \
                     writes wait), and old code may not handle the new type",
                    alter.name
                ),
                safe: "add a column of the new type, write both from the code, backfill in batches, switch reads, then \
                       drop the old column in a later release"
                    .into(),
            }),
            _ => None,
        })
    }
}
