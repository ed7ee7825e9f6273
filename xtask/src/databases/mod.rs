//! Databases and clusters: create, drop and find a database, the ENVIRONMENT a database records,
//! throwaway clusters on this machine, and the workspace's own cluster.

pub mod ddl;
pub mod dev_db;
pub mod environment;
pub mod throwaway;
