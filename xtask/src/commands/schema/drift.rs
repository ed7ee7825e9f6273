//! `cargo xtask schema drift`, doctor's `migrations.drift` and the drift note of a failed
//! migration: the live schema against the one its applied migrations produce.
//!
//! The server being diagnosed is only read: its applied rows, its catalog and its role names, in
//! one read-only transaction that holds the migration lock shared (so a migration cannot run
//! between the two reads and make a spurious difference). The expected schema is built
//! elsewhere: by default in a throwaway cluster on this machine (`crate::databases::throwaway`), or in a
//! database named for the purpose (`--dev-url`, `--shadow-database`), or, only when asked
//! (`--shadow-on-server`), in a throwaway database on the live server.

use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use backend::config::{DatabaseSettings, Env};
use backend::db::bounded;
use backend::migrations::{AppliedRow, MigrationFile, MigrationSet, MigrationSettings, State, Status, applied_rows};
use sqlx::migrate::Migrate as _;
use sqlx::postgres::PgConnection;

use super::DriftArgs;
use super::catalog::{Difference, EMPTY_SHADOW, SHADOW_OBJECTS, Snapshot, compare, snapshot};
use crate::base::exit::{Failure, fail};
use crate::base::interrupt::ActiveBackend;
use crate::base::sql::{quote_identifier, quote_literal};
use crate::base::ui;
use crate::connection::session::{self, Use};
use crate::databases::throwaway::{Binaries, LocalCluster, in_throwaway, throwaway_name};

/// Where the expected schema is built.
pub enum Build {
    /// A throwaway cluster on this machine: the default, and all doctor and the note use.
    LocalCluster,
    /// An empty database given for the purpose (`--dev-url`, or `--shadow-database` on the same
    /// server): checked empty first, emptied after.
    Dev(DatabaseSettings),
    /// A throwaway database on the live server (`--shadow-on-server`): replays every applied
    /// migration there, cluster-wide statements included.
    OnServer(DatabaseSettings),
}

/// The differences, and where the expected schema was built, for the report.
pub struct Drift {
    pub differences: Vec<Difference>,
    pub built_in: String,
    /// What makes the comparison less than exact (built with another major version than the
    /// server's), for every report of it, the shortest included.
    pub caveat: Option<String>,
    /// The pending migrations run after the applied ones, when asked for.
    pub rehearsal: Option<Rehearsal>,
}

/// The pending migrations, applied in order to the throwaway copy of the schema.
pub enum Rehearsal {
    /// Every one ran; how many.
    Ran(usize),
    /// The first that failed, in the words of a failed migration (file, line, server's message).
    Failed { message: String, needs_this_machine: bool },
    /// Not tried, and why.
    NotTried(String),
}

pub fn run(args: DriftArgs) -> anyhow::Result<()> {
    // A URL with a password, given on the command line: blanked from everything printed, as the
    // settings' are.
    if let Some(url) = &args.dev_url {
        backend::redact::register_variable("DATABASE_URL", url);
    }
    let loaded = args.db.load()?;
    let (set, settings, _) = args.source.load(&loaded.root)?;
    let started = Instant::now();
    // The live database is only read, in one transaction: the app's settings serve, pooler or
    // not; only a throwaway database on the server needs the direct settings.
    let purpose = if args.shadow_on_server { Use::Write } else { Use::Read };
    let found = session::run(&loaded, purpose, async |session| {
        let server = session.settings().clone();
        let build = if let Some(url) = &args.dev_url {
            let env = Env::from_pairs([("DATABASE_URL", url.as_str())]);
            Build::Dev(DatabaseSettings::from_env(&env).map_err(|e| fail(Failure::Config, anyhow!("--dev-url: {e}")))?)
        } else if let Some(shadow) = &args.shadow_database {
            Build::Dev(server.with_database(shadow))
        } else if args.shadow_on_server {
            Build::OnServer(server)
        } else {
            Build::LocalCluster
        };
        find_drift(&mut session.ready.conn, &set, &settings, build, false).await
    })?;
    let drift = match found {
        Ok(drift) => drift,
        Err(cannot) => return Err(fail(Failure::Config, anyhow!("cannot look for drift: {cannot}"))),
    };
    let differences = drift.differences;
    if args.json {
        let document = serde_json::json!({ "drift": !differences.is_empty(), "built_in": drift.built_in, "differences": differences });
        ui::print(format!("{}\n", serde_json::to_string_pretty(&document)?));
    } else {
        ui::line(format!("expected schema built in {}", drift.built_in));
        for difference in &differences {
            ui::line(difference.to_string());
        }
    }
    if differences.is_empty() {
        ui::line(format!(
            "no drift: the database has the schema its migrations produce ({})",
            ui::duration(started.elapsed())
        ));
        return Ok(());
    }
    Err(fail(
        Failure::Drift,
        anyhow!(
            "the database differs from the schema its migrations produce in {} {}: someone changed it by hand, or a \
             migration was edited after it ran\n  fix: undo the changes by hand, or put them in a new migration \
             (cargo xtask new-migration NAME) that makes them on every database",
            differences.len(),
            if differences.len() == 1 { "place" } else { "places" }
        ),
    ))
}

/// What the live database says, read in one transaction under the shared migration lock.
struct Live {
    applied: Vec<AppliedRow>,
    found: Snapshot,
    roles: Vec<String>,
    major: u32,
    database: String,
    /// `ENCODING ... LC_COLLATE ... LC_CTYPE ...` of the live database, for the throwaway's.
    locale: (String, String, String),
}

/// How long the live read waits for a running migration to finish before it gives up.
const MIGRATION_WAIT: Duration = Duration::from_secs(10);

/// Reads the live database. A migration holding the lock is waited for a few seconds; `Err`
/// says why it cannot be read (a migration still running, no right to read the table). Each try
/// is a transaction of its own, which a transaction pooler may give another server session: its
/// statements are unnamed, so none is missing there.
async fn read_live(live: &mut PgConnection, settings: &MigrationSettings) -> anyhow::Result<Result<Live, String>> {
    use sqlx::Connection as _;
    let started = Instant::now();
    loop {
        let mut tx = bounded(live.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")).await?;
        // Held shared until the transaction ends: a migration (which takes it exclusively) cannot
        // start between the rows and the catalog, and neither side waits long.
        let (database, major, encoding, collate, ctype): (String, i32, String, String, String) = bounded(
            sqlx::query_as(
                "SELECT d.datname::text, pg_catalog.current_setting('server_version_num')::int4 / 10000, \
                        pg_catalog.pg_encoding_to_char(d.encoding)::text, d.datcollate::text, d.datctype::text \
                 FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()",
            )
            .persistent(false)
            .fetch_one(&mut *tx),
        )
        .await?;
        let key = crate::connection::lock::key(&database);
        let lock =
            sqlx::query_scalar("SELECT pg_catalog.pg_try_advisory_xact_lock_shared($1)").bind(key).persistent(false);
        let locked: bool = bounded(lock.fetch_one(&mut *tx)).await?;
        if !locked {
            // Ended now, not with the next try (a dropped transaction's ROLLBACK waits for the
            // next query): behind a transaction pooler the server session goes back to the pool
            // for the pause.
            bounded(tx.rollback()).await?;
            if started.elapsed() >= MIGRATION_WAIT {
                let holder = bounded(crate::connection::lock::holder(live, key))
                    .await
                    .unwrap_or_else(|e| backend::db::describe_error(&e));
                return Ok(Err(format!(
                    "a migration is running (the migration lock is held by {holder}): run it again when it is done"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        // A missing table would abort the transaction: asked first, not met.
        let exists = sqlx::query_scalar("SELECT pg_catalog.to_regclass($1) IS NOT NULL")
            .bind(&settings.table_name)
            .persistent(false);
        let applied = if !bounded(exists.fetch_one(&mut *tx)).await? {
            Ok(Vec::new())
        } else {
            bounded(applied_rows(&mut tx, &settings.table_name)).await
        };
        let applied = match applied {
            Ok(applied) => applied,
            Err(error) if error.as_database_error().and_then(|e| e.code()).as_deref() == Some("42501") => {
                return Ok(Err(format!(
                    "this role may not read {} (GRANT SELECT ON {} TO the role of these settings)",
                    settings.table_name, settings.table_name
                )));
            }
            Err(error) => return Err(error.into()),
        };
        let roles: Vec<String> = bounded(
            sqlx::query_scalar("SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname !~ '^pg_' ORDER BY 1")
                .persistent(false)
                .fetch_all(&mut *tx),
        )
        .await?;
        // Last: it leaves search_path at pg_catalog for the rest of the transaction.
        let found = snapshot(&mut tx, &settings.table_name).await?;
        bounded(tx.commit()).await?;
        return Ok(Ok(Live {
            applied,
            found,
            roles,
            major: u32::try_from(major).unwrap_or_default(),
            database,
            locale: (encoding, collate, ctype),
        }));
    }
}

/// The live database's schema against the one its applied migrations produce. `Err` says why it
/// cannot be told (no server binaries here, migrations this code lacks, ...).
pub async fn find_drift(
    live: &mut PgConnection,
    set: &MigrationSet,
    settings: &MigrationSettings,
    build: Build,
    rehearse_pending: bool,
) -> anyhow::Result<Result<Drift, String>> {
    let live = match read_live(live, settings).await? {
        Ok(live) => live,
        Err(cannot) => return Ok(Err(cannot)),
    };
    let status = Status::compare(set, &live.applied);
    let unknown: Vec<String> = status.with_state(State::Unknown).map(|e| e.version.to_string()).collect();
    if !unknown.is_empty() {
        return Ok(Err(format!(
            "the database has applied migrations this code does not have ({}): compare with the code that applied them",
            unknown.join(", ")
        )));
    }
    let applied: Vec<&MigrationFile> = set
        .files
        .iter()
        .filter(|f| status.entries.iter().any(|e| e.version == f.migration.version && e.state != State::Pending))
        .collect();
    let pending: Vec<&MigrationFile> = if rehearse_pending {
        set.files
            .iter()
            .filter(|f| status.entries.iter().any(|e| e.version == f.migration.version && e.state == State::Pending))
            .collect()
    } else {
        Vec::new()
    };
    let built = match build {
        Build::LocalCluster => in_local_cluster(&live, &applied, &pending, settings).await?,
        Build::Dev(dev) => in_dev_database(&dev, &live, &applied, settings).await?.map(|(e, b)| (e, b, None, None)),
        Build::OnServer(server) => on_server(&server, &applied, settings).await?.map(|(e, b)| (e, b, None, None)),
    };
    Ok(built.map(|(expected, built_in, rehearsal, caveat)| Drift {
        differences: compare(&expected, &live.found),
        built_in,
        caveat,
        rehearsal: rehearse_pending.then(|| {
            rehearsal
                .unwrap_or_else(|| Rehearsal::NotTried("only a throwaway cluster on this machine runs them".into()))
        }),
    }))
}

/// Applies `pending` in order after the applied ones, as sqlx applies them, up to the first
/// that fails.
async fn rehearse(conn: &mut PgConnection, pending: &[&MigrationFile], settings: &MigrationSettings) -> Rehearsal {
    for file in pending {
        if let Err(error) = conn.apply(&settings.table_name, &file.migration).await {
            let needs_this_machine = crate::base::sql::sqlstate_of(&error)
                .is_some_and(|code| matches!(code.as_str(), "0A000" | "58P01" | "42883"));
            return Rehearsal::Failed { message: crate::base::sql::describe_failure(&error, file), needs_this_machine };
        }
    }
    Rehearsal::Ran(pending.len())
}

/// The expected schema: the applied migrations, in order, on an empty database, as sqlx applies
/// them.
async fn build(
    conn: &mut PgConnection,
    applied: &[&MigrationFile],
    settings: &MigrationSettings,
) -> anyhow::Result<Snapshot> {
    for schema in &settings.create_schemas {
        conn.create_schema_if_not_exists(schema).await?;
    }
    conn.ensure_migrations_table(&settings.table_name).await?;
    for file in applied {
        conn.apply(&settings.table_name, &file.migration).await.with_context(|| {
            format!("{} fails on an empty database, so the expected schema cannot be built", file.name())
        })?;
    }
    snapshot(conn, &settings.table_name).await
}

/// How long building the expected schema may take; it holds no rows, only DDL.
const BUILD_TIMEOUT: Duration = Duration::from_secs(120);

/// What a comparison built with another major version than the server's must say.
fn crossed_versions(built: u32, live: u32) -> Option<String> {
    (built != live).then(|| {
        format!(
            "built with PostgreSQL {built}, while the server runs {live}, whose binaries are not installed here: \
             definitions may word things differently"
        )
    })
}

/// Builds in a throwaway cluster on this machine, with the live server's roles (by name: grants
/// and owners name them) and its database's encoding and locale.
async fn in_local_cluster(
    live: &Live,
    applied: &[&MigrationFile],
    pending: &[&MigrationFile],
    settings: &MigrationSettings,
) -> anyhow::Result<Result<(Snapshot, String, Option<Rehearsal>, Option<String>), String>> {
    let Some(bin) = Binaries::find(Some(live.major)) else {
        return Ok(Err(format!(
            "this machine has no PostgreSQL server binaries to build the expected schema in a throwaway cluster \
             (install PostgreSQL {} here, or give an empty database for it: cargo xtask schema drift --dev-url URL); \
             the live server is never used for it",
            live.major
        )));
    };
    let caveat = crossed_versions(bin.major, live.major);
    let mut built_in = format!("a throwaway PostgreSQL {} cluster on this machine", bin.major);
    if let Some(caveat) = &caveat {
        built_in.push_str(&format!(" ({caveat})"));
    }
    if let Err(refused) =
        crate::base::replay::refuse_reaching_out(applied.iter().chain(pending).copied(), "the comparison")
    {
        return Ok(Err(refused));
    }
    let cluster = match LocalCluster::start(bin).await {
        Ok(cluster) => cluster,
        Err(error) => return Ok(Err(format!("cannot start a throwaway cluster on this machine: {error:#}"))),
    };
    let isolated = cluster.isolated();
    if !isolated {
        built_in.push_str(" (not in a network namespace of its own: a migration that connects out would)");
    }
    let result = tokio::time::timeout(BUILD_TIMEOUT, async {
        like_the_live_one(&cluster, live).await?;
        let mut ready = connect_to(&cluster.settings(&live.database)?).await?;
        let expected = build(&mut ready.conn, applied, settings).await?;
        // Pending migrations are new code: one that reaches out (a subscription's slot on the real
        // publisher, dblink, COPY TO PROGRAM) must reach nothing, which only a network namespace
        // of its own ensures.
        let rehearsal = match (pending.is_empty(), isolated) {
            (true, _) => None,
            (false, false) => Some(Rehearsal::NotTried(
                "the throwaway cluster could not get a network namespace of its own (that takes root), and a pending \
                 migration that connects out would reach real servers from it"
                    .into(),
            )),
            (false, true) => Some(rehearse(&mut ready.conn, pending, settings).await),
        };
        anyhow::Ok((expected, rehearsal))
    })
    .await;
    cluster.stop().await;
    match result {
        Ok(Ok((expected, rehearsal))) => Ok(Ok((expected, built_in, rehearsal, caveat))),
        Ok(Err(error)) => Ok(Err(format!("in {built_in}: {error:#}"))),
        Err(_) => Ok(Err(format!("building the expected schema took more than {} s", BUILD_TIMEOUT.as_secs()))),
    }
}

/// The live server's roles and database (its encoding and, where installed here, its locale) in
/// the throwaway cluster, for the migrations to find what they name.
async fn like_the_live_one(cluster: &LocalCluster, live: &Live) -> anyhow::Result<()> {
    let mut admin = connect_to(&cluster.settings("postgres")?).await?;
    let mut setup = String::new();
    for role in &live.roles {
        setup.push_str(&format!(
            "DO $r$ BEGIN IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {literal}) THEN CREATE ROLE {ident}; \
             END IF; END $r$;\n",
            literal = quote_literal(role),
            ident = quote_identifier(role)
        ));
    }
    bounded(sqlx::raw_sql(sqlx::AssertSqlSafe(setup)).execute(&mut admin.conn)).await?;
    let name = quote_identifier(&live.database);
    let (encoding, collate, ctype) = &live.locale;
    let with_locale = format!(
        "CREATE DATABASE {name} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
        quote_literal(encoding),
        quote_literal(collate),
        quote_literal(ctype)
    );
    if let Err(error) = bounded(sqlx::raw_sql(sqlx::AssertSqlSafe(with_locale)).execute(&mut admin.conn)).await {
        // The live locale is not installed here: names and definitions do not depend on it.
        let plain = format!("CREATE DATABASE {name} TEMPLATE template0 ENCODING {}", quote_literal(encoding));
        bounded(sqlx::raw_sql(sqlx::AssertSqlSafe(plain)).execute(&mut admin.conn))
            .await
            .with_context(|| format!("after {}", backend::db::describe_error(&error)))?;
    }
    Ok(())
}

async fn connect_to(db: &DatabaseSettings) -> anyhow::Result<backend::db::Ready> {
    backend::db::connect_once(db, "prestart-drift", backend::db::ATTEMPT_TIMEOUT)
        .await
        .map_err(|e| anyhow!("cannot connect to {db}: {e}"))
}

/// Builds in `dev`, an empty database given for this: it must be empty (and not the live
/// database itself), and is emptied again after, of what the build made and nothing else.
async fn in_dev_database(
    dev: &DatabaseSettings,
    live: &Live,
    applied: &[&MigrationFile],
    settings: &MigrationSettings,
) -> anyhow::Result<Result<(Snapshot, String), String>> {
    let mut ready = match backend::db::connect_once(dev, "prestart-drift", backend::db::ATTEMPT_TIMEOUT).await {
        Ok(ready) => ready,
        Err(e) => return Ok(Err(format!("cannot use the database {dev} for the expected schema: {e}"))),
    };
    let dev_name = dev.database();
    if ready.server.database == live.database && dev_name == live.database {
        return Ok(Err(format!("{dev_name} is the database itself: give an empty database of its own")));
    }
    let held: i64 = bounded(sqlx::query_scalar(SHADOW_OBJECTS).fetch_one(&mut ready.conn)).await?;
    if held > 0 {
        return Ok(Err(format!(
            "the database {dev_name} is not empty ({held} objects): drift empties it after each use, so it only takes \
             an empty database of its own (CREATE DATABASE {dev_name}_shadow)"
        )));
    }
    let built = tokio::time::timeout(BUILD_TIMEOUT, build(&mut ready.conn, applied, settings)).await;
    let emptied = bounded(sqlx::raw_sql(EMPTY_SHADOW).execute(&mut ready.conn)).await;
    let expected = match built {
        Ok(built) => built?,
        Err(_) => return Ok(Err(format!("building the expected schema took more than {} s", BUILD_TIMEOUT.as_secs()))),
    };
    emptied.with_context(|| format!("could not empty the database {dev_name} after use"))?;
    Ok(Ok((expected, format!("the empty database {dev}, emptied again"))))
}

/// Builds in a throwaway database on the live server: what `--shadow-on-server` asks for.
async fn on_server(
    server: &DatabaseSettings,
    applied: &[&MigrationFile],
    settings: &MigrationSettings,
) -> anyhow::Result<Result<(Snapshot, String), String>> {
    let throwaway = throwaway_name("prestart_drift");
    let maintenance = server.with_database("postgres");
    let active = ActiveBackend::default();
    let expected = in_throwaway(&maintenance, &throwaway, &active, async {
        let mut ready = connect_to(&server.with_database(&throwaway)).await?;
        active.set(Some(&ready.process));
        let expected = build(&mut ready.conn, applied, settings).await?;
        active.set(None);
        Ok(expected)
    })
    .await?;
    Ok(Ok((expected, format!("a throwaway database on the live server ({throwaway}, dropped again)"))))
}
