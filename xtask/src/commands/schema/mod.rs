//! `cargo xtask schema dump [--check]` and `schema drift`: the schema the migrations produce,
//! written to `schema.sql` for review in pull requests, and compared with a live database to
//! name what someone changed by hand.

mod catalog;
pub mod drift;
mod dump;
mod grants;
mod note;

use std::path::PathBuf;

use crate::settings::context::{SettingsArgs, SourceArgs, WaitArgs};

pub use drift::{Build, find_drift};
pub use note::drift_note;

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
    #[command(flatten)]
    build: crate::machinery::scratch::BuildArgs,
}

#[derive(clap::Args, Debug)]
pub struct DriftArgs {
    /// Print one JSON document instead of lines
    #[arg(long)]
    pub json: bool,
    /// Build the expected schema in this empty database (a URL; emptied again after) instead of a
    /// throwaway cluster on this machine: where this machine has no PostgreSQL server binaries
    #[arg(long, value_name = "URL", conflicts_with_all = ["shadow_database", "shadow_on_server"])]
    pub dev_url: Option<String>,
    /// The same, with an empty database of this name on the live server
    #[arg(long, value_name = "NAME", conflicts_with = "shadow_on_server")]
    pub shadow_database: Option<String>,
    /// Build it in a throwaway database on the live server itself, as before: every applied
    /// migration runs again there, its cluster-wide statements (ALTER ROLE, ALTER SYSTEM,
    /// CREATE SUBSCRIPTION) included, and the role needs CREATEDB
    #[arg(long)]
    pub shadow_on_server: bool,
    #[command(flatten)]
    pub db: crate::settings::context::DbArgs,
    #[command(flatten)]
    pub source: SourceArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Action::Dump(args) => dump::run(args),
        Action::Drift(args) => drift::run(args),
    }
}
