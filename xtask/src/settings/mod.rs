//! What the user configured and where this process runs: settings and arguments, the reading of
//! host, container or pod, Docker's bridge and the compose network.

pub mod context;
pub mod docker_host;
pub mod place;
