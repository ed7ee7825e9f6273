//! A foreign key or check constraint added to an existing table without `NOT VALID`.

use sqlparser::ast::{AlterTableOperation, Statement, TableConstraint};

use super::{FileContext, Rule, Violation, alter_of_existing};

pub struct ConstraintWithoutNotValid;

impl Rule for ConstraintWithoutNotValid {
    fn name(&self) -> &'static str {
        "constraint-without-not-valid"
    }

    fn check(&self, statement: &Statement, file: &FileContext<'_>) -> Option<Violation> {
        let alter = alter_of_existing(statement, file)?;
        alter.operations.iter().find_map(|operation| {
            let AlterTableOperation::AddConstraint { constraint, not_valid: false } = operation else { return None };
            let kind = match constraint {
                TableConstraint::ForeignKey(_) => "a foreign key",
                TableConstraint::Check(_) => "a check constraint",
                _ => return None,
            };
            Some(Violation {
                why: format!(
                    "adding {kind} to {} checks every row while holding a lock that blocks writes (a foreign key also \
                     locks the table it references)",
                    alter.name
                ),
                safe: "add it with NOT VALID, then VALIDATE CONSTRAINT in a later statement or migration: validating \
                       takes a lock that lets reads and writes go on"
                    .into(),
            })
        })
    }
}
