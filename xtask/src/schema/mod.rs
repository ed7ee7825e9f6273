//! `cargo xtask schema dump [--check]` and `schema drift`: the schema the migrations produce,
//! written to `schema.sql` for review in pull requests, and compared with a live database to
//! name what someone changed by hand.

mod catalog;
mod drift;
mod dump;

use std::path::PathBuf;

use crate::context::{SettingsArgs, SourceArgs, WaitArgs};

pub use drift::{drift_note, find_drift};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Write schema.sql: the schema the migrations produce, built in a throwaway database and
    /// dumped without owners, privileges or anything that varies by machine
    Dump(DumpArgs),
    /// Compare the live database with the schema its applied migrations produce, and name each
    /// difference; exit 0 when there is none, 9 when there is drift
    Drift(DriftArgs),
}

#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    /// Change nothing; fail when schema.sql is missing or differs (the CI gate)
    #[arg(long)]
    check: bool,
    /// Where to write (default: schema.sql of the workspace)
    #[arg(long, value_name = "PATH")]
    output: Option<PathBuf>,
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    source: SourceArgs,
}

#[derive(clap::Args, Debug)]
pub struct DriftArgs {
    /// Print one JSON document instead of lines
    #[arg(long)]
    json: bool,
    /// Build the expected schema in this empty database on the same server (emptied again after)
    /// instead of a throwaway one: for a role that may not create databases
    #[arg(long, value_name = "NAME")]
    shadow_database: Option<String>,
    #[command(flatten)]
    db: crate::context::DbArgs,
    #[command(flatten)]
    source: SourceArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Action::Dump(args) => dump::run(args),
        Action::Drift(args) => drift::run(args),
    }
}
