//! Where the database is: the host name for where we run, its resolution, and a TCP connect.

use std::net::SocketAddr;
use std::time::Duration;

use backend::config::DatabaseSettings;
use backend::db::RetryKind;

use super::compose::{DOCKER_HOST_NAME, Model};
use super::{Area, Doctor, Inputs, Outcome};
use crate::connection::diagnose::likely_causes;
use crate::settings::place::{RuntimeContext, is_loopback};

const NETWORK_TIMEOUT: Duration = Duration::from_secs(3);

/// What the PostgreSQL checks connect to, and whether the network let us through.
pub struct Target {
    /// The settings to connect with, as host commands do: on a host, `host.docker.internal`
    /// means this machine, reached through loopback.
    pub database: Option<DatabaseSettings>,
    pub reachable: bool,
    /// The path the compose containers take to this server, judged from the host.
    pub containers: ContainersPath,
}

/// How the compose containers reach a server on this host: through `host.docker.internal`,
/// which is Docker's bridge address to them. Their packets arrive there from the compose
/// network, so the server must listen on that address and let that network in.
pub enum ContainersPath {
    /// Not judged here: not on a host, or no container reaches this server that way.
    NotJudged,
    /// No Docker engine answers, so the bridge address is unknown.
    NoDocker,
    /// A TCP connect from here to the bridge address: what the containers' first packet meets.
    Probed { address: String, port: u16, accepted: bool, what: String },
}

/// What the checks of where the database is look at: the settings' host as this process sees it
/// and as the compose containers will, and what resolving and connecting found.
struct Where<'a> {
    context: RuntimeContext,
    host: String,
    /// The variable that names the host.
    var: &'a str,
    /// docker-compose.yml feeds this `.env` to the prestart container.
    compose_feeds_env: bool,
    /// The host the compose prestart container will connect to.
    container_host: Option<String>,
    names_docker_host: bool,
    /// On the host, `host.docker.internal` is used as named: this machine's `/etc/hosts` maps it.
    kept_as_named: bool,
    /// The settings as host commands take them, where they differ (`host.docker.internal` as
    /// this machine).
    host_view: Option<DatabaseSettings>,
    database: DatabaseSettings,
    probe: Probe,
    containers: ContainersPath,
}

pub async fn run(doctor: &mut Doctor, inputs: &Inputs, compose: Option<&Model>) -> Target {
    let Some(settings) = inputs.settings() else {
        for (area, id) in
            [(Area::Location, "location.host"), (Area::Location, "location.resolve"), (Area::Network, "network.tcp")]
        {
            doctor.check(area, id, || Ok(Outcome::skipped("the database settings are incomplete")));
        }
        return Target { database: None, reachable: false, containers: ContainersPath::NotJudged };
    };
    let at = judge(inputs, &settings.database, compose).await;
    doctor.check(Area::Location, "location.host", || host(&at));
    doctor.check(Area::Location, "location.containers_view", || containers_view(&at));
    if at.database.host().starts_with('/') {
        doctor.check(Area::Location, "location.resolve", || Ok(Outcome::skipped("a Unix socket needs no name")));
        doctor.check(Area::Network, "network.tcp", || Ok(Outcome::skipped("a Unix socket, not TCP")));
        return Target { database: Some(at.database), reachable: true, containers: at.containers };
    }
    doctor.check(Area::Location, "location.resolve", || resolve(&at));
    doctor.check(Area::Network, "network.tcp", || tcp(&at));
    Target { reachable: at.probe.accepted(), database: Some(at.database), containers: at.containers }
}

/// Reads where the settings point, resolves the host and connects, before anything is judged:
/// whether something answers decides how a host name is judged.
async fn judge<'a>(inputs: &Inputs, db: &'a DatabaseSettings, compose: Option<&Model>) -> Where<'a> {
    let context = inputs.context;
    let host = db.host().to_owned();
    let compose_feeds_env = compose.is_some_and(|m| m.feeds_env_file("prestart", &inputs.env_file));
    let container_host = compose.and_then(|m| m.services.get("prestart")).and_then(|s| s.database_host());
    let names_docker_host = host.eq_ignore_ascii_case(DOCKER_HOST_NAME);
    let containers_use_docker_host =
        names_docker_host || container_host.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(DOCKER_HOST_NAME));
    // Each path judged from where it starts: host commands take `host.docker.internal` as this
    // machine (loopback), the containers meet Docker's bridge address.
    let host_view = if context == RuntimeContext::Host {
        crate::settings::context::host_view(db, inputs.host_chosen)
    } else {
        None
    };
    let kept_as_named =
        context == RuntimeContext::Host && crate::settings::context::kept_as_named(db, inputs.host_chosen);
    let database = host_view.clone().unwrap_or_else(|| db.clone());
    let probe = if database.host().starts_with('/') {
        Probe::NotTried
    } else {
        Probe::run(database.host(), database.port()).await
    };
    let containers = if context == RuntimeContext::Host && containers_use_docker_host {
        containers_path(db.port()).await
    } else {
        ContainersPath::NotJudged
    };
    Where {
        context,
        host,
        var: db.host_variable(),
        compose_feeds_env,
        container_host,
        names_docker_host,
        kept_as_named,
        host_view,
        database,
        probe,
        containers,
    }
}

/// The compose containers' path to a server on this host: a TCP connect to Docker's bridge
/// address, where `host.docker.internal` leads them.
async fn containers_path(port: u16) -> ContainersPath {
    let Some(gateway) = crate::settings::docker_host::bridge_gateway() else { return ContainersPath::NoDocker };
    match Probe::run(&gateway, port).await {
        Probe::Resolved { connected: Ok(_), .. } => {
            ContainersPath::Probed { address: gateway, port, accepted: true, what: String::new() }
        }
        Probe::Resolved { connected: Err((_, _, what)), .. } => {
            ContainersPath::Probed { address: gateway, port, accepted: false, what }
        }
        _ => ContainersPath::NoDocker,
    }
}

fn host(at: &Where<'_>) -> anyhow::Result<Outcome> {
    let context = at.context;
    let host = &at.host;
    let var = at.var;
    let compose_feeds_env = at.compose_feeds_env;
    let names_docker_host = at.names_docker_host;
    let host_view = &at.host_view;
    let probe = &at.probe;
    let containers = &at.containers;
    let loopback = is_loopback(host);
    Ok(match context {
        RuntimeContext::Container if loopback && probe.accepted() => Outcome::ok(format!(
            "{var}={host}: a server listens inside this container itself (a development container?)"
        )),
        RuntimeContext::Container if loopback => Outcome::fail(
            format!("{var}={host} inside a container points at the container itself"),
            format!("use the compose service name `db`, or `{DOCKER_HOST_NAME}` for a database on the host"),
        ),
        RuntimeContext::Kubernetes if loopback => Outcome::warn(
            format!("{var}={host} in a pod reaches only this pod: right with a sidecar (cloud SQL proxy, pgbouncer)"),
            "without a sidecar, set it to the database Service's DNS name",
        ),
        RuntimeContext::Host if host_view.is_some() => {
            let bridge = match &containers {
                ContainersPath::Probed { address, .. } => format!(" ({address})"),
                _ => String::new(),
            };
            Outcome::ok(format!(
                "{var}={DOCKER_HOST_NAME} is the compose containers' name for this machine: commands on this host \
                 connect through 127.0.0.1, the containers through Docker's bridge address{bridge}"
            ))
        }
        RuntimeContext::Host if at.kept_as_named => Outcome::ok(format!(
            "{var}={DOCKER_HOST_NAME}: this development container's /etc/hosts maps the name (--add-host), so \
             commands here use it as named, as the compose containers do (`--context host` takes it as 127.0.0.1)"
        )),
        RuntimeContext::Host if names_docker_host => {
            // verify-full keeps the name, which the certificate must carry.
            let message = format!(
                "{var}={DOCKER_HOST_NAME} with POSTGRES_SSLMODE=verify-full: the name is kept for the certificate, \
                 and it resolves only in containers (and on Docker Desktop)"
            );
            if compose_feeds_env {
                Outcome::warn(
                    format!("{message} (docker-compose.yml feeds this .env to them)"),
                    format!(
                        "for commands on this host, override it with the certificate's name: {var}=... cargo xtask prestart"
                    ),
                )
            } else {
                Outcome::fail(message, format!("on this host set {var} to the name the server's certificate carries"))
            }
        }
        _ => Outcome::ok(format!("{var}={host} fits where this runs ({})", context_name(context))),
    })
}

fn containers_view(at: &Where<'_>) -> anyhow::Result<Outcome> {
    let context = at.context;
    let container_host = &at.container_host;
    if context != RuntimeContext::Host {
        return Ok(Outcome::skipped("judged from the host only"));
    }
    let Some(container_host) = &container_host else {
        return Ok(Outcome::skipped("no compose prestart service with database settings"));
    };
    Ok(if is_loopback(container_host) {
        Outcome::warn(
            format!(
                "the compose prestart container will get POSTGRES_SERVER={container_host}, which is the container itself"
            ),
            format!(
                "in the .env compose reads, use `{DOCKER_HOST_NAME}` (a database on this host) or `db` (the compose \
                 db service); on the host, host commands take `{DOCKER_HOST_NAME}` as this machine"
            ),
        )
    } else {
        Outcome::ok(format!("the compose prestart container will connect to {container_host}"))
    })
}

fn resolve(at: &Where<'_>) -> anyhow::Result<Outcome> {
    let context = at.context;
    let database = &at.database;
    let probe = &at.probe;
    Ok(match &probe {
        Probe::NotTried => Outcome::skipped("not tried"),
        Probe::Unresolved => Outcome::fail(
            format!("{} does not resolve {}", database.host(), context_name(context)),
            first_cause(RetryKind::NameNotResolved, database, context),
        ),
        Probe::Resolved { addresses, .. } => {
            let list: Vec<String> = addresses.iter().map(|a| a.ip().to_string()).collect();
            Outcome::ok(format!("{} resolves to {}", database.host(), list.join(", ")))
        }
    })
}

fn tcp(at: &Where<'_>) -> anyhow::Result<Outcome> {
    let context = at.context;
    let database = &at.database;
    let probe = &at.probe;
    let Probe::Resolved { connected, .. } = &probe else {
        return Ok(Outcome::skipped("the host name does not resolve"));
    };
    Ok(match connected {
        Ok(address) => Outcome::ok(format!("{address} accepts TCP connections")),
        Err((address, kind, what)) => {
            Outcome::fail(format!("TCP connection to {address} {what}"), first_cause(*kind, database, context))
        }
    })
}

/// Name resolution and a TCP connect, done once before anything is judged.
enum Probe {
    NotTried,
    Unresolved,
    Resolved { addresses: Vec<SocketAddr>, connected: Result<SocketAddr, (SocketAddr, RetryKind, String)> },
}

impl Probe {
    async fn run(host: &str, port: u16) -> Probe {
        let lookup = tokio::time::timeout(NETWORK_TIMEOUT, tokio::net::lookup_host((host, port))).await;
        let addresses: Vec<SocketAddr> = match lookup {
            Ok(Ok(found)) => found.collect(),
            _ => return Probe::Unresolved,
        };
        let mut connected =
            Err((SocketAddr::from(([0, 0, 0, 0], port)), RetryKind::Unreachable, "had no address".into()));
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
