//! Where the database is: the host name for where we run, its resolution, and a TCP connect.

use std::net::SocketAddr;
use std::time::Duration;

use backend::config::DatabaseSettings;
use backend::db::RetryKind;

use super::compose::{DOCKER_HOST_NAME, Model};
use super::{Area, Doctor, Inputs, Outcome};
use crate::diagnose::{RuntimeContext, is_loopback, likely_causes};

const NETWORK_TIMEOUT: Duration = Duration::from_secs(3);

/// What the PostgreSQL checks connect to, and whether the network let us through.
pub struct Target {
    /// The settings to connect with; on a host, `host.docker.internal` becomes the address the
    /// containers reach it by (Docker's bridge gateway), so we see what they will see.
    pub database: Option<DatabaseSettings>,
    pub reachable: bool,
    /// The containers reach this server through `host.docker.internal`.
    pub containers_use_docker_host: bool,
}

pub async fn run(doctor: &mut Doctor, inputs: &Inputs, compose: Option<&Model>) -> Target {
    let context = inputs.context;
    let Some(settings) = inputs.settings() else {
        for (area, id) in
            [(Area::Location, "location.host"), (Area::Location, "location.resolve"), (Area::Network, "network.tcp")]
        {
            doctor.check(area, id, || Ok(Outcome::skipped("the database settings are incomplete")));
        }
        return Target { database: None, reachable: false, containers_use_docker_host: false };
    };
    let db = &settings.database;
    let host = db.host().to_owned();
    let var = db.host_variable();
    let compose_feeds_env = compose.is_some_and(|m| m.feeds_env_file("prestart", &inputs.env_file));
    let container_host = compose.and_then(|m| m.services.get("prestart")).and_then(|s| s.database_host());
    let containers_use_docker_host = host.eq_ignore_ascii_case(DOCKER_HOST_NAME)
        || container_host.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(DOCKER_HOST_NAME));
    let on_linux_host = context == RuntimeContext::Host && cfg!(target_os = "linux");
    // On a Linux host, reach `host.docker.internal` the way containers do, through the bridge.
    let database = if on_linux_host && host.eq_ignore_ascii_case(DOCKER_HOST_NAME) {
        crate::docker_host::bridge_gateway().map(|gateway| db.with_host(&gateway))
    } else {
        Some(db.clone())
    };
    // Resolve and connect first: whether something answers decides how a host name is judged.
    let probe = match &database {
        Some(database) if !database.host().starts_with('/') => Probe::run(database).await,
        _ => Probe::NotTried,
    };

    doctor.check(Area::Location, "location.host", || {
        let loopback = is_loopback(&host);
        Ok(match context {
            RuntimeContext::Container if loopback && probe.accepted() => Outcome::ok(format!(
                "{var}={host}: a server listens inside this container itself (a development container?)"
            )),
            RuntimeContext::Container if loopback => Outcome::fail(
                format!("{var}={host} inside a container points at the container itself"),
                format!("use the compose service name `db`, or `{DOCKER_HOST_NAME}` for a database on the host"),
            ),
            RuntimeContext::Kubernetes if loopback => Outcome::warn(
                format!(
                    "{var}={host} in a pod reaches only this pod: right with a sidecar (cloud SQL proxy, pgbouncer)"
                ),
                "without a sidecar, set it to the database Service's DNS name",
            ),
            RuntimeContext::Container
                if host.eq_ignore_ascii_case(DOCKER_HOST_NAME) && !etc_hosts_maps(DOCKER_HOST_NAME) =>
            {
                Outcome::fail(
                    format!("{var}={DOCKER_HOST_NAME}, but this container does not map that name"),
                    format!(
                        "add extra_hosts: [\"{DOCKER_HOST_NAME}:host-gateway\"] to the service in docker-compose.yml"
                    ),
                )
            }
            RuntimeContext::Host if on_linux_host && host.eq_ignore_ascii_case(DOCKER_HOST_NAME) => {
                let message =
                    format!("{var}={DOCKER_HOST_NAME} does not resolve on a Linux host; it is a name for containers");
                if compose_feeds_env {
                    Outcome::warn(
                        format!("{message} (docker-compose.yml feeds this .env to them)"),
                        format!("for commands on this host, override it: {var}=localhost cargo xtask prestart"),
                    )
                } else {
                    Outcome::fail(message, format!("on this host use {var}=localhost"))
                }
            }
            _ => Outcome::ok(format!("{var}={host} fits where this runs ({})", context_name(context))),
        })
    });

    doctor.check(Area::Location, "location.containers_view", || {
        if context != RuntimeContext::Host {
            return Ok(Outcome::skipped("judged from the host only"));
        }
        let Some(container_host) = &container_host else {
            return Ok(Outcome::skipped("no compose prestart service with database settings"));
        };
        Ok(if is_loopback(container_host) {
            Outcome::warn(
                format!("the compose prestart container will get POSTGRES_SERVER={container_host}, which is the container itself"),
                format!(
                    "in the .env compose reads, use `{DOCKER_HOST_NAME}` (a database on this host) or `db` (the compose \
                     db service); on the host, override it: POSTGRES_SERVER=localhost cargo xtask prestart"
                ),
            )
        } else {
            Outcome::ok(format!("the compose prestart container will connect to {container_host}"))
        })
    });

    let Some(database) = database else {
        doctor.check(Area::Location, "location.resolve", || {
            Ok(Outcome::fail(
                format!(
                    "cannot find the address of {DOCKER_HOST_NAME} on this host: no Docker engine answers \
                     (docker network inspect bridge), so Docker's bridge address is unknown"
                ),
                "start Docker (and check that this user may use it: docker info), or use POSTGRES_SERVER=localhost on this host",
            ))
        });
        doctor.check(Area::Network, "network.tcp", || Ok(Outcome::skipped("the host name does not resolve")));
        return Target { database: None, reachable: false, containers_use_docker_host };
    };

    if database.host().starts_with('/') {
        doctor.check(Area::Location, "location.resolve", || Ok(Outcome::skipped("a Unix socket needs no name")));
        doctor.check(Area::Network, "network.tcp", || Ok(Outcome::skipped("a Unix socket, not TCP")));
        return Target { database: Some(database), reachable: true, containers_use_docker_host };
    }

    doctor.check(Area::Location, "location.resolve", || {
        Ok(match &probe {
            Probe::NotTried => Outcome::skipped("not tried"),
            Probe::Unresolved => Outcome::fail(
                format!("{} does not resolve", database.host()),
                first_cause(RetryKind::NameNotResolved, &database, context),
            ),
            Probe::Resolved { addresses, .. } => {
                let list: Vec<String> = addresses.iter().map(|a| a.ip().to_string()).collect();
                Outcome::ok(format!("{} resolves to {}", database.host(), list.join(", ")))
            }
        })
    });
    doctor.check(Area::Network, "network.tcp", || {
        let Probe::Resolved { connected, .. } = &probe else {
            return Ok(Outcome::skipped("the host name does not resolve"));
        };
        Ok(match connected {
            Ok(address) => Outcome::ok(format!("{address} accepts TCP connections")),
            Err((address, kind, what)) => {
                Outcome::fail(format!("TCP connection to {address} {what}"), first_cause(*kind, &database, context))
            }
        })
    });
    let reachable = probe.accepted();
    Target { database: Some(database), reachable, containers_use_docker_host }
}

/// Name resolution and a TCP connect, done once before anything is judged.
enum Probe {
    NotTried,
    Unresolved,
    Resolved { addresses: Vec<SocketAddr>, connected: Result<SocketAddr, (SocketAddr, RetryKind, String)> },
}

impl Probe {
    async fn run(database: &DatabaseSettings) -> Probe {
        let lookup =
            tokio::time::timeout(NETWORK_TIMEOUT, tokio::net::lookup_host((database.host(), database.port()))).await;
        let addresses: Vec<SocketAddr> = match lookup {
            Ok(Ok(found)) => found.collect(),
            _ => return Probe::Unresolved,
        };
        let mut connected =
            Err((SocketAddr::from(([0, 0, 0, 0], database.port())), RetryKind::Unreachable, "had no address".into()));
        for address in &addresses {
            connected = match tokio::time::timeout(NETWORK_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
                Ok(Ok(_)) => Ok(*address),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    Err((*address, RetryKind::Refused, "refused: nothing listens there".into()))
                }
                Ok(Err(e)) => Err((*address, RetryKind::Unreachable, format!("failed: {e}"))),
                Err(_) => Err((
                    *address,
                    RetryKind::TimedOut,
                    format!("timed out after {} s: packets are dropped", NETWORK_TIMEOUT.as_secs()),
                )),
            };
            if connected.is_ok() {
                break;
            }
        }
        Probe::Resolved { addresses, connected }
    }

    fn accepted(&self) -> bool {
        matches!(self, Probe::Resolved { connected: Ok(_), .. })
    }
}

fn first_cause(kind: RetryKind, db: &DatabaseSettings, context: RuntimeContext) -> String {
    likely_causes(kind, db, context).join("; or ")
}

fn context_name(context: RuntimeContext) -> &'static str {
    match context {
        RuntimeContext::Host => "on a host",
        RuntimeContext::Container => "in a container",
        RuntimeContext::Kubernetes => "in a Kubernetes pod",
    }
}

/// `/etc/hosts` has an entry for `name` (what compose's extra_hosts writes).
fn etc_hosts_maps(name: &str) -> bool {
    std::fs::read_to_string("/etc/hosts")
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .any(|line| line.split_whitespace().skip(1).any(|h| h.eq_ignore_ascii_case(name)))
}
