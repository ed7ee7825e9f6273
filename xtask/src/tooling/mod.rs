//! The project's own tooling: the test suite's runner, the end-to-end run, the bench, PgBouncer for both.

pub mod bench;
pub mod e2e;
pub mod pgbouncer;
pub mod test;
