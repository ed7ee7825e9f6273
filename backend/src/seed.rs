//! `init_db`: the data every installation starts with. Idempotent: running it twice changes nothing.

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
    // Every restart runs this: one query in one round trip (a simple query: a prepared one
    // costs a second) tells whether anything is missing at all. The email and the keys go in as
    // dollar-quoted literals, which need no escaping.
    let keys: Vec<String> = DEFAULT_SETTINGS.iter().map(|(key, _)| crate::db::dollar_quoted(key)).collect();
    let user_present = match superuser {
        Some(user) => {
            format!("EXISTS (SELECT FROM users WHERE lower(email) = lower({}))", crate::db::dollar_quoted(&user.email))
        }
        None => "true".to_owned(),
    };
    let check =
        format!("SELECT {user_present}, (SELECT count(*) FROM app_settings WHERE key IN ({}))", keys.join(", "));
    let row = sqlx::raw_sql(sqlx::AssertSqlSafe(check)).fetch_one(&mut *conn).await?;
    let (user_present, settings_present): (bool, i64) = (row.try_get(0)?, row.try_get(1)?);
    if user_present && settings_present == keys.len() as i64 {
        return Ok(SeedReport::default());
    }
    // Hash only when the account is missing: argon2's default costs 19 MiB and tens of
    // milliseconds.
    let hashed_password = match superuser {
        Some(user) if !user_present => Some(hash_password(user.password.expose())?),
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

fn hash_password(password: &str) -> Result<String, SeedError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| SeedError::Hash(e.to_string()))
}
