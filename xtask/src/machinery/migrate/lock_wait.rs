//! Waiting for the migration lock on the command's session: polled, so that the wait says who
//! holds it and ends at `--migration-lock-timeout`, and a server restart costs only a reconnect.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use backend::db::bounded;
use sqlx::Row as _;

use crate::base::exit::{Failure, fail};
use crate::base::ui;
use crate::connection::lock::{BEFORE_MIGRATING, LOCK_POLL, REPORT_EVERY, holder, key};
use crate::connection::session::Session;

/// Polls the lock until it is ours or `timeout` passes; a server restart while we wait (which
/// also ends the holder's session) costs a reconnect.
pub async fn acquire(session: &mut Session<'_>, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last_report: Option<Instant> = None;
    loop {
        let key = key(&session.ready.server.database);
        // The server ends this session, and frees the lock, if we are cut off mid-migration.
        let sql = format!("SELECT pg_try_advisory_lock({key}), {}", backend::keepalive::server_side());
        let tried = Instant::now();
        let attempt = bounded(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_one(&mut session.ready.conn)).await;
        let locked = match attempt.and_then(|row| row.try_get::<bool, _>(0)) {
            Ok(locked) => locked,
            Err(error) => {
                session
                    .reconnect_after(error, BEFORE_MIGRATING, tried)
                    .await?
                    .map_err(|e| fail(Failure::Migration, e))?;
                continue;
            }
        };
        if locked {
            if last_report.is_some() {
                ui::line(format!("got the migration lock after {}", ui::duration(started.elapsed())));
            }
            return Ok(());
        }
        let timed_out = started.elapsed() >= timeout;
        let report_due = last_report.is_none_or(|at| at.elapsed() >= REPORT_EVERY);
        if !(timed_out || report_due) {
            tokio::time::sleep(LOCK_POLL).await;
            continue;
        }
        let holder = bounded(holder(&mut session.ready.conn, key))
            .await
            .unwrap_or_else(|e| format!("a session that could not be named ({})", backend::db::describe_error(&e)));
        if timed_out {
            return Err(fail(
                Failure::Migration,
                anyhow!(
                    "the migration lock is still held after {} by {holder}: wait for it to finish, or end that session \
                     (SELECT pg_terminate_backend(pid)) if it is stuck; --migration-lock-timeout SECS waits longer",
                    ui::duration(started.elapsed())
                ),
            ));
        }
        last_report = Some(Instant::now());
        ui::line(format!(
            "waiting for the migration lock held by {holder} ({} s left)",
            timeout.saturating_sub(started.elapsed()).as_secs()
        ));
        tokio::time::sleep(LOCK_POLL).await;
    }
}
