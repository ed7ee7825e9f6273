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

/// Records the outcome of a claimed job.
pub async fn finish(
    db: impl PgExecutor<'_>,
    id: i64,
    outcome: Result<serde_json::Value, String>,
) -> Result<(), sqlx::Error> {
    let (status, result, error) = match outcome {
        Ok(result) => ("done", Some(result), None),
        Err(error) => ("failed", None, Some(error)),
    };
    sqlx::query!(
        "UPDATE jobs SET status = $2::text::job_status, result = $3, error = $4, finished_at = now() WHERE id = $1",
        id,
        status,
        result,
        error
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Puts jobs left `running` by a worker that died back in the queue.
pub async fn requeue_abandoned(db: impl PgExecutor<'_>, older_than_secs: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "UPDATE jobs SET status = 'queued' WHERE status = 'running' AND started_at < now() - make_interval(secs => $1)",
        older_than_secs as f64
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
