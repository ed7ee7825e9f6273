//! The checks of the files against the migrations table: pending, changed, failed, unknown and
//! out-of-order migrations, from one comparison.

use backend::migrations::{MigrationSet, State, Status};

use super::super::Outcome;

/// What the state checks need: the files and where each stands in the database.
pub(super) struct States<'a> {
    pub set: &'a MigrationSet,
    pub status: &'a Status,
}

impl States<'_> {
    /// `version description` of each migration in `state`.
    fn versions(&self, state: State) -> Vec<String> {
        self.status.with_state(state).map(|e| format!("{} {}", e.version, e.description)).collect()
    }
}

type Check = fn(&States<'_>) -> anyhow::Result<Outcome>;

/// The state checks, in the order the report lists them.
pub(super) const CHECKS: &[(&str, Check)] = &[
    ("migrations.pending", pending),
    ("migrations.changed", changed),
    ("migrations.failed", failed),
    ("migrations.unknown", unknown),
    ("migrations.out_of_order", out_of_order),
];

fn pending(states: &States<'_>) -> anyhow::Result<Outcome> {
    let pending = states.versions(State::Pending);
    Ok(if pending.is_empty() {
        Outcome::ok(format!("all {} migrations are applied", states.set.files.len()))
    } else {
        Outcome::warn(
            format!("{} pending: {}", pending.len(), pending.join(", ")),
            "prestart applies them (cargo xtask prestart)",
        )
    })
}

fn changed(states: &States<'_>) -> anyhow::Result<Outcome> {
    let changed: Vec<String> = states.status.with_state(State::Changed).filter_map(|e| e.file.clone()).collect();
    Ok(if changed.is_empty() {
        Outcome::ok("no applied migration has changed since")
    } else {
        Outcome::fail(
            format!("changed since they were applied: {}", changed.join(", ")),
            "restore the applied version (git checkout) and put the change in a new migration (cargo xtask new-migration NAME)",
        )
    })
}

fn failed(states: &States<'_>) -> anyhow::Result<Outcome> {
    let failed = states.versions(State::Failed);
    Ok(if failed.is_empty() {
        Outcome::ok("no failed migration rows")
    } else {
        Outcome::fail(
            format!(
                "recorded with success = false: {}; sqlx since 0.7 never writes such a row (a failed migration leaves \
                 none), so an older sqlx-cli, another tool or a hand-made INSERT left it, and sqlx refuses to migrate \
                 past it",
                failed.join(", ")
            ),
            "check whether that migration's changes are in the schema, finish or undo them by hand, delete its row \
             from the migrations table, and rerun prestart",
        )
    })
}

fn unknown(states: &States<'_>) -> anyhow::Result<Outcome> {
    let unknown = states.versions(State::Unknown);
    Ok(if unknown.is_empty() {
        Outcome::ok("the database has no migration this code lacks")
    } else {
        Outcome::warn(
            format!("applied but missing from the folder: {}", unknown.join(", ")),
            "a newer release ran against this database, or this is a rollback: deploy the code that has them",
        )
    })
}

fn out_of_order(states: &States<'_>) -> anyhow::Result<Outcome> {
    let newest_applied = states
        .status
        .entries
        .iter()
        .filter(|e| matches!(e.state, State::Applied | State::Changed | State::Unknown))
        .map(|e| e.version)
        .max();
    let Some(newest) = newest_applied else { return Ok(Outcome::ok("nothing applied yet")) };
    let older: Vec<String> = states
        .status
        .with_state(State::Pending)
        .filter(|e| e.version < newest)
        .map(|e| format!("{} {}", e.version, e.description))
        .collect();
    Ok(if older.is_empty() {
        Outcome::ok("no pending migration is older than the newest applied one")
    } else {
        Outcome::warn(
            format!("pending but older than the newest applied ({newest}): {}", older.join(", ")),
            "they were merged after newer ones ran; prestart applies them out of order: check they do not depend on later ones",
        )
    })
}
