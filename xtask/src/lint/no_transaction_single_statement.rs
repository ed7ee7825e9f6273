//! More than one statement in a `-- no-transaction` migration.

use sqlparser::ast::Statement;

use super::{FileContext, Rule, Violation};

pub struct NoTransactionSingleStatement;

impl Rule for NoTransactionSingleStatement {
    fn name(&self) -> &'static str {
        "no-transaction-single-statement"
    }

    fn check(&self, _statement: &Statement, file: &FileContext<'_>) -> Option<Violation> {
        (file.no_transaction && file.statement_index == 1).then(|| Violation {
            why: "a `-- no-transaction` migration is sent as one multi-statement query: PostgreSQL runs it as an \
                  implicit transaction, so two CONCURRENTLY statements fail together, and a failure halfway leaves \
                  part of the file applied"
                .into(),
            safe: "one statement per `-- no-transaction` migration".into(),
        })
    }
}
