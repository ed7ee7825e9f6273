//! A pooler's refusals (08P01 without PostgreSQL's `routine` field), told apart by asking it:
//! a startup parameter it does not track, a database it or the server behind it does not have.

use super::*;

/// An error that a pooler sent, not PostgreSQL: 08P01 without the `routine` field that every
/// error of PostgreSQL's carries (PgBouncer answers every refusal so: an unknown database, a full
/// pool, a startup parameter it does not track).
pub(super) fn from_a_pooler(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else { return false };
    db.try_downcast_ref::<PgDatabaseError>().is_some_and(|pg| pg.code() == "08P01" && pg.routine().is_none())
}

/// A pooler's 08P01 that waiting will not fix, told by asking (see the two probes below): its
/// refusal of the settings' startup options, or a database the server behind it does not have.
pub(super) async fn refused_by_a_pooler(
    error: &sqlx::Error,
    settings: &DatabaseSettings,
    left: Duration,
) -> Option<Fatal> {
    if !from_a_pooler(error) {
        return None;
    }
    if settings.startup_options().is_some() && refuses_startup_options(settings, left).await {
        return Some(pooler_refused_options(error, settings));
    }
    if !database_missing_behind_a_pooler(settings, left).await {
        return unknown_to_the_pooler(error, settings, left).await;
    }
    Some(Fatal {
        kind: FatalKind::DatabaseMissing,
        detail: format!(
            "{} (the server, asked through the pooler's `postgres` database, has no database \"{}\")",
            describe_error(error),
            settings.database()
        ),
        code: None,
        hint: create_the_database(settings),
    })
}

/// Whether the pooler answers for the settings' database exactly as it answers for a database
/// that surely does not exist, where the server behind it cannot be asked (see
/// [`database_missing_behind_a_pooler`]): PgBouncer without a `*` fallback says "no such
/// database" as 08P01, the code of its transient refusals too, and no field tells them apart.
/// Nothing is matched against words of ours: the two answers of the same pooler are compared with
/// each other, each database's name taken out, so a pooler that words (or translates) its
/// refusals otherwise is judged the same way. A refusal that names no database (a full pool, a
/// pooler shutting down, a server down behind it) is never taken for one.
pub(super) async fn unknown_to_the_pooler(
    error: &sqlx::Error,
    settings: &DatabaseSettings,
    left: Duration,
) -> Option<Fatal> {
    let ours = pooler_message(error)?;
    let database = settings.database();
    if !ours.contains(database) {
        return None;
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let nowhere = format!("prestart_no_such_database_{}_{nanos}", std::process::id());
    let probe = quiet(settings.with_database(&nowhere).connect_options("prestart-probe"));
    let answer = tokio::time::timeout(left.min(Duration::from_secs(2)), PgConnection::connect_with(&probe)).await;
    let Ok(Err(theirs)) = answer else { return None };
    let theirs = pooler_message(&theirs)?;
    (ours.replace(database, "\u{0}") == theirs.replace(&nowhere, "\u{0}")).then(|| Fatal {
        kind: FatalKind::PoolerUnknownDatabase,
        detail: format!("{ours} (the same answer it gives for a database that surely does not exist)"),
        code: Some("08P01".to_owned()),
        hint: format!(
            "the connection pooler at {}:{} answers for the database \"{database}\" as for one that does not exist: \
             it has no entry for it (add it to the pooler's [databases] in pgbouncer.ini, or a `*` fallback entry), or \
             the server behind it has no such database (create it there); or fix POSTGRES_DB. A database created on \
             the server is reached through the pooler only once it has an entry, so --create-database cannot make \
             it through this pooler",
            settings.host(),
            settings.port()
        ),
    })
}

/// The message of a pooler's own 08P01 (see [`from_a_pooler`]).
pub(super) fn pooler_message(error: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(db) = error else { return None };
    from_a_pooler(error).then(|| db.message().to_owned())
}

/// Asked by trying once more without the settings' startup `options`: a pooler that lets that
/// attempt past its refusal refused the options (what waiting never fixes).
pub(super) async fn refuses_startup_options(settings: &DatabaseSettings, left: Duration) -> bool {
    let bare = quiet(settings.connect_options_without_startup_options("prestart-probe"));
    match tokio::time::timeout(left.min(Duration::from_secs(2)), PgConnection::connect_with(&bare)).await {
        Ok(Ok(_)) => true,
        Ok(Err(error)) => !from_a_pooler(&error),
        Err(_) => false,
    }
}

/// Whether the server behind a pooler says that the database of `settings` does not exist. A
/// pooler passes the server's refusal of a missing database on as its own 08P01 (PgBouncer), which
/// no field tells from its refusals that waiting fixes (a pool whose server logins fail): the
/// server itself, reached through the pooler's `postgres` database with the same credentials, is
/// asked. Where that cannot be reached either, nothing is known, and the wait goes on.
pub(super) async fn database_missing_behind_a_pooler(settings: &DatabaseSettings, left: Duration) -> bool {
    if settings.database() == "postgres" {
        return false;
    }
    let options = quiet(settings.with_database("postgres").connect_options("prestart-probe"));
    let sql = format!(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = {})",
        dollar_quoted(settings.database())
    );
    let ask = async {
        let mut conn = PgConnection::connect_with(&options).await.ok()?;
        let row = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_one(&mut conn).await.ok()?;
        sqlx::Row::try_get::<bool, _>(&row, 0).ok()
    };
    matches!(tokio::time::timeout(left.min(Duration::from_secs(2)), ask).await, Ok(Some(false)))
}

pub(super) fn pooler_refused_options(error: &sqlx::Error, settings: &DatabaseSettings) -> Fatal {
    Fatal {
        kind: FatalKind::PoolerRefusedParameter,
        detail: describe_error(error),
        code: Some("08P01".to_owned()),
        hint: format!(
            "a connection pooler (PgBouncer?) at {}:{} refuses the startup parameter `options` (the `options` of \
             DATABASE_URL), and accepts the same connection without it: prestart sends no other parameter a pooler \
             refuses by itself. Remove `options`, or add `options` to ignore_startup_parameters in pgbouncer.ini",
            settings.host(),
            settings.port()
        ),
    }
}
