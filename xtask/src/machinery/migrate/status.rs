//! `cargo xtask migrate status`: the migrations beside what the database has applied.

use anyhow::anyhow;
use backend::migrations::Status;

use super::StatusArgs;
use crate::base::exit::{Failure, fail};
use crate::base::ui;
use crate::connection::session::{self, Use};

pub fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    let loaded = args.db.load()?;
    let (set, settings, _) = args.source.load(&loaded.root)?;
    let db = &loaded.settings.database;
    // One simple query, in one implicit transaction: safe behind a transaction pooler too.
    let status = session::run(&loaded, Use::Read, async |session| session.read_applied(&settings.table_name).await)?;
    let status = Status::compare(&set, &status);
    if args.json {
        let document = serde_json::json!({
            "database": db.to_string(),
            "table": settings.table_name,
            "up_to_date": status.is_up_to_date(),
            "migrations": status.entries,
        });
        ui::print(format!("{}\n", serde_json::to_string_pretty(&document)?));
    } else {
        print_table(&status);
    }
    if status.is_up_to_date() {
        Ok(())
    } else {
        Err(fail(
            Failure::NotUpToDate,
            anyhow!("{}: run `cargo xtask migrate` (or prestart)", status.describe_problems()),
        ))
    }
}

fn print_table(status: &Status) {
    println!("{:<16} {:<8} {:<21} DESCRIPTION", "VERSION", "STATE", "APPLIED AT");
    for entry in &status.entries {
        let state = entry.state.name();
        println!(
            "{:<16} {:<8} {:<21} {}",
            entry.version,
            state,
            entry.applied_at().as_deref().unwrap_or("-"),
            entry.description
        );
    }
}
