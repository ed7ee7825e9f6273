//! `SET NOT NULL` without a prior `CHECK (... IS NOT NULL) NOT VALID`.

use sqlparser::ast::{AlterColumnOperation, AlterTableOperation, Statement};

use super::{FileContext, Rule, Violation, alter_of_existing, table_key};

pub struct SetNotNull;

impl Rule for SetNotNull {
    fn name(&self) -> &'static str {
        "set-not-null"
    }

    fn check(&self, statement: &Statement, file: &FileContext<'_>) -> Option<Violation> {
        let alter = alter_of_existing(statement, file)?;
        if file.not_null_checked.contains(&table_key(&alter.name)) {
            return None;
        }
        alter.operations.iter().find_map(|operation| match operation {
            AlterTableOperation::AlterColumn { column_name, op: AlterColumnOperation::SetNotNull } => Some(Violation {
                why: format!(
                    "SET NOT NULL on {}.{column_name} scans the whole table under an ACCESS EXCLUSIVE lock",
                    alter.name
                ),
                safe: format!(
                    "first ADD CONSTRAINT ... CHECK ({column_name} IS NOT NULL) NOT VALID, then VALIDATE CONSTRAINT (no \
                     blocking lock), then SET NOT NULL, which uses the valid check and skips the scan"
                ),
            }),
            _ => None,
        })
    }
}
