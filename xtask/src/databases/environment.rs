//! The environment a database serves, recorded in the database itself, as Rails records it in
//! `ar_internal_metadata`: a local `.env` saying `ENVIRONMENT=local` is no proof that the
//! database it points at is a local one (an exported `DATABASE_URL` of a production shell wins
//! over it), so `database drop` and `reset` ask the database.
//!
//! prestart and `migrate` write it beside the migrations table, in a table of its own (sqlx-cli
//! still reads `_sqlx_migrations` as it is), whenever they run on a database whose record is
//! missing or says another environment.

use sqlx::postgres::PgConnection;

/// The table's name, in the schema of the migrations table.
pub const TABLE: &str = "_prestart_environment";

/// The record's table for the migrations table `migrations_table` (which may be qualified).
pub fn table_for(migrations_table: &str) -> String {
    match migrations_table.rsplit_once('.') {
        Some((schema, _)) => format!("{schema}.{TABLE}"),
        None => TABLE.to_owned(),
    }
}

/// What a database says it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `ENVIRONMENT` of the run that recorded it; `None` when that run had none set.
    pub environment: Option<String>,
    /// When, as the server printed it.
    pub at: String,
}

impl Recorded {
    pub fn describe(&self) -> String {
        match &self.environment {
            Some(environment) => format!("ENVIRONMENT={environment} (recorded {})", self.at),
            None => format!("no ENVIRONMENT (recorded {} by a run that had none set)", self.at),
        }
    }
}

/// The one rule for what counts as local: `ENVIRONMENT=local` said explicitly; unset is not.
pub fn is_local(environment: Option<&str>) -> bool {
    environment == Some("local")
}

/// Whether a database these settings reach may be recorded `local` at all: a server on this
/// machine (loopback, a Unix socket, `host.docker.internal` judged from a host), or, from a container of a compose project, a service of
/// that project (a name of one label, as `db`). A database on another machine is never recorded
/// local from a run's own say-so, even empty: a laptop whose exported `DATABASE_URL` names
/// production's empty new database (`db-prod`, found through a search domain, or an address)
/// must not make it droppable; nor may a Kubernetes pod, where one-label names are services too.
pub fn may_be_recorded_local(
    db: &backend::config::DatabaseSettings,
    context: crate::settings::place::RuntimeContext,
) -> bool {
    let host = db.host();
    let compose_service = context == crate::settings::place::RuntimeContext::Container
        && host.parse::<std::net::IpAddr>().is_err()
        && !host.contains('.');
    // On this machine, the compose containers' name for it names it, whether a command takes it
    // as 127.0.0.1 or (in a development container) as the Docker host.
    let this_machine = context == crate::settings::place::RuntimeContext::Host
        && host.eq_ignore_ascii_case(crate::settings::context::CONTAINERS_NAME_FOR_THE_HOST);
    db.socket().is_some() || crate::settings::place::is_loopback(host) || compose_service || this_machine
}

/// The record of the database `conn` is connected to; `None` when it has none.
pub async fn recorded(conn: &mut PgConnection, migrations_table: &str) -> Result<Option<Recorded>, sqlx::Error> {
    // One simple query: the bound and the read in one implicit transaction.
    let sql = format!("{}{}", backend::db::server_side_bound(), read_sql(migrations_table));
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_optional(&mut *conn).await {
        Ok(row) => from_rows(row.as_slice()),
        Err(error) if error.as_database_error().and_then(|e| e.code()).as_deref() == Some("42P01") => Ok(None),
        Err(error) => Err(error),
    }
}

/// The `SELECT` that reads the record, for a message that reads more (see `from_rows`). Every
/// column, read by name: the release recorded last is there too (see
/// `crate::machinery::release::record::newest_from_rows`), on a record made before those columns
/// as well, and one statement costs a fresh server process less than two.
pub fn read_sql(migrations_table: &str) -> String {
    format!("SELECT * FROM {}", table_for(migrations_table))
}

/// The record in the rows of [`read_sql`].
pub fn from_rows(rows: &[sqlx::postgres::PgRow]) -> Result<Option<Recorded>, sqlx::Error> {
    use sqlx::Row as _;
    rows.first()
        .map(|row| {
            let at: String = row.try_get_unchecked("recorded_at")?;
            Ok(Recorded { environment: row.try_get("environment")?, at: backend::db::rfc3339_seconds(&at) })
        })
        .transpose()
}

/// What recording did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recording {
    /// The record says this environment (now, or already), or stays missing for a local run on a
    /// database that was not fresh.
    Current,
    /// The record says a non-local environment and these settings say `local`: it is kept, since
    /// a local `.env` may point at another environment's database (an exported `DATABASE_URL`).
    KeptNotLocal(Recorded),
}

/// Records `environment`, where that makes the database no easier to drop than it is: a record
/// that is missing or `local` takes a non-local environment; `local` goes only into a database
/// with no record that is `fresh` (just created, or migrated from empty by this run, and one that
/// [`may_be_recorded_local`]: the callers fold that in). A local
/// `.env` with a production URL exported in the shell must never make production local, and a
/// database that has data and no record counts as not local already. No round trip when there
/// is nothing to write and the record was `already_read` (with the applied rows), one otherwise.
pub async fn record(
    conn: &mut PgConnection,
    migrations_table: &str,
    environment: Option<&str>,
    fresh: bool,
    already_read: Option<Option<Recorded>>,
) -> Result<Recording, sqlx::Error> {
    let recorded = match already_read {
        Some(recorded) => recorded,
        None => recorded(conn, migrations_table).await?,
    };
    match recorded {
        Some(recorded) if recorded.environment.as_deref() == environment => return Ok(Recording::Current),
        Some(recorded) if !is_local(recorded.environment.as_deref()) && is_local(environment) => {
            return Ok(Recording::KeptNotLocal(recorded));
        }
        None if is_local(environment) && !fresh => return Ok(Recording::Current),
        _ => {}
    }
    let table = table_for(migrations_table);
    let value = environment.map_or_else(|| "NULL".to_owned(), |e| format!("'{}'", e.replace('\'', "''")));
    let name = format!("'{}'", table.replace('\'', "''"));
    // Made (and commented) only where it is missing: COMMENT takes the table's owner, which a
    // later run's role may not be. The row is written under the same bounds as our reads.
    let sql = format!(
        "{}SET LOCAL lock_timeout = {};\n\
         DO $prestart$ BEGIN IF pg_catalog.to_regclass({name}) IS NULL THEN\n\
             CREATE TABLE {table} (\n\
                 only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),\n\
                 environment text,\n\
                 recorded_at timestamptz NOT NULL DEFAULT now()\n\
             );\n\
             COMMENT ON TABLE {table} IS 'The ENVIRONMENT this database serves, recorded by prestart and migrate: database drop and reset refuse any but local';\n\
         END IF; END $prestart$;\n\
         INSERT INTO {table} (environment) VALUES ({value}) ON CONFLICT (only_row) DO UPDATE \
         SET environment = EXCLUDED.environment, recorded_at = now() \
         WHERE {table}.environment IS DISTINCT FROM EXCLUDED.environment",
        backend::db::server_side_bound(),
        backend::migrations::TABLE_LOCK_WAIT.as_millis()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *conn).await.map(|_| Recording::Current)
}
