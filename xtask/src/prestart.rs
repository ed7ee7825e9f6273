//! `cargo xtask prestart`: wait for the database, migrate, seed. What the compose `prestart`
//! service and the Kubernetes init container run; backend and worker start only after exit 0.

use std::time::{Duration, Instant};

use crate::context::{DbArgs, SourceArgs};
use crate::migrate::{MigrateOptions, migrate_step};
use crate::seed::{required_superuser, seed_step};
use crate::session::{self, Use};
use crate::ui;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub migrate: MigrateOptions,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    // Everything that can be checked without the database is checked before waiting for it.
    let loaded = args.db.load()?;
    let superuser = required_superuser(&loaded.settings)?;
    let (set, settings, dir) = args.source.load(&loaded.root)?;
    let plan = args.migrate.plan(&set, &settings, &dir, loaded.wait_timeout);
    // One dedicated connection serves all three steps: no pool, and no second handshake.
    session::run(&loaded, Use::Write, async |session| {
        let migrating = Instant::now();
        migrate_step(session, &plan).await?;
        // After a long migration the server may have restarted; right after a short one, asking
        // would only cost the no-op run a round trip.
        if migrating.elapsed() > Duration::from_secs(1) {
            session.ensure_alive().await?;
        }
        seed_step(&mut session.ready.conn, superuser).await
    })?;
    ui::step(format!("database ready in {}", ui::duration(started.elapsed())));
    Ok(())
}
