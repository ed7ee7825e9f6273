//! Likely causes of a failure to connect, judged from where we run and where the settings point.
//!
//! From inside a container "refused" cannot be told apart from "server down", so these are
//! likely causes, most likely first, not verdicts.

use crate::settings::place::{RuntimeContext, context_note, is_loopback};
use backend::config::DatabaseSettings;
use backend::db::RetryKind;

const DOCKER_HOST_NAME: &str = "host.docker.internal";

/// The likely causes of `reason`, most likely first.
pub fn likely_causes(reason: RetryKind, db: &DatabaseSettings, context: RuntimeContext) -> Vec<String> {
    let (host, port) = (db.host(), db.port());
    let mut causes = Vec::new();
    // Evidence first: this workspace has a local cluster, and the settings point at this machine.
    if reason == RetryKind::Refused
        && is_loopback(host)
        && crate::settings::place::workspace_cluster_port() == Some(port)
    {
        causes.push(format!(
            "this workspace's local cluster exists but does not listen on {port}: start it (cargo xtask dev-db start)"
        ));
    }
    match reason {
        RetryKind::Refused => causes.extend(refused(db, context)),
        RetryKind::NameNotResolved => causes.push(unresolved(db, context)),
        other => causes.extend(other_causes(other, db)),
    }
    if depends_on_context(reason, db) {
        causes.push(context_note(context));
    }
    causes
}

/// Why nothing answered: what `localhost` and the host's name mean where this runs.
fn refused(db: &DatabaseSettings, context: RuntimeContext) -> Vec<String> {
    let (host, port, var) = (db.host(), db.port(), db.host_variable());
    let to_host = host.eq_ignore_ascii_case(DOCKER_HOST_NAME);
    let mut causes = Vec::new();
    match context {
        RuntimeContext::Container if is_loopback(host) => {
            causes.push(format!(
                "{var}={host} inside a container points at the container itself; use the compose service name `db`, \
                 or `{DOCKER_HOST_NAME}` for a database on the host"
            ));
            causes
                .push(format!("a server inside this container is not running, or listens on another port than {port}"));
        }
        RuntimeContext::Kubernetes if is_loopback(host) => {
            causes.push(format!(
                "nothing listens on {host}:{port} in this pod: a sidecar (cloud SQL proxy, pgbouncer) may not be up yet; \
                 without one, set {var} to the database Service's name"
            ));
        }
        RuntimeContext::Container if to_host => {
            let network = crate::settings::docker_host::own_network().unwrap_or_else(|| "<the compose network>".into());
            causes.push(format!(
                "the PostgreSQL server on the host may listen only on 127.0.0.1: for this workspace's cluster run \
                 `cargo xtask dev-db start --serve-compose` on the host; for another server add Docker's bridge \
                 address to listen_addresses in postgresql.conf, let this container's network in with \
                 `{}` in pg_hba.conf, and restart it (`cargo xtask doctor` on the host names both)",
                crate::settings::docker_host::hba_rule(&network)
            ));
            causes.push(format!("the server on the host may be stopped, or listen on another port than {port}"));
        }
        RuntimeContext::Container | RuntimeContext::Kubernetes => {
            causes.push(format!(
                "the database at {host} may still be starting or may be down (docker compose ps; docker compose logs {host})"
            ));
            causes.push(format!("it may listen on another port than {port} (POSTGRES_PORT)"));
        }
        // A development container whose /etc/hosts maps the name: it led to the Docker host.
        RuntimeContext::Host if crate::settings::context::kept_as_named(db, false) => {
            causes.push(format!(
                "{DOCKER_HOST_NAME} leads to the Docker host (this container's /etc/hosts maps it), where nothing \
                 listens on port {port}: for a server in this container set {var}=localhost (or give --context \
                 host); for one on the Docker host, start it or fix POSTGRES_PORT"
            ));
        }
        RuntimeContext::Host => {
            causes.push(format!(
                "no PostgreSQL server listens on {host}:{port}: start it (for a local one: cargo xtask dev-db start), \
                 or fix {var} and POSTGRES_PORT"
            ));
        }
    }
    causes
}

/// Why the name does not resolve, where this runs.
fn unresolved(db: &DatabaseSettings, context: RuntimeContext) -> String {
    let (host, var) = (db.host(), db.host_variable());
    let to_host = host.eq_ignore_ascii_case(DOCKER_HOST_NAME);
    match context {
        RuntimeContext::Host if to_host => format!(
            "{DOCKER_HOST_NAME} resolves only inside containers (and on Docker Desktop): on this machine use {var}=localhost"
        ),
        RuntimeContext::Container if to_host => format!(
            "this container was started without a mapping for {DOCKER_HOST_NAME}, which Linux needs: a compose \
             service gets it from `extra_hosts: [\"{DOCKER_HOST_NAME}:host-gateway\"]`, `docker run` from \
             `--add-host={DOCKER_HOST_NAME}:host-gateway` (a devcontainer: in runArgs of devcontainer.json)"
        ),
        RuntimeContext::Container | RuntimeContext::Kubernetes => format!(
            "`{host}` is not a known name yet: compose and Kubernetes create a service's name when it starts; if it \
             never resolves, check {var} against the service names"
        ),
        RuntimeContext::Host => format!(
            "`{host}` does not resolve on this machine: check {var}; compose service names resolve only inside containers"
        ),
    }
}

/// The causes of the failures that mean the same wherever this runs.
fn other_causes(reason: RetryKind, db: &DatabaseSettings) -> Vec<String> {
    let (host, port, var) = (db.host(), db.port(), db.host_variable());
    let cause = match reason {
        RetryKind::TimedOut | RetryKind::Unreachable => format!(
            "packets to {host}:{port} get no answer: a firewall or security group drops them, or the address is wrong"
        ),
        RetryKind::NotAccepting => "the server is starting up, recovering or shutting down, or it is a standby that \
                                    accepts no connections (hot_standby = off) until it is promoted"
            .into(),
        RetryKind::ReadOnly => {
            return vec![
                "a failover may be in progress: the address leads to a standby until it is promoted (prestart goes \
                 on at once when it is)"
                    .into(),
                format!("{var} may name a replica or a reader endpoint: point it at the primary (the writer endpoint)"),
            ];
        }
        RetryKind::ServerShutdown => "the server was shut down or restarted during the attempt: a failover or \
                                      switchover in progress, or a restart (prestart goes on as soon as a primary \
                                      answers)"
            .into(),
        RetryKind::NoServerBehind => format!(
            "a proxy or load balancer at {host}:{port} (HAProxy, a cloud load balancer, a service mesh) has no \
             healthy server behind it: a failover in progress, or the database down behind it"
        ),
        RetryKind::TooManyConnections => "all max_connections slots are taken by other clients: close idle ones, \
                                          raise max_connections, or use a pooler"
            .into(),
        RetryKind::Reset | RetryKind::ConnectionException | RetryKind::Network => "the connection broke during the \
            handshake: the server may be restarting, or a proxy in between drops it"
            .into(),
        RetryKind::Refused | RetryKind::NameNotResolved => return Vec::new(),
    };
    vec![cause]
}

/// The context-dependent causes of `reason` (those about what `localhost` or a name means here).
pub fn depends_on_context(reason: RetryKind, db: &DatabaseSettings) -> bool {
    matches!(reason, RetryKind::Refused | RetryKind::NameNotResolved)
        && (is_loopback(db.host()) || db.host().eq_ignore_ascii_case(DOCKER_HOST_NAME) || !db.host().contains('.'))
}

/// `likely cause: A`, `or: B`: the lines that present causes, most likely first.
pub fn cause_lines(causes: &[String]) -> impl Iterator<Item = String> + '_ {
    // A cause two checks found is said once.
    let unique = causes.iter().enumerate().filter(|(i, cause)| !causes[..*i].contains(cause)).map(|(_, c)| c);
    unique.enumerate().map(|(i, cause)| format!("{} {cause}", if i == 0 { "likely cause:" } else { "or:" }))
}
