//! backend and worker against a real cluster: they refuse a schema prestart has not brought up to
//! date, serve `/health` and `/ready`, and run jobs sent to the API.

use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use testkit::{Bouncer, Cluster, PoolMode, Run, claim_port, eventually, http};

fn service(name: &str, cluster: &Cluster, bind: &str) -> Run {
    service_with(name, cluster.env("app"), bind)
}

fn service_with(name: &str, mut env: Vec<(String, String)>, bind: &str) -> Run {
    let binary = match name {
        "backend" => env!("CARGO_BIN_EXE_backend"),
        _ => env!("CARGO_BIN_EXE_worker"),
    };
    env.push(("BACKEND_BIND".into(), bind.into()));
    Run::program(binary, &["--env-file", "/dev/null"], &env)
}

/// Applies the migrations the binaries embed, as prestart would.
fn migrate(cluster: &Cluster) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut conn = connect(cluster).await;
        backend::migrations::embedded::MIGRATOR.run(&mut conn).await.expect("migrate");
        conn.close().await.expect("close");
    });
}

#[test]
fn both_refuse_a_database_without_their_migrations() {
    let cluster = Cluster::started();
    let port = claim_port();
    let bind = format!("127.0.0.1:{}", port.number);
    for name in ["backend", "worker"] {
        service(name, &cluster, &bind)
            .output()
            .assert_code(8)
            .assert_stderr_contains("the database schema is not the one this build needs (not applied: 20261125090000")
            .assert_stderr_contains("run `cargo xtask prestart`");
    }
}

#[test]
fn the_api_is_ready_on_an_up_to_date_schema_and_the_worker_runs_its_jobs() {
    let cluster = Cluster::started();
    migrate(&cluster);
    // A newer release's migration in the database is fine: that is a rolling deploy.
    cluster.psql(
        "app",
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (20990101000000, 'from the future', true, '\\x00', 0)",
    );
    let port = claim_port();
    let bind = format!("127.0.0.1:{}", port.number);
    let api = service("backend", &cluster, &bind).spawn();
    assert!(eventually(Duration::from_secs(20), || http("GET", &bind, "/health", None).is_ok_and(|(s, _)| s == 200)));
    let (status, body) = http("GET", &bind, "/ready", None).expect("ready");
    assert_eq!(status, 200, "{body}");

    let (status, body) =
        http("POST", &bind, "/api/jobs", Some(r#"{"kind":"echo","payload":{"n":7}}"#)).expect("enqueue");
    assert_eq!(status, 201, "{body}");
    let job: serde_json::Value = serde_json::from_str(&body).expect("job JSON");
    assert_eq!(job["status"], "queued");
    let path = format!("/api/jobs/{}", job["id"]);

    let worker = service("worker", &cluster, &bind).spawn();
    let done = eventually(Duration::from_secs(20), || {
        http("GET", &bind, &path, None).is_ok_and(|(_, body)| body.contains("\"status\":\"done\""))
    });
    let (_, body) = http("GET", &bind, &path, None).expect("job");
    assert!(done, "the job did not finish: {body}");
    let job: serde_json::Value = serde_json::from_str(&body).expect("job JSON");
    assert_eq!(job["result"], serde_json::json!({ "n": 7 }));
    assert_eq!(http("GET", &bind, "/api/jobs/999999", None).expect("missing job").0, 404);
    // A kind the worker does not know is refused at the door, naming the ones it does.
    let (status, body) = http("POST", &bind, "/api/jobs", Some(r#"{"kind":"ecko"}"#)).expect("enqueue");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("unknown kind `ecko`: use one of echo, sleep, fail"), "{body}");
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM jobs WHERE kind = 'ecko'"), "0");

    // A migration removed behind the API's back: /ready says why, /health still answers.
    cluster.psql("app", "DELETE FROM _sqlx_migrations WHERE version = 20261125090200");
    let (status, body) = http("GET", &bind, "/ready", None).expect("ready");
    assert_eq!(status, 503);
    assert!(body.contains("not applied: 20261125090200"), "{body}");
    assert_eq!(http("GET", &bind, "/health", None).expect("health").0, 200);

    worker.signal("TERM");
    api.signal("TERM");
    worker.wait().assert_code(0).assert_stderr_contains("worker: stopped");
    api.wait().assert_code(0).assert_stderr_contains("backend: stopped");
}

#[test]
fn sigterm_during_a_claim_loses_no_job_and_abandoned_jobs_are_requeued_while_running() {
    let cluster = Cluster::started();
    migrate(&cluster);
    cluster.psql("app", "INSERT INTO jobs (kind, payload) VALUES ('echo', '{\"n\": 1}')");
    // The claim's UPDATE waits behind this lock, so SIGTERM arrives while it is in flight.
    let holder = testkit::Session::open(&cluster, "BEGIN; LOCK TABLE jobs IN SHARE MODE;");
    assert!(eventually(Duration::from_secs(10), || {
        cluster.psql("app", "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'") == "1"
    }));
    let port = claim_port();
    let bind = format!("127.0.0.1:{}", port.number);
    let worker = service("worker", &cluster, &bind).spawn();
    assert!(eventually(Duration::from_secs(20), || {
        cluster.psql(
            "app",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'worker' AND wait_event_type = 'Lock'",
        ) == "1"
    }));
    worker.signal("TERM");
    drop(holder);
    worker
        .wait()
        .assert_code(0)
        .assert_stderr_contains("worker: job 1 (echo) done")
        .assert_stderr_contains("worker: stopped");
    assert_eq!(cluster.psql("app", "SELECT status FROM jobs WHERE id = 1"), "done");

    // A job left `running` by a worker that died is put back by one that is running, not only at start.
    // Once the worker has run a job, its start-up is behind it: what it requeues now, it requeues
    // on its schedule.
    let worker = service("worker", &cluster, &bind).spawn();
    cluster.psql("app", "INSERT INTO jobs (kind, payload) VALUES ('echo', '{}')");
    assert!(
        eventually(Duration::from_secs(20), || cluster.psql("app", "SELECT status FROM jobs WHERE id = 2") == "done")
    );
    cluster.psql(
        "app",
        "INSERT INTO jobs (kind, payload, status, attempts, started_at) \
         VALUES ('echo', '{}', 'running', 1, now() - interval '1 hour')",
    );
    let requeued =
        eventually(Duration::from_secs(30), || cluster.psql("app", "SELECT status FROM jobs WHERE id = 3") == "done");
    worker.signal("TERM");
    let outcome = worker.wait();
    assert!(requeued, "the abandoned job stayed: {outcome:?}");
    outcome.assert_stderr_contains("put 1 abandoned jobs back in the queue");
}

#[test]
fn through_a_transaction_pooler_every_query_works_the_claim_included() {
    let cluster = Cluster::started();
    migrate(&cluster);
    let bouncer = Bouncer::start(&cluster, PoolMode::Transaction);
    let port = claim_port();
    let bind = format!("127.0.0.1:{}", port.number);
    let env = bouncer.env(&cluster, "app");
    let api = service_with("backend", env.clone(), &bind).spawn();
    assert!(eventually(Duration::from_secs(20), || http("GET", &bind, "/health", None).is_ok_and(|(s, _)| s == 200)));
    for _ in 0..3 {
        let (status, body) = http("GET", &bind, "/ready", None).expect("ready");
        assert_eq!(status, 200, "{body}");
    }
    // Two workers share the pooler's server sessions; each job runs once.
    let workers: Vec<_> = (0..2).map(|_| service_with("worker", env.clone(), &bind).spawn()).collect();
    for n in 0..20 {
        let payload = format!(r#"{{"kind":"echo","payload":{{"n":{n}}}}}"#);
        let (status, body) = http("POST", &bind, "/api/jobs", Some(&payload)).expect("enqueue");
        assert_eq!(status, 201, "{body}");
    }
    let all_done = eventually(Duration::from_secs(30), || {
        cluster.psql("app", "SELECT count(*) FROM jobs WHERE status = 'done' AND attempts = 1") == "20"
    });
    assert!(all_done, "jobs: {}", cluster.psql("app", "SELECT string_agg(status::text || attempts, ',') FROM jobs"));
    let (status, body) = http("GET", &bind, "/api/jobs/20", None).expect("job");
    assert!(status == 200 && body.contains("\"status\":\"done\""), "{status} {body}");
    for worker in &workers {
        worker.signal("TERM");
    }
    api.signal("TERM");
    for worker in workers {
        worker
            .wait()
            .assert_code(0)
            .assert_stderr_lacks("cannot")
            .assert_stderr_contains("through a transaction pooler");
    }
    api.wait()
        .assert_code(0)
        .assert_stderr_lacks("database error")
        .assert_stderr_contains("through a transaction pooler");
}

/// The pooler probe holds where a transaction pooler has several idle server sessions and
/// another client freed one after our readiness query: PgBouncer then hands that one out first,
/// and a probe that compared pids with the readiness query's took the pooler for session mode.
#[test]
fn transaction_pooling_is_told_with_several_idle_server_sessions() {
    use backend::config::{DatabaseSettings, Env};
    use backend::pooler::{Pooling, detect_pooling};
    let cluster = Cluster::started();
    let bouncer = Bouncer::start(&cluster, PoolMode::Transaction);
    let env = bouncer.env(&cluster, "app");
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let db = DatabaseSettings::from_env(&Env::from_pairs(pairs)).expect("settings");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let connect = || backend::db::connect_once(&db, "test", Duration::from_secs(5));
        for _ in 0..5 {
            // Another client holds a server session while we connect, and frees it after.
            let mut holder = connect().await.expect("holder");
            sqlx::raw_sql("BEGIN; SELECT 1").execute(&mut holder.conn).await.expect("begin");
            let mut ready = connect().await.expect("connect");
            sqlx::raw_sql("COMMIT").execute(&mut holder.conn).await.expect("commit");
            assert_eq!(detect_pooling(&db, &mut ready).await, Pooling::Transaction);
        }
    });
}

/// SIGTERM while backend or worker still waits for the database at start-up (a pod deleted
/// before its database came up) stops it cleanly at once, not after the start-up wait.
#[test]
fn a_signal_during_start_up_stops_them_at_once() {
    let cluster = Cluster::stopped();
    for name in ["backend", "worker"] {
        let port = claim_port();
        let running = service(name, &cluster, &format!("127.0.0.1:{}", port.number)).spawn();
        // The state to wait for: the process has its SIGTERM handler (bit 15 of SigCgt).
        let pid = running.child.id();
        let catches_sigterm = || {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let mask = status.lines().find_map(|line| line.strip_prefix("SigCgt:"));
            mask.and_then(|m| u64::from_str_radix(m.trim(), 16).ok()).is_some_and(|m| m & (1 << 14) != 0)
        };
        assert!(eventually(Duration::from_secs(10), catches_sigterm), "{name} never listens for SIGTERM");
        running.signal("TERM");
        let outcome = running.wait_within(Duration::from_secs(5));
        outcome.assert_code(0).assert_stderr_contains(&format!("{name}: stopped before it started"));
    }
}

/// Every line they print goes through the redaction filter, this one too: `BACKEND_BIND` (here
/// holding the password, as a value pasted into the wrong variable would) is shown in it.
#[test]
fn a_line_that_shows_a_setting_is_redacted() {
    let cluster = Cluster::started();
    migrate(&cluster);
    let outcome = service("backend", &cluster, &format!("{}:1", testkit::PASSWORD)).output();
    outcome.assert_code(3).assert_stderr_contains("cannot listen on ********:1 (BACKEND_BIND)");
}

/// A panic in backend or worker prints one line, through the redaction filter, and exits 1: run
/// in a child process of this test, which panics inside `service::block_on` as their `main`
/// would, with a password in the panic message.
#[test]
fn a_panic_prints_one_redacted_line() {
    if std::env::var_os("PRESTART_TEST_PANIC").is_some() {
        backend::redact::register(testkit::PASSWORD);
        let code = backend::service::block_on("worker", 0, async {
            panic!("cannot go on with {}", testkit::PASSWORD);
        });
        std::process::exit(if code == std::process::ExitCode::FAILURE { 1 } else { 0 });
    }
    let test = std::env::current_exe().expect("test binary");
    let env = [("PRESTART_TEST_PANIC".to_owned(), "1".to_owned())];
    let outcome = Run::program(test, &["--exact", "a_panic_prints_one_redacted_line", "--nocapture"], &env).output();
    outcome.assert_code(1);
    let lines: Vec<&str> = outcome.stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}", outcome.stderr);
    assert!(lines[0].starts_with("error: worker: internal error at "), "{}", outcome.stderr);
    assert!(lines[0].ends_with("cannot go on with ********; this is a bug, please report it"), "{}", outcome.stderr);
}

/// A connection of the test's own to `app` (as the superuser).
async fn connect(cluster: &Cluster) -> PgConnection {
    let options = PgConnectOptions::new_without_pgpass()
        .host("127.0.0.1")
        .port(cluster.port)
        .username(testkit::SUPERUSER)
        .password(testkit::PASSWORD)
        .database("app")
        .ssl_mode(PgSslMode::Disable);
    PgConnection::connect_with(&options).await.expect("connect")
}

/// Review 3k: a worker that stalled past the abandonment time does not overwrite the outcome of
/// the claim that ran the job after it; recording one's own outcome twice changes nothing.
#[test]
fn a_stale_workers_outcome_never_overwrites_a_newer_claims() {
    let cluster = Cluster::started();
    migrate(&cluster);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut conn = connect(&cluster).await;
        let job = backend::jobs::enqueue(&mut conn, "echo", &serde_json::json!({"n": 1})).await.expect("enqueue");
        let stale = backend::jobs::claim(&mut conn).await.expect("claim").expect("a job");
        // The first claim stalls; its job counts as abandoned, and a second claim runs it.
        sqlx::query("UPDATE jobs SET started_at = now() - interval '1 hour' WHERE id = $1")
            .bind(job.id)
            .execute(&mut conn)
            .await
            .expect("age the claim");
        backend::jobs::requeue_abandoned(&mut conn, 300).await.expect("requeue");
        let fresh = backend::jobs::claim(&mut conn).await.expect("claim").expect("the job again");
        assert_eq!((stale.attempts, fresh.attempts), (1, 2));
        let ok = Ok(serde_json::json!({"by": "the second claim"}));
        assert!(backend::jobs::finish(&mut conn, job.id, fresh.attempts, ok.clone()).await.expect("finish"));
        assert!(backend::jobs::finish(&mut conn, job.id, fresh.attempts, ok).await.expect("finish again"));
        let late = Err("the stalled first claim".to_owned());
        assert!(!backend::jobs::finish(&mut conn, job.id, stale.attempts, late).await.expect("a late finish"));
        let now = backend::jobs::get(&mut conn, job.id).await.expect("get").expect("the job");
        assert_eq!((now.status.as_str(), now.result), ("done", Some(serde_json::json!({"by": "the second claim"}))));
    });
}

/// Review 3k: `jobs.max_attempts` caps the claims of a job that keeps being abandoned (one that
/// kills its worker): the running worker fails it, saying why, rather than queueing it forever.
#[test]
fn a_job_abandoned_max_attempts_times_fails_instead_of_running_again() {
    let cluster = Cluster::started();
    migrate(&cluster);
    cluster.psql("app", "INSERT INTO app_settings (key, value) VALUES ('jobs.max_attempts', '2')");
    cluster.psql(
        "app",
        "INSERT INTO jobs (kind, status, attempts, started_at) VALUES \
         ('echo', 'running', 2, now() - interval '1 hour'), ('echo', 'running', 1, now() - interval '1 hour')",
    );
    let port = claim_port();
    let bind = format!("127.0.0.1:{}", port.number);
    let worker = service("worker", &cluster, &bind).spawn();
    let settled = eventually(Duration::from_secs(30), || {
        cluster.psql("app", "SELECT string_agg(status::text, ',' ORDER BY id) FROM jobs") == "failed,done"
    });
    worker.signal("TERM");
    let outcome = worker.wait();
    assert!(
        settled,
        "{}\n{}",
        cluster.psql("app", "SELECT string_agg(status::text, ',' ORDER BY id) FROM jobs"),
        outcome.stderr
    );
    assert!(
        cluster.psql("app", "SELECT error FROM jobs ORDER BY id LIMIT 1").contains("jobs.max_attempts = 2"),
        "{}",
        outcome.stderr
    );
    outcome.assert_stderr_contains("reached jobs.max_attempts and failed");
}

/// Review 3k: `/ready` tells an HTTP client that the database is unreachable, in its own words:
/// the driver's error stays in the backend's log.
#[test]
fn ready_gives_http_clients_no_driver_error_text() {
    let cluster = Cluster::started();
    migrate(&cluster);
    let port = claim_port();
    let bind = format!("127.0.0.1:{}", port.number);
    let api = service("backend", &cluster, &bind).spawn();
    assert!(eventually(Duration::from_secs(20), || http("GET", &bind, "/ready", None).is_ok_and(|(s, _)| s == 200)));
    cluster.stop();
    let (status, body) = http("GET", &bind, "/ready", None).expect("ready");
    assert_eq!(status, 503, "{body}");
    let reason: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(reason["reason"], "database not reachable", "{body}");
    api.signal("TERM");
    let outcome = api.wait();
    assert!(outcome.stderr.contains("/ready:"), "{}", outcome.stderr);
}

/// A request without a JSON content type, with one of the raw socket: no client adds a header.
fn post_without_content_type(bind: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(bind).expect("connect");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {bind}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (status, response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default())
}

/// `GET /api/jobs` lists jobs newest first, a page at a time, by status; every error is JSON,
/// the missing content type's 415 too (issue 33, 8).
#[test]
fn the_api_lists_jobs_newest_first_by_page_and_status_and_answers_every_error_in_json() {
    let cluster = Cluster::started();
    migrate(&cluster);
    cluster.psql(
        "app",
        "INSERT INTO jobs (kind, payload, status) SELECT 'echo', jsonb_build_object('n', n), \
         CASE WHEN n % 3 = 0 THEN 'done'::job_status ELSE 'queued'::job_status END FROM generate_series(1, 25) n",
    );
    let port = claim_port();
    let bind = format!("127.0.0.1:{}", port.number);
    let api = service("backend", &cluster, &bind).spawn();
    assert!(eventually(Duration::from_secs(20), || http("GET", &bind, "/health", None).is_ok_and(|(s, _)| s == 200)));
    let page = |query: &str| {
        let (status, body) = http("GET", &bind, &format!("/api/jobs{query}"), None).expect("list");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).expect("JSON")
    };
    let ids = |page: &serde_json::Value| -> Vec<i64> {
        page["jobs"].as_array().expect("jobs").iter().map(|j| j["id"].as_i64().expect("id")).collect()
    };
    let first = page("");
    assert_eq!(ids(&first), (6..=25).rev().collect::<Vec<i64>>());
    assert_eq!(first["next_before"], 6);
    let last = page("?before=6");
    assert_eq!(ids(&last), vec![5, 4, 3, 2, 1]);
    assert_eq!(last["next_before"], serde_json::Value::Null);
    let done = page("?status=done&limit=3");
    assert_eq!(ids(&done), vec![24, 21, 18]);
    assert!(done["jobs"].as_array().expect("jobs").iter().all(|j| j["status"] == "done"));
    for (query, status, says) in [
        ("?status=finished", 422, "unknown status `finished`: use one of queued, running, done, failed"),
        ("?limit=0", 422, "limit must be 1 to 100"),
        ("?before=soon", 400, "before"),
    ] {
        let (code, body) = http("GET", &bind, &format!("/api/jobs{query}"), None).expect("list");
        assert_eq!(code, status, "{query}: {body}");
        let error: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{query}: not JSON: {body}"));
        assert!(error["error"].as_str().expect("error").contains(says), "{query}: {body}");
    }
    let (code, body) = post_without_content_type(&bind, "/api/jobs", r#"{"kind":"echo"}"#);
    assert_eq!(code, 415, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("415 not JSON: {body}"));
    assert!(error["error"].as_str().expect("error").contains("Content-Type"), "{body}");
    api.signal("TERM");
    api.wait().assert_code(0);
}
