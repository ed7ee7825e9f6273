//! The wait loop that retries only what waiting can fix, within one deadline, and ending a
//! server session by its pid.

use super::*;

/// Progress of a wait, passed to the caller after each failed attempt.
pub struct WaitProgress<'a> {
    pub reason: &'a Retryable,
    /// The reason differs from the previous attempt's.
    pub reason_changed: bool,
    pub attempts: u32,
    pub elapsed: Duration,
    pub remaining: Duration,
}

/// Why waiting ended without a connection.
#[derive(Debug)]
pub enum WaitError {
    Fatal(Fatal),
    Deadline { last: Retryable, attempts: u32, waited: Duration },
}

/// Connects, retrying what waiting can fix until `deadline` has passed. After each failed
/// attempt `on_retry` hears why, and may bring the deadline closer (never further).
pub async fn wait_for_database(
    settings: &DatabaseSettings,
    application_name: &str,
    mut deadline: Duration,
    mut on_retry: impl FnMut(&WaitProgress<'_>) -> Option<Duration>,
) -> Result<Ready, WaitError> {
    let started = Instant::now();
    let mut attempts = 0u32;
    let mut previous: Option<RetryKind> = None;
    let mut backoff = FIRST_BACKOFF;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_sub(started.elapsed());
        let timeout = ATTEMPT_TIMEOUT.min(remaining).max(Duration::from_millis(100));
        let reason = match connect_once(settings, application_name, timeout).await {
            // Ready means able to write: migrations and jobs need it.
            Ok(ready) => match ready.server.read_only_reason() {
                None => return Ok(ready),
                Some(reason) => reason,
            },
            Err(Failure::Fatal(fatal)) => return Err(WaitError::Fatal(fatal)),
            Err(Failure::Retry(reason)) => reason,
        };
        let elapsed = started.elapsed();
        let reason_changed = previous != Some(reason.kind);
        if reason_changed {
            backoff = reason.kind.first_backoff();
        }
        previous = Some(reason.kind);
        let progress = WaitProgress {
            reason: &reason,
            reason_changed,
            attempts,
            elapsed,
            remaining: deadline.saturating_sub(elapsed),
        };
        if let Some(closer) = on_retry(&progress) {
            deadline = deadline.min(closer);
        }
        let remaining = deadline.saturating_sub(elapsed);
        if remaining.is_zero() {
            return Err(WaitError::Deadline { last: reason, attempts, waited: elapsed });
        }
        let pause = if reason.kind.is_cheap() {
            CHEAP_POLL
        } else {
            let pause = backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            pause
        };
        tokio::time::sleep(pause.min(remaining)).await;
    }
}

/// Stops what `process` is doing, from a second connection, by `deadline`: sqlx cannot send a
/// CancelRequest.
///
/// Terminating (rather than only cancelling the statement) also rolls back the open transaction
/// and releases the session's locks, advisory ones included, before we exit. A process of the
/// same pid that is not ours (see [`ServerProcess`]) is left alone.
pub async fn terminate_backend(
    settings: &DatabaseSettings,
    process: &ServerProcess,
    deadline: Instant,
) -> Result<bool, Failure> {
    let timed_out = || Failure::Retry(Retryable { kind: RetryKind::TimedOut, detail: "no answer in time".into() });
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut ready = connect_once(settings, "prestart-cancel", left()).await?;
    // Since PostgreSQL 14 the call can wait until the process is gone, so its locks are released
    // by the time we exit; it waits a little less than we do, so its answer still reaches us.
    let server_wait = left().saturating_sub(Duration::from_millis(100)).as_millis();
    let terminate = match ready.conn.server_version_num() {
        Some(version) if version >= 140_000 && server_wait > 0 => format!("pg_terminate_backend(pid, {server_wait})"),
        _ => "pg_terminate_backend(pid)".to_owned(),
    };
    // pg_stat_activity says -1 for a Unix socket's client port, where inet_client_port() says NULL.
    let sql = format!(
        "SELECT {terminate} FROM pg_stat_activity WHERE pid = $1 AND client_port = coalesce($2, -1) \
         AND pg_postmaster_start_time()::text = $3 AND backend_start <= $4::timestamptz"
    );
    let query = sqlx::query_scalar::<_, bool>(sqlx::AssertSqlSafe(sql))
        .bind(process.pid)
        .bind(process.client_port)
        .bind(&process.postmaster_started)
        .bind(&process.seen_at);
    match tokio::time::timeout(left(), query.fetch_optional(&mut ready.conn)).await {
        Ok(Ok(stopped)) => Ok(stopped.unwrap_or(false)),
        Ok(Err(error)) => Err(Failure::classify(&error, settings)),
        Err(_) => Err(timed_out()),
    }
}
