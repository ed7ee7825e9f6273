//! The migration machinery: plan, lock, apply and revert as sqlx-cli does, the release check, the
//! seed, and the scratch databases schema dump and sqlx-prepare build in.

pub mod migrate;
pub mod release;
pub mod scratch;
pub mod seed;
pub mod seed_check;
