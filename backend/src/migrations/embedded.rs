//! The migrations this build of backend and worker was compiled against.

use super::*;

pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Refuses a database that lacks migrations this build needs.
pub async fn check(conn: &mut PgConnection, settings: &MigrationSettings) -> Result<(), String> {
    let set = MigrationSet::from_migrator(&MIGRATOR, settings).map_err(|e| e.to_string())?;
    let applied = applied_rows(conn, &settings.table_name)
        .await
        // Its SQLSTATE, not the driver's words: `/ready` answers HTTP clients with this.
        .map_err(|e| {
            let code = e.as_database_error().and_then(|d| d.code()).map(|c| format!(" (SQLSTATE {c})"));
            format!("cannot read {}{}", settings.table_name, code.unwrap_or_default())
        })?;
    let status = Status::compare(&set, &applied);
    if status.is_up_to_date() {
        Ok(())
    } else {
        Err(format!(
            "the database schema is not the one this build needs ({}): run `cargo xtask prestart` \
             (or `docker compose run --rm prestart`) first",
            status.describe_problems()
        ))
    }
}
