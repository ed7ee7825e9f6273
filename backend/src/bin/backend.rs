//! The HTTP API. Refuses to start on a schema that lacks this build's migrations.

use std::process::ExitCode;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use backend::jobs;
use backend::migrations::{MigrationSettings, embedded};
use backend::service::{self, Db, Service};
use serde::Deserialize;
use serde_json::json;

struct App {
    db: Db,
    migrations: MigrationSettings,
}

fn main() -> ExitCode {
    // Two threads: requests keep being answered while a slow one waits on the database.
    service::block_on("backend", 2, serve())
}

async fn serve() -> ExitCode {
    // Listened for from the start: a signal while connecting stops the start-up cleanly.
    let mut shutdown = Box::pin(service::shutdown_signal());
    let started = tokio::select! {
        started = service::start("backend", std::env::args().skip(1)) => started,
        () = &mut shutdown => {
            service::say("backend: stopped before it started");
            return ExitCode::SUCCESS;
        }
    };
    let Service { settings, migrations, db } = match started {
        Ok(service) => service,
        Err(e) => return e.report("backend"),
    };
    let app = Arc::new(App { db, migrations });
    let router = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/api/jobs", post(create_job).get(list_jobs))
        .route("/api/jobs/{id}", get(show_job))
        .with_state(app);
    let listener = match tokio::net::TcpListener::bind(&settings.backend_bind).await {
        Ok(listener) => listener,
        Err(e) => {
            service::say(format!("error: backend: cannot listen on {} (BACKEND_BIND): {e}", settings.backend_bind));
            return ExitCode::from(service::EXIT_CONFIG);
        }
    };
    service::say(format!("backend: listening on {}", settings.backend_bind));
    match axum::serve(listener, router).with_graceful_shutdown(shutdown).await {
        Ok(()) => {
            service::say("backend: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            service::say(format!("error: backend: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// 200 while the process runs.
async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when the database answers and has this build's migrations; 503 with the reason otherwise.
async fn ready(State(app): State<Arc<App>>) -> Response {
    let checked = async {
        // Ready means able to write: after a failover, a node that turned standby is not.
        let checked = app.db.run(|| {
            async |conn| {
                if !service::still_writable(conn).await? {
                    return Ok(Err("the database takes no writes: a standby (a failover in progress?)".to_owned()));
                }
                Ok(embedded::check(conn, &app.migrations).await)
            }
        });
        // The driver's words stay in the log: an HTTP client gets none of them.
        checked.await.map_err(|e| {
            service::say(format!("backend: /ready: {e}"));
            "database not reachable".to_owned()
        })?
    };
    match checked.await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready" }))).into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "reason": reason })))
            .into_response(),
    }
}

#[derive(Deserialize)]
struct NewJob {
    kind: String,
    #[serde(default)]
    payload: serde_json::Value,
}

/// A request the API cannot read (no JSON content type, a body that is not the job, a query
/// string of the wrong types): its status, with the reason as JSON, as every other error.
fn unreadable(status: StatusCode, reason: String) -> Response {
    (status, Json(json!({ "error": reason }))).into_response()
}

async fn create_job(State(app): State<Arc<App>>, job: Result<Json<NewJob>, JsonRejection>) -> Response {
    let job = match job {
        Ok(Json(job)) => job,
        Err(rejection) => return unreadable(rejection.status(), rejection.body_text()),
    };
    if !jobs::KINDS.contains(&job.kind.as_str()) {
        let error = format!("unknown kind `{}`: use one of {}", job.kind, jobs::KINDS.join(", "));
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({ "error": error }))).into_response();
    }
    let payload = if job.payload.is_null() { json!({}) } else { job.payload };
    match app.db.run(|| async |conn| jobs::enqueue(conn, &job.kind, &payload).await).await {
        Ok(job) => (StatusCode::CREATED, Json(job)).into_response(),
        Err(e) => database_error(e),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

/// The page size when none is asked for, and the largest one served.
const PAGE: (i64, i64) = (20, 100);

/// `GET /api/jobs?status=&before=&limit=`: jobs newest first, a page at a time; `next_before` is
/// the `before` of the next page (null on the last one).
async fn list_jobs(State(app): State<Arc<App>>, query: Result<Query<ListQuery>, QueryRejection>) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return unreadable(rejection.status(), rejection.body_text()),
    };
    if let Some(status) = query.status.as_deref().filter(|s| !jobs::STATUSES.contains(s)) {
        let error = format!("unknown status `{status}`: use one of {}", jobs::STATUSES.join(", "));
        return unreadable(StatusCode::UNPROCESSABLE_ENTITY, error);
    }
    let limit = query.limit.unwrap_or(PAGE.0);
    if !(1..=PAGE.1).contains(&limit) {
        return unreadable(StatusCode::UNPROCESSABLE_ENTITY, format!("limit must be 1 to {}", PAGE.1));
    }
    let status = query.status.as_deref();
    match app.db.run(|| async |conn| jobs::list(conn, status, query.before, limit).await).await {
        Ok(page) => {
            let next = (page.len() as i64 == limit).then(|| page.last().map(|job| job.id)).flatten();
            Json(json!({ "jobs": page, "next_before": next })).into_response()
        }
        Err(e) => database_error(e),
    }
}

async fn show_job(State(app): State<Arc<App>>, Path(id): Path<i64>) -> Response {
    match app.db.run(|| async |conn| jobs::get(conn, id).await).await {
        Ok(Some(job)) => Json(job).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Json(json!({ "error": format!("no job {id}") }))).into_response(),
        Err(e) => database_error(e),
    }
}

fn database_error(error: sqlx::Error) -> Response {
    service::say(format!("backend: database error: {error}"));
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": "database unavailable" }))).into_response()
}
