//! `init_db`: the data every installation starts with. Idempotent: running it twice changes nothing.

use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::config::FirstSuperuser;

/// Settings rows inserted once; an operator's later change is never overwritten.
const DEFAULT_SETTINGS: &[(&str, &str)] = &[("jobs.max_attempts", "3"), ("registration.open", "false")];

/// What `init_db` changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SeedReport {
    pub superuser_created: bool,
    pub settings_inserted: u64,
}

impl SeedReport {
    pub fn changed_nothing(&self) -> bool {
        !self.superuser_created && self.settings_inserted == 0
    }
}

#[derive(Debug)]
pub enum SeedError {
    Database(sqlx::Error),
    Hash(String),
}

impl std::fmt::Display for SeedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeedError::Database(e) => write!(f, "{e}"),
            SeedError::Hash(e) => write!(f, "cannot hash the first superuser's password: {e}"),
        }
    }
}

impl std::error::Error for SeedError {}

impl From<sqlx::Error> for SeedError {
    fn from(error: sqlx::Error) -> Self {
        SeedError::Database(error)
    }
}

/// Creates the first superuser if absent and the default settings rows, in one transaction, so an
/// interrupted seed leaves nothing half done.
pub async fn init_db(conn: &mut PgConnection, superuser: Option<&FirstSuperuser>) -> Result<SeedReport, SeedError> {
    // Hash only when the account is missing: argon2's default costs 19 MiB and tens of
    // milliseconds, which every restart would pay otherwise.
    let hashed_password = match superuser {
        Some(user) if !user_exists(conn, &user.email).await? => Some(hash_password(user.password.expose())?),
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
    tx.commit().await?;
    Ok(report)
}

async fn user_exists(conn: &mut PgConnection, email: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE lower(email) = lower($1))")
        .bind(email)
        .fetch_one(conn)
        .await
}

fn hash_password(password: &str) -> Result<String, SeedError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| SeedError::Hash(e.to_string()))
}
