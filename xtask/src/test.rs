//! `cargo xtask test`: the whole test suite on a fresh machine. Makes sure the PostgreSQL server
//! binaries the tests start clusters from are there (installing them as root with apt) and that
//! sqlx-cli is (installing the version Cargo.lock pins), then runs every test of the workspace.

use xshell::Shell;

use crate::context::cargo;
use crate::dev_db::{apt_install, can_apt_install, ensure_server_bindir};
use crate::sqlx_prepare::ensure_sqlx_cli;
use crate::ui;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Passed to the test harness after `--` (a test name filter, `--nocapture`, ...)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    harness_args: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let bin = ensure_server_bindir(&sh)?;
    ensure_pgbouncer(&sh)?;
    // The sqlx-prepare tests drive sqlx-cli: install the version Cargo.lock pins when missing.
    ensure_sqlx_cli(&sh, &crate::context::root(), true)?;
    ui::step(format!("run the tests (PostgreSQL server binaries from {})", bin.display()));
    let _root = sh.push_dir(crate::context::root());
    let harness_args = &args.harness_args;
    cargo(&sh, &["test", "--workspace", "--all-features", "--locked", "--"]).args(harness_args).run()?;
    Ok(())
}

/// The pooler tests run Debian's PgBouncer.
fn ensure_pgbouncer(sh: &Shell) -> anyhow::Result<()> {
    if testkit_finds_pgbouncer() {
        return Ok(());
    }
    if !can_apt_install(sh) {
        anyhow::bail!(
            "PgBouncer not found, and the pooler tests need it: install it (`sudo apt-get install pgbouncer`, \
             `brew install pgbouncer`, `sudo dnf install pgbouncer`)"
        );
    }
    apt_install(sh, "pgbouncer", "PgBouncer for the pooler tests")
}

/// Where the tests look for it: on PATH, or in /usr/sbin, which a non-root PATH may lack.
fn testkit_finds_pgbouncer() -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).chain([std::path::PathBuf::from("/usr/sbin")]).collect::<Vec<_>>())
        .unwrap_or_default()
        .iter()
        .any(|dir| dir.join("pgbouncer").is_file())
}
