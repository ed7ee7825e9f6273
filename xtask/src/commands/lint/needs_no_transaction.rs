//! Statements PostgreSQL refuses inside a transaction block, in a migration sqlx runs in one:
//! the file fails at that statement. squawk knows CREATE INDEX CONCURRENTLY only, and only with one
//! `--assume-in-transaction` for every file; sqlx's header says it per file.

use squawk_syntax::ast::{self, AlterTableAction, DetachPartitionOption};

/// What the statement is, when it cannot run in a transaction block.
pub fn refused_in_transaction(statement: &ast::Stmt) -> Option<&'static str> {
    Some(match statement {
        ast::Stmt::CreateIndex(index) if index.concurrently_token().is_some() => "CREATE INDEX CONCURRENTLY",
        ast::Stmt::DropIndex(index) if index.concurrently_token().is_some() => "DROP INDEX CONCURRENTLY",
        ast::Stmt::Reindex(reindex) if reindex.is_concurrently() => "REINDEX CONCURRENTLY",
        ast::Stmt::AlterTable(alter)
            if alter.actions().any(|action| {
                matches!(action, AlterTableAction::DetachPartition(detach)
                    if matches!(detach.detach_partition_option(), Some(DetachPartitionOption::DetachConcurrently(_))))
            }) =>
        {
            "DETACH PARTITION CONCURRENTLY"
        }
        ast::Stmt::Vacuum(_) => "VACUUM",
        ast::Stmt::CreateDatabase(_) => "CREATE DATABASE",
        ast::Stmt::DropDatabase(_) => "DROP DATABASE",
        ast::Stmt::CreateTablespace(_) => "CREATE TABLESPACE",
        ast::Stmt::DropTablespace(_) => "DROP TABLESPACE",
        ast::Stmt::AlterSystem(_) => "ALTER SYSTEM",
        _ => return None,
    })
}

pub fn why(what: &str) -> String {
    format!("{what} cannot run inside a transaction block, and this migration runs in one: it will fail")
}

pub const SAFE: &str = "put it in a migration of its own whose first line is `-- no-transaction`";
