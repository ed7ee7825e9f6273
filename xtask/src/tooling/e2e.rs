//! `cargo xtask e2e`: the real compose file against real containers and a PostgreSQL server on
//! the host, reached through `host.docker.internal`, with no registry: the base image is made
//! from Debian packages (debootstrap of the host's release, so host-built binaries find their
//! glibc), cached between runs.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use backend::config::{DatabaseSettings, Env};
use xshell::{Shell, cmd};

use crate::base::ui;
use crate::base::workspace::{cargo, root};
use crate::databases::dev_db::{Audience, DevCluster};

mod devcontainer;
mod project;
mod scenarios;

use project::Project;
use scenarios::SCENARIOS;

/// What every scenario works on: the compose project, the host's cluster and its settings.
struct Stage<'a> {
    project: &'a Project<'a>,
    cluster: &'a DevCluster<'a>,
    db: &'a DatabaseSettings,
    serving_compose: &'a Audience,
}

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
    build_image(&sh, &base)?;

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
        let stage = Stage { project: &project, cluster: &cluster, db: &db, serving_compose: &serving_compose };
        SCENARIOS.iter().try_for_each(|(name, run)| scenario(name, || run(&stage)))
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

/// The release binaries, and the runtime image of the Dockerfile's `prebuilt` target on `base`.
fn build_image(sh: &Shell, base: &str) -> anyhow::Result<()> {
    ui::step("build the release binaries and the runtime image (the Dockerfile's `prebuilt` target)");
    cargo(
        sh,
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
    crate::base::interrupt::block_on(async {
        let mut ready =
            backend::db::connect_once(db, "prestart-e2e", Duration::from_secs(5)).await.map_err(|e| anyhow!("{e}"))?;
        Ok(sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut ready.conn).await?)
    })
}
