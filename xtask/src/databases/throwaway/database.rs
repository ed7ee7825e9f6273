//! Throwaway databases on a server: made for one piece of work (schema dump, sqlx-prepare, and
//! drift's `--shadow-on-server`) and dropped on every path.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use backend::config::DatabaseSettings;

use super::MAINTENANCE_TIMEOUT;
use crate::base::exit::{Failure, fail};
use crate::base::interrupt::{ActiveBackend, interruptible};
use crate::base::sql::sqlstate;
use crate::base::ui;
use crate::databases::ddl::{Template, create_database, drop_database};

/// A database name no other run picks, on this machine or another: init containers of many pods
/// are all pid 1.
pub fn throwaway_name(purpose: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    format!("{purpose}_{}_{nanos}", std::process::id())
}

/// Runs `work` in a new database `name` on `server`, dropped on every path: failures, SIGINT or
/// SIGTERM (which stop the server-side work of `work` first), and `work` being cancelled or
/// panicking, as when an outer signal handler or timeout drops it.
pub async fn in_throwaway<T>(
    server: &DatabaseSettings,
    name: &str,
    active: &ActiveBackend,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let mut admin = backend::db::connect_once(server, "prestart-scratch", MAINTENANCE_TIMEOUT)
        .await
        .map_err(|e| fail(Failure::Refused, anyhow!("cannot connect to {server}: {e}")))?;
    // Armed before the create: a signal may cancel us after the server created the database
    // but before the answer came, and a create that timed out may still finish on the server.
    let guard = Throwaway { server: server.clone(), name: name.to_owned() };
    if let Err(error) = create_database(&mut admin.conn, name, Template::Pristine).await {
        if sqlstate(&error) == "42P04" {
            // Not ours: leave it.
            std::mem::forget(guard);
        }
        return Err(fail(
            Failure::Refused,
            anyhow::Error::new(error).context(format!("{server}: create database {name}")),
        ));
    }
    drop(admin);
    let result = interruptible(server, active, work).await;
    // After a signal the drop gets the cleanup budget, no more; a second signal ends it sooner.
    let bound = if crate::base::interrupt::received().is_some() {
        crate::base::interrupt::CLEANUP_BUDGET
    } else {
        Duration::MAX
    };
    if tokio::time::timeout(bound, drop_or_warn(server, name)).await.is_err() {
        ui::warn(format!(
            "the throwaway database {name} was not dropped within {} s: drop it by hand",
            bound.as_secs()
        ));
    }
    // Dropped already (or given up on, and said so); a cancellation during that drop leaves it
    // to the guard.
    std::mem::forget(guard);
    result
}

/// Drops the throwaway database when dropped itself: the path where `in_throwaway` was cut short.
/// The drop runs on the runtime's worker, and the process waits for it before exiting, within
/// its cleanup budget (a second signal ends it at once).
struct Throwaway {
    server: DatabaseSettings,
    name: String,
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), std::mem::take(&mut self.name));
        crate::base::interrupt::spawn_cleanup(async move { drop_or_warn(&server, &name).await });
    }
}

async fn drop_or_warn(server: &DatabaseSettings, name: &str) {
    // Housekeeping: said only when it needs the user.
    if let Err(e) = drop_throwaway(server, name).await {
        ui::warn(format!("could not drop the throwaway database {name}: {e:#}; drop it by hand"));
    }
}

/// Ends the sessions still connected to `database`, then drops it, on a connection of its own.
async fn drop_throwaway(server: &DatabaseSettings, database: &str) -> anyhow::Result<()> {
    let mut admin = backend::db::connect_once(server, "prestart-scratch", MAINTENANCE_TIMEOUT)
        .await
        .map_err(|e| anyhow!("cannot connect to {server}: {e}"))?;
    drop_database(&mut admin.conn, database, true).await.with_context(|| format!("{server}: drop database {database}"))
}
