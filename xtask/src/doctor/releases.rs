//! doctor's `migrations.releases`: the releases the database records (`_prestart_releases`), and
//! whether a pending migration would break a query of the one prestart would check it against,
//! tried on a throwaway copy of the schema (the server diagnosed is only read).

use backend::migrations::{MigrationFile, MigrationSet, MigrationSettings, State, Status};
use sqlx::postgres::PgConnection;

use super::{Area, Doctor, Outcome};
use crate::machinery::release::rehearse::{Rehearsal, live_roles_and_major, on_throwaway};
use crate::machinery::release::{self, record};

pub async fn run(
    doctor: &mut Doctor,
    conn: &mut PgConnection,
    (set, settings): (&MigrationSet, &MigrationSettings),
    status: &Status,
) -> super::Status {
    doctor
        .check_async(Area::Migrations, "migrations.releases", async {
            let recorded = backend::db::bounded(record::all(conn, &settings.table_name)).await?;
            if recorded.is_empty() {
                return Ok(Outcome::ok(format!(
                    "no release recorded yet ({}): prestart records each one with its queries",
                    record::table_for(&settings.table_name)
                )));
            }
            let listed: Vec<String> = recorded
                .iter()
                .map(|r| {
                    format!(
                        "{} ({} queries, first {}, last {})",
                        r.name,
                        r.queries.len(),
                        r.first_deployed,
                        r.last_deployed
                    )
                })
                .collect();
            let listed = format!("{} recorded: {}", count(recorded.len(), "release"), listed.join(", "));
            let Some(previous) = record::previous(&recorded, &[]).into_iter().next() else {
                return Ok(Outcome::ok(format!("{listed}; no release to check against")));
            };
            let pending: Vec<&MigrationFile> = set
                .files
                .iter()
                .filter(|f| status.with_state(State::Pending).any(|e| e.version == f.migration.version))
                .collect();
            if pending.is_empty() {
                return Ok(Outcome::ok(format!("{listed}; no pending migration to check against {}", previous.name)));
            }
            let applied: Vec<&MigrationFile> = set
                .files
                .iter()
                .filter(|f| status.with_state(State::Applied).any(|e| e.version == f.migration.version))
                .collect();
            let (roles, major) = live_roles_and_major(conn).await?;
            let rehearsal = Rehearsal { applied: &applied, pending: &pending, settings, roles: &roles, major };
            let label = format!("release {}", previous.name);
            let releases = [(label.as_str(), previous.queries.as_slice())];
            let findings = match on_throwaway(&rehearsal, &releases).await? {
                Ok(findings) => findings,
                Err(why) => {
                    return Ok(Outcome::skipped(format!(
                        "{listed}; the pending migrations were not checked against {}: {why}",
                        previous.name
                    )));
                }
            };
            Ok(judge(&listed, &previous.name, &pending, &findings))
        })
        .await
}

/// The outcome: what breaks which query, by file; a contract step only warns.
fn judge(listed: &str, previous: &str, pending: &[&MigrationFile], findings: &[Vec<release::Finding>]) -> Outcome {
    let mut refused = Vec::new();
    let mut contracts = Vec::new();
    for (file, found) in pending.iter().zip(findings) {
        let breaking: Vec<release::Finding> = found.iter().filter(|f| f.change.breaks()).cloned().collect();
        if breaking.is_empty() {
            continue;
        }
        let line = format!("{} breaks {}", file.name(), release::lines(&breaking).join("; "));
        if release::is_contract(file.migration.sql.as_str()) {
            contracts.push(line);
        } else {
            refused.push(line);
        }
    }
    if !refused.is_empty() {
        return Outcome::fail(
            format!("{listed}; prestart would refuse (exit 6): {}", refused.join("; ")),
            "expand, then contract, a release apart (docs/releases.md); mark a file `-- prestart: contract` once the \
             release that uses what it removes runs nowhere",
        );
    }
    if !contracts.is_empty() {
        return Outcome::warn(
            format!("{listed}; contract steps that break {previous}: {}", contracts.join("; ")),
            format!("apply them only once {previous} runs nowhere"),
        );
    }
    Outcome::ok(format!("{listed}; the {} pending migrations break no query of {previous}", pending.len()))
}

fn count(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}
