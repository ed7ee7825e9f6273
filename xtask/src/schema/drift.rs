//! `cargo xtask schema drift`, doctor's `migrations.drift` and the drift note of a failed
//! migration: the live schema against the one its applied migrations produce.

use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use backend::config::DatabaseSettings;
use backend::db::bounded;
use backend::schema::{MigrationSet, MigrationSettings, State, Status, applied_rows};
use sqlx::migrate::Migrate as _;
use sqlx::postgres::PgConnection;

use super::DriftArgs;
use super::catalog::{Difference, EMPTY_SHADOW, SHADOW_OBJECTS, Snapshot, compare, snapshot};
use crate::context::Loaded;
use crate::database::{in_throwaway, throwaway_name};
use crate::exit::{Failure, fail};
use crate::interrupt::ActiveBackend;
use crate::session::{self, Use};
use crate::ui;

pub fn run(args: DriftArgs) -> anyhow::Result<()> {
    let loaded = args.db.load()?;
    let (set, settings, _) = args.source.load(&loaded.root)?;
    let started = Instant::now();
    // Write: over the direct settings where a pooler is in the way, which the throwaway needs.
    let found = session::run(&loaded, Use::Write, async |session| {
        let server = session.settings().clone();
        find_drift(&server, &mut session.ready.conn, &set, &settings, args.shadow_database.as_deref()).await
    })?;
    let differences = match found {
        Ok(differences) => differences,
        Err(cannot) => return Err(fail(Failure::Refused, anyhow!("cannot look for drift: {cannot}"))),
    };
    if args.json {
        let document = serde_json::json!({ "drift": !differences.is_empty(), "differences": differences });
        ui::print(format!("{}\n", serde_json::to_string_pretty(&document)?));
    } else {
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

/// The live database's schema against the one its applied migrations produce, built in a
/// throwaway database on the same server (same version, same extensions available). `Err`
/// says why it cannot be told (no right to create a database, migrations this code lacks).
pub async fn find_drift(
    server: &DatabaseSettings,
    live: &mut PgConnection,
    set: &MigrationSet,
    settings: &MigrationSettings,
    shadow: Option<&str>,
) -> anyhow::Result<Result<Vec<Difference>, String>> {
    let may_create: bool = shadow.is_some() || {
        let role =
            sqlx::query_scalar("SELECT rolcreatedb OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user");
        bounded(role.fetch_one(&mut *live)).await?
    };
    if !may_create {
        return Ok(Err(format!(
            "the role {} may not create databases, and the expected schema is built in a throwaway one (ALTER ROLE \"{}\" \
             CREATEDB; or give it an empty database of its own: cargo xtask schema drift --shadow-database NAME)",
            server.user(),
            server.user()
        )));
    }
    let applied = match bounded(applied_rows(live, &settings.table_name)).await {
        Ok(applied) => applied,
        Err(error) if error.as_database_error().and_then(|e| e.code()).as_deref() == Some("42501") => {
            return Ok(Err(format!(
                "the role {} may not read {} (GRANT SELECT ON {} TO \"{}\")",
                server.user(),
                settings.table_name,
                settings.table_name,
                server.user()
            )));
        }
        Err(error) => return Err(error.into()),
    };
    let status = Status::compare(set, &applied);
    let unknown: Vec<String> = status.with_state(State::Unknown).map(|e| e.version.to_string()).collect();
    if !unknown.is_empty() {
        return Ok(Err(format!(
            "the database has applied migrations this code does not have ({}): compare with the code that applied them",
            unknown.join(", ")
        )));
    }
    let applied_files: Vec<_> = set
        .files
        .iter()
        .filter(|f| status.entries.iter().any(|e| e.version == f.migration.version && e.state != State::Pending))
        .collect();
    let found = snapshot(live, &settings.table_name).await?;
    let build = async |conn: &mut PgConnection| -> anyhow::Result<Snapshot> {
        for schema in &settings.create_schemas {
            conn.create_schema_if_not_exists(schema).await?;
        }
        conn.ensure_migrations_table(&settings.table_name).await?;
        for file in &applied_files {
            conn.apply(&settings.table_name, &file.migration).await.with_context(|| {
                format!("{} fails on an empty database, so the expected schema cannot be built", file.name())
            })?;
        }
        snapshot(conn, &settings.table_name).await
    };
    let expected = match shadow {
        Some(shadow) => match in_shadow(server, live, shadow, build).await? {
            Ok(expected) => expected,
            Err(cannot) => return Ok(Err(cannot)),
        },
        None => {
            let throwaway = throwaway_name("prestart_drift");
            let maintenance = server.with_database("postgres");
            let active = ActiveBackend::default();
            in_throwaway(&maintenance, &throwaway, &active, async {
                let mut ready = connect_to(&server.with_database(&throwaway)).await?;
                active.set(Some(&ready.process));
                let expected = build(&mut ready.conn).await?;
                active.set(None);
                Ok(expected)
            })
            .await?
        }
    };
    Ok(Ok(compare(&expected, &found)))
}

async fn connect_to(db: &DatabaseSettings) -> anyhow::Result<backend::db::Ready> {
    backend::db::connect_once(db, "prestart-drift", backend::db::ATTEMPT_TIMEOUT)
        .await
        .map_err(|e| anyhow!("cannot connect to {db}: {e}"))
}

/// Builds the expected schema in `shadow`, a database the user gave prestart for this (for a
/// role that may not create databases): it must be empty, and is emptied again after, of what
/// the build made and nothing else.
async fn in_shadow(
    server: &DatabaseSettings,
    live: &mut PgConnection,
    shadow: &str,
    build: impl AsyncFnOnce(&mut PgConnection) -> anyhow::Result<Snapshot>,
) -> anyhow::Result<Result<Snapshot, String>> {
    let live_name: String = bounded(sqlx::query_scalar("SELECT current_database()").fetch_one(&mut *live)).await?;
    if live_name == shadow {
        return Ok(Err(format!(
            "--shadow-database {shadow} is the database itself: give an empty database of its own"
        )));
    }
    let mut ready =
        match backend::db::connect_once(&server.with_database(shadow), "prestart-drift", backend::db::ATTEMPT_TIMEOUT)
            .await
        {
            Ok(ready) => ready,
            Err(e) => return Ok(Err(format!("cannot use the shadow database {shadow}: {e}"))),
        };
    let held: i64 = bounded(sqlx::query_scalar(SHADOW_OBJECTS).fetch_one(&mut ready.conn)).await?;
    if held > 0 {
        return Ok(Err(format!(
            "the shadow database {shadow} is not empty ({held} schemas, extensions, tables, functions or types): drift \
             empties it after each use, so it only takes an empty database of its own (CREATE DATABASE {shadow}_shadow)"
        )));
    }
    let built = build(&mut ready.conn).await;
    let emptied = bounded(sqlx::raw_sql(EMPTY_SHADOW).execute(&mut ready.conn)).await;
    let expected = built?;
    emptied.with_context(|| format!("could not empty the shadow database {shadow} after use"))?;
    Ok(Ok(expected))
}

/// For a failed migration: whether the database has drifted, in one line; nothing when that
/// cannot be told (the server is gone, say). An interruption meanwhile is the run's outcome.
pub fn drift_note(
    loaded: &Loaded,
    set: &MigrationSet,
    settings: &MigrationSettings,
) -> Result<Option<String>, anyhow::Error> {
    let direct = loaded.for_migrations();
    let target = direct.as_ref().unwrap_or(loaded);
    let db = target.settings.database.clone();
    let look = async {
        let mut ready = backend::db::connect_once(&db, "prestart-drift", backend::db::ATTEMPT_TIMEOUT).await.ok()?;
        // The throwaway database is dropped however this ends, the timeout included.
        tokio::time::timeout(DRIFT_NOTE_BOUND, find_drift(&db, &mut ready.conn, set, settings, None)).await.ok()
    };
    let found = match crate::interrupt::block_on(look) {
        None => return Ok(None),
        Some(Err(error)) if matches!(error.downcast_ref::<Failure>(), Some(Failure::Interrupted(_))) => {
            return Err(error);
        }
        Some(Err(_)) => return Ok(None),
        Some(Ok(found)) => found,
    };
    Ok(Some(match found {
        Ok(differences) if differences.is_empty() => {
            "no drift: the applied migrations produce exactly this database's schema".to_owned()
        }
        Ok(differences) => format!(
            "the database has drifted from its migrations (changed by hand?): {}; `cargo xtask schema drift` lists it all",
            differences.iter().take(5).map(ToString::to_string).collect::<Vec<_>>().join("; ")
        ),
        Err(cannot) => format!("drift not checked: {cannot}"),
    }))
}

/// How long a failed migration's report waits for the drift check.
const DRIFT_NOTE_BOUND: Duration = Duration::from_secs(30);
