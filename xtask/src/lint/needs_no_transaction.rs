//! Statements PostgreSQL refuses inside a transaction block, in a migration that runs in one.

use sqlparser::ast::Statement;

use super::{FileContext, Rule, Violation};

pub struct NeedsNoTransaction;

impl Rule for NeedsNoTransaction {
    fn name(&self) -> &'static str {
        "needs-no-transaction"
    }

    fn check(&self, statement: &Statement, file: &FileContext<'_>) -> Option<Violation> {
        if file.no_transaction {
            return None;
        }
        let what = match statement {
            Statement::CreateIndex(index) if index.concurrently => "CREATE INDEX CONCURRENTLY",
            Statement::Vacuum(_) => "VACUUM",
            Statement::CreateDatabase { .. } => "CREATE DATABASE",
            _ => return None,
        };
        Some(Violation {
            why: format!("{what} cannot run inside a transaction block, and this migration runs in one: it will fail"),
            safe: "put it in a migration of its own whose first line is `-- no-transaction`".into(),
        })
    }
}
