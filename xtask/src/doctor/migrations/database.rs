//! The checks against the database itself: the pending migrations linted with its facts, INVALID
//! indexes, the migration lock, the recorded environment, drift, and the pending migrations tried
//! on a throwaway copy of the schema. The server is only read.

use std::path::PathBuf;

use backend::migrations::{MigrationSet, MigrationSettings, State, Status};
use sqlx::postgres::PgConnection;

use super::super::{Inputs, Outcome};
use super::{DRIFT_CHECK_BOUND, one_line};
use crate::base::workspace::display_path;
use crate::commands::lint::Config;
use crate::commands::lint::command::{lint_set, read_facts};
use crate::commands::lint::rules::Severity;
use crate::commands::schema::drift::Rehearsal;
use crate::machinery::migrate::{drop_invalid_indexes_fix, invalid_indexes};

/// What the checks against the database need besides the connection.
pub(super) struct Against<'a> {
    pub inputs: &'a Inputs,
    pub dir: PathBuf,
    pub set: &'a MigrationSet,
    pub settings: &'a MigrationSettings,
    pub status: &'a Status,
}

/// What the drift check learnt of the pending migrations, for the rehearsal: tried on the same
/// throwaway copy, or why not.
pub(super) type Tried = Result<(Rehearsal, String), String>;

/// The pending migrations, linted with the database's facts (table sizes, say).
pub(super) async fn lint(against: &Against<'_>, conn: &mut PgConnection) -> anyhow::Result<Outcome> {
    let pending: Vec<i64> = against.status.with_state(State::Pending).map(|e| e.version).collect();
    if pending.is_empty() {
        return Ok(Outcome::ok("no pending migration to lint"));
    }
    // The same engine, settings and database facts as lint-migrations (a .squawk.toml that
    // does not parse is lint-migrations' to report: doctor lints with the defaults then).
    let config = Config::load(&against.dir, &against.inputs.root).unwrap_or_else(|_| Config::defaults());
    let facts = read_facts(conn).await.ok();
    let mut outcome =
        lint_set(against.set, &config, facts.as_ref(), |file| pending.contains(&file.migration.version), true);
    outcome.rank();
    // A note (a lock on an empty table) is harmless: it warns of nothing.
    let findings: Vec<_> = outcome.findings.iter().filter(|f| f.severity != Severity::Note).collect();
    Ok(if findings.is_empty() {
        Outcome::ok(format!("the {} pending migrations are safe for a live database", pending.len()))
    } else {
        Outcome::warn(
            findings
                .iter()
                .map(|f| format!("{}:{}: {}", display_path(&f.file), f.line, f.rule))
                .collect::<Vec<_>>()
                .join(", "),
            "see `cargo xtask lint-migrations` for why each hurts a live database and the safe way",
        )
    })
}

/// INVALID indexes, left by an interrupted `CREATE INDEX CONCURRENTLY`.
pub(super) async fn invalid(conn: &mut PgConnection) -> anyhow::Result<Outcome> {
    let invalid = invalid_indexes(conn).await?;
    Ok(if invalid.is_empty() {
        Outcome::ok("no INVALID indexes")
    } else {
        Outcome::fail(
            format!("INVALID indexes, left by an interrupted CREATE INDEX CONCURRENTLY: {}", invalid.join(", ")),
            drop_invalid_indexes_fix(&invalid),
        )
    })
}

/// Whether another session holds the migration lock, and who.
pub(super) async fn lock(conn: &mut PgConnection) -> anyhow::Result<Outcome> {
    let database: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&mut *conn).await?;
    let key = crate::connection::lock::key(&database);
    let held = crate::connection::lock::is_held(conn, key).await?;
    Ok(if held {
        let holder = crate::connection::lock::holder(conn, key).await?;
        Outcome::warn(
            format!("the migration lock is held by {holder}"),
            "prestart waits for it (up to --migration-lock-timeout); if that session is stuck, end it: SELECT pg_terminate_backend(pid)",
        )
    } else {
        Outcome::ok("the migration lock is free")
    })
}

/// The environment the database records against the one these settings say.
pub(super) async fn environment(against: &Against<'_>, conn: &mut PgConnection) -> anyhow::Result<Outcome> {
    // The record `database drop` asks, against these settings: a local .env that reaches
    // another environment's database (an exported DATABASE_URL) shows here first.
    let said = against.inputs.settings.as_ref().ok().and_then(|s| s.environment.clone());
    let recorded =
        backend::db::bounded(crate::databases::environment::recorded(conn, &against.settings.table_name)).await?;
    let table = crate::databases::environment::table_for(&against.settings.table_name);
    Ok(match recorded {
        None => Outcome::ok(format!("no recorded environment yet ({table}): prestart and migrate write it")),
        Some(recorded) if recorded.environment == said => {
            Outcome::ok(format!("the database records {}, as these settings say", recorded.describe()))
        }
        Some(recorded) => Outcome::warn(
            format!(
                "the database records {}, while these settings say {}",
                recorded.describe(),
                said.map_or_else(|| "no ENVIRONMENT".to_owned(), |e| format!("ENVIRONMENT={e}"))
            ),
            "these settings may reach another environment's database (a DATABASE_URL exported in this shell \
             wins over .env): check where they point before running anything that changes it",
        ),
    })
}

/// The schema against what the applied migrations produce in a throwaway cluster; `rehearsal`
/// gets what the same copy says of the pending migrations.
pub(super) async fn drift(
    against: &Against<'_>,
    conn: &mut PgConnection,
    rehearsal: &mut Tried,
) -> anyhow::Result<Outcome> {
    // Bounded like every check; the throwaway cluster is removed however this ends.
    // Built in a throwaway cluster on this machine: the server diagnosed is only read.
    let look = crate::commands::schema::find_drift(
        conn,
        against.set,
        against.settings,
        crate::commands::schema::Build::LocalCluster,
        true,
    );
    let Ok(found) = tokio::time::timeout(DRIFT_CHECK_BOUND, look).await else {
        *rehearsal =
            Err(format!("the throwaway copy of the schema took more than {} s to build", DRIFT_CHECK_BOUND.as_secs()));
        return Ok(Outcome::skipped(format!(
            "the drift check took more than {} s: run `cargo xtask schema drift` to wait for it",
            DRIFT_CHECK_BOUND.as_secs()
        )));
    };
    let mut found = found?;
    *rehearsal = match &mut found {
        Ok(drift) => drift
            .rehearsal
            .take()
            .map(|r| (r, drift.built_in.clone()))
            .ok_or_else(|| "the drift check did not try them".to_owned()),
        Err(cannot) => Err(cannot.clone()),
    };
    Ok(match found {
        Err(cannot) => Outcome::skipped(cannot),
        Ok(drift) if drift.differences.is_empty() => Outcome::ok(format!(
            "no drift: the schema is what the applied migrations produce (built in {})",
            drift.built_in
        )),
        Ok(crate::commands::schema::drift::Drift { differences, .. }) => Outcome::warn(
            format!(
                "the schema differs from what the applied migrations produce: {}",
                differences.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            ),
            "someone changed it by hand, or a migration was edited after it ran: undo the change, or put it in \
             a new migration (cargo xtask new-migration NAME); `cargo xtask schema drift` lists it",
        ),
    })
}

/// The pending migrations, in order, on the throwaway copy the drift check built.
pub(super) fn rehearsal(against: &Against<'_>, rehearsal: &Tried) -> anyhow::Result<Outcome> {
    if against.status.with_state(State::Pending).next().is_none() {
        return Ok(Outcome::ok("no pending migration to try"));
    }
    Ok(match rehearsal {
        Err(cannot) | Ok((Rehearsal::NotTried(cannot), _)) => {
            Outcome::skipped(format!("the pending migrations were not tried: {cannot}"))
        }
        Ok((Rehearsal::Ran(count), built_in)) => Outcome::ok(format!(
            "the {count} pending {} run, in order, on a throwaway copy of the schema ({built_in})",
            if *count == 1 { "migration" } else { "migrations" }
        )),
        Ok((Rehearsal::Failed { message, needs_this_machine: true }, built_in)) => Outcome::warn(
            format!(
                "a pending migration fails on the throwaway copy of the schema ({built_in}) for want of what this \
                 machine's PostgreSQL lacks, which the server may have: {}",
                one_line(message)
            ),
            "install it on this machine (the extension's package, say) for doctor to try the rest",
        ),
        Ok((Rehearsal::Failed { message, .. }, built_in)) => Outcome::fail(
            format!(
                "a pending migration fails on a throwaway copy of the schema ({built_in}), so prestart would stop \
                 there: {}",
                one_line(message)
            ),
            "fix that file (pending here; where another database applied it already, fix it in a new migration)",
        ),
    })
}
