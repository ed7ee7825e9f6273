//! The connection: whether one is had, takes writes, goes through a pooler, and whether the
//! direct connection for migrations and the app's role work as migrations and the app need.

use backend::config::DatabaseSettings;
use backend::db::{Failure, Ready, bounded, connect_once};
use backend::pooler::{Pooling, in_own_transaction};
use sqlx::postgres::PgConnection;

use super::super::{Inputs, Outcome};
use super::CONNECT_TIMEOUT;
use crate::connection::diagnose::likely_causes;

/// Where the connection checks look.
pub(super) struct Connecting<'a> {
    pub inputs: &'a Inputs,
    pub database: &'a DatabaseSettings,
}

/// What the checks of a connection that was had look at.
pub(super) struct Connected<'a> {
    pub inputs: &'a Inputs,
    pub database: &'a DatabaseSettings,
    pub ready: Ready,
    pub pooling: Pooling,
    /// The direct settings for migrations, when given.
    pub direct: Option<DatabaseSettings>,
}

/// A connection with the app's settings; `connection` gets it.
pub(super) async fn connect(at: &Connecting<'_>, connection: &mut Option<Ready>) -> anyhow::Result<Outcome> {
    Ok(match connect_once(at.database, "prestart-doctor", CONNECT_TIMEOUT).await {
        Ok(ready) => {
            *connection = Some(ready);
            Outcome::ok(format!("connected to {}", at.database))
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
            likely_causes(reason.kind, at.database, at.inputs.context).join("; or "),
        ),
    })
}

/// The server takes writes (not a standby, not read-only by default).
pub(super) fn writable(at: &Connected<'_>) -> anyhow::Result<Outcome> {
    Ok(match at.ready.server.read_only_reason() {
        None => Outcome::ok("the server takes writes"),
        Some(reason) => Outcome::fail(
            format!("{}: prestart waits for a server that can write", reason.detail),
            likely_causes(reason.kind, at.database, at.inputs.context).join("; or "),
        ),
    })
}

/// A pooler or proxy in between, and whether migrations are safe through it.
pub(super) fn pooler(at: &Connected<'_>) -> anyhow::Result<Outcome> {
    let relayed = match &at.ready.server.address {
        Some((address, port)) => format!("the server sees the connection arrive at {address}:{port}"),
        None => "the server sees the connection arrive over a Unix socket".to_owned(),
    };
    Ok(match (at.pooling, &at.direct) {
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
}

/// The direct connection for migrations, when one is set; `direct_conn` gets it.
pub(super) async fn migration_connect(
    at: &Connected<'_>,
    direct_conn: &mut Option<PgConnection>,
) -> anyhow::Result<Outcome> {
    let Some(direct) = &at.direct else {
        return Ok(Outcome::skipped(
            "no MIGRATION_DATABASE_URL or POSTGRES_MIGRATION_*: migrations use the connection above",
        ));
    };
    Ok(match connect_once(direct, "prestart-doctor", CONNECT_TIMEOUT).await {
        Ok(direct_ready) => match direct_ready.server.read_only_reason() {
            None => {
                *direct_conn = Some(direct_ready.conn);
                Outcome::ok(format!("connected to {direct} ({}), which takes writes", direct.variables.origin))
            }
            Some(reason) => Outcome::fail(
                format!("{direct} ({}): {}", direct.variables.origin, reason.detail),
                likely_causes(reason.kind, direct, at.inputs.context).join("; or "),
            ),
        },
        Err(Failure::Fatal(fatal)) => Outcome::fail(format!("{direct}: {}", fatal.detail), fatal.hint),
        Err(Failure::Retry(reason)) => Outcome::fail(
            format!("{direct}: {}", reason.detail),
            likely_causes(reason.kind, direct, at.inputs.context).join("; or "),
        ),
    })
}

/// Where migrations run as another role, the app's role may use what they make.
pub(super) async fn app_privileges(at: &mut Connected<'_>) -> anyhow::Result<Outcome> {
    let owner = at.direct.as_ref().map(|d| d.user()).filter(|owner| *owner != at.database.user());
    let Some(owner) = owner else {
        return Ok(Outcome::skipped("migrations and the app use one role"));
    };
    let schema = migration_schema(at.inputs);
    let table = backend::migrations::MigrationSettings::load(&at.inputs.root).unwrap_or_default().table_name;
    // As the app's role, the way backend queries: in a transaction of its own.
    let check =
        async |conn: &mut PgConnection| privileges_of_the_app(conn, at.database.user(), owner, &schema, &table).await;
    Ok(bounded(in_own_transaction(&mut at.ready.conn, at.pooling, check)).await?)
}

/// What the app's role (this connection's) lacks on what the migrations created in `schema`:
/// rows of every table (only reading the migrations table), sequences that inserts draw on, and
/// default privileges for the tables migrations will create as `owner`.
async fn privileges_of_the_app(
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
pub(super) fn migration_schema(inputs: &Inputs) -> String {
    let settings = backend::migrations::MigrationSettings::load(&inputs.root).unwrap_or_default();
    match settings.table_name.split_once('.') {
        Some((schema, _)) => schema.trim_matches('"').to_owned(),
        None => settings.create_schemas.first().cloned().unwrap_or_else(|| "public".to_owned()),
    }
}
