//! What a run of migrations will do: the pending ones up to the target, the ones to revert, and
//! the states (changed, failed, unknown) that stop it before anything changes.

use std::path::Path;
use std::time::Duration;

use anyhow::anyhow;
use backend::migrations::{AppliedRow, MigrationFile, MigrationSet, MigrationSettings, State, Status};

use crate::base::exit::{Failure, fail};
use crate::base::ui;
use crate::base::workspace::display_path;

/// What to apply and how.
pub struct Plan<'a> {
    pub set: &'a MigrationSet,
    pub settings: &'a MigrationSettings,
    pub dir: &'a Path,
    pub lock_timeout: Duration,
    /// `lock_timeout` for migration statements; zero turns it off.
    pub statement_lock_timeout: Duration,
    pub strict: bool,
    /// `--target-version`: apply up to it, or revert down to it.
    pub target: Option<i64>,
    /// `--dry-run`: say what would run, change nothing.
    pub dry_run: bool,
    /// prestart's release check and record (see `crate::machinery::release`); `None` for `migrate`.
    pub release: Option<&'a crate::machinery::release::Options>,
}

impl Plan<'_> {
    /// The pending migrations to apply, in order: those up to the target.
    pub fn to_apply<'s>(&'s self, status: &Status) -> Vec<&'s MigrationFile> {
        // A set, not a scan of the status per file: two hundred files cost a no-op 0.035 ms that way.
        let pending: std::collections::HashSet<i64> = status.with_state(State::Pending).map(|e| e.version).collect();
        self.set
            .files
            .iter()
            .filter(|f| pending.contains(&f.migration.version))
            .filter(|f| self.target.is_none_or(|target| f.migration.version <= target))
            .collect()
    }

    /// A target below what is applied is an error that changes nothing: migrate only goes up.
    pub fn check_target_not_below(&self, applied: &[AppliedRow]) -> anyhow::Result<()> {
        let latest = applied.iter().map(|r| r.version).max();
        match (self.target, latest) {
            (Some(target), Some(latest)) if target < latest => Err(fail(
                Failure::Migration,
                anyhow!(
                    "--target-version {target} is below the latest applied version {latest}, and migrate only goes up; \
                     nothing was changed\n  fix: `cargo xtask migrate revert --target-version {target}` goes down"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Names the pending migrations that the target leaves out.
    pub fn report_skipped(&self, status: &Status) {
        let Some(target) = self.target else { return };
        for entry in status.with_state(State::Pending).filter(|e| e.version > target) {
            ui::line(format!("skipped {} {}: above --target-version {target}", entry.version, entry.description));
        }
    }
}

/// The down files to run, latest first; an error that changes nothing when the target is above
/// what is applied, or when one of them has no down file.
pub fn to_revert<'s>(plan: &'s Plan<'_>, applied: &[AppliedRow]) -> anyhow::Result<Vec<&'s MigrationFile>> {
    let status = Status::compare(plan.set, applied);
    refuse_inconsistent(&status, plan)?;
    let latest = applied.iter().map(|r| r.version).max().unwrap_or(0);
    let above = match plan.target {
        Some(target) if target > latest => {
            return Err(fail(
                Failure::Migration,
                anyhow!(
                    "--target-version {target} is above the latest applied version {latest}, and revert only goes \
                     down; nothing was changed\n  fix: `cargo xtask migrate --target-version {target}` goes up"
                ),
            ));
        }
        Some(target) => target,
        None => applied.iter().map(|r| r.version).filter(|&v| v < latest).max().unwrap_or(0),
    };
    let mut downs = Vec::new();
    for row in applied.iter().rev().filter(|r| r.version > above) {
        match plan.set.downs.get(&row.version) {
            Some(down) => downs.push(down),
            None => {
                let why = match plan.set.files.iter().find(|f| f.migration.version == row.version) {
                    Some(file) => format!("{} has no down file ({} beside it)", file.name(), file.down_file_name()),
                    None => format!(
                        "{} ({}) is applied, but this code does not have it (a newer release applied it)",
                        row.version, row.description
                    ),
                };
                return Err(fail(
                    Failure::Migration,
                    anyhow!(
                        "{why}, so nothing was reverted\n  fix: write that down file beside the migration (leave the \
                         applied file as it is: its checksum covers only its own SQL), or revert with the code that \
                         has it"
                    ),
                ));
            }
        }
    }
    if applied.is_empty() {
        ui::line("no migration is applied: nothing to revert");
    } else if downs.is_empty() {
        ui::line(format!("already at version {above}: nothing to revert"));
    }
    Ok(downs)
}

/// Changed files and failed rows stop the run; versions unknown to this code warn (or stop,
/// with `--strict`).
pub fn refuse_inconsistent(status: &Status, plan: &Plan<'_>) -> anyhow::Result<()> {
    let table = &plan.settings.table_name;
    if let Some(failed) = status.with_state(State::Failed).next() {
        return Err(fail(
            Failure::Migration,
            anyhow!(
                "migration {} ({}) is recorded with success = false in {table}: sqlx since 0.7 never writes such a row \
                 (a failed migration leaves none), so an older sqlx-cli, another tool or a hand-made INSERT left it; \
                 check whether its changes are in the schema, finish or undo them by hand, then delete its row \
                 (DELETE FROM {table} WHERE version = {}) and rerun",
                failed.version,
                failed.description,
                failed.version
            ),
        ));
    }
    let changed: Vec<String> =
        status.with_state(State::Changed).map(|e| e.file.clone().unwrap_or_else(|| e.version.to_string())).collect();
    if !changed.is_empty() {
        return Err(fail(
            Failure::Migration,
            anyhow!(
                "{} changed after {} applied (the checksum differs): restore the applied version (git checkout -- {}) \
                 and put the change in a new migration (cargo xtask new-migration NAME); CRLF line endings or a BOM \
                 also change the checksum",
                changed.join(", "),
                if changed.len() == 1 { "it was" } else { "they were" },
                changed.iter().map(|f| format!("{}/{f}", display_path(plan.dir))).collect::<Vec<_>>().join(" ")
            ),
        ));
    }
    let unknown: Vec<String> =
        status.with_state(State::Unknown).map(|e| format!("{} ({})", e.version, e.description)).collect();
    if !unknown.is_empty() {
        let message = format!(
            "the database has applied {} that this code does not have: {}; a newer release ran against it, or this is a rollback",
            if unknown.len() == 1 { "a migration" } else { "migrations" },
            unknown.join(", ")
        );
        if plan.strict {
            return Err(fail(Failure::Migration, anyhow!("{message} (--strict)")));
        }
        ui::warn(message);
    }
    Ok(())
}
