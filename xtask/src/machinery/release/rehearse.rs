//! The release check on a throwaway copy of the schema: the applied migrations built in a
//! throwaway cluster on this machine, a release's queries described there, then each pending
//! migration applied and the queries described again. What prestart does for a file it cannot
//! judge inside its own transaction (`-- no-transaction`, or one that may end its transaction),
//! and what `lint-migrations --against` does offline. The server being deployed to runs nothing.

use std::time::Duration;

use anyhow::Context as _;
use backend::db::bounded;
use backend::migrations::{MigrationFile, MigrationSettings};
use sqlx::migrate::Migrate as _;

use super::queries::Query;
use super::{Check, Finding};
use crate::databases::throwaway::{Binaries, LocalCluster};

/// How long building and checking may take; the throwaway holds no rows, only DDL.
const REHEARSAL_TIMEOUT: Duration = Duration::from_secs(120);

/// What to rehearse.
pub struct Rehearsal<'a> {
    /// The migrations the schema has, in order.
    pub applied: &'a [&'a MigrationFile],
    /// The migrations to check, in order: each is judged against the schema before the first.
    pub pending: &'a [&'a MigrationFile],
    pub settings: &'a MigrationSettings,
    /// The roles the migrations may grant to or own objects as (the live server's, by name).
    pub roles: &'a [String],
    /// The live server's major version, to pick the same binaries where installed.
    pub major: Option<u32>,
}

/// The findings of each pending migration, by its position in `pending`; `Err(why)` where no
/// throwaway could be made or the schema could not be built there.
pub async fn on_throwaway(
    rehearsal: &Rehearsal<'_>,
    releases: &[(&str, &[Query])],
) -> anyhow::Result<Result<Vec<Vec<Finding>>, String>> {
    let Some(bin) = Binaries::find(rehearsal.major) else {
        return Ok(Err("this machine has no PostgreSQL server binaries for a throwaway cluster \
                       (apt-get install postgresql, brew install postgresql@17)"
            .to_owned()));
    };
    let files = rehearsal.applied.iter().chain(rehearsal.pending).copied();
    if let Err(refused) = crate::base::replay::refuse_reaching_out(files, "the release check") {
        return Ok(Err(refused));
    }
    let cluster = match LocalCluster::start(bin).await {
        Ok(cluster) => cluster,
        Err(error) => return Ok(Err(format!("cannot start a throwaway cluster on this machine: {error:#}"))),
    };
    let result = tokio::time::timeout(REHEARSAL_TIMEOUT, run(&cluster, rehearsal, releases)).await;
    cluster.stop().await;
    match result {
        Ok(Ok(findings)) => Ok(Ok(findings)),
        Ok(Err(error)) => Ok(Err(format!("in a throwaway cluster: {error:#}"))),
        Err(_) => Ok(Err(format!("the rehearsal took more than {} s", REHEARSAL_TIMEOUT.as_secs()))),
    }
}

async fn run(
    cluster: &LocalCluster,
    rehearsal: &Rehearsal<'_>,
    releases: &[(&str, &[Query])],
) -> anyhow::Result<Vec<Vec<Finding>>> {
    let mut admin = cluster.connect("postgres", "prestart-release-check").await?;
    // The roles the migrations may name, made where missing: quoted as identifiers, never
    // spliced into a quoted body.
    let present: Vec<String> =
        bounded(sqlx::query_scalar("SELECT rolname::text FROM pg_catalog.pg_roles").fetch_all(&mut admin.conn)).await?;
    for role in rehearsal.roles.iter().filter(|r| !present.contains(r)) {
        let create = format!("CREATE ROLE \"{}\"", role.replace('"', "\"\""));
        bounded(sqlx::raw_sql(sqlx::AssertSqlSafe(create)).execute(&mut admin.conn)).await?;
    }
    // Alone: CREATE DATABASE refuses the implicit transaction of a message with more.
    bounded(sqlx::raw_sql("CREATE DATABASE prestart_release_check").execute(&mut admin.conn)).await?;
    let mut ready = cluster.connect("prestart_release_check", "prestart-release-check").await?;
    let conn = &mut ready.conn;
    let table = rehearsal.settings.table_name.as_str();
    for schema in &rehearsal.settings.create_schemas {
        conn.create_schema_if_not_exists(schema).await?;
    }
    conn.ensure_migrations_table(table).await?;
    for file in rehearsal.applied {
        conn.apply(table, &file.migration)
            .await
            .with_context(|| format!("{} fails on an empty database, so the schema cannot be built", file.name()))?;
    }
    let check = Check::prepare(conn, releases).await?;
    let (total, failing) = check.counts();
    if failing > 0 {
        crate::base::ui::line(format!(
            "{failing} of the {total} queries do not describe on the schema before the pending migrations (they \
             fail there already): not counted"
        ));
    }
    let mut findings = Vec::with_capacity(rehearsal.pending.len());
    // Each file is told what it breaks first; what an earlier file broke stays broken after it.
    let mut told: Vec<Finding> = Vec::new();
    for file in rehearsal.pending {
        // A file that fails here is judged on what it left (a file outside one transaction keeps
        // its first statements): run for real, it fails the same way, with sqlx-cli's result.
        if let Err(error) = conn.apply(table, &file.migration).await {
            crate::base::ui::line(format!(
                "{} fails on the throwaway copy too ({}): judged on what it left there",
                file.name(),
                crate::base::sql::describe_failure(&error, file)
            ));
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
        }
        // What the file left in the session (a SET) is not what the release's connections see.
        sqlx::raw_sql("SET SESSION AUTHORIZATION DEFAULT; RESET ALL; RESET ROLE").execute(&mut *conn).await?;
        let new: Vec<Finding> = check.findings(conn, false).await?.into_iter().filter(|f| !told.contains(f)).collect();
        told.extend(new.iter().cloned());
        findings.push(new);
    }
    Ok(findings)
}

/// The live server's roles (by name: grants and owners name them) and its major version.
pub async fn live_roles_and_major(conn: &mut sqlx::PgConnection) -> Result<(Vec<String>, Option<u32>), sqlx::Error> {
    let roles: Vec<String> = backend::db::bounded(
        sqlx::query_scalar("SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname !~ '^pg_' ORDER BY 1")
            .persistent(false)
            .fetch_all(&mut *conn),
    )
    .await?;
    let version: i32 = backend::db::bounded(
        sqlx::query_scalar("SELECT pg_catalog.current_setting('server_version_num')::int4")
            .persistent(false)
            .fetch_one(&mut *conn),
    )
    .await?;
    Ok((roles, u32::try_from(version / 10000).ok()))
}
