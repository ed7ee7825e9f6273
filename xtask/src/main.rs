//! `cargo xtask`: gets the database ready before the services start, and the tools around it.
//!
//! This file only parses the command line and dispatches; each command lives in its own module.

mod base;
mod commands;
mod connection;
mod databases;
mod doctor;
mod machinery;
mod settings;
mod tooling;

use std::process::ExitCode;

use base::{exit, interrupt, ui};
use commands::{database, dev, lint, new_migration, prestart, schema, sqlx_prepare, wait_for_db};
use databases::dev_db;
use machinery::{migrate, seed};
use tooling::{bench, e2e, test};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "Get the database ready before the services start", after_help = exit::exit_codes_help())]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Wait for PostgreSQL, apply pending migrations, seed initial data; exit 0 when all succeed
    Prestart(prestart::Args),
    /// Find what keeps prestart from working, and say how to fix it
    Doctor(doctor::Args),
    /// Wait until PostgreSQL accepts connections and answers a query
    WaitForDb(wait_for_db::Args),
    /// Apply pending migrations (`migrate status` to compare files and database)
    Migrate(migrate::Args),
    /// Create, drop, reset or set up the database itself (sqlx-cli's `database` commands)
    Database(database::Args),
    /// The schema the migrations produce: dump it to schema.sql, or find drift in the live database
    Schema(schema::Args),
    /// Create a migration file with a version greater than every existing one
    NewMigration(new_migration::Args),
    /// Report migration statements that lock or break a live database; exit 1 when one is found
    LintMigrations(lint::command::Args),
    /// Create the first superuser and default settings if they are missing
    Seed(seed::Args),
    /// Run the whole stack on this machine without Docker: database, prestart, backend and worker
    Dev(dev::Args),
    /// Manage the local PostgreSQL cluster under target/dev-db/
    DevDb(dev_db::Args),
    /// Record the offline data of `sqlx::query!` in .sqlx/ against a throwaway, migrated database
    SqlxPrepare(sqlx_prepare::Args),
    /// The compose stack against real containers and a PostgreSQL server on the host
    E2e(e2e::Args),
    /// Print the speed figures: no-op prestart, wait detection, migrations, concurrency, build times
    Bench(bench::Args),
    /// Run the whole test suite (installs the PostgreSQL server binaries where missing, as root)
    Test(test::Args),
}

fn main() -> ExitCode {
    backend::config::isolate_from_libpq_environment();
    exit::report_panics_as_bugs();
    ui::set_format(ui::format_from_environment());
    let cli = parse_command_line();
    if let Err(error) = interrupt::start() {
        return exit::report(Err(error));
    }
    let result = std::panic::catch_unwind(|| dispatch(cli)).unwrap_or_else(|_| Err(exit::bug()));
    interrupt::finish_cleanups();
    exit::report(result)
}

/// The command line. The commands a container runs on every start are parsed alone: clap builds
/// every command's arguments before it parses, a third of a millisecond of a no-op prestart.
/// Whatever does not parse that way (help, a mistake, any other command) goes through the whole
/// tree, so what it prints is the same.
fn parse_command_line() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let alone = match args.get(1).and_then(|arg| arg.to_str()) {
        Some("prestart") => parsed_alone(&args).map(Command::Prestart),
        Some("wait-for-db") => parsed_alone(&args).map(Command::WaitForDb),
        Some("migrate") => parsed_alone(&args).map(Command::Migrate),
        _ => None,
    };
    alone.map_or_else(|| Cli::parse_from(args), |command| Cli { command })
}

/// The arguments after the command's name, parsed by that command's `Args` alone.
fn parsed_alone<A: clap::Args + clap::FromArgMatches>(args: &[std::ffi::OsString]) -> Option<A> {
    let command = A::augment_args(clap::Command::new("cargo xtask").no_binary_name(true));
    let matches = command.try_get_matches_from(args.get(2..)?).ok()?;
    A::from_arg_matches(&matches).ok()
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Prestart(args) => prestart::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::WaitForDb(args) => wait_for_db::run(args),
        Command::Migrate(args) => migrate::run(args),
        Command::Database(args) => database::run(args),
        Command::Schema(args) => schema::run(args),
        Command::NewMigration(args) => new_migration::run(args),
        Command::LintMigrations(args) => lint::command::run(args),
        Command::Seed(args) => seed::run(args),
        Command::Dev(args) => dev::run(args),
        Command::DevDb(args) => dev_db::run(args),
        Command::Test(args) => test::run(args),
        Command::Bench(args) => bench::run(args),
        Command::E2e(args) => e2e::run(args),
        Command::SqlxPrepare(args) => sqlx_prepare::run(args),
    }
}
