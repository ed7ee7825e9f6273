//! The commands, one module each, one hop from main.rs; each has its `Args` and one `run`.

pub mod database;
pub mod dev;
pub mod lint;
pub mod new_migration;
pub mod prestart;
pub mod schema;
pub mod sqlx_prepare;
pub mod wait_for_db;
