//! One compose project in its own folder, with its own `.env`: up, down, logs, doctor, HTTP.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use xshell::{Shell, cmd};

use super::{APP_IMAGE, Compose, MIGRATIONS_TABLE, inspect};
use crate::base::workspace::root;

/// One compose project in its own folder, with its own .env.
pub(super) struct Project<'a> {
    pub(super) sh: &'a Shell,
    pub(super) compose: &'a Compose,
    pub(super) dir: PathBuf,
    pub(super) name: String,
    pub(super) port: u16,
    pub(super) password: String,
    pub(super) subnet: String,
}

impl Project<'_> {
    pub(super) fn prepare(&self) -> anyhow::Result<()> {
        self.sh.create_dir(&self.dir)?;
        self.sh.copy_file(root().join("docker-compose.yml"), &self.dir)?;
        // The project's own sqlx.toml, with another migrations table, over the image's.
        self.sh.write_file(self.dir.join("sqlx.toml"), format!("[migrate]\ntable-name = \"{MIGRATIONS_TABLE}\"\n"))?;
        let mount = "    volumes: [\"./sqlx.toml:/app/sqlx.toml:ro\"]\n";
        self.sh.write_file(
            self.dir.join("docker-compose.e2e.yml"),
            format!("services:\n  prestart:\n{mount}  backend:\n{mount}  worker:\n{mount}"),
        )?;
        self.write_env(&[])
    }

    /// `.env` for the containers: the host's server through host.docker.internal.
    pub(super) fn write_env(&self, overrides: &[(&str, &str)]) -> anyhow::Result<()> {
        let mut vars = vec![
            ("POSTGRES_SERVER", "host.docker.internal".to_owned()),
            ("POSTGRES_PORT", self.port.to_string()),
            ("POSTGRES_DB", "app".into()),
            ("POSTGRES_USER", "postgres".into()),
            ("POSTGRES_PASSWORD", self.password.clone()),
            ("POSTGRES_SSLMODE", "disable".into()),
            ("FIRST_SUPERUSER", "admin@example.com".into()),
            ("FIRST_SUPERUSER_PASSWORD", "e2e superuser".into()),
            ("APP_IMAGE", APP_IMAGE.into()),
            ("BACKEND_PORT", self.backend_port().to_string()),
            ("COMPOSE_SUBNET", self.subnet.clone()),
        ];
        for (key, value) in overrides {
            vars.retain(|(k, _)| k != key);
            vars.push((key, (*value).to_owned()));
        }
        let text: String = vars.iter().map(|(k, v)| format!("{k}='{v}'\n")).collect();
        self.sh.write_file(self.dir.join(".env"), text)?;
        Ok(())
    }

    /// `doctor --context host --json` as a user runs it in this project: the release binary beside
    /// the project's migrations, `.env` and compose file. Each check's status and texts, by id.
    pub(super) fn doctor(&self) -> anyhow::Result<std::collections::BTreeMap<String, (String, String)>> {
        let binary = self.dir.join("xtask");
        if !binary.exists() {
            self.sh.copy_file(root().join("target/release/xtask"), &binary)?;
            self.sh.create_dir(self.dir.join("migrations"))?;
            for entry in std::fs::read_dir(root().join("migrations"))?.flatten() {
                self.sh.copy_file(entry.path(), self.dir.join("migrations"))?;
            }
        }
        let output = cmd!(self.sh, "{binary} doctor --context host --json").quiet().ignore_status().output()?;
        let document: serde_json::Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("doctor printed no JSON: {}", String::from_utf8_lossy(&output.stderr)))?;
        let checks = document["checks"].as_array().context("doctor's checks")?;
        Ok(checks
            .iter()
            .map(|check| {
                let text = |key: &str| check[key].as_str().unwrap_or_default().to_owned();
                (text("id"), (text("status"), format!("{} | fix: {}", text("message"), text("hint"))))
            })
            .collect())
    }

    pub(super) fn backend_port(&self) -> u16 {
        self.port + 1
    }

    pub(super) fn compose(&self, args: &[&str]) -> xshell::Cmd<'_> {
        let (program, rest) = self.compose.program.split_first().expect("a compose program");
        let dir = &self.dir;
        let name = &self.name;
        cmd!(
            self.sh,
            "{program} {rest...} --project-directory {dir} -f {dir}/docker-compose.yml -f {dir}/docker-compose.e2e.yml -p {name} {args...}"
        )
    }

    /// Starts `up -d` without waiting: compose itself waits for prestart before it starts
    /// backend and worker.
    pub(super) fn start_up(&self) -> anyhow::Result<std::process::Child> {
        let mut command: std::process::Command = self.compose(&["up", "-d", "--no-build"]).into();
        Ok(command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn()?)
    }

    /// Waits for the `up` started by `start_up`; returns prestart's exit code, if it exited
    /// before `timeout`.
    pub(super) fn finish_up(&self, mut up: std::process::Child, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if up.try_wait()?.is_some() {
                return Ok(self.exit_code("prestart"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = up.kill();
        Ok(self.exit_code("prestart"))
    }

    /// `up -d` until compose returns; prestart's exit code.
    pub(super) fn up(&self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let up = self.start_up()?;
        self.finish_up(up, timeout)
    }

    pub(super) fn container(&self, service: &str) -> Option<String> {
        let id = self.compose(&["ps", "-q", service]).quiet().ignore_stderr().read().ok()?;
        let id = id.trim().to_owned();
        (!id.is_empty()).then_some(id)
    }

    /// The exit code of a stopped service's container.
    pub(super) fn exit_code(&self, service: &str) -> Option<i32> {
        let id = self.container(service)?;
        let state = inspect(self.sh, &id, "{{.State.Status}}:{{.State.ExitCode}}")?;
        let (status, code) = state.trim().split_once(':')?;
        (status == "exited").then(|| code.parse().ok()).flatten()
    }

    pub(super) fn is_running(&self, service: &str) -> bool {
        self.container(service)
            .is_some_and(|id| inspect(self.sh, &id, "{{.State.Running}}").is_some_and(|s| s == "true"))
    }

    pub(super) fn logs(&self, service: &str) -> String {
        self.compose(&["logs", "--no-color", service]).quiet().ignore_stderr().read().unwrap_or_default()
    }

    pub(super) fn down(&self) {
        let _ = self
            .compose(&["down", "-v", "--remove-orphans", "--timeout", "5"])
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run();
    }

    pub(super) fn http(&self, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<(u16, String)> {
        Ok(crate::base::http::request(method, &format!("127.0.0.1:{}", self.backend_port()), path, body)?)
    }
}
