//! `cargo xtask test`: the whole test suite on a fresh machine. Makes sure the PostgreSQL server
//! binaries the tests start clusters from are there (installing them as root with apt) and that
//! sqlx-cli is (installing the version Cargo.lock pins), then runs every test of the workspace.

use xshell::Shell;

use crate::context::cargo;
use crate::dev_db::ensure_server_bindir;
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
    // The sqlx-prepare tests drive sqlx-cli: install the version Cargo.lock pins when missing.
    ensure_sqlx_cli(&sh, &crate::context::root(), true)?;
    ui::step(format!("run the tests (PostgreSQL server binaries from {})", bin.display()));
    let _root = sh.push_dir(crate::context::root());
    let harness_args = &args.harness_args;
    cargo(&sh, &["test", "--workspace", "--all-features", "--locked", "--"]).args(harness_args).run()?;
    Ok(())
}
