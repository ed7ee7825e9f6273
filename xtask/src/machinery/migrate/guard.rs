//! prestart's release check on the migrate path: before the first pending migration, the queries
//! of the release recorded before this one are described on the current schema; each migration
//! is judged in its own open transaction, after its SQL and its row and before its COMMIT, and a
//! migration that breaks one of them is rolled back and refused (exit 6). Earlier migrations that
//! broke nothing have committed, as under sqlx-cli. A file that may end its own transaction, or
//! runs without one, is judged first on a throwaway copy (see `throwaway_judge`).

use anyhow::anyhow;
use backend::migrations::MigrationFile;
use sqlx::postgres::PgConnection;

use super::plan::Plan;
use crate::base::exit::{Failure, fail};
use crate::base::ui;
use crate::machinery::release::queries::Query;
use crate::machinery::release::rehearse::{Rehearsal, live_roles_and_major, on_throwaway};
use crate::machinery::release::{self, Check, Finding};

/// The check of this run, with what the run knows about it.
pub(super) struct Guard {
    check: Check,
    /// The releases checked against, for a rehearsal on a throwaway copy.
    releases: Vec<(String, Vec<Query>)>,
    /// Refuse (any environment but `ENVIRONMENT=local`), or only warn.
    refuse: bool,
    /// What the check cost this run: the description on the schema before, and each judgement.
    spent: std::cell::Cell<std::time::Duration>,
    judged: std::cell::Cell<usize>,
    /// What migrations of this run broke and were let through.
    told: std::cell::RefCell<Vec<Finding>>,
}

/// The guard for a run with pending migrations: `None` where prestart is not the caller or
/// nothing is recorded to check against.
pub(super) async fn prepare(conn: &mut PgConnection, plan: &Plan<'_>) -> anyhow::Result<Option<Guard>> {
    let Some(options) = plan.release else { return Ok(None) };
    let previous = previous_releases(conn, plan.settings.table_name.as_str(), options).await?;
    let mut sources: Vec<(String, Vec<Query>)> =
        previous.iter().map(|r| (format!("release {}", r.name), r.queries.clone())).collect();
    let known: Vec<&Query> = previous.iter().flat_map(|r| r.queries.iter()).collect();
    let (statements, unavailable) = other_clients(conn, &known).await?;
    if let Some(statements) = statements {
        sources.push((release::STATEMENTS.to_owned(), statements));
    }
    // Said once: what there is to check against, or why nothing is.
    match (previous.is_empty(), unavailable) {
        (true, Some(why)) => ui::line(format!(
            "release {}: nothing to check the migrations against: no earlier release is recorded, and {why}",
            options.this.name
        )),
        (true, None) => ui::line(format!("release {}: no earlier release is recorded", options.this.name)),
        (false, Some(why)) => ui::line(why),
        (false, None) => {}
    }
    if sources.is_empty() {
        return Ok(None);
    }
    let borrowed: Vec<(&str, &[Query])> = sources.iter().map(|(n, q)| (n.as_str(), q.as_slice())).collect();
    let started = std::time::Instant::now();
    let check = Check::prepare(conn, &borrowed).await.map_err(|e| {
        fail(
            Failure::Migration,
            anyhow!(
                "the release check could not describe the queries on the current schema: {}; nothing was applied\n  \
                 fix: run prestart again (the check's statements are bounded: 10 s each, 5 s for a lock)",
                backend::db::describe_error(&e)
            ),
        )
    })?;
    let spent = std::cell::Cell::new(started.elapsed());
    let (total, failing) = check.counts();
    let mut names: Vec<String> =
        previous.iter().map(|r| format!("release {} (last deployed {})", r.name, r.last_deployed)).collect();
    if sources.iter().any(|(n, _)| n == release::STATEMENTS) {
        names.push(release::STATEMENTS.to_owned());
    }
    let failing = match failing {
        0 => String::new(),
        n => format!("; {n} of them fail on the current schema already and are not counted"),
    };
    ui::line(format!(
        "release {}: checking each migration against the {total} queries of {}{failing}",
        options.this.name,
        names.join(" and ")
    ));
    Ok(Some(Guard {
        check,
        releases: sources,
        refuse: options.refuse,
        spent,
        judged: Default::default(),
        told: Default::default(),
    }))
}

/// The releases to check against (see `record::previous`), each named one recorded.
async fn previous_releases(
    conn: &mut PgConnection,
    table: &str,
    options: &release::Options,
) -> anyhow::Result<Vec<release::record::Recorded>> {
    let recorded = backend::db::bounded(release::record::all(conn, table)).await.map_err(|e| {
        fail(
            Failure::Migration,
            anyhow!(
                "the release check cannot read {}: {}",
                release::record::table_for(table),
                backend::db::describe_error(&e)
            ),
        )
    })?;
    if let Some(name) = options.compatible_with.iter().find(|name| !recorded.iter().any(|r| &r.name == *name)) {
        let known: Vec<&str> = recorded.iter().map(|r| r.name.as_str()).collect();
        return Err(fail(
            Failure::Migration,
            anyhow!(
                "--compatible-with {name}: no release of that name is recorded in {} (recorded: {}); nothing was \
                 applied",
                release::record::table_for(table),
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            ),
        ));
    }
    let previous: Vec<release::record::Recorded> =
        release::record::previous(&recorded, &options.compatible_with).into_iter().cloned().collect();
    for unreadable in previous.iter().filter(|r| !r.readable) {
        ui::warn(format!(
            "release {}'s record in {} cannot be read by this version: its queries are not checked",
            unreadable.name,
            release::record::table_for(table)
        ));
    }
    Ok(previous)
}

/// The statements of the database's other clients (`pg_stat_statements`), `None` where there are
/// none to check; and why they are not read, where they are not.
async fn other_clients(
    conn: &mut PgConnection,
    known: &[&Query],
) -> anyhow::Result<(Option<Vec<Query>>, Option<String>)> {
    let read = backend::db::bounded(release::statements::read(conn, known)).await.map_err(|e| {
        fail(
            Failure::Migration,
            anyhow!("the release check cannot read pg_stat_statements: {}", backend::db::describe_error(&e)),
        )
    })?;
    Ok(match read {
        release::statements::Statements::Read(statements, limited) => {
            ui::line(format!(
                "pg_stat_statements: {} statements of this database's clients to check too{}",
                statements.len(),
                limited.map(|l| format!(" ({l})")).unwrap_or_default()
            ));
            ((!statements.is_empty()).then_some(statements), None)
        }
        release::statements::Statements::Unavailable(why) => (None, Some(why)),
    })
}

/// What the judge says of one migration.
pub(super) enum Verdict {
    Commit,
    /// Roll back and refuse, with what it breaks.
    Refuse(Vec<Finding>),
}

impl Guard {
    /// Judges `file` on the schema `conn` sees (its open transaction, or a throwaway where it ran).
    pub(super) async fn judge(
        &self,
        conn: &mut PgConnection,
        file: &MigrationFile,
        in_transaction: bool,
    ) -> Result<Verdict, sqlx::Error> {
        let started = std::time::Instant::now();
        let findings = self.check.findings(conn, in_transaction).await?;
        self.spent.set(self.spent.get() + started.elapsed());
        self.judged.set(self.judged.get() + 1);
        Ok(self.verdict(file, findings))
    }

    /// One line on what the check cost (the bench reads it): the queries described on the schema
    /// before, and again in each migration judged in its transaction.
    pub(super) fn summary(&self) -> String {
        let (total, _) = self.check.counts();
        format!(
            "release check: {total} queries, {} migrations judged in their transactions, {:.1} ms",
            self.judged.get(),
            self.spent.get().as_secs_f64() * 1000.0
        )
    }

    /// Refuses `file` before it runs where [`Guard::judge_on_throwaway`] says so.
    pub(super) async fn before_running(
        &self,
        conn: &mut PgConnection,
        file: &MigrationFile,
        applied: &[&MigrationFile],
        settings: &backend::migrations::MigrationSettings,
    ) -> anyhow::Result<()> {
        match self.judge_on_throwaway(conn, file, applied, settings).await? {
            Verdict::Commit => Ok(()),
            Verdict::Refuse(findings) => Err(refused(file, &findings)),
        }
    }

    /// Judges a file that cannot be judged in its own transaction (`-- no-transaction`, or SQL
    /// that may end it) before it runs: on a throwaway copy of the schema built from `applied`,
    /// never on the target. Where no copy can be made, it is refused (or only said, where the
    /// guard does not refuse), unless it only adds what no query notices.
    async fn judge_on_throwaway(
        &self,
        conn: &mut PgConnection,
        file: &MigrationFile,
        applied: &[&MigrationFile],
        settings: &backend::migrations::MigrationSettings,
    ) -> anyhow::Result<Verdict> {
        if release::cannot_break(file.migration.sql.as_str()) {
            return Ok(Verdict::Commit);
        }
        ui::line(format!(
            "{}: checked on a throwaway copy of the schema first (it runs outside one transaction)",
            file.name()
        ));
        let (roles, major) = live_roles_and_major(conn).await.map_err(|e| fail(Failure::Migration, e))?;
        let releases: Vec<(&str, &[Query])> = self.releases.iter().map(|(n, q)| (n.as_str(), q.as_slice())).collect();
        let rehearsal = Rehearsal { applied, pending: std::slice::from_ref(&file), settings, roles: &roles, major };
        match on_throwaway(&rehearsal, &releases).await? {
            Ok(mut findings) => Ok(self.verdict(file, findings.pop().unwrap_or_default())),
            Err(why) if self.refuse && !release::is_contract(file.migration.sql.as_str()) => Err(fail(
                Failure::Migration,
                anyhow!(
                    "{} runs outside one transaction, so it is checked against the release before on a throwaway copy \
                     first, and none could be made: {why}; nothing of it was applied\n  fix: run prestart where \
                     PostgreSQL's server binaries are installed, or check it in CI (cargo xtask lint-migrations \
                     --against <deployed ref>) and mark its leading comments `-- prestart: contract`",
                    file.name()
                ),
            )),
            Err(why) => {
                ui::warn(format!("{}: not checked against the release before: {why}", file.name()));
                Ok(Verdict::Commit)
            }
        }
    }

    fn verdict(&self, file: &MigrationFile, findings: Vec<Finding>) -> Verdict {
        // What an earlier file of this run broke and was let through (a contract step, a local
        // run) stays broken after it: said of that file, not of each one after.
        let findings: Vec<Finding> = findings.into_iter().filter(|f| !self.told.borrow().contains(f)).collect();
        let verdict = self.judge_findings(file, findings.clone());
        if matches!(verdict, Verdict::Commit) {
            self.told.borrow_mut().extend(findings);
        }
        verdict
    }

    fn judge_findings(&self, file: &MigrationFile, findings: Vec<Finding>) -> Verdict {
        let (breaking, reported): (Vec<Finding>, Vec<Finding>) = findings.into_iter().partition(|f| f.change.breaks());
        for line in release::lines(&reported) {
            ui::warn(format!("{}: {line} (reported, not refused: read it as nullable first)", file.name()));
        }
        if breaking.is_empty() {
            return Verdict::Commit;
        }
        // Let through, and said: a contract step, or a local run (no earlier release serves there).
        let (before, after) = if release::is_contract(file.migration.sql.as_str()) {
            ("is a contract step (`-- prestart: contract`): applied although it breaks", "")
        } else if !self.refuse {
            ("breaks", " (applied: ENVIRONMENT=local; any other environment refuses it)")
        } else {
            return Verdict::Refuse(breaking);
        };
        ui::warn(format!(
            "{} {before} {} of the release before{after}: {}",
            file.name(),
            count(breaking.len()),
            release::lines(&breaking).join("; ")
        ));
        Verdict::Commit
    }
}

fn count(n: usize) -> String {
    if n == 1 { "1 query".to_owned() } else { format!("{n} queries") }
}

/// The refusal of `file`, for the run's output and exit 6.
pub(super) fn refused(file: &MigrationFile, findings: &[Finding]) -> anyhow::Error {
    let mut releases: Vec<&str> = findings.iter().map(|f| f.release.as_str()).collect();
    releases.dedup();
    let mut text = format!(
        "{} would break {} of {}, which may still be serving (a rolling update) or serve again (a rollback): \
         refused: nothing of it was applied",
        file.name(),
        count(findings.len()),
        releases.join(" and ")
    );
    for line in release::lines(findings) {
        text.push_str(&format!("\n  {line}"));
    }
    text.push_str(
        "\n  fix: make the change in steps a release apart (expand, then contract: docs/releases.md has the recipes for \
         a rename, a type change, a required column and a drop); once no release that runs these queries serves any \
         more, mark the file's leading comments with `-- prestart: contract`",
    );
    fail(Failure::Migration, anyhow!(text))
}
