//! The sessions that block a migration statement, watched from a second connection.

use std::time::Duration;

use backend::config::DatabaseSettings;

/// The sessions that block our migration statement, watched from a second connection: once the
/// statement gives up, the server no longer says who blocked it.
#[derive(Default)]
pub struct Blockers(std::cell::RefCell<Vec<String>>);

impl Blockers {
    /// Never returns: raced against the migration, it ends when the migration does.
    pub async fn watch(&self, db: &DatabaseSettings, blocked_pid: i32) -> std::convert::Infallible {
        // Most migrations finish before this; only slow ones pay for a second connection.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut watcher = backend::db::connect_once(db, "prestart-watch", Duration::from_secs(5)).await.ok();
        loop {
            if let Some(ready) = watcher.as_mut() {
                // Never the text of its query: a session's last statement may carry a secret
                // (`ALTER ROLE ... PASSWORD '...'`).
                let found: Result<Vec<(i32, String, String, i64)>, _> = sqlx::query_as(
                    "SELECT pid, coalesce(nullif(application_name, ''), 'no application name'), \
                            coalesce(state, 'state unknown'), \
                            coalesce(extract(epoch FROM now() - xact_start)::int8, 0) \
                     FROM pg_stat_activity WHERE pid = ANY (pg_blocking_pids($1))",
                )
                .bind(blocked_pid)
                .fetch_all(&mut ready.conn)
                .await;
                if let Ok(found) = found
                    && !found.is_empty()
                {
                    *self.0.borrow_mut() = found
                        .into_iter()
                        .map(|(pid, app, state, open)| {
                            format!("pid {pid} ({app}, {state}, its transaction open for {open} s)")
                        })
                        .collect();
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub fn describe(&self) -> String {
        let found = self.0.borrow();
        if found.is_empty() { "another session".to_owned() } else { found.join(", ") }
    }
}
