//! PostgreSQL: the connection (connection.rs) and the server behind it (server.rs). Each check
//! is a function of its own; `run` lists them in the order of the report, each with what it
//! needs, and skips those whose needs are not met, saying which.

mod connection;
mod server;

use std::time::Duration;

use backend::pooler::detect_pooling;
use sqlx::postgres::PgConnection;

use super::location::Target;
use super::{Area, Doctor, Inputs, Outcome};
use connection::{Connected, Connecting};
use server::{Listen, Server};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The oldest major version the PostgreSQL project still supports.
const OLDEST_SUPPORTED_MAJOR: u32 = 14;

/// The checks after `postgres.listen_addresses`, in the order of the report.
const AFTER_LISTEN: &[&str] = &[
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

/// Runs the checks; returns the connection the migration checks use, when there is one.
pub async fn run(doctor: &mut Doctor, inputs: &Inputs, target: &Target) -> Option<PgConnection> {
    let listen = Listen { inputs, target };
    doctor.check(Area::Postgres, "postgres.listen_addresses", || server::listen_addresses(&listen));
    let Some(database) = target.database.as_ref().filter(|_| target.reachable) else {
        return skip_from(doctor, "postgres.connect", "the server cannot be reached");
    };
    let mut ready = None;
    let connecting = Connecting { inputs, database };
    doctor.check_async(Area::Postgres, "postgres.connect", connection::connect(&connecting, &mut ready)).await;
    let Some(mut ready) = ready else { return skip_from(doctor, "postgres.writable", "not connected") };
    let pooling = detect_pooling(database, &mut ready).await;
    // As prestart connects with it: on a host, `host.docker.internal` as the location check took it.
    let direct = inputs.settings.as_ref().ok().and_then(|s| s.migration_database.clone()).map(|direct| {
        let on_the_host = inputs.context == crate::settings::place::RuntimeContext::Host;
        on_the_host
            .then(|| crate::settings::context::host_view(&direct, inputs.host_chosen))
            .flatten()
            .unwrap_or(direct)
    });
    let mut at = Connected { inputs, database, ready, pooling, direct };
    doctor.check(Area::Postgres, "postgres.writable", || connection::writable(&at));
    doctor.check(Area::Postgres, "postgres.pooler", || connection::pooler(&at));
    let mut direct_conn = None;
    let migration_connect = connection::migration_connect(&at, &mut direct_conn);
    doctor.check_async(Area::Postgres, "postgres.migration_connect", migration_connect).await;
    doctor.check_async(Area::Postgres, "postgres.app_privileges", connection::app_privileges(&mut at)).await;

    // The checks below send prepared statements one by one, which a pooler that shares server
    // sessions would lose or leave behind: they go to the direct connection then, if there is one.
    let mut conn = match (pooling.shares_sessions(), direct_conn) {
        (false, _) => at.ready.conn,
        (true, Some(conn)) => conn,
        (true, None) => {
            let why = "a pooler shares server sessions: set MIGRATION_DATABASE_URL to check the server directly";
            return skip_from(doctor, "postgres.version", why);
        }
    };
    let on = Server { inputs, target, database };
    doctor.check_async(Area::Postgres, "postgres.version", server::version(&mut conn)).await;
    doctor.check_async(Area::Postgres, "postgres.containers_hba", server::containers_hba(&on, &mut conn)).await;
    doctor.check_async(Area::Postgres, "postgres.create_privilege", server::create_privilege(&on, &mut conn)).await;
    doctor.check_async(Area::Postgres, "postgres.tls", server::tls(&on, &mut conn)).await;
    Some(conn)
}

/// Skips `first` and every check after it, saying `why`; there is no connection to hand on.
fn skip_from(doctor: &mut Doctor, first: &str, why: &str) -> Option<PgConnection> {
    let from = AFTER_LISTEN.iter().position(|id| *id == first).unwrap_or(AFTER_LISTEN.len());
    for id in &AFTER_LISTEN[from..] {
        doctor.check(Area::Postgres, id, || Ok(Outcome::skipped(why)));
    }
    None
}
