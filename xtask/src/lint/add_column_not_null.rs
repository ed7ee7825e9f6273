//! `ADD COLUMN ... NOT NULL` without a default on an existing table.

use sqlparser::ast::{AlterTableOperation, ColumnOption, Statement};

use super::{FileContext, Rule, Violation, alter_of_existing};

pub struct AddColumnNotNull;

impl Rule for AddColumnNotNull {
    fn name(&self) -> &'static str {
        "add-column-not-null-without-default"
    }

    fn check(&self, statement: &Statement, file: &FileContext<'_>) -> Option<Violation> {
        let alter = alter_of_existing(statement, file)?;
        alter.operations.iter().find_map(|operation| {
            let AlterTableOperation::AddColumn { column_def, .. } = operation else { return None };
            let has = |wanted: fn(&ColumnOption) -> bool| column_def.options.iter().any(|o| wanted(&o.option));
            let not_null = has(|o| matches!(o, ColumnOption::NotNull));
            let filled = has(|o| matches!(o, ColumnOption::Default(_) | ColumnOption::Generated { .. } | ColumnOption::Identity(_)));
            (not_null && !filled).then(|| Violation {
                why: format!(
                    "adding {} NOT NULL without a default fails on a table with rows, and old code that inserts without it breaks",
                    column_def.name
                ),
                safe: "add it with a DEFAULT (instant since PostgreSQL 11), or add it nullable, backfill, then SET NOT NULL \
                       after a CHECK (... IS NOT NULL) NOT VALID"
                    .into(),
            })
        })
    }
}
