//! `cargo xtask test`: the whole test suite on a fresh machine. Makes sure the PostgreSQL server
//! binaries the tests start clusters from are there (installing them as root with apt) and that
//! sqlx-cli is (installing the version Cargo.lock pins), then runs every test of the workspace.

use xshell::{Shell, cmd};

use crate::base::ui;
use crate::base::workspace::cargo;
use crate::commands::sqlx_prepare::ensure_sqlx_cli;
use crate::databases::dev_db::{apt_install, can_apt_install, ensure_server_bindir};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Passed to the test harness after `--`: a filter on test names (not files:
    /// `cargo xtask test pgbouncer` runs the tests whose names contain it), `--nocapture`, ...
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    harness_args: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let bin = ensure_server_bindir(&sh)?;
    ensure_pgbouncer(&sh)?;
    ensure_ha_parts(&sh)?;
    ensure_pypi_tool(&sh, "kubernetes-validate", "1.37.0", "kubernetes-validate", "the Kubernetes manifest tests")?;
    // The same version as the squawk crates in Cargo.toml, so the agreement test compares like with like.
    ensure_pypi_tool(&sh, "squawk-cli", "2.68.0", "squawk", "the linter's agreement tests")?;
    // The sqlx-prepare tests drive sqlx-cli: install the version Cargo.lock pins when missing.
    ensure_sqlx_cli(&sh, &crate::base::workspace::root(), true)?;
    let _root = sh.push_dir(crate::base::workspace::root());
    let started = std::time::Instant::now();
    // nextest runs the tests of every file side by side; most of their time is spent waiting on
    // servers, so three at a time suit two cores. cargo test runs the files one after another.
    if cmd!(sh, "cargo nextest --version").quiet().ignore_stdout().ignore_stderr().run().is_ok() {
        ui::step(format!("run the tests with cargo nextest (PostgreSQL server binaries from {})", bin.display()));
        let filters = args.harness_args.iter().map(|arg| if arg == "--nocapture" { "--no-capture" } else { arg });
        let run =
            ["nextest", "run", "--workspace", "--all-features", "--locked", "--no-fail-fast", "--test-threads", "3"];
        cargo(&sh, &run).args(filters).run()?;
    } else {
        ui::step(format!(
            "run the tests with cargo test (PostgreSQL server binaries from {}; cargo install cargo-nextest runs them \
             side by side, faster)",
            bin.display()
        ));
        cargo(&sh, &["test", "--workspace", "--all-features", "--locked", "--no-fail-fast", "--"])
            .args(&args.harness_args)
            .run()?;
    }
    ui::step(format!("all tests passed in {}", ui::duration(started.elapsed())));
    Ok(())
}

/// The pooler tests run Debian's PgBouncer.
fn ensure_pgbouncer(sh: &Shell) -> anyhow::Result<()> {
    if crate::tooling::pgbouncer::program().is_some() {
        return Ok(());
    }
    if !can_apt_install(sh) {
        anyhow::bail!(
            "PgBouncer not found, and the pooler tests need it: install it (`sudo apt-get install pgbouncer`, \
             `brew install pgbouncer`, `sudo dnf install pgbouncer`)"
        );
    }
    // The package would start a system PgBouncer now and at every boot; the tests start their own.
    without_service_starts("PgBouncer", || apt_install(sh, "pgbouncer", "PgBouncer for the pooler tests"))?;
    disable_services(sh, &["pgbouncer"]);
    ui::line("PgBouncer installed with its system service stopped and not enabled at boot: the tests start their own");
    Ok(())
}

/// Packages enable their units (and SysV scripts) whether or not systemd runs now; `systemctl
/// disable` undoes that offline too, and a running systemd also stops them.
fn disable_services(sh: &Shell, units: &[&str]) {
    if cmd!(sh, "systemctl --version").quiet().ignore_stdout().ignore_stderr().run().is_err() {
        return;
    }
    let running = std::path::Path::new("/run/systemd/system").is_dir();
    for unit in units {
        let disabled = cmd!(sh, "systemctl disable {unit}").quiet().ignore_stdout().ignore_stderr().run();
        let stopped = if running { cmd!(sh, "systemctl stop {unit}").quiet().ignore_stdout().run() } else { Ok(()) };
        if disabled.and(stopped).is_err() {
            ui::warn(format!("could not disable the system service {unit}: `systemctl disable --now {unit}` does it"));
        }
    }
}

/// The programs of the HA parts the failover tests run, and the Debian package of each.
const HA_PARTS: &[(&str, &str)] =
    &[("patroni", "patroni"), ("patronictl", "patroni"), ("etcd", "etcd-server"), ("haproxy", "haproxy")];

/// The failover tests (xtask/tests/failover.rs) run a real HA cluster: etcd, Patroni and HAProxy
/// from Debian's packages, installed here as root with apt, with none of their system services
/// started or enabled (the tests start their own, on ports of their own; a system etcd would
/// take 2379 at every boot). Elsewhere this says how to install them, and those tests skip with
/// a line saying so: the rest of the suite does not need them.
fn ensure_ha_parts(sh: &Shell) -> anyhow::Result<()> {
    let missing: Vec<&str> =
        HA_PARTS.iter().filter(|(program, _)| find_program(program).is_none()).map(|(_, p)| *p).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages = missing.clone();
    packages.dedup();
    let list = packages.join(" ");
    if !can_apt_install(sh) {
        ui::warn(format!(
            "{list} not found: the failover tests will be skipped; install them to run them (`sudo apt-get install \
             {list}`; elsewhere Patroni from pip, etcd and HAProxy from your system's packages)"
        ));
        return Ok(());
    }
    ui::step(format!(
        "install the HA parts for the failover tests: apt-get install {list} (missing, and we run as root)"
    ));
    let installed = without_service_starts("the HA parts", || {
        let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
        cmd!(sh, "apt-get update -qq").run()?;
        cmd!(sh, "apt-get install -y -qq --no-install-recommends {packages...}").run()?;
        Ok(())
    });
    installed.map_err(|e| anyhow::anyhow!("apt-get install {list} failed: {e}"))?;
    disable_services(sh, &["patroni", "etcd", "haproxy"]);
    ui::line(format!(
        "{list} installed with their system services stopped and not enabled at boot: the tests start their own"
    ));
    Ok(())
}

/// Runs `install` with Debian's switch for "do not start services from packages"
/// (/usr/sbin/policy-rc.d exiting 101, as Docker's images ship it) in place, when there is none.
fn without_service_starts(what: &str, install: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let planted = !policy.exists();
    if planted {
        std::fs::write(
            policy,
            format!("#!/bin/sh\n# cargo xtask test: no service starts while it installs {what}\nexit 101\n"),
        )?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let installed = install();
    if planted {
        std::fs::remove_file(policy)?;
    }
    installed
}

/// `program` on PATH, or in /usr/sbin and /usr/bin, which a non-root PATH may lack.
fn find_program(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([std::path::PathBuf::from("/usr/sbin"), std::path::PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A tool the tests drive, from PyPI, in a virtual environment of its own under target/tools/:
/// kubernetes-validate checks the Kubernetes manifests against Kubernetes' own schemas, offline;
/// squawk-cli is the reference the linter's rules are held to (the version of the squawk crates).
pub(crate) fn ensure_pypi_tool(
    sh: &Shell,
    package: &str,
    version: &str,
    program: &str,
    why: &str,
) -> anyhow::Result<()> {
    let venv = crate::base::workspace::root().join("target/tools").join(package);
    if venv.join("bin").join(program).is_file() {
        return Ok(());
    }
    if cmd!(sh, "python3 -m venv --help").quiet().ignore_stdout().ignore_stderr().run().is_err() {
        if !can_apt_install(sh) {
            anyhow::bail!(
                "python3 with venv not found, and {why} need it: install it (`sudo apt-get install python3-venv`, \
                 `brew install python`)"
            );
        }
        apt_install(sh, "python3-venv", &format!("Python's venv for {why}"))?;
    }
    ui::step(format!("install {package} from PyPI into target/tools/ ({why})"));
    cmd!(sh, "python3 -m venv {venv}").quiet().run()?;
    let pip = venv.join("bin/pip");
    let pinned = format!("{package}=={version}");
    cmd!(sh, "{pip} install --quiet --disable-pip-version-check {pinned}")
        .run()
        .map_err(|e| anyhow::anyhow!("cannot install {package} from PyPI ({e}): {why} need it"))?;
    Ok(())
}
