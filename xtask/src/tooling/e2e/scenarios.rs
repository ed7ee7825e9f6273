//! The scenarios of the end-to-end run, in order: each starts from the state the one before left.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use xshell::cmd;

use super::{APP_IMAGE, MIGRATIONS_TABLE, Stage, inspect, query, wait_until};
use crate::base::workspace::root;
use crate::databases::dev_db::Audience;

type Scenario = fn(&Stage<'_>) -> anyhow::Result<()>;

/// The scenarios, numbered as the seed document's cases, in the order they run.
pub(super) const SCENARIOS: &[(&str, Scenario)] = &[
    ("1. happy path: prestart exits 0, the API answers, the worker runs a job", happy_path),
    (
        "9. doctor on the host passes the setup that works, judging each path from where it starts",
        doctor_passes_a_working_setup,
    ),
    (
        "8. sqlx.toml: the image ships the workspace's; a project's own migrations table is used",
        sqlx_toml_of_the_project,
    ),
    (
        "5. `run --rm prestart` on a running stack: exits 0, changes nothing, leaves no container",
        rerun_on_a_running_stack,
    ),
    ("6. restart backend does not run prestart; down then up does, as a no-op", restart_and_down_up),
    (
        "2. POSTGRES_SERVER=localhost: the diagnosis at once, exit 4 after 30 s (not 300), no backend",
        localhost_in_a_container,
    ),
    ("7. wrong password: fails fast with the authentication diagnosis", wrong_password),
    ("3. the host server listens only on 127.0.0.1: the diagnosis names listen_addresses", listening_on_loopback_only),
    ("4. the server starts 10 s after `up`: prestart waits, then the stack comes up", server_starts_late),
    (
        "10. a development container whose server shares its network: localhost is the container's, prestart runs",
        super::devcontainer::server_beside,
    ),
    (
        "11. a development container with --add-host and the engine's socket: host.docker.internal leads to the host",
        super::devcontainer::server_on_the_host,
    ),
    (
        "12. a development container with no server in reach: exit 4, and the advice names --context",
        super::devcontainer::no_server_here,
    ),
];

/// 1. happy path: prestart exits 0, the API answers, the worker runs a job
fn happy_path(stage: &Stage<'_>) -> anyhow::Result<()> {
    let Stage { project, db, .. } = stage;
    ensure!(project.up(Duration::from_secs(120))? == Some(0), "prestart did not exit 0:\n{}", project.logs("prestart"));
    wait_until(Duration::from_secs(60), || project.http("GET", "/ready", None).is_ok_and(|(s, _)| s == 200))
        .with_context(|| format!("/ready never answered 200:\n{}", project.logs("backend")))?;
    ensure!(project.http("GET", "/health", None)?.0 == 200, "/health");
    let (status, body) = project.http("POST", "/api/jobs", Some(r#"{"kind":"echo","payload":{"n":1}}"#))?;
    ensure!(status == 201, "POST /api/jobs: {status} {body}");
    let id = serde_json::from_str::<serde_json::Value>(&body)?["id"].as_i64().context("job id")?;
    wait_until(Duration::from_secs(30), || {
        project.http("GET", &format!("/api/jobs/{id}"), None).is_ok_and(|(_, b)| b.contains("\"status\":\"done\""))
    })
    .with_context(|| format!("the worker did not run the job:\n{}", project.logs("worker")))?;
    ensure!(query(db, "SELECT count(*)::text FROM users")? == "1", "one superuser");
    Ok(())
}

/// 9. doctor on the host passes the setup that works, judging each path from where it starts
fn doctor_passes_a_working_setup(stage: &Stage<'_>) -> anyhow::Result<()> {
    let Stage { project, .. } = stage;
    let checks = project.doctor()?;
    for id in ["postgres.connect", "postgres.listen_addresses", "postgres.containers_hba", "compose.file"] {
        let (status, text) = checks.get(id).with_context(|| format!("no {id}"))?;
        ensure!(status == "ok", "{id} is {status}: {text}");
    }
    let failed: Vec<_> = checks
        .iter()
        .filter(|(id, (status, _))| {
            status == "fail" && ["location.", "network.", "postgres."].iter().any(|a| id.starts_with(a))
        })
        .collect();
    ensure!(failed.is_empty(), "a working setup fails: {failed:?}");
    // Which compose spelling this machine takes, said where the README's commands would fail.
    let (_, compose_file) = &checks["compose.file"];
    if project.compose.program == ["docker-compose"] {
        ensure!(compose_file.contains("write `docker-compose ...`"), "compose.file: {compose_file}");
    }
    Ok(())
}

/// 8. sqlx.toml: the image ships the workspace's; a project's own migrations table is used
fn sqlx_toml_of_the_project(stage: &Stage<'_>) -> anyhow::Result<()> {
    let Stage { project, db, .. } = stage;
    let shipped = cmd!(project.sh, "docker run --rm --entrypoint cat {APP_IMAGE} /app/sqlx.toml").quiet().read()?;
    ensure!(
        shipped.trim() == std::fs::read_to_string(root().join("sqlx.toml"))?.trim(),
        "the image's /app/sqlx.toml is not the workspace's"
    );
    let applied = query(db, &format!("SELECT count(*)::text FROM {MIGRATIONS_TABLE}"))?;
    ensure!(applied == "3", "{MIGRATIONS_TABLE} holds {applied} migrations, not 3");
    ensure!(
        query(db, "SELECT (to_regclass('_sqlx_migrations') IS NULL)::text")? == "true",
        "the containers created _sqlx_migrations beside {MIGRATIONS_TABLE}"
    );
    Ok(())
}

/// 5. `run --rm prestart` on a running stack: exits 0, changes nothing, leaves no container
fn rerun_on_a_running_stack(stage: &Stage<'_>) -> anyhow::Result<()> {
    let Stage { project, db, .. } = stage;
    let history = format!("SELECT count(*)::text || ':' || max(installed_on)::text FROM {MIGRATIONS_TABLE}");
    let before = query(db, &history)?;
    project
        .compose(&["run", "--rm", "prestart"])
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .context("run --rm prestart failed")?;
    ensure!(query(db, &history)? == before, "the rerun changed the migrations");
    let leftovers = project.compose(&["ps", "-a", "-q"]).quiet().read()?.lines().count();
    ensure!(leftovers == 3, "expected prestart, backend and worker containers, found {leftovers}");
    Ok(())
}

/// 6. restart backend does not run prestart; down then up does, as a no-op
fn restart_and_down_up(stage: &Stage<'_>) -> anyhow::Result<()> {
    let Stage { project, .. } = stage;
    let prestart = project.container("prestart").context("prestart container")?;
    let started_at = |id: &str| inspect(project.sh, id, "{{.State.StartedAt}}").context("docker inspect");
    let before = started_at(&prestart)?;
    project.compose(&["restart", "backend"]).quiet().ignore_stdout().ignore_stderr().run()?;
    ensure!(project.container("prestart").as_deref() == Some(prestart.as_str()), "restart re-created prestart");
    ensure!(started_at(&prestart)? == before, "restarting backend ran prestart again");
    project.down();
    ensure!(project.up(Duration::from_secs(120))? == Some(0), "prestart after down/up:\n{}", project.logs("prestart"));
    ensure!(
        project.logs("prestart").contains("up to date: all 3 migrations were already applied"),
        "not a no-op:\n{}",
        project.logs("prestart")
    );
    Ok(())
}

/// 2. POSTGRES_SERVER=localhost: the diagnosis at once, exit 4 after 30 s (not 300), no backend
fn localhost_in_a_container(stage: &Stage<'_>) -> anyhow::Result<()> {
    let Stage { project, .. } = stage;
    project.down();
    project.write_env(&[("POSTGRES_SERVER", "localhost")])?;
    let started = Instant::now();
    let code = project.up(Duration::from_secs(120))?;
    let logs = project.logs("prestart");
    ensure!(code == Some(4), "prestart exited {code:?}:\n{logs}");
    ensure!(started.elapsed() < Duration::from_secs(75), "up took {:?}", started.elapsed());
    ensure!(logs.contains("the deadline is now 30 s, not 300"), "no early end said:\n{logs}");
    ensure!(
        logs.contains("POSTGRES_SERVER=localhost inside a container points at the container itself"),
        "no diagnosis:\n{logs}"
    );
    ensure!(!project.is_running("backend") && !project.is_running("worker"), "backend or worker started");
    Ok(())
}

/// 7. wrong password: fails fast with the authentication diagnosis
fn wrong_password(stage: &Stage<'_>) -> anyhow::Result<()> {
    let Stage { project, .. } = stage;
    project.down();
    project.write_env(&[("POSTGRES_PASSWORD", "wrong")])?;
    let started = Instant::now();
    let code = project.up(Duration::from_secs(90))?;
    ensure!(code == Some(5), "prestart exited {code:?}:\n{}", project.logs("prestart"));
    ensure!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    ensure!(project.logs("prestart").contains("password authentication failed"), "{}", project.logs("prestart"));
    Ok(())
}

/// 3. the host server listens only on 127.0.0.1: the diagnosis names listen_addresses
fn listening_on_loopback_only(stage: &Stage<'_>) -> anyhow::Result<()> {
    let Stage { project, cluster, db, .. } = stage;
    project.down();
    project.write_env(&[("PRESTART_WAIT_TIMEOUT", "15")])?;
    cluster.start(db, Some(&Audience::ThisMachine))?;
    let code = project.up(Duration::from_secs(90))?;
    let logs = project.logs("prestart");
    ensure!(code.is_some_and(|c| c != 0), "prestart exited {code:?}");
    ensure!(logs.contains("listen_addresses"), "no listen_addresses diagnosis:\n{logs}");
    // The seed's case 8.1 from the host: the running server is found, the setting named.
    let checks = project.doctor()?;
    let (status, text) = checks.get("postgres.listen_addresses").context("no postgres.listen_addresses")?;
    ensure!(status == "fail" && text.contains("the server runs on this machine"), "{status}: {text}");
    ensure!(text.contains("--serve-compose"), "no fix named: {text}");
    ensure!(checks.get("postgres.connect").is_some_and(|(s, _)| s == "ok"), "doctor did not find the server");
    Ok(())
}

/// 4. the server starts 10 s after `up`: prestart waits, then the stack comes up
fn server_starts_late(stage: &Stage<'_>) -> anyhow::Result<()> {
    let Stage { project, cluster, db, serving_compose } = stage;
    project.down();
    project.write_env(&[])?;
    cluster.stop()?;
    let up = project.start_up()?;
    std::thread::sleep(Duration::from_secs(10));
    cluster.start(db, Some(serving_compose))?;
    ensure!(project.finish_up(up, Duration::from_secs(120))? == Some(0), "prestart:\n{}", project.logs("prestart"));
    wait_until(Duration::from_secs(60), || project.http("GET", "/ready", None).is_ok_and(|(s, _)| s == 200))
        .context("/ready never answered 200")?;
    Ok(())
}
