//! An EXCLUDE constraint added to a table that exists: it builds its index under ACCESS
//! EXCLUSIVE, and unlike a CHECK or a foreign key it cannot be added NOT VALID, nor take over an
//! index built CONCURRENTLY. (squawk 2.70 flags it too; the 2.68 this project pins does not.)

use squawk_syntax::ast::{self, AlterTableAction};

pub const WHY: &str = "ADD CONSTRAINT ... EXCLUDE builds its index while holding ACCESS EXCLUSIVE on the table: every \
                       read and write waits for the whole build, and EXCLUDE can neither be NOT VALID nor use an \
                       index built CONCURRENTLY";

pub const SAFE: &str = "add it when the table is made, or in a maintenance window; for a large table, enforce the \
                        rule in the application (or with a trigger) until then";

/// Whether `statement` adds an EXCLUDE constraint to a table.
pub fn adds_exclude(statement: &ast::Stmt) -> bool {
    let ast::Stmt::AlterTable(alter) = statement else { return false };
    alter.actions().any(|action| match action {
        AlterTableAction::AddConstraint(add) => matches!(add.constraint(), Some(ast::Constraint::ExcludeConstraint(_))),
        _ => false,
    })
}
