//! Renaming a table.

use sqlparser::ast::{AlterTableOperation, Statement};

use super::{FileContext, Rule, Violation, alter_of_existing};

pub struct RenameTable;

impl Rule for RenameTable {
    fn name(&self) -> &'static str {
        "rename-table"
    }

    fn check(&self, statement: &Statement, file: &FileContext<'_>) -> Option<Violation> {
        let alter = alter_of_existing(statement, file)?;
        alter.operations.iter().find_map(|operation| match operation {
            AlterTableOperation::RenameTable { .. } => Some(Violation {
                why: format!("renaming {} breaks the code still running during the deploy, which uses the old name", alter.name),
                safe: "create the new table (or a view with the new name), move the code over, and drop the old name in a \
                       later release"
                    .into(),
            }),
            _ => None,
        })
    }
}
