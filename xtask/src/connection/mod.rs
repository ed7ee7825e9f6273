//! The connection: the bounded wait and its likely causes, a command's one session (reconnects,
//! signals), and the migration lock's SQL.

pub mod diagnose;
pub mod lock;
pub mod session;
pub mod wait;
