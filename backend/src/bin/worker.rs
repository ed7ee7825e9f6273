//! The job worker: claims queued jobs with `FOR UPDATE SKIP LOCKED`, runs them, records the
//! outcome, and stops cleanly on SIGTERM (after the job in hand).

use std::process::ExitCode;
use std::time::Duration;

use backend::jobs::{self, Job};
use backend::service::{self, Service};
use serde_json::{Value, json};

/// Idle polling interval; a claimed job is followed at once by the next claim.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// A job `running` for longer than this belonged to a worker that died.
const ABANDONED_AFTER_SECS: i64 = 300;
/// How often a running worker puts abandoned jobs back, so they do not wait for a restart.
const REQUEUE_EVERY: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    // One job at a time: a current-thread runtime is enough.
    service::block_on("worker", 0, work())
}

async fn work() -> ExitCode {
    // Listened for from the start: a signal while connecting stops the start-up cleanly. After
    // that it is looked at between jobs and while idle, never raced against a claim: a claim is
    // an UPDATE that commits on its own, so cancelling one in flight could leave its job
    // `running` with nobody on it.
    let shutdown = service::shutdown_signal();
    tokio::pin!(shutdown);
    let started = tokio::select! {
        started = service::start("worker", std::env::args().skip(1)) => started,
        () = &mut shutdown => {
            service::say("worker: stopped before it started");
            return ExitCode::SUCCESS;
        }
    };
    let Service { db, .. } = match started {
        Ok(service) => service,
        Err(e) => return e.report("worker"),
    };
    service::say("worker: waiting for jobs");
    let mut requeue = tokio::time::interval(REQUEUE_EVERY);
    while !is_ready(shutdown.as_mut()) {
        if is_ready(std::pin::pin!(requeue.tick())) {
            requeue_abandoned(&db).await;
        }
        match db.run(|| async |conn| jobs::claim(conn).await).await {
            Ok(Some(job)) => {
                let outcome = run(&job).await;
                let failed = outcome.as_ref().err().cloned();
                let recorded = record(&db, (job.id, job.attempts), &outcome, shutdown.as_mut()).await;
                say_outcome(&job, &recorded.result, failed);
                // The signal came while recording: it is spent, and the worker stops.
                if recorded.stopping {
                    break;
                }
            }
            Ok(None) => {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                }
            }
            Err(e) => {
                service::say(format!("worker: cannot claim a job: {e}"));
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    service::say("worker: stopped");
    ExitCode::SUCCESS
}

/// Puts jobs whose worker went silent back in the queue, or fails those out of attempts.
async fn requeue_abandoned(db: &backend::service::Db) {
    match db.run(|| async |conn| jobs::requeue_abandoned(conn, ABANDONED_AFTER_SECS).await).await {
        Ok(jobs::Requeued { queued, given_up }) => {
            if queued > 0 {
                service::say(format!("worker: put {queued} abandoned jobs back in the queue"));
            }
            if given_up > 0 {
                service::say(format!(
                    "worker: {given_up} abandoned jobs reached jobs.max_attempts and failed (see their error)"
                ));
            }
        }
        Err(e) => service::say(format!("worker: cannot requeue abandoned jobs: {e}")),
    }
}

/// Says how a job ended, and whether its outcome was recorded.
fn say_outcome(job: &Job, recorded: &Result<bool, sqlx::Error>, failed: Option<String>) {
    match recorded {
        Err(e) => service::say(format!(
            "worker: job {} ran, but its outcome could not be recorded ({e}): it runs again once it \
             counts as abandoned ({ABANDONED_AFTER_SECS} s)",
            job.id
        )),
        Ok(false) => service::say(format!(
            "worker: job {} ran (attempt {}), but a later claim owns it now (this worker took longer \
             than {ABANDONED_AFTER_SECS} s): its outcome is left to that claim",
            job.id, job.attempts
        )),
        Ok(true) => {}
    }
    match failed {
        None => service::say(format!("worker: job {} ({}) done", job.id, job.kind)),
        Some(error) => service::say(format!("worker: job {} ({}) failed: {error}", job.id, job.kind)),
    }
}

/// How long the outcome of a job that ran is retried: longer than a failover takes, shorter
/// than [`ABANDONED_AFTER_SECS`], after which another claim would run the job again.
const RECORD_FOR: Duration = Duration::from_secs(60);
/// After SIGTERM, the one last try at recording: within the stop grace of compose (10 s) and
/// Kubernetes (30 s).
const LAST_TRY: Duration = Duration::from_secs(5);

/// What recording an outcome came to, and whether the stop signal came meanwhile.
struct Recorded {
    /// Whether the outcome was written (not when a later claim owns the job).
    result: Result<bool, sqlx::Error>,
    stopping: bool,
}

/// Records a job's outcome, again and again while the database is away (a failover): recording
/// it twice is harmless, not recording it would run the job again once it counts as abandoned.
/// SIGTERM meanwhile leaves one last bounded try, so the worker stops within its grace.
async fn record<F: std::future::Future<Output = ()>>(
    db: &backend::service::Db,
    (id, claim): (i64, i32),
    outcome: &Result<Value, String>,
    mut shutdown: std::pin::Pin<&mut F>,
) -> Recorded {
    let attempt = || db.run_idempotent(|| async |conn| jobs::finish(conn, id, claim, outcome.clone()).await);
    let last_try = async || {
        let last = tokio::time::timeout(LAST_TRY, attempt()).await;
        Recorded { result: last.unwrap_or_else(|_| Err(backend::db::timed_out(LAST_TRY))), stopping: true }
    };
    let started = std::time::Instant::now();
    loop {
        let recorded = tokio::select! {
            recorded = attempt() => recorded,
            () = shutdown.as_mut() => return last_try().await,
        };
        match recorded {
            Err(e) if started.elapsed() < RECORD_FOR => {
                service::say(format!("worker: cannot record job {id} yet ({e}): trying again"));
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.as_mut() => return last_try().await,
                }
            }
            result => return Recorded { result, stopping: false },
        }
    }
}

/// Whether `future` has finished, without waiting for it.
fn is_ready<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> bool {
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    future.poll(&mut context).is_ready()
}

/// The job kinds this worker knows.
async fn run(job: &Job) -> Result<Value, String> {
    match job.kind.as_str() {
        "echo" => Ok(job.payload.clone()),
        "sleep" => {
            let ms = job.payload.get("ms").and_then(Value::as_u64).unwrap_or(100).min(60_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json!({ "slept_ms": ms }))
        }
        "fail" => Err(job.payload.get("message").and_then(Value::as_str).unwrap_or("failed on purpose").to_owned()),
        // The API refuses other kinds; a row inserted by hand may still hold one.
        other => Err(format!("unknown job kind `{other}`: use one of {}", jobs::KINDS.join(", "))),
    }
}
