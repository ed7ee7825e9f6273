//! Migrations: the files, and the files against the database. Each check is a function of its
//! own (files.rs, state.rs, database.rs); `run` lists them in the order of the report and says
//! what each needs.

mod database;
mod files;
mod state;

use std::time::Duration;

use backend::migrations::Status;
use sqlx::postgres::PgConnection;

use super::{Area, Doctor, Inputs, Outcome};
use database::{Against, Tried};
use files::OnDisk;
use state::States;

/// How long doctor waits for the drift check (a throwaway database and the migrations in it).
const DRIFT_CHECK_BOUND: Duration = Duration::from_secs(30);

/// How long doctor waits for a migrations table another session holds locked.
const TABLE_READ_BOUND: Duration = Duration::from_secs(5);

/// The checks that need the database, skipped or failed together when it cannot be read.
const NEEDS_THE_DATABASE: &[&str] = &[
    "migrations.lint",
    "migrations.pending",
    "migrations.changed",
    "migrations.failed",
    "migrations.unknown",
    "migrations.out_of_order",
    "migrations.invalid_indexes",
    "migrations.lock",
    "migrations.environment",
    "migrations.drift",
    "migrations.rehearsal",
    "migrations.releases",
    "migrations.seed_rerun",
];

pub async fn run(doctor: &mut Doctor, inputs: &Inputs, conn: Option<PgConnection>) {
    let loaded = inputs.source.load(&inputs.root);
    let dir = inputs.source.dir(&inputs.root);
    let on_disk = OnDisk { inputs, dir: dir.clone(), loaded: &loaded };
    for (id, check) in files::CHECKS {
        doctor.check(Area::Migrations, id, || check(&on_disk));
    }
    let (Some(mut conn), Ok((set, settings, _))) = (conn, &loaded) else {
        return all_say(doctor, Outcome::skipped("needs the database and readable migrations"));
    };
    let status = match read_status(&mut conn, set, &settings.table_name).await {
        Ok(status) => status,
        Err(unreadable) => return all_say(doctor, unreadable),
    };
    for (id, check) in state::CHECKS {
        doctor.check(Area::Migrations, id, || check(&States { set, status: &status }));
    }
    let against = Against { inputs, dir, set, settings, status: &status };
    doctor.check_async(Area::Migrations, "migrations.lint", database::lint(&against, &mut conn)).await;
    doctor.check_async(Area::Migrations, "migrations.invalid_indexes", database::invalid(&mut conn)).await;
    doctor.check_async(Area::Migrations, "migrations.lock", database::lock(&mut conn)).await;
    doctor.check_async(Area::Migrations, "migrations.environment", database::environment(&against, &mut conn)).await;
    let mut tried: Tried = Err("the drift check did not get that far".into());
    doctor.check_async(Area::Migrations, "migrations.drift", database::drift(&against, &mut conn, &mut tried)).await;
    let rehearsed = doctor.check(Area::Migrations, "migrations.rehearsal", || database::rehearsal(&against, &tried));
    if rehearsed == super::Status::Fail {
        doctor.amend_hint(
            "migrations.pending",
            "prestart would apply them up to the one that fails on a throwaway copy (migrations.rehearsal) and stop \
             there: fix that file first"
                .to_owned(),
        );
    }
    let judged = super::releases::run(doctor, &mut conn, (set, settings), &status).await;
    if judged == super::Status::Fail {
        doctor.amend_hint(
            "migrations.pending",
            "prestart would refuse the one that breaks a query of the release before (migrations.releases), exit 6"
                .to_owned(),
        );
    }
    super::seed::run(doctor, inputs, set, settings).await;
}

/// Every check that needs the database says `outcome`: it cannot be reached or read.
fn all_say(doctor: &mut Doctor, outcome: Outcome) {
    for id in NEEDS_THE_DATABASE {
        doctor.check(Area::Migrations, id, || Ok(outcome.clone()));
    }
}

/// Where each migration stands, or the failed outcome every check that needs it says.
async fn read_status(
    conn: &mut PgConnection,
    set: &backend::migrations::MigrationSet,
    table: &str,
) -> Result<Status, Outcome> {
    let applied =
        crate::connection::lock::read_applied(conn, table, std::time::Instant::now() + TABLE_READ_BOUND).await;
    match applied {
        Ok(Ok(rows)) => Ok(Status::compare(set, &rows)),
        Err(locked) => {
            Err(Outcome::fail(format!("{locked:#}"), "prestart would wait for that session, and fail at its deadline"))
        }
        Ok(Err(error)) => Err(Outcome::fail(
            format!("cannot read {table}: {}", backend::db::describe_error(&error)),
            format!("let the role read it (GRANT SELECT ON {table} TO ...), or check table-name in sqlx.toml"),
        )),
    }
}

/// A multi-line report (detail, hint) on the report's one line.
fn one_line(message: &str) -> String {
    message.lines().map(str::trim).collect::<Vec<_>>().join("; ")
}
