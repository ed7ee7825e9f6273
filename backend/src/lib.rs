//! The backend's shared core: settings, connections, the schema check, the seed and the job queue.
//! `xtask` builds on the same code, so prestart and the services agree on every rule.

pub mod calendar;
pub mod config;
pub mod db;
#[cfg(feature = "server")]
pub mod jobs;
pub mod keepalive;
pub mod migrations;
pub mod pooler;
pub mod redact;
pub mod seed;
#[cfg(feature = "server")]
pub mod service;
