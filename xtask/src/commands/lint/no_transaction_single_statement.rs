//! More than one statement in a `-- no-transaction` migration: sqlx sends the file as one
//! multi-statement query, which PostgreSQL runs as an implicit transaction.

pub const WHY: &str = "a `-- no-transaction` migration is sent as one multi-statement query: PostgreSQL runs it as an \
                       implicit transaction, so two CONCURRENTLY statements fail together, and a failure halfway \
                       leaves part of the file applied";

pub const SAFE: &str = "one statement per `-- no-transaction` migration";
