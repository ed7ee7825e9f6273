//! `cargo xtask seed --check`, and doctor's `seed.rerun`: the seed run twice on a throwaway
//! migrated copy of the schema (a throwaway cluster on this machine, never the database), and each
//! table whose rows the second run changed named. prestart runs again whenever its container or
//! init container starts again, so a seed that inserts without a key duplicates its rows on every
//! deploy.

use anyhow::anyhow;
use backend::config::FirstSuperuser;
use backend::db::bounded;
use backend::migrations::{MigrationSet, MigrationSettings};
use backend::seed::{SeedFile, init_db};
use sqlx::migrate::Migrate as _;
use sqlx::postgres::PgConnection;

use crate::base::exit::{Failure, fail};
use crate::base::ui;
use crate::databases::throwaway::{Binaries, LocalCluster};

/// How long building the copy and seeding it twice may take.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// A table the second run changed: its name and its rows after each run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub table: String,
    pub rows: (i64, i64),
}

impl std::fmt::Display for Changed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.rows {
            (first, second) if first == second => write!(f, "{} ({first} rows, changed in place)", self.table),
            (first, second) => {
                write!(f, "{} ({first} rows after the first run, {second} after the second)", self.table)
            }
        }
    }
}

pub fn run(
    set: &MigrationSet,
    settings: &MigrationSettings,
    superuser: &FirstSuperuser,
    files: &[SeedFile],
) -> anyhow::Result<()> {
    ui::step("run the seed twice on a throwaway migrated copy of the schema");
    // A signal stops it: the throwaway cluster is stopped and removed as a cleanup.
    let checked = crate::base::interrupt::unless_signalled(rerun_changes(set, settings, superuser, files));
    let changed = crate::base::interrupt::block_on(checked)?
        .map_err(|why| fail(Failure::Config, anyhow!("the seed cannot be checked: {why}")))?;
    if changed.is_empty() {
        ui::line(format!(
            "the second run changed no table: the seed ({} SQL seed files with it) may run on every start",
            files.len()
        ));
        return Ok(());
    }
    let named: Vec<String> = changed.iter().map(ToString::to_string).collect();
    Err(fail(
        Failure::Seed,
        anyhow!(
            "the second run of the seed changed {}: every prestart (each deploy, each restart of its container) \
             would change them again\n  fix: insert only what is missing, by a key: INSERT ... ON CONFLICT (key) \
             DO NOTHING, or INSERT ... SELECT ... WHERE NOT EXISTS (...)",
            named.join(", ")
        ),
    ))
}

/// The tables whose rows the seed's second run changed; `Err(why)` where no throwaway could be
/// made or the seed's first run failed there.
pub async fn rerun_changes(
    set: &MigrationSet,
    settings: &MigrationSettings,
    superuser: &FirstSuperuser,
    files: &[SeedFile],
) -> anyhow::Result<Result<Vec<Changed>, String>> {
    let Some(bin) = Binaries::find(None) else {
        return Ok(Err("this machine has no PostgreSQL server binaries for a throwaway cluster \
                       (apt-get install postgresql, brew install postgresql@17)"
            .to_owned()));
    };
    if let Err(refused) = crate::base::replay::refuse_reaching_out(&set.files, "the seed check") {
        return Ok(Err(refused));
    }
    let cluster = match LocalCluster::start(bin).await {
        Ok(cluster) => cluster,
        Err(error) => return Ok(Err(format!("cannot start a throwaway cluster on this machine: {error:#}"))),
    };
    let result = tokio::time::timeout(CHECK_TIMEOUT, in_cluster(&cluster, set, settings, superuser, files)).await;
    cluster.stop().await;
    result.unwrap_or_else(|_| Ok(Err(format!("the seed check took more than {} s", CHECK_TIMEOUT.as_secs()))))
}

async fn in_cluster(
    cluster: &LocalCluster,
    set: &MigrationSet,
    settings: &MigrationSettings,
    superuser: &FirstSuperuser,
    files: &[SeedFile],
) -> anyhow::Result<Result<Vec<Changed>, String>> {
    let mut admin = cluster.connect("postgres", "prestart-seed-check").await?;
    bounded(sqlx::raw_sql("CREATE DATABASE prestart_seed_check").execute(&mut admin.conn)).await?;
    let mut ready = cluster.connect("prestart_seed_check", "prestart-seed-check").await?;
    let conn = &mut ready.conn;
    for schema in &settings.create_schemas {
        conn.create_schema_if_not_exists(schema).await?;
    }
    conn.ensure_migrations_table(&settings.table_name).await?;
    for file in &set.files {
        if let Err(error) = conn.apply(&settings.table_name, &file.migration).await {
            return Ok(Err(format!(
                "the migrations do not build: {}",
                crate::base::sql::describe_failure(&error, file)
            )));
        }
    }
    let mut after = Vec::new();
    for run in ["first", "second"] {
        if let Err(error) = init_db(conn, Some(superuser), (None, None), files).await {
            return Ok(Err(format!("the seed's {run} run fails on the migrated copy: {error}")));
        }
        after.push(snapshot(conn, &settings.table_name).await?);
    }
    let (first, second) = (&after[0], &after[1]);
    Ok(Ok(second
        .iter()
        .filter(|(table, rows, digest)| !first.iter().any(|(t, r, d)| t == table && r == rows && d == digest))
        .map(|(table, rows, _)| Changed {
            table: table.clone(),
            rows: (first.iter().find(|(t, _, _)| t == table).map_or(0, |(_, r, _)| *r), *rows),
        })
        .collect()))
}

/// Every table's rows (but the migrations table's): its name, its count and a digest of them.
async fn snapshot(conn: &mut PgConnection, migrations_table: &str) -> Result<Vec<(String, i64, String)>, sqlx::Error> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') \
         AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)' \
         AND c.oid <> coalesce(pg_catalog.to_regclass($1), 0) ORDER BY 1",
    )
    .bind(migrations_table)
    .fetch_all(&mut *conn)
    .await?;
    let mut rows = Vec::with_capacity(tables.len());
    for table in tables {
        let sql = format!(
            "SELECT count(*), md5(coalesce(string_agg(ROW(t.*)::text, E'\\n' ORDER BY ROW(t.*)::text), '')) FROM {table} t"
        );
        let (count, digest): (i64, String) = sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_one(&mut *conn).await?;
        rows.push((table, count, digest));
    }
    Ok(rows)
}
