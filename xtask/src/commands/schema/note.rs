//! The drift note of a failed migration: whether the database has drifted from its migrations,
//! in one line, built in a throwaway cluster on this machine (never on the server).

use std::time::Duration;

use backend::migrations::{MigrationSet, MigrationSettings};

use super::drift::{Build, Drift, find_drift};
use crate::settings::context::Loaded;

/// For a failed migration: whether the database has drifted, in one line; nothing when that
/// cannot be told (the server is gone, say). An interruption meanwhile is the run's outcome.
/// Built in a throwaway cluster on this machine, never on the server.
pub fn drift_note(
    loaded: &Loaded,
    set: &MigrationSet,
    settings: &MigrationSettings,
) -> Result<Option<String>, anyhow::Error> {
    let db = loaded.settings.database.clone();
    let look = async {
        let mut ready = backend::db::connect_once(&db, "prestart-drift", backend::db::ATTEMPT_TIMEOUT).await.ok()?;
        let find = find_drift(&mut ready.conn, set, settings, Build::LocalCluster, false);
        tokio::time::timeout(DRIFT_NOTE_BOUND, find).await.ok()
    };
    let found =
        match crate::base::interrupt::block_on(crate::base::interrupt::unless_signalled(async { Ok(look.await) }))? {
            None => return Ok(None),
            Some(Err(_)) => return Ok(None),
            Some(Ok(found)) => found,
        };
    Ok(Some(note_of(found)))
}

/// The drift note's words for what the comparison found; its caveat (another major version)
/// always said.
fn note_of(found: Result<Drift, String>) -> String {
    let caveat = |drift: &Drift| drift.caveat.as_ref().map(|c| format!(" ({c})")).unwrap_or_default();
    match found {
        Ok(drift) if drift.differences.is_empty() => {
            format!("no drift: the applied migrations produce exactly this database's schema{}", caveat(&drift))
        }
        Ok(drift) => format!(
            "the database has drifted from its migrations (changed by hand?): {}; `cargo xtask schema drift` lists it \
             all{}",
            drift.differences.iter().take(5).map(ToString::to_string).collect::<Vec<_>>().join("; "),
            caveat(&drift)
        ),
        Err(cannot) => format!("drift not checked: {cannot}"),
    }
}

/// How long a failed migration's report waits for the drift check.
const DRIFT_NOTE_BOUND: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::{Drift, note_of};

    /// Review 3g: a failed prestart's drift note says when the comparison crossed major versions,
    /// with drift and without. (No second major version of PostgreSQL can be installed on this
    /// project's machines, Debian 12 has 15 alone, so the caveat is built here by hand.)
    #[test]
    fn the_note_says_the_comparison_crossed_major_versions() {
        let crossed = || Drift {
            differences: Vec::new(),
            built_in: "a throwaway PostgreSQL 15 cluster on this machine".into(),
            caveat: Some("built with PostgreSQL 15, while the server runs 17".into()),
            rehearsal: None,
        };
        assert!(note_of(Ok(crossed())).contains("while the server runs 17"), "{}", note_of(Ok(crossed())));
        let mut drifted = crossed();
        drifted.differences.push(super::super::catalog::Difference {
            kind: "table".into(),
            name: "public.t".into(),
            change: super::super::catalog::Change::Missing,
            expected: None,
            found: None,
        });
        assert!(note_of(Ok(drifted)).contains("while the server runs 17"));
    }
}
