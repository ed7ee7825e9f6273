//! The ground every layer stands on: output and exit codes, the runtime and its signals, SQL text and
//! server errors in words, the workspace and how external tools run. Uses nothing above it.

pub mod exit;
pub mod http;
pub mod interrupt;
pub mod replay;
pub mod sql;
pub mod ui;
pub mod workspace;
