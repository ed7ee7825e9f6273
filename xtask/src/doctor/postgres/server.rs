//! The server itself: its version, whether the compose network may log in, whether the role may
//! create what the migrations make, and the connection's encryption.

use sqlx::postgres::{PgConnection, PgSslMode};

use super::super::location::{ContainersPath, Target};
use super::super::{Inputs, Outcome, hba};
use super::OLDEST_SUPPORTED_MAJOR;
use super::connection::migration_schema;
use crate::settings::place::is_loopback;
use backend::config::DatabaseSettings;
use backend::db::bounded;

/// What the checks of the server look at besides the connection.
pub(super) struct Server<'a> {
    pub inputs: &'a Inputs,
    pub target: &'a Target,
    pub database: &'a DatabaseSettings,
}

/// The server's major version is one the PostgreSQL project still supports.
pub(super) async fn version(conn: &mut PgConnection) -> anyhow::Result<Outcome> {
    let version: String = sqlx::query_scalar("SHOW server_version").fetch_one(&mut *conn).await?;
    let major: u32 = version.split(['.', ' ']).next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Ok(if major >= OLDEST_SUPPORTED_MAJOR {
        Outcome::ok(format!("PostgreSQL {version}"))
    } else {
        Outcome::warn(
            format!("PostgreSQL {version} no longer gets security fixes"),
            format!("upgrade to PostgreSQL {OLDEST_SUPPORTED_MAJOR} or newer"),
        )
    })
}

/// pg_hba.conf lets the compose network log in, as the settings' user to their database.
pub(super) async fn containers_hba(at: &Server<'_>, conn: &mut PgConnection) -> anyhow::Result<Outcome> {
    let ContainersPath::Probed { accepted: true, .. } = &at.target.containers else {
        return Ok(Outcome::skipped("no container reaches this server through host.docker.internal"));
    };
    let subnet = compose_subnet(at.inputs);
    let stale =
        if tokio::time::timeout(backend::db::QUERY_TIMEOUT, hba::edited_since_reload(conn)).await.unwrap_or(false) {
            " (as pg_hba.conf says now: it changed after the server last loaded it, so reload it, SELECT \
         pg_reload_conf(), for the server to use it)"
        } else {
            ""
        };
    Ok(
        match bounded(hba::containers_login(
            conn,
            &subnet,
            at.database.user(),
            at.database.database(),
            at.database.ssl_mode(),
        ))
        .await?
        {
            hba::Verdict::Broken(line) => Outcome::fail(
                format!(
                    "pg_hba.conf does not parse ({line}): the server keeps the rules it last loaded, which doctor cannot see"
                ),
                "fix that line and reload (SELECT pg_reload_conf())",
            ),
            hba::Verdict::Unreadable => Outcome::skipped(
                "reading pg_hba.conf's rules (pg_hba_file_rules) takes a superuser, so whether the compose network \
             may log in is not checked from here: `docker compose run --rm prestart` shows it",
            ),
            hba::Verdict::LetIn(rule) if !stale.is_empty() => Outcome::warn(
                format!(
                    "pg_hba.conf {rule} lets the compose network ({subnet}, COMPOSE_SUBNET) log in as {} to {}{stale}",
                    at.database.user(),
                    at.database.database()
                ),
                "SELECT pg_reload_conf(), as a superuser",
            ),
            hba::Verdict::LetIn(rule) => Outcome::ok(format!(
                "pg_hba.conf {rule} lets the compose network ({subnet}, COMPOSE_SUBNET) log in as {} to {}",
                at.database.user(),
                at.database.database()
            )),
            hba::Verdict::Rejected(rule) => Outcome::fail(
                format!("pg_hba.conf {rule} rejects the compose network ({subnet}, COMPOSE_SUBNET){stale}"),
                format!(
                    "put `{}` above that line and reload (SELECT pg_reload_conf())",
                    crate::settings::docker_host::hba_rule(&subnet)
                ),
            ),
            hba::Verdict::NoRule => Outcome::fail(
                format!(
                    "no pg_hba.conf line lets the compose network ({subnet}, COMPOSE_SUBNET) log in as {} to {}: \
                 the containers reach the server and are refused{stale}",
                    at.database.user(),
                    at.database.database()
                ),
                format!(
                    "for this workspace's cluster: cargo xtask dev-db start --serve-compose; for another server: add \
                 `{}` to pg_hba.conf and reload (SELECT pg_reload_conf())",
                    crate::settings::docker_host::hba_rule(&subnet)
                ),
            ),
        },
    )
}

/// The role may create what the migrations make, in the schema they write to.
pub(super) async fn create_privilege(at: &Server<'_>, conn: &mut PgConnection) -> anyhow::Result<Outcome> {
    let schema = migration_schema(at.inputs);
    let (exists, allowed): (bool, Option<bool>) = sqlx::query_as(
        "SELECT to_regnamespace($1) IS NOT NULL, \
                CASE WHEN to_regnamespace($1) IS NOT NULL THEN has_schema_privilege(current_user, $1, 'CREATE') END",
    )
    .bind(&schema)
    .fetch_one(&mut *conn)
    .await?;
    let user = at.database.user();
    Ok(match (exists, allowed) {
        (false, _) => {
            let can_create: bool =
                sqlx::query_scalar("SELECT has_database_privilege(current_user, current_database(), 'CREATE')")
                    .fetch_one(&mut *conn)
                    .await?;
            if can_create {
                Outcome::ok(format!("schema {schema} does not exist yet; {user} may create it"))
            } else {
                Outcome::fail(
                    format!("schema {schema} does not exist and {user} may not create schemas"),
                    format!("GRANT CREATE ON DATABASE \"{}\" TO \"{user}\"", at.database.database()),
                )
            }
        }
        (true, Some(true)) => Outcome::ok(format!("{user} may create tables in schema {schema}")),
        (true, _) => Outcome::fail(
            format!("{user} may not create tables in schema {schema}, where the migrations write"),
            format!(
                "as the database owner: GRANT CREATE ON SCHEMA {schema} TO \"{user}\" (PostgreSQL 15 no longer grants \
                 it to everyone), or make {user} the owner of the database"
            ),
        ),
    })
}

/// The connection is encrypted and the server's certificate verified where that matters.
pub(super) async fn tls(at: &Server<'_>, conn: &mut PgConnection) -> anyhow::Result<Outcome> {
    let row: Option<(bool, Option<String>)> =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_optional(&mut *conn)
            .await?;
    let mode = at.database.ssl_mode_name();
    let trusted = match at.database.ssl_root_cert() {
        Some(path) => format!("the CA certificate {path}"),
        None => "the system's trusted CA certificates".to_owned(),
    };
    Ok(match row {
        Some((true, version)) => {
            let version = version.unwrap_or_default();
            match at.database.ssl_mode() {
                PgSslMode::VerifyFull => Outcome::ok(format!(
                    "encrypted with {version}; the server's certificate and host name are verified against {trusted}"
                )),
                PgSslMode::VerifyCa => Outcome::ok(format!(
                    "encrypted with {version}; the server's certificate is verified against {trusted}, its host name is not (sslmode verify-ca)"
                )),
                _ if is_loopback(at.database.host()) => Outcome::ok(format!(
                    "encrypted with {version}, the server's certificate not verified (sslmode {mode}), which is fine on this machine"
                )),
                _ => Outcome::warn(
                    format!(
                        "encrypted with {version}, but the server's certificate is not verified (sslmode {mode}): \
                         anyone on the path to {} can pose as the server",
                        at.database.host()
                    ),
                    "set POSTGRES_SSLMODE=verify-full, with POSTGRES_SSLROOTCERT naming the CA that signed the \
                     server's certificate (or none, to trust the system's CAs)",
                ),
            }
        }
        _ if is_loopback(at.database.host()) => {
            Outcome::ok(format!("not encrypted, which is fine on this machine (sslmode {mode})"))
        }
        _ => Outcome::warn(
            format!("the connection to {} is not encrypted (sslmode {mode})", at.database.host()),
            "on a network you do not control, turn on ssl in postgresql.conf and set POSTGRES_SSLMODE=require (or verify-full)",
        ),
    })
}

/// What the listen check needs: where the settings point and how the containers fared.
pub(super) struct Listen<'a> {
    pub inputs: &'a Inputs,
    pub target: &'a Target,
}

/// Whether the compose containers meet a listener at Docker's bridge address, where
/// `host.docker.internal` leads them: a TCP connect from the host, made before anything else.
pub(super) fn listen_addresses(listen: &Listen<'_>) -> anyhow::Result<Outcome> {
    Ok(match &listen.target.containers {
        ContainersPath::NotJudged => Outcome::skipped("no container reaches this server through host.docker.internal"),
        ContainersPath::NoDocker => Outcome::warn(
            "no Docker engine answers, so Docker's bridge address, where the containers arrive through \
             host.docker.internal, is unknown: their path is not checked",
            "start Docker (and check that this user may use it: docker info), then run doctor again",
        ),
        ContainersPath::Probed { address, port, accepted: true, .. } => Outcome::ok(format!(
            "{address}:{port} (Docker's bridge address, where the containers arrive through host.docker.internal) \
             accepts connections from this machine (a firewall rule for the containers' own bridge interface is \
             not seen from here)"
        )),
        ContainersPath::Probed { address, port, accepted: false, what } => {
            let bridge = format!(
                "{address}:{port}, Docker's bridge address, where the containers arrive through host.docker.internal"
            );
            let here = listen.target.database.as_ref().filter(|db| {
                listen.target.reachable && is_loopback(db.host()) && !db.host().starts_with('/') && db.port() == *port
            });
            let advice = crate::settings::docker_host::advice(&compose_subnet(listen.inputs));
            match (what.starts_with("refused"), here) {
                (true, Some(db)) => Outcome::fail(
                    format!(
                        "the server runs on this machine ({}:{} answers), but nothing listens on {bridge}: its \
                         listen_addresses leaves that address out",
                        db.host(),
                        db.port()
                    ),
                    advice,
                ),
                (true, None) => Outcome::fail(
                    format!("nothing listens on {bridge}: no server on this machine listens there"),
                    format!("start the server; {advice}"),
                ),
                (false, _) => Outcome::fail(
                    format!("the connection to {bridge} {what}: a firewall on this machine drops it"),
                    format!(
                        "let the compose network ({}) reach port {port} in the firewall (ufw, firewalld, nftables)",
                        compose_subnet(listen.inputs)
                    ),
                ),
            }
        }
    })
}

/// The compose network's subnet, as `.env` sets it (or the default).
pub(super) fn compose_subnet(inputs: &Inputs) -> String {
    crate::settings::docker_host::compose_subnet(&inputs.env)
        .unwrap_or_else(|_| crate::settings::docker_host::DEFAULT_COMPOSE_SUBNET.into())
}
