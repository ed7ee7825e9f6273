//! Where each migration stands: the files beside the migrations table's rows.

use serde::Serialize;

use super::*;

/// Where one migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Applied,
    Pending,
    /// Applied, but the file has changed since.
    Changed,
    /// A row with `success = false`: never written by sqlx since 0.7; left by an older sqlx or by hand.
    Failed,
    /// Applied in the database, unknown to this code: a newer release ran, or this is a rollback.
    Unknown,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Applied => "applied",
            State::Pending => "pending",
            State::Changed => "changed",
            State::Failed => "failed",
            State::Unknown => "unknown",
        }
    }
}

/// One line of `migrate status`.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub version: i64,
    pub description: String,
    pub state: State,
    /// As the server printed it (see [`AppliedRow::installed_on`]); shown and serialized in RFC
    /// 3339 (see [`Entry::applied_at`]).
    #[serde(serialize_with = "rfc3339")]
    pub installed_on: Option<String>,
    pub file: Option<String>,
}

impl Entry {
    /// When the migration was applied, in RFC 3339 to the second.
    pub fn applied_at(&self) -> Option<String> {
        self.installed_on.as_deref().map(crate::db::rfc3339_seconds)
    }
}

fn rfc3339<S: serde::Serializer>(printed: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&printed.as_deref().map(crate::db::rfc3339_seconds), serializer)
}

/// The code's migrations against the database's.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub entries: Vec<Entry>,
}

impl Status {
    pub fn compare(set: &MigrationSet, applied: &[AppliedRow]) -> Status {
        let rows: BTreeMap<i64, &AppliedRow> = applied.iter().map(|r| (r.version, r)).collect();
        let mut entries: Vec<Entry> = set
            .files
            .iter()
            .map(|file| {
                let m = &file.migration;
                let row = rows.get(&m.version);
                let state = match row {
                    None => State::Pending,
                    Some(row) if !row.success => State::Failed,
                    Some(row) if row.checksum != *m.checksum => State::Changed,
                    Some(_) => State::Applied,
                };
                Entry {
                    version: m.version,
                    description: m.description.to_string(),
                    state,
                    installed_on: row.map(|r| r.installed_on.clone()),
                    file: file.path.as_ref().map(|_| file.name()),
                }
            })
            .collect();
        let known: BTreeSet<i64> = set.files.iter().map(|f| f.migration.version).collect();
        entries.extend(applied.iter().filter(|r| !known.contains(&r.version)).map(|row| Entry {
            version: row.version,
            description: row.description.clone(),
            state: if row.success { State::Unknown } else { State::Failed },
            installed_on: Some(row.installed_on.clone()),
            file: None,
        }));
        entries.sort_by_key(|e| e.version);
        Status { entries }
    }

    pub fn with_state(&self, state: State) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.state == state)
    }

    /// Every migration the code has is applied with a matching checksum. Newer versions in the
    /// database do not make it stale: that is a rolling deploy.
    pub fn is_up_to_date(&self) -> bool {
        self.entries.iter().all(|e| matches!(e.state, State::Applied | State::Unknown))
    }

    /// One sentence naming what keeps the schema from being up to date, for errors.
    pub fn describe_problems(&self) -> String {
        let list = |state| self.with_state(state).map(|e| e.version.to_string()).collect::<Vec<_>>().join(", ");
        let mut parts = Vec::new();
        for (state, what) in
            [(State::Pending, "not applied"), (State::Changed, "changed since applied"), (State::Failed, "failed")]
        {
            let versions = list(state);
            if !versions.is_empty() {
                parts.push(format!("{what}: {versions}"));
            }
        }
        parts.join("; ")
    }
}
