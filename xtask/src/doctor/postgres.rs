//! PostgreSQL: connecting as the settings say, and what the server must allow.

use std::time::Duration;

use backend::db::{Failure, connect_once};
use sqlx::postgres::{PgConnection, PgSslMode};

use super::location::{ContainersPath, Target};
use super::{Area, Doctor, Inputs, Outcome};
use crate::diagnose::likely_causes;
use crate::place::is_loopback;
use backend::db::bounded;
use backend::pooler::{Pooling, detect_pooling, in_own_transaction};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The oldest major version the PostgreSQL project still supports.
const OLDEST_SUPPORTED_MAJOR: u32 = 14;

/// Runs the checks; returns the connection when there is one, for the migration checks.
/// The connection the later checks use, and its settings.
pub async fn run(doctor: &mut Doctor, inputs: &Inputs, target: &Target) -> Option<PgConnection> {
    let ids = [
        "postgres.connect",
        "postgres.writable",
        "postgres.pooler",
        "postgres.migration_connect",
        "postgres.app_privileges",
        "postgres.version",
        "postgres.containers_hba",
        "postgres.create_privilege",
        "postgres.tls",
    ];
    containers_listen(doctor, inputs, target);
    let skip_all = |doctor: &mut Doctor, reason: &str| {
        for id in ids {
            doctor.check(Area::Postgres, id, || Ok(Outcome::skipped(reason)));
        }
    };
    let Some(database) = target.database.as_ref().filter(|_| target.reachable) else {
        skip_all(doctor, "the server cannot be reached");
        return None;
    };

    let mut connection = None;
    doctor
        .check_async(Area::Postgres, "postgres.connect", async {
            Ok(match connect_once(database, "prestart-doctor", CONNECT_TIMEOUT).await {
                Ok(ready) => {
                    connection = Some(ready);
                    Outcome::ok(format!("connected to {database}"))
                }
                Err(Failure::Fatal(fatal)) => {
                    let detail = match &fatal.code {
                        Some(code) => format!("{} (SQLSTATE {code})", fatal.detail),
                        None => fatal.detail.clone(),
                    };
                    Outcome::fail(detail, fatal.hint)
                }
                Err(Failure::Retry(reason)) => Outcome::fail(
                    reason.detail.clone(),
                    likely_causes(reason.kind, database, inputs.context).join("; or "),
                ),
            })
        })
        .await;
    let Some(mut ready) = connection else {
        for id in &ids[1..] {
            doctor.check(Area::Postgres, id, || Ok(Outcome::skipped("not connected")));
        }
        return None;
    };

    doctor.check(Area::Postgres, "postgres.writable", || {
        Ok(match ready.server.read_only_reason() {
            None => Outcome::ok("the server takes writes"),
            Some(reason) => Outcome::fail(
                format!("{}: prestart waits for a server that can write", reason.detail),
                likely_causes(reason.kind, database, inputs.context).join("; or "),
            ),
        })
    });

    let direct = inputs.settings.as_ref().ok().and_then(|s| s.migration_database.clone());
    let pooling = detect_pooling(database, &mut ready).await;
    doctor.check(Area::Postgres, "postgres.pooler", || {
        let relayed = match &ready.server.address {
            Some((address, port)) => format!("the server sees the connection arrive at {address}:{port}"),
            None => "the server sees the connection arrive over a Unix socket".to_owned(),
        };
        Ok(match (pooling, &direct) {
            (Pooling::Direct, _) => Outcome::ok("no pooler or proxy in between"),
            (Pooling::Session, _) => Outcome::ok(format!(
                "a pooler or proxy relays the connection ({relayed}) and keeps one server session per client: \
                 migrations are safe through it"
            )),
            (Pooling::Transaction, Some(direct)) => Outcome::ok(format!(
                "a pooler in transaction pooling mode ({relayed}); migrations and seed use the direct connection of {}",
                direct.variables.origin
            )),
            (Pooling::Undetermined, Some(direct)) => Outcome::warn(
                format!(
                    "a pooler or proxy relays the connection ({relayed}) and refused the probe of its mode; \
                     migrations and seed use the direct connection of {}",
                    direct.variables.origin
                ),
                "backend and worker treat it as transaction pooling (slower); session pooling needs no change",
            ),
            (shared @ (Pooling::Transaction | Pooling::Undetermined), None) => Outcome::fail(
                format!(
                    "{} ({relayed}): prestart refuses to migrate through it, since the migration lock and \
                     lock_timeout do not hold from one transaction to the next",
                    if shared == Pooling::Transaction {
                        "a pooler in transaction pooling mode"
                    } else {
                        "a pooler or proxy whose mode could not be told (it refused the probe)"
                    }
                ),
                "set MIGRATION_DATABASE_URL (or POSTGRES_MIGRATION_SERVER, _PORT, _USER, _PASSWORD) to a direct \
                 connection to PostgreSQL; backend and worker keep using the pooler",
            ),
        })
    });

    let mut direct_conn = None;
    doctor
        .check_async(Area::Postgres, "postgres.migration_connect", async {
            let Some(direct) = &direct else {
                return Ok(Outcome::skipped(
                    "no MIGRATION_DATABASE_URL or POSTGRES_MIGRATION_*: migrations use the connection above",
                ));
            };
            Ok(match connect_once(direct, "prestart-doctor", CONNECT_TIMEOUT).await {
                Ok(direct_ready) => match direct_ready.server.read_only_reason() {
                    None => {
                        direct_conn = Some(direct_ready.conn);
                        Outcome::ok(format!("connected to {direct} ({}), which takes writes", direct.variables.origin))
                    }
                    Some(reason) => Outcome::fail(
                        format!("{direct} ({}): {}", direct.variables.origin, reason.detail),
                        likely_causes(reason.kind, direct, inputs.context).join("; or "),
                    ),
                },
                Err(Failure::Fatal(fatal)) => Outcome::fail(format!("{direct}: {}", fatal.detail), fatal.hint),
                Err(Failure::Retry(reason)) => Outcome::fail(
                    format!("{direct}: {}", reason.detail),
                    likely_causes(reason.kind, direct, inputs.context).join("; or "),
                ),
            })
        })
        .await;

    doctor
        .check_async(Area::Postgres, "postgres.app_privileges", async {
            let owner = direct.as_ref().map(|d| d.user()).filter(|owner| *owner != database.user());
            let Some(owner) = owner else {
                return Ok(Outcome::skipped("migrations and the app use one role"));
            };
            let schema = migration_schema(inputs);
            let table = backend::migrations::MigrationSettings::load(&inputs.root).unwrap_or_default().table_name;
            // As the app's role, the way backend queries: in a transaction of its own.
            let check =
                async |conn: &mut PgConnection| app_privileges(conn, database.user(), owner, &schema, &table).await;
            Ok(bounded(in_own_transaction(&mut ready.conn, pooling, check)).await?)
        })
        .await;

    // The checks below send prepared statements one by one, which a pooler that shares server
    // sessions would lose or leave behind: they go to the direct connection then, if there is one.
    let mut conn = match (pooling.shares_sessions(), direct_conn, &direct) {
        (false, _, _) => ready.conn,
        (true, Some(conn), Some(_)) => conn,
        (true, _, _) => {
            let first = ids.iter().position(|id| *id == "postgres.version").unwrap_or(ids.len());
            for id in &ids[first..] {
                doctor.check(Area::Postgres, id, || {
                    Ok(Outcome::skipped(
                        "a pooler shares server sessions: set MIGRATION_DATABASE_URL to check the server directly",
                    ))
                });
            }
            return None;
        }
    };

    doctor
        .check_async(Area::Postgres, "postgres.version", async {
            let version: String = sqlx::query_scalar("SHOW server_version").fetch_one(&mut conn).await?;
            let major: u32 = version.split(['.', ' ']).next().and_then(|m| m.parse().ok()).unwrap_or(0);
            Ok(if major >= OLDEST_SUPPORTED_MAJOR {
                Outcome::ok(format!("PostgreSQL {version}"))
            } else {
                Outcome::warn(
                    format!("PostgreSQL {version} no longer gets security fixes"),
                    format!("upgrade to PostgreSQL {OLDEST_SUPPORTED_MAJOR} or newer"),
                )
            })
        })
        .await;

    doctor
        .check_async(Area::Postgres, "postgres.containers_hba", async {
            let ContainersPath::Probed { accepted: true, .. } = &target.containers else {
                return Ok(Outcome::skipped("no container reaches this server through host.docker.internal"));
            };
            let subnet = compose_subnet(inputs);
            let stale = if tokio::time::timeout(backend::db::QUERY_TIMEOUT, super::hba::edited_since_reload(&mut conn))
                .await
                .unwrap_or(false)
            {
                " (as pg_hba.conf says now: it changed after the server last loaded it, so reload it, SELECT \
                 pg_reload_conf(), for the server to use it)"
            } else {
                ""
            };
            Ok(match bounded(super::hba::containers_login(&mut conn, &subnet, database.user(), database.database(), database.ssl_mode())).await? {
                super::hba::Verdict::Broken(line) => Outcome::fail(
                    format!("pg_hba.conf does not parse ({line}): the server keeps the rules it last loaded, which doctor cannot see"),
                    "fix that line and reload (SELECT pg_reload_conf())",
                ),
                super::hba::Verdict::Unreadable => Outcome::skipped(
                    "reading pg_hba.conf's rules (pg_hba_file_rules) takes a superuser, so whether the compose network \
                     may log in is not checked from here: `docker compose run --rm prestart` shows it",
                ),
                super::hba::Verdict::LetIn(rule) if !stale.is_empty() => Outcome::warn(
                    format!(
                        "pg_hba.conf {rule} lets the compose network ({subnet}, COMPOSE_SUBNET) log in as {} to {}{stale}",
                        database.user(),
                        database.database()
                    ),
                    "SELECT pg_reload_conf(), as a superuser",
                ),
                super::hba::Verdict::LetIn(rule) => Outcome::ok(format!(
                    "pg_hba.conf {rule} lets the compose network ({subnet}, COMPOSE_SUBNET) log in as {} to {}",
                    database.user(),
                    database.database()
                )),
                super::hba::Verdict::Rejected(rule) => Outcome::fail(
                    format!("pg_hba.conf {rule} rejects the compose network ({subnet}, COMPOSE_SUBNET){stale}"),
                    format!(
                        "put `{}` above that line and reload (SELECT pg_reload_conf())",
                        crate::docker_host::hba_rule(&subnet)
                    ),
                ),
                super::hba::Verdict::NoRule => Outcome::fail(
                    format!(
                        "no pg_hba.conf line lets the compose network ({subnet}, COMPOSE_SUBNET) log in as {} to {}: \
                         the containers reach the server and are refused{stale}",
                        database.user(),
                        database.database()
                    ),
                    format!(
                        "for this workspace's cluster: cargo xtask dev-db start --serve-compose; for another server: add \
                         `{}` to pg_hba.conf and reload (SELECT pg_reload_conf())",
                        crate::docker_host::hba_rule(&subnet)
                    ),
                ),
            })
        })
        .await;

    doctor
        .check_async(Area::Postgres, "postgres.create_privilege", async {
            let schema = migration_schema(inputs);
            let (exists, allowed): (bool, Option<bool>) = sqlx::query_as(
                "SELECT to_regnamespace($1) IS NOT NULL, \
                        CASE WHEN to_regnamespace($1) IS NOT NULL THEN has_schema_privilege(current_user, $1, 'CREATE') END",
            )
            .bind(&schema)
            .fetch_one(&mut conn)
            .await?;
            let user = database.user();
            Ok(match (exists, allowed) {
                (false, _) => {
                    let can_create: bool = sqlx::query_scalar("SELECT has_database_privilege(current_user, current_database(), 'CREATE')")
                        .fetch_one(&mut conn)
                        .await?;
                    if can_create {
                        Outcome::ok(format!("schema {schema} does not exist yet; {user} may create it"))
                    } else {
                        Outcome::fail(
                            format!("schema {schema} does not exist and {user} may not create schemas"),
                            format!("GRANT CREATE ON DATABASE \"{}\" TO \"{user}\"", database.database()),
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
        })
        .await;

    doctor
        .check_async(Area::Postgres, "postgres.tls", async {
            let row: Option<(bool, Option<String>)> =
                sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetch_optional(&mut conn).await?;
            let mode = database.ssl_mode_name();
            let trusted = match database.ssl_root_cert() {
                Some(path) => format!("the CA certificate {path}"),
                None => "the system's trusted CA certificates".to_owned(),
            };
            Ok(match row {
                Some((true, version)) => {
                    let version = version.unwrap_or_default();
                    match database.ssl_mode() {
                        PgSslMode::VerifyFull => Outcome::ok(format!(
                            "encrypted with {version}; the server's certificate and host name are verified against {trusted}"
                        )),
                        PgSslMode::VerifyCa => Outcome::ok(format!(
                            "encrypted with {version}; the server's certificate is verified against {trusted}, its host name is not (sslmode verify-ca)"
                        )),
                        _ if is_loopback(database.host()) => Outcome::ok(format!(
                            "encrypted with {version}, the server's certificate not verified (sslmode {mode}), which is fine on this machine"
                        )),
                        _ => Outcome::warn(
                            format!(
                                "encrypted with {version}, but the server's certificate is not verified (sslmode {mode}): \
                                 anyone on the path to {} can pose as the server",
                                database.host()
                            ),
                            "set POSTGRES_SSLMODE=verify-full, with POSTGRES_SSLROOTCERT naming the CA that signed the \
                             server's certificate (or none, to trust the system's CAs)",
                        ),
                    }
                }
                _ if is_loopback(database.host()) => Outcome::ok(format!("not encrypted, which is fine on this machine (sslmode {mode})")),
                _ => Outcome::warn(
                    format!("the connection to {} is not encrypted (sslmode {mode})", database.host()),
                    "on a network you do not control, turn on ssl in postgresql.conf and set POSTGRES_SSLMODE=require (or verify-full)",
                ),
            })
        })
        .await;
    Some(conn)
}

/// Whether the compose containers meet a listener at Docker's bridge address, where
/// `host.docker.internal` leads them: a TCP connect from the host, made before anything else.
fn containers_listen(doctor: &mut Doctor, inputs: &Inputs, target: &Target) {
    doctor.check(Area::Postgres, "postgres.listen_addresses", || {
        Ok(match &target.containers {
            ContainersPath::NotJudged => {
                Outcome::skipped("no container reaches this server through host.docker.internal")
            }
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
                let bridge = format!("{address}:{port}, Docker's bridge address, where the containers arrive through host.docker.internal");
                let here = target.database.as_ref().filter(|db| {
                    target.reachable && is_loopback(db.host()) && !db.host().starts_with('/') && db.port() == *port
                });
                let advice = crate::docker_host::advice(&compose_subnet(inputs));
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
                            compose_subnet(inputs)
                        ),
                    ),
                }
            }
        })
    });
}

/// The compose network's subnet, as `.env` sets it (or the default).
fn compose_subnet(inputs: &Inputs) -> String {
    crate::docker_host::compose_subnet(&inputs.env)
        .unwrap_or_else(|_| crate::docker_host::DEFAULT_COMPOSE_SUBNET.into())
}

/// What the app's role (this connection's) lacks on what the migrations created in `schema`:
/// rows of every table (only reading the migrations table), sequences that inserts draw on, and
/// default privileges for the tables migrations will create as `owner`.
async fn app_privileges(
    conn: &mut PgConnection,
    app: &str,
    owner: &str,
    schema: &str,
    migrations_table: &str,
) -> Result<Outcome, sqlx::Error> {
    let bare_table = migrations_table.rsplit('.').next().unwrap_or(migrations_table).trim_matches('"');
    let missing: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, \
                array_to_string(ARRAY(SELECT p FROM unnest(CASE \
                    WHEN c.relkind = 'S' THEN ARRAY['USAGE'] \
                    WHEN c.relname = $2 THEN ARRAY['SELECT'] \
                    ELSE ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE'] END) AS p \
                  WHERE NOT CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(c.oid, p) \
                                 ELSE has_table_privilege(c.oid, p) END), ', ') \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'S') \
           AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'i') \
         ORDER BY 1",
    )
    .bind(schema)
    .bind(bare_table)
    .fetch_all(&mut *conn)
    .await?;
    let missing: Vec<String> = missing
        .into_iter()
        .filter(|(_, lacks)| !lacks.is_empty())
        .map(|(name, lacks)| format!("{lacks} on {name}"))
        .collect();
    let defaults: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT FROM pg_default_acl d, aclexplode(d.defaclacl) a \
                        WHERE d.defaclrole = to_regrole($1) AND d.defaclobjtype = 'r' \
                          AND a.grantee = to_regrole(current_user) AND a.privilege_type = 'INSERT')",
    )
    .bind(owner)
    .fetch_one(&mut *conn)
    .await?;
    let grant_defaults = format!(
        "ALTER DEFAULT PRIVILEGES FOR ROLE \"{owner}\" IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES \
         TO \"{app}\"; ... GRANT USAGE ON SEQUENCES TO \"{app}\""
    );
    Ok(match (missing.is_empty(), defaults) {
        (true, true) => Outcome::ok(format!(
            "role {app} may use every table the migrations (as {owner}) created in {schema}, and the ones to come"
        )),
        (true, false) => Outcome::warn(
            format!("role {app} may use today's tables, but not the ones later migrations (as {owner}) will create"),
            format!("in a migration: {grant_defaults}"),
        ),
        (false, _) => Outcome::fail(
            format!("role {app} lacks {}", missing.join("; ")),
            format!(
                "grant them in a migration: GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO \
                 \"{app}\"; GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO \"{app}\"; and for the tables to come: \
                 {grant_defaults}"
            ),
        ),
    })
}

/// The schema the migrations table lives in (and so where migrations write by default).
fn migration_schema(inputs: &Inputs) -> String {
    let settings = backend::migrations::MigrationSettings::load(&inputs.root).unwrap_or_default();
    match settings.table_name.split_once('.') {
        Some((schema, _)) => schema.trim_matches('"').to_owned(),
        None => settings.create_schemas.first().cloned().unwrap_or_else(|| "public".to_owned()),
    }
}
