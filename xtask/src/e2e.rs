//! `cargo xtask e2e`: the real compose file against real containers and a PostgreSQL server on
//! the host, reached through `host.docker.internal`, with no registry: the base image is made
//! from Debian packages (debootstrap of the host's release, so host-built binaries find their
//! glibc), cached between runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use backend::config::{DatabaseSettings, Env};
use xshell::{Shell, cmd};

use crate::dev_db::{Audience, DevCluster};
use crate::ui;
use crate::workspace::{cargo, root};

const BASE_IMAGE: &str = "prestart-e2e-base";
const APP_IMAGE: &str = "prestart-app:e2e";
/// The migrations table of the e2e project's own `sqlx.toml`, mounted over the image's.
const MIGRATIONS_TABLE: &str = "e2e_schema_history";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Keep the containers and the database after the run, to look at them
    #[arg(long)]
    keep: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let root = root();
    let _root = sh.push_dir(&root);
    let server_version = "{{.Server.Version}}";
    if cmd!(sh, "docker version --format {server_version}").quiet().ignore_stderr().read().is_err() {
        ui::step("no Docker engine answers: the end-to-end test is skipped");
        return Ok(());
    }
    let started = Instant::now();
    let compose = Compose::find(&sh)?;
    let base = base_image(&sh, &root)?;
    ui::step("build the release binaries and the runtime image (the Dockerfile's `prebuilt` target)");
    cargo(
        &sh,
        &[
            "build",
            "--release",
            "--quiet",
            "--locked",
            "-p",
            "xtask",
            "-p",
            "backend",
            "--features",
            "backend/server",
            "--bins",
        ],
    )
    .run()?;
    cmd!(
        sh,
        "docker build --quiet -f backend/Dockerfile --target prebuilt --build-arg RUNTIME_BASE={base} -t {APP_IMAGE} ."
    )
    .quiet()
    .ignore_stdout()
    .run()?;

    let work = root.join("target/e2e");
    let cluster = DevCluster::in_dir(&sh, work.join("db"))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    // A superuser password made for this run, with the characters that need encoding in a URL.
    let password = format!("e2e p@ss:w/rd {}", random_hex(12)?);
    let db = settings(port, &password)?;
    if cluster.exists() {
        cluster.destroy()?;
    }
    let project = Project {
        sh: &sh,
        compose: &compose,
        dir: work.join("project"),
        name: format!("prestart-e2e-{}", std::process::id()),
        port,
        password,
        subnet: free_subnet(&sh)?,
    };
    // The server listens on the bridge address and lets in the compose network alone, as
    // `dev-db start --serve-compose` makes it for a user.
    let serving_compose = Audience::compose(project.subnet.clone())?;
    let result = (|| {
        cluster.start(&db, Some(&serving_compose))?;
        project.prepare()?;
        scenarios(&project, &cluster, &db, &serving_compose)
    })();
    let size = inspect(&sh, APP_IMAGE, "{{.Size}}").unwrap_or_default();
    if !args.keep {
        // Containers, networks, volumes, the app image and the layers it left; the base image
        // stays cached for the next run.
        project.down();
        let _ = cluster.destroy();
        let _ = cmd!(sh, "docker rmi -f {APP_IMAGE}").quiet().ignore_stdout().ignore_stderr().run();
        let _ = cmd!(sh, "docker image prune -f").quiet().ignore_stdout().ignore_stderr().run();
    }
    result?;
    ui::step(format!(
        "end-to-end: all scenarios passed in {} (runtime image {} MB)",
        ui::duration(started.elapsed()),
        size.trim().parse::<f64>().map(|b| format!("{:.1}", b / 1e6)).unwrap_or(size)
    ));
    Ok(())
}

fn settings(port: u16, password: &str) -> anyhow::Result<DatabaseSettings> {
    let port = port.to_string();
    Ok(DatabaseSettings::from_env(&Env::from_pairs([
        ("POSTGRES_SERVER", "127.0.0.1"),
        ("POSTGRES_PORT", port.as_str()),
        ("POSTGRES_DB", "app"),
        ("POSTGRES_USER", "postgres"),
        ("POSTGRES_PASSWORD", password),
        ("POSTGRES_SSLMODE", "disable"),
    ]))?)
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buffer = vec![0u8; bytes];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buffer)?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

/// A /24 under 172.30.0.0/16 that no Docker network on this engine overlaps, for this run's
/// compose network.
fn free_subnet(sh: &Shell) -> anyhow::Result<String> {
    let format = "{{range .IPAM.Config}}{{.Subnet}} {{end}}";
    let ids = cmd!(sh, "docker network ls -q").quiet().read()?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    let taken = cmd!(sh, "docker network inspect --format {format} {ids...}").quiet().read()?;
    let range = |subnet: &str| -> Option<(u32, u32)> {
        let (address, prefix) = subnet.split_once('/')?;
        let (address, prefix): (std::net::Ipv4Addr, u32) = (address.parse().ok()?, prefix.parse().ok()?);
        let size = 1u64 << (32 - prefix.min(32));
        let start = u32::from(address) & !((size - 1) as u32);
        Some((start, (u64::from(start) + size - 1) as u32))
    };
    let taken: Vec<(u32, u32)> = taken.split_whitespace().filter_map(range).collect();
    (100..250)
        .map(|n| format!("172.30.{n}.0/24"))
        .find(|candidate| {
            let (start, end) = range(candidate).expect("a valid subnet");
            taken.iter().all(|&(s, e)| end < s || start > e)
        })
        .context("every 172.30.x.0/24 from 100 to 249 is taken by a Docker network: remove some (docker network prune)")
}

/// `docker compose` (the plugin) or Debian's `docker-compose`, whichever is installed.
struct Compose {
    program: Vec<&'static str>,
}

impl Compose {
    fn find(sh: &Shell) -> anyhow::Result<Compose> {
        if cmd!(sh, "docker compose version").quiet().ignore_stdout().ignore_stderr().run().is_ok() {
            return Ok(Compose { program: vec!["docker", "compose"] });
        }
        let version =
            cmd!(sh, "docker-compose version --short").quiet().ignore_stderr().read().context(
                "neither `docker compose` nor `docker-compose` is installed: apt-get install docker-compose",
            )?;
        // service_completed_successfully and profiles came in 1.29.
        let parts: Vec<u32> = version.trim().split('.').filter_map(|p| p.parse().ok()).collect();
        ensure!(
            parts.as_slice() >= [1, 29].as_slice(),
            "docker-compose {} is too old: 1.29 or newer understands service_completed_successfully",
            version.trim()
        );
        Ok(Compose { program: vec!["docker-compose"] })
    }
}

/// The base image from Debian packages, made once and cached as a local image.
fn base_image(sh: &Shell, root: &Path) -> anyhow::Result<String> {
    let release = std::fs::read_to_string("/etc/os-release")?
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME=").map(str::to_owned))
        .context("no VERSION_CODENAME in /etc/os-release: the end-to-end test needs a Debian host")?;
    let tag = format!("{BASE_IMAGE}:{release}");
    if cmd!(sh, "docker image inspect {tag}").quiet().ignore_stdout().ignore_stderr().run().is_ok() {
        return Ok(tag);
    }
    ui::step(format!("make the base image {tag} from Debian packages (debootstrap; cached afterwards)"));
    if cmd!(sh, "which debootstrap").quiet().ignore_stdout().run().is_err() {
        // A new machine may have empty package lists.
        cmd!(sh, "apt-get update -qq").run().context("apt-get update failed")?;
        cmd!(sh, "apt-get install -y -qq debootstrap")
            .run()
            .context("debootstrap is missing: apt-get install debootstrap")?;
    }
    let rootfs = root.join("target/e2e/rootfs");
    if rootfs.exists() {
        sh.remove_path(&rootfs)?;
    }
    let mirror = "http://deb.debian.org/debian";
    cmd!(sh, "debootstrap --variant=minbase --include=ca-certificates {release} {rootfs} {mirror}")
        .quiet()
        .ignore_stdout()
        .run()?;
    let tarball = root.join("target/e2e/rootfs.tar");
    cmd!(sh, "tar -C {rootfs} -cf {tarball} .").quiet().run()?;
    cmd!(sh, "docker import {tarball} {tag}").quiet().ignore_stdout().run()?;
    sh.remove_path(&rootfs)?;
    sh.remove_path(&tarball)?;
    Ok(tag)
}

/// One compose project in its own folder, with its own .env.
struct Project<'a> {
    sh: &'a Shell,
    compose: &'a Compose,
    dir: PathBuf,
    name: String,
    port: u16,
    password: String,
    subnet: String,
}

impl Project<'_> {
    fn prepare(&self) -> anyhow::Result<()> {
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
    fn write_env(&self, overrides: &[(&str, &str)]) -> anyhow::Result<()> {
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
    fn doctor(&self) -> anyhow::Result<std::collections::BTreeMap<String, (String, String)>> {
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

    fn backend_port(&self) -> u16 {
        self.port + 1
    }

    fn compose(&self, args: &[&str]) -> xshell::Cmd<'_> {
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
    fn start_up(&self) -> anyhow::Result<std::process::Child> {
        let mut command: std::process::Command = self.compose(&["up", "-d", "--no-build"]).into();
        Ok(command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn()?)
    }

    /// Waits for the `up` started by `start_up`; returns prestart's exit code, if it exited
    /// before `timeout`.
    fn finish_up(&self, mut up: std::process::Child, timeout: Duration) -> anyhow::Result<Option<i32>> {
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
    fn up(&self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let up = self.start_up()?;
        self.finish_up(up, timeout)
    }

    fn container(&self, service: &str) -> Option<String> {
        let id = self.compose(&["ps", "-q", service]).quiet().ignore_stderr().read().ok()?;
        let id = id.trim().to_owned();
        (!id.is_empty()).then_some(id)
    }

    /// The exit code of a stopped service's container.
    fn exit_code(&self, service: &str) -> Option<i32> {
        let id = self.container(service)?;
        let state = inspect(self.sh, &id, "{{.State.Status}}:{{.State.ExitCode}}")?;
        let (status, code) = state.trim().split_once(':')?;
        (status == "exited").then(|| code.parse().ok()).flatten()
    }

    fn is_running(&self, service: &str) -> bool {
        self.container(service)
            .is_some_and(|id| inspect(self.sh, &id, "{{.State.Running}}").is_some_and(|s| s == "true"))
    }

    fn logs(&self, service: &str) -> String {
        self.compose(&["logs", "--no-color", service]).quiet().ignore_stderr().read().unwrap_or_default()
    }

    fn down(&self) {
        let _ = self
            .compose(&["down", "-v", "--remove-orphans", "--timeout", "5"])
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run();
    }

    fn http(&self, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<(u16, String)> {
        Ok(crate::http::request(method, &format!("127.0.0.1:{}", self.backend_port()), path, body)?)
    }
}

/// The scenarios of the issue, each asserted from exit codes, logs, HTTP and the database.
fn scenarios(
    project: &Project<'_>,
    cluster: &DevCluster<'_>,
    db: &DatabaseSettings,
    serving_compose: &Audience,
) -> anyhow::Result<()> {
    scenario("1. happy path: prestart exits 0, the API answers, the worker runs a job", || {
        ensure!(
            project.up(Duration::from_secs(120))? == Some(0),
            "prestart did not exit 0:\n{}",
            project.logs("prestart")
        );
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
    })?;

    scenario("9. doctor on the host passes the setup that works, judging each path from where it starts", || {
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
    })?;

    scenario("8. sqlx.toml: the image ships the workspace's; a project's own migrations table is used", || {
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
    })?;

    scenario("5. `run --rm prestart` on a running stack: exits 0, changes nothing, leaves no container", || {
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
    })?;

    scenario("6. restart backend does not run prestart; down then up does, as a no-op", || {
        let prestart = project.container("prestart").context("prestart container")?;
        let started_at = |id: &str| inspect(project.sh, id, "{{.State.StartedAt}}").context("docker inspect");
        let before = started_at(&prestart)?;
        project.compose(&["restart", "backend"]).quiet().ignore_stdout().ignore_stderr().run()?;
        ensure!(project.container("prestart").as_deref() == Some(prestart.as_str()), "restart re-created prestart");
        ensure!(started_at(&prestart)? == before, "restarting backend ran prestart again");
        project.down();
        ensure!(
            project.up(Duration::from_secs(120))? == Some(0),
            "prestart after down/up:\n{}",
            project.logs("prestart")
        );
        ensure!(
            project.logs("prestart").contains("up to date: all 3 migrations were already applied"),
            "not a no-op:\n{}",
            project.logs("prestart")
        );
        Ok(())
    })?;

    scenario("2. POSTGRES_SERVER=localhost: the diagnosis at once, exit 4 after 30 s (not 300), no backend", || {
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
    })?;

    scenario("7. wrong password: fails fast with the authentication diagnosis", || {
        project.down();
        project.write_env(&[("POSTGRES_PASSWORD", "wrong")])?;
        let started = Instant::now();
        let code = project.up(Duration::from_secs(90))?;
        ensure!(code == Some(5), "prestart exited {code:?}:\n{}", project.logs("prestart"));
        ensure!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
        ensure!(project.logs("prestart").contains("password authentication failed"), "{}", project.logs("prestart"));
        Ok(())
    })?;

    scenario("3. the host server listens only on 127.0.0.1: the diagnosis names listen_addresses", || {
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
    })?;

    scenario("4. the server starts 10 s after `up`: prestart waits, then the stack comes up", || {
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
    })?;
    Ok(())
}

/// `docker inspect --format FORMAT ID`, trimmed.
fn inspect(sh: &Shell, id: &str, format: &str) -> Option<String> {
    cmd!(sh, "docker inspect --format {format} {id}").quiet().ignore_stderr().read().ok().map(|s| s.trim().to_owned())
}

fn scenario(name: &str, run: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    ui::step(name);
    let started = Instant::now();
    run().with_context(|| format!("scenario {name}"))?;
    ui::line(format!("passed in {}", ui::duration(started.elapsed())));
    Ok(())
}

fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if condition() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("timed out after {timeout:?}")
}

fn query(db: &DatabaseSettings, sql: &str) -> anyhow::Result<String> {
    crate::interrupt::block_on(async {
        let mut ready =
            backend::db::connect_once(db, "prestart-e2e", Duration::from_secs(5)).await.map_err(|e| anyhow!("{e}"))?;
        Ok(sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut ready.conn).await?)
    })
}
