//! Dropping a column.

use sqlparser::ast::{AlterTableOperation, Statement};

use super::{FileContext, Rule, Violation, alter_of_existing};

pub struct DropColumn;

impl Rule for DropColumn {
    fn name(&self) -> &'static str {
        "drop-column"
    }

    fn check(&self, statement: &Statement, file: &FileContext<'_>) -> Option<Violation> {
        let alter = alter_of_existing(statement, file)?;
        alter.operations.iter().find_map(|operation| match operation {
            AlterTableOperation::DropColumn { column_names, .. } => Some(Violation {
                why: format!(
                    "dropping {} from {} breaks the code still running during the deploy, which reads or writes it",
                    column_names.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    alter.name
                ),
                safe: "release code that no longer uses the column first, then drop it in a later migration".into(),
            }),
            _ => None,
        })
    }
}
