//! The floor of `cargo xtask bench`: what no migration tool can beat on a no-op run. It connects
//! with the settings prestart would use (POSTGRES_* or DATABASE_URL from the environment, the
//! same sqlx connect options), runs one query and exits: a process start, a TCP connect, the
//! server's backend start, the SCRAM exchange and one round trip. The query is `SELECT 1`, or
//! the one message given as its argument (the bench gives the reads a no-op prestart makes, for
//! the floor of a tool that checks what prestart checks).

use std::process::ExitCode;

use backend::config::{DatabaseSettings, Env};
use sqlx::Connection as _;

fn main() -> ExitCode {
    let env = Env::process_only(std::path::Path::new("/dev/null"), std::env::vars_os());
    let settings = match DatabaseSettings::from_env(&env) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("bench-floor: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bench-floor: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let once = runtime.block_on(async {
        let mut conn = sqlx::postgres::PgConnection::connect_with(&settings.connect_options("bench-floor")).await?;
        let query = std::env::args().nth(1).unwrap_or_else(|| "SELECT 1".to_owned());
        sqlx::raw_sql(sqlx::AssertSqlSafe(query)).execute(&mut conn).await?;
        conn.close().await
    });
    match once {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench-floor: {}", backend::db::describe_error(&error));
            ExitCode::from(1)
        }
    }
}
