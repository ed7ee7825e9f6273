//! Renaming a column.

use sqlparser::ast::{AlterTableOperation, Statement};

use super::{FileContext, Rule, Violation, alter_of_existing};

pub struct RenameColumn;

impl Rule for RenameColumn {
    fn name(&self) -> &'static str {
        "rename-column"
    }

    fn check(&self, statement: &Statement, file: &FileContext<'_>) -> Option<Violation> {
        let alter = alter_of_existing(statement, file)?;
        alter.operations.iter().find_map(|operation| match operation {
            AlterTableOperation::RenameColumn { old_column_name, new_column_name } => Some(Violation {
                why: format!(
                    "renaming {}.{old_column_name} to {new_column_name} breaks the code still running during the deploy, \
                     which uses the old name",
                    alter.name
                ),
                safe: "add the new column, write both, backfill, move reads, and drop the old one in a later release".into(),
            }),
            _ => None,
        })
    }
}
