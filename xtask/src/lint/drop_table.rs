//! Dropping a table.

use sqlparser::ast::{ObjectType, Statement};

use super::{FileContext, Rule, Violation};

pub struct DropTable;

impl Rule for DropTable {
    fn name(&self) -> &'static str {
        "drop-table"
    }

    fn check(&self, statement: &Statement, file: &FileContext<'_>) -> Option<Violation> {
        let Statement::Drop { object_type: ObjectType::Table, names, .. } = statement else { return None };
        let existing: Vec<String> = names.iter().filter(|n| file.is_existing(n)).map(ToString::to_string).collect();
        (!existing.is_empty()).then(|| Violation {
            why: format!(
                "dropping {} breaks the code still running during the deploy, and its data is gone for good",
                existing.join(", ")
            ),
            safe: "release code that no longer uses the table first, back it up, then drop it in a later migration"
                .into(),
        })
    }
}
