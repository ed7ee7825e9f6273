//! The job queue: the API enqueues, the worker claims with `FOR UPDATE SKIP LOCKED`.
//!
//! Every query is checked against the schema at build time (`sqlx::query!`); the offline data
//! lives in `.sqlx/`, refreshed by `cargo xtask sqlx-prepare`.

use serde::Serialize;
use sqlx::postgres::PgExecutor;

/// The kinds the worker runs, with their payloads: `echo` returns its payload, `sleep` waits
/// `{"ms": N}` milliseconds (100 by default, 60 000 at most), `fail` fails with
/// `{"message": "..."}`. The API refuses any other kind.
pub const KINDS: [&str; 3] = ["echo", "sleep", "fail"];

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub payload: serde_json::Value,
    pub status: String,
    pub attempts: i32,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

pub async fn enqueue(db: impl PgExecutor<'_>, kind: &str, payload: &serde_json::Value) -> Result<Job, sqlx::Error> {
    sqlx::query_as!(
        Job,
        r#"INSERT INTO jobs (kind, payload) VALUES ($1, $2)
           RETURNING id, kind, payload, status::text AS "status!", attempts, result, error,
                     to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "created_at!",
                     to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS finished_at"#,
        kind,
        payload
    )
    .fetch_one(db)
    .await
}

pub async fn get(db: impl PgExecutor<'_>, id: i64) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as!(
        Job,
        r#"SELECT id, kind, payload, status::text AS "status!", attempts, result, error,
                  to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "created_at!",
                  to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS finished_at
           FROM jobs WHERE id = $1"#,
        id
    )
    .fetch_optional(db)
    .await
}

/// The states a job goes through, as the API names them (`job_status`).
pub const STATUSES: [&str; 4] = ["queued", "running", "done", "failed"];

/// Jobs newest first: `limit` of them, those below `before` (an id, for the next page), with the
/// status `status` when given.
pub async fn list(
    db: impl PgExecutor<'_>,
    status: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Job>, sqlx::Error> {
    sqlx::query_as!(
        Job,
        r#"SELECT id, kind, payload, status::text AS "status!", attempts, result, error,
                  to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "created_at!",
                  to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS finished_at
           FROM jobs WHERE ($1::text IS NULL OR status::text = $1) AND ($2::int8 IS NULL OR id < $2)
           ORDER BY id DESC LIMIT $3"#,
        status,
        before,
        limit
    )
    .fetch_all(db)
    .await
}

/// Takes the oldest queued job; concurrent workers skip the rows others hold.
pub async fn claim(db: impl PgExecutor<'_>) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as!(
        Job,
        r#"UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = now()
           WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)
           RETURNING id, kind, payload, status::text AS "status!", attempts, result, error,
                     to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "created_at!",
                     to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS finished_at"#
    )
    .fetch_optional(db)
    .await
}

/// Records the outcome of the claim `attempt` of a job: nothing when a later claim owns it (this
/// worker stalled past the abandonment time, and another took the job again), so a stale worker
/// never overwrites a newer outcome. Recording the same claim's outcome twice changes nothing.
/// Whether it was recorded.
pub async fn finish(
    db: impl PgExecutor<'_>,
    id: i64,
    attempt: i32,
    outcome: Result<serde_json::Value, String>,
) -> Result<bool, sqlx::Error> {
    let (status, result, error) = match outcome {
        Ok(result) => ("done", Some(result), None),
        Err(error) => ("failed", None, Some(error)),
    };
    let done = sqlx::query!(
        "UPDATE jobs SET status = $2::text::job_status, result = $3, error = $4, finished_at = now() \
         WHERE id = $1 AND attempts = $5",
        id,
        status,
        result,
        error,
        attempt
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// What [`requeue_abandoned`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Requeued {
    /// Put back in the queue.
    pub queued: u64,
    /// Claimed `jobs.max_attempts` times already: failed, saying so.
    pub given_up: u64,
}

/// Jobs left `running` by a worker that died: back in the queue, up to `jobs.max_attempts`
/// claims (from `app_settings`, 3 where it is missing or not a number, held between 1 and 1000);
/// one that reached it fails with the reason, so a job that kills its worker does not kill every
/// worker in turn.
pub async fn requeue_abandoned(db: impl PgExecutor<'_>, older_than_secs: i64) -> Result<Requeued, sqlx::Error> {
    let rows = sqlx::query_scalar!(
        r#"WITH cap AS (
               SELECT coalesce((SELECT least(greatest(round((value #>> '{}')::numeric), 1), 1000)::int4 FROM app_settings
                                WHERE key = 'jobs.max_attempts' AND jsonb_typeof(value) = 'number'), 3) AS max_attempts
           )
           UPDATE jobs SET
               status = CASE WHEN attempts >= cap.max_attempts THEN 'failed'::job_status ELSE 'queued'::job_status END,
               error = CASE WHEN attempts >= cap.max_attempts
                            THEN format('abandoned by its worker on each of its %s attempts (jobs.max_attempts = %s)',
                                        attempts, cap.max_attempts)
                            ELSE error END,
               finished_at = CASE WHEN attempts >= cap.max_attempts THEN now() ELSE finished_at END
           FROM cap
           WHERE status = 'running' AND started_at < now() - make_interval(secs => $1)
           RETURNING jobs.status = 'failed' AS "given_up!""#,
        older_than_secs as f64
    )
    .fetch_all(db)
    .await?;
    let given_up = rows.iter().filter(|gave_up| **gave_up).count() as u64;
    Ok(Requeued { queued: rows.len() as u64 - given_up, given_up })
}
