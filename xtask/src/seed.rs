//! `cargo xtask seed`, and the seed step of prestart.

use std::time::Instant;

use anyhow::anyhow;
use backend::config::{FirstSuperuser, Settings};
use backend::seed::init_db;
use sqlx::postgres::PgConnection;

use crate::context::DbArgs;
use crate::exit::{Failure, fail};
use crate::session::{self, Use};
use crate::ui;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    db: DbArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let loaded = args.db.load()?;
    let superuser = required_superuser(&loaded.settings)?;
    session::run(&loaded, Use::Write, async |session| seed_step(&mut session.ready.conn, superuser).await)
}

/// The seed needs the first superuser; checked before anything else runs.
pub fn required_superuser(settings: &Settings) -> anyhow::Result<&FirstSuperuser> {
    settings.first_superuser.as_ref().ok_or_else(|| {
        fail(
            Failure::Config,
            anyhow!("FIRST_SUPERUSER and FIRST_SUPERUSER_PASSWORD are not set: the seed creates that account (see .env.example)"),
        )
    })
}

pub async fn seed_step(conn: &mut PgConnection, superuser: &FirstSuperuser) -> anyhow::Result<()> {
    ui::step("seed initial data");
    let started = Instant::now();
    let limit = backend::db::QUERY_TIMEOUT;
    let seeded = tokio::time::timeout(limit, init_db(conn, Some(superuser))).await.unwrap_or_else(|_| {
        let silent = std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the server sent no answer within {} s", limit.as_secs()),
        );
        Err(backend::seed::SeedError::from(sqlx::Error::Io(silent)))
    });
    let report = seeded.map_err(|e| {
        fail(
            Failure::Seed,
            anyhow!("{e}\n  nothing was seeded: the seed runs in one transaction; rerun when the cause is fixed"),
        )
    })?;
    let user = if report.superuser_created {
        format!("created the first superuser {}", superuser.email)
    } else {
        format!("first superuser {} already exists", superuser.email)
    };
    ui::line(format!(
        "{user}; {} default settings inserted ({})",
        report.settings_inserted,
        ui::duration(started.elapsed())
    ));
    Ok(())
}
