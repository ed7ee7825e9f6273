//! The databases of a server: whether one exists, creating and dropping one (the DDL sent through
//! the maintenance database), and which database the commands act on.

use std::time::Duration;

use backend::config::DatabaseSettings;
use backend::db::bounded;
use sqlx::postgres::PgConnection;

use crate::base::sql::quote_identifier;
use crate::settings::context::Loaded;

/// The database every server has, to create and drop the others from.
pub const MAINTENANCE_DATABASE: &str = "postgres";

/// The database the commands act on: the one migrations go to (its real name, where the app's
/// settings may name a pooler's alias).
pub fn target(loaded: &Loaded) -> DatabaseSettings {
    loaded.settings.migration_database.clone().unwrap_or_else(|| loaded.settings.database.clone())
}

/// Whether the database `name` exists on the server of `conn`.
pub async fn database_exists(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    let query = sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = $1)").bind(name);
    bounded(query.fetch_one(conn)).await
}

/// Which template a new database is copied from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// The server's default (template1), as `createdb` and sqlx-cli make databases.
    Default,
    /// template0, the pristine one: for throwaways, where what was added to template1 is no part
    /// of what the migrations make.
    Pristine,
}

/// `CREATE DATABASE name`: the one place databases are made (the database commands, throwaway
/// databases, dev-db, the bench).
pub async fn create_database(conn: &mut PgConnection, name: &str, template: Template) -> Result<(), sqlx::Error> {
    let template = match template {
        Template::Default => "",
        Template::Pristine => " TEMPLATE template0",
    };
    ddl(conn, &format!("CREATE DATABASE {}{template}", quote_identifier(name))).await
}

/// `DROP DATABASE name`: the one place databases are dropped. `end_sessions` first ends the
/// sessions still connected to it (a throwaway's, the bench's); the `database drop` command
/// leaves them, and says they are there. `DROP DATABASE ... WITH (FORCE)` would do the same from
/// PostgreSQL 13 on only.
pub async fn drop_database(conn: &mut PgConnection, name: &str, end_sessions: bool) -> Result<(), sqlx::Error> {
    if end_sessions {
        let end = sqlx::query(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_catalog.pg_backend_pid()",
        )
        .bind(name);
        bounded(end.execute(&mut *conn)).await?;
    }
    ddl(conn, &format!("DROP DATABASE IF EXISTS {}", quote_identifier(name))).await
}

/// `CREATE DATABASE` and `DROP DATABASE` may take longer than a query (they copy or remove files,
/// and before PostgreSQL 15 a create waits for a checkpoint), but not without end.
async fn ddl(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    let statement = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(conn);
    match tokio::time::timeout(DATABASE_DDL_TIMEOUT, statement).await {
        Ok(done) => done.map(|_| ()),
        Err(_) => Err(backend::db::timed_out(DATABASE_DDL_TIMEOUT)),
    }
}

/// The longest a `CREATE` or `DROP DATABASE` may take.
const DATABASE_DDL_TIMEOUT: Duration = Duration::from_secs(60);
