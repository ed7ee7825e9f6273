//! `init_db`: the data every installation starts with: the first superuser, the default settings,
//! and the project's SQL seed files. Idempotent: running it twice changes nothing (for the SQL
//! files, `cargo xtask seed --check` holds them to it).

use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row as _};

use crate::config::FirstSuperuser;

/// Settings rows inserted once; an operator's later change is never overwritten.
const DEFAULT_SETTINGS: &[(&str, &str)] = &[("jobs.max_attempts", "3"), ("registration.open", "false")];

/// What `init_db` changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SeedReport {
    pub superuser_created: bool,
    pub settings_inserted: u64,
    /// How many SQL seed files ran.
    pub files_run: usize,
}

impl SeedReport {
    pub fn changed_nothing(&self) -> bool {
        !self.superuser_created && self.settings_inserted == 0 && self.files_run == 0
    }
}

/// A SQL seed file: initial data a project adds without Rust, written to run any number of times
/// (`INSERT ... ON CONFLICT DO NOTHING`, `WHERE NOT EXISTS`). It runs in the seed's transaction.
#[derive(Debug, Clone)]
pub struct SeedFile {
    pub name: String,
    pub sql: String,
}

#[derive(Debug)]
pub enum SeedError {
    Database(sqlx::Error),
    Hash(String),
    /// A SQL seed file failed: its name.
    File(String, sqlx::Error),
}

impl std::fmt::Display for SeedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeedError::Database(e) => write!(f, "{e}"),
            SeedError::Hash(e) => write!(f, "cannot hash the first superuser's password: {e}"),
            SeedError::File(name, e) => write!(f, "the seed file {name}: {e}"),
        }
    }
}

impl std::error::Error for SeedError {}

impl From<sqlx::Error> for SeedError {
    fn from(error: sqlx::Error) -> Self {
        SeedError::Database(error)
    }
}

/// What the seed finds in place, as [`check_sql`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Present {
    user: bool,
    settings: i64,
}

impl Present {
    /// From the rows of [`check_sql`] for `superuser`: a `NULL` for the account, a key for each
    /// default setting in place.
    pub fn from_rows(
        rows: &[sqlx::postgres::PgRow],
        superuser: Option<&FirstSuperuser>,
    ) -> Result<Present, sqlx::Error> {
        let mut present = Present { user: superuser.is_none(), settings: 0 };
        for row in rows {
            match row.try_get::<Option<String>, _>(0)? {
                None => present.user = true,
                Some(_) => present.settings += 1,
            }
        }
        Ok(present)
    }

    fn is_complete(self) -> bool {
        self.user && self.settings == DEFAULT_SETTINGS.len() as i64
    }
}

/// The one query that tells whether anything is missing at all: every restart runs it (a simple
/// query: a prepared one costs a second round trip), and a no-op prestart sends it in the same
/// message as its read of the migrations table. The email and the keys go in as dollar-quoted
/// literals, which need no escaping. Its shape is what costs a fresh server process least to
/// plan, measured: rows rather than `EXISTS` and `count(*)`, `OR` rather than `IN (...)` (the
/// two cost a no-op 0.3 ms of the server's catalog lookups).
pub fn check_sql(superuser: Option<&FirstSuperuser>) -> String {
    let keys: Vec<String> =
        DEFAULT_SETTINGS.iter().map(|(key, _)| format!("key = {}", crate::db::dollar_quoted(key))).collect();
    let settings = format!("SELECT key FROM app_settings WHERE {}", keys.join(" OR "));
    match superuser {
        Some(user) => format!(
            "SELECT NULL FROM users WHERE lower(email) = lower({}) UNION ALL {settings}",
            crate::db::dollar_quoted(&user.email)
        ),
        None => settings,
    }
}

/// Creates the first superuser if absent and the default settings rows, in one transaction, so an
/// interrupted seed leaves nothing half done. `present`: what [`check_sql`] found a moment ago
/// on this connection (`None`: it is read now); `hashed`: the superuser's password hashed
/// beforehand by [`hash_password`] (`None`: hashed here when the account is missing); `files`:
/// the SQL seed files, run in name order after the rest, in the same transaction.
pub async fn init_db(
    conn: &mut PgConnection,
    superuser: Option<&FirstSuperuser>,
    (present, hashed): (Option<Present>, Option<String>),
    files: &[SeedFile],
) -> Result<SeedReport, SeedError> {
    let present = match present {
        Some(present) => present,
        None => {
            let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(check_sql(superuser))).fetch_all(&mut *conn).await?;
            Present::from_rows(&rows, superuser)?
        }
    };
    if present.is_complete() {
        // A no-op seed with SQL files: the files in one message, one round trip (what every
        // restart of prestart costs); which file failed is asked only after a failure.
        return match files.is_empty() {
            true => Ok(SeedReport::default()),
            false => files_in_one_message(conn, files).await,
        };
    }
    // Hash only when the account is missing: argon2's default costs 19 MiB and tens of
    // milliseconds.
    let hashed_password = match (superuser, hashed) {
        (Some(_), Some(hashed)) if !present.user => Some(hashed),
        (Some(user), None) if !present.user => Some(hash_password(user.password.expose())?),
        _ => None,
    };
    let mut tx = conn.begin().await?;
    let mut report = SeedReport::default();
    if let (Some(user), Some(hash)) = (superuser, hashed_password) {
        // ON CONFLICT covers a concurrent prestart that inserted the account since we looked.
        let inserted = sqlx::query(
            "INSERT INTO users (email, hashed_password, is_superuser) VALUES ($1, $2, true) ON CONFLICT DO NOTHING",
        )
        .bind(&user.email)
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
        report.superuser_created = inserted.rows_affected() == 1;
    }
    for (key, value) in DEFAULT_SETTINGS {
        let inserted =
            sqlx::query("INSERT INTO app_settings (key, value) VALUES ($1, $2::jsonb) ON CONFLICT (key) DO NOTHING")
                .bind(key)
                .bind(value)
                .execute(&mut *tx)
                .await?;
        report.settings_inserted += inserted.rows_affected();
    }
    for file in files {
        sqlx::raw_sql(sqlx::AssertSqlSafe(file.sql.clone()))
            .execute(&mut *tx)
            .await
            .map_err(|e| SeedError::File(file.name.clone(), e))?;
        report.files_run += 1;
    }
    tx.commit().await?;
    Ok(report)
}

/// The SQL seed files in one transaction sent as one message. On a failure, rolled back, the
/// files are run again one by one in a transaction that is rolled back too, to name the one that
/// fails (with what the files before it left, as in the message).
async fn files_in_one_message(conn: &mut PgConnection, files: &[SeedFile]) -> Result<SeedReport, SeedError> {
    let mut message = String::from("BEGIN;\n");
    for file in files {
        // On lines of their own: a file may end inside a line comment.
        message.push_str(&file.sql);
        message.push_str("\n;\n");
    }
    message.push_str("COMMIT");
    let Err(error) = sqlx::raw_sql(sqlx::AssertSqlSafe(message)).execute(&mut *conn).await else {
        return Ok(SeedReport { files_run: files.len(), ..SeedReport::default() });
    };
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
    if crate::db::lost_to_failover(&error).is_some() {
        return Err(SeedError::Database(error));
    }
    let mut tx = conn.begin().await?;
    for file in files {
        if let Err(error) = sqlx::raw_sql(sqlx::AssertSqlSafe(file.sql.clone())).execute(&mut *tx).await {
            return Err(SeedError::File(file.name.clone(), error));
        }
    }
    tx.rollback().await?;
    Err(SeedError::Database(error))
}

/// The password as the `users` table stores it (argon2, the crate's defaults).
pub fn hash_password(password: &str) -> Result<String, SeedError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| SeedError::Hash(e.to_string()))
}
