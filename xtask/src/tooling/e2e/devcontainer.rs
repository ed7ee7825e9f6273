//! Development containers: this workspace's checkout inside a container (VS Code's devcontainers,
//! Codespaces, a Docker-in-Docker runner), where `/.dockerenv` exists and yet `localhost` and
//! `host.docker.internal` mean what they mean to the developer's tools there. The host's release
//! binary runs in the runtime image with the workspace mounted at its own path, as a checkout.

use anyhow::{Context as _, ensure};
use xshell::cmd;

use super::{APP_IMAGE, Stage};
use crate::base::workspace::root;

/// The database the development containers migrate: the compose project's own keeps its
/// migrations table (e2e_schema_history), the workspace's checkout has its own.
const DATABASE: &str = "devcontainer";

/// Runs `xtask ARGS` in a development container started with `docker_args`, with the settings of
/// the host's server but `server`; its exit code and everything it printed.
fn run_in_devcontainer(
    stage: &Stage<'_>,
    docker_args: &[&str],
    server: &str,
    xtask_args: &[&str],
) -> anyhow::Result<(Option<i32>, String)> {
    run_in_devcontainer_on_port(stage, docker_args, server, &stage.db.port().to_string(), xtask_args)
}

/// [`run_in_devcontainer`], with the settings' port `port`.
fn run_in_devcontainer_on_port(
    stage: &Stage<'_>,
    docker_args: &[&str],
    server: &str,
    port: &str,
    xtask_args: &[&str],
) -> anyhow::Result<(Option<i32>, String)> {
    let root = root();
    let root = root.to_str().context("a non-UTF-8 workspace path")?;
    let mount = format!("{root}:{root}:ro");
    let binary = format!("{root}/target/release/xtask");
    let settings = [
        format!("POSTGRES_SERVER={server}"),
        format!("POSTGRES_PORT={port}"),
        format!("POSTGRES_DB={DATABASE}"),
        "POSTGRES_USER=postgres".to_owned(),
        // Named only: docker takes the value from its own environment, so the password is on no
        // command line (xshell's error for a failed spawn shows the command).
        "POSTGRES_PASSWORD".to_owned(),
        "POSTGRES_SSLMODE=disable".to_owned(),
        "FIRST_SUPERUSER=admin@example.com".to_owned(),
        "FIRST_SUPERUSER_PASSWORD=devcontainer superuser".to_owned(),
        "PRESTART_WAIT_TIMEOUT=5".to_owned(),
    ];
    let env: Vec<String> = settings.iter().flat_map(|s| ["-e".to_owned(), s.clone()]).collect();
    let sh = stage.project.sh;
    let output = cmd!(
        sh,
        "docker run --rm --user 0:0 -v {mount} {docker_args...} {env...} --entrypoint {binary} {APP_IMAGE} {xtask_args...} --env-file /dev/null"
    )
    .env("POSTGRES_PASSWORD", &stage.project.password)
    .quiet()
    .ignore_status()
    .output()?;
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Ok((output.status.code(), said))
}

/// doctor's checks in a development container, by id: status and message.
fn doctor_in_devcontainer(
    stage: &Stage<'_>,
    docker_args: &[&str],
    server: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, (String, String)>> {
    let (_, said) = run_in_devcontainer(stage, docker_args, server, &["doctor", "--json"])?;
    let start = said.find('{').with_context(|| format!("doctor printed no JSON:\n{said}"))?;
    let document: serde_json::Value = serde_json::Deserializer::from_str(&said[start..])
        .into_iter()
        .next()
        .with_context(|| format!("doctor printed no JSON:\n{said}"))??;
    let checks = document["checks"].as_array().context("doctor's checks")?;
    Ok(checks
        .iter()
        .map(|check| {
            let text = |key: &str| check[key].as_str().unwrap_or_default().to_owned();
            (text("id"), (text("status"), text("message")))
        })
        .collect())
}

/// Scenario 10: the server beside the development container, sharing its network (VS Code's
/// PostgreSQL template: `network_mode: service:db`): `localhost` is this container's, and prestart
/// runs.
pub(super) fn server_beside(stage: &Stage<'_>) -> anyhow::Result<()> {
    let beside = ["--network", "host"];
    let (code, said) = run_in_devcontainer(stage, &beside, "localhost", &["prestart", "--create-database"])?;
    ensure!(code == Some(0), "prestart in the development container exited {code:?}:\n{said}");
    let checks = doctor_in_devcontainer(stage, &beside, "localhost")?;
    for id in ["location.host", "postgres.connect"] {
        let (status, message) = checks.get(id).with_context(|| format!("no {id}"))?;
        ensure!(status == "ok", "{id} is {status} in a development container whose server is beside it: {message}");
    }
    Ok(())
}

/// Scenario 11: the server on the Docker host, the development container on the compose network
/// with `--add-host host.docker.internal:host-gateway` and the engine's socket (Docker-in-Docker):
/// the name leads where `/etc/hosts` says, as for the compose containers, and prestart runs.
pub(super) fn server_on_the_host(stage: &Stage<'_>) -> anyhow::Result<()> {
    let network = format!("{}_default", stage.project.name);
    let mapped = [
        "--network",
        network.as_str(),
        "--add-host",
        "host.docker.internal:host-gateway",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
    ];
    let (code, said) = run_in_devcontainer(stage, &mapped, "host.docker.internal", &["prestart", "--create-database"])?;
    ensure!(code == Some(0), "prestart in the development container exited {code:?}:\n{said}");
    ensure!(said.contains("/etc/hosts maps the name"), "the reading taken is not said:\n{said}");
    let checks = doctor_in_devcontainer(stage, &mapped, "host.docker.internal")?;
    let (status, message) = checks.get("location.host").context("no location.host")?;
    ensure!(status == "ok" && message.contains("/etc/hosts maps the name"), "location.host {status}: {message}");
    Ok(())
}

/// Scenario 12: no server in or beside the development container, and no mapping for the host's
/// name: the wait ends at its deadline (exit 4), and the advice names `--context` for the other reading.
pub(super) fn no_server_here(stage: &Stage<'_>) -> anyhow::Result<()> {
    let network = format!("{}_default", stage.project.name);
    let alone = ["--network", network.as_str()];
    for server in ["localhost", "host.docker.internal"] {
        let (code, said) = run_in_devcontainer(stage, &alone, server, &["prestart"])?;
        ensure!(code == Some(4), "prestart with POSTGRES_SERVER={server} exited {code:?}:\n{said}");
        ensure!(said.contains("--context container"), "no advice names --context:\n{said}");
    }
    // The name mapped to the Docker host, where nothing listens on the port: the advice names the
    // other reading (a server in this container), and the settings' port is the one said.
    let mapped = ["--network", network.as_str(), "--add-host", "host.docker.internal:host-gateway"];
    let wrong_port = (stage.db.port() + 100).to_string();
    let args = ["prestart", "--wait-timeout", "3"];
    let (code, said) = run_in_devcontainer_on_port(stage, &mapped, "host.docker.internal", &wrong_port, &args)?;
    ensure!(code == Some(4), "prestart towards the Docker host's empty port exited {code:?}:\n{said}");
    ensure!(said.contains("leads to the Docker host") && said.contains("=localhost"), "no advice:\n{said}");
    Ok(())
}
