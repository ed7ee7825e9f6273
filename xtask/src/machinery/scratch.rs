//! Where `schema dump` and `sqlx-prepare` build the schema the migrations produce: a throwaway
//! cluster on this machine, as drift does, so that no `CREATE DATABASE` and no migration (with
//! its cluster-wide statements: roles, `ALTER SYSTEM`, subscriptions) runs on the server the
//! settings name; that server only when asked (`--build-on-server`), as on a machine without
//! PostgreSQL's server binaries.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use backend::config::DatabaseSettings;
use backend::migrations::MigrationFile;
use xshell::Shell;

use crate::base::exit::{Failure, fail};
use crate::base::ui;
use crate::databases::ddl::{MAINTENANCE_DATABASE, target};
use crate::databases::dev_db::DevCluster;
use crate::databases::throwaway::{Binaries, LocalCluster};
use crate::settings::context::Loaded;
use crate::settings::place::is_loopback;

/// The flag that builds on the configured server.
#[derive(clap::Args, Debug, Default)]
pub struct BuildArgs {
    /// Build in a throwaway database on the server the settings name (CREATE DATABASE, every
    /// migration with its cluster-wide statements, then DROP DATABASE there) instead of a
    /// throwaway cluster on this machine
    #[arg(long)]
    pub build_on_server: bool,
}

/// A server to build a throwaway database `name` on: its maintenance database's settings, the
/// throwaway's own, and the cluster to stop afterwards (when it is one of ours).
pub struct Place {
    pub server: DatabaseSettings,
    pub target: Loaded,
    cluster: Option<LocalCluster>,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cluster {
            Some(cluster) => write!(f, "a throwaway PostgreSQL {} cluster on this machine", cluster.major()),
            None => write!(f, "{}", self.server),
        }
    }
}

impl Place {
    /// A throwaway cluster, or with `--build-on-server` the configured server; `files` are
    /// what will be replayed there, refused when one can reach out (see `crate::base::replay`).
    pub fn find<'a>(
        sh: &Shell,
        loaded: &Loaded,
        name: &str,
        args: &BuildArgs,
        files: impl IntoIterator<Item = &'a MigrationFile>,
        work: &str,
    ) -> anyhow::Result<Place> {
        if args.build_on_server {
            let server = scratch_server(sh, loaded)?;
            let target = loaded.for_migrations().as_ref().unwrap_or(loaded).with_database(name);
            return Ok(Place { server, target, cluster: None });
        }
        crate::base::replay::refuse_reaching_out(files, work)
            .map_err(|refused| fail(Failure::Config, anyhow!(refused)))?;
        let bin = Binaries::find(None).ok_or_else(|| {
            fail(
                Failure::Config,
                anyhow!(
                    "{work} builds in a throwaway PostgreSQL cluster on this machine, and it has no server binaries: \
                     install them (`sudo apt-get install postgresql`, `brew install postgresql@17`), or pass \
                     --build-on-server to build in a throwaway database on the server the settings name"
                ),
            )
        })?;
        let cluster =
            crate::base::interrupt::block_on(LocalCluster::start(bin)).context("start a throwaway cluster")?;
        let server = cluster.settings(MAINTENANCE_DATABASE)?;
        let settings = backend::config::Settings { database: cluster.settings(name)?, ..loaded.settings.clone() };
        let target = Loaded::new(loaded.root.clone(), settings, loaded.context, loaded.wait_timeout);
        Ok(Place { server, target, cluster: Some(cluster) })
    }

    /// Stops the throwaway cluster, if there is one.
    pub async fn finish(self) {
        if let Some(cluster) = self.cluster {
            cluster.stop().await;
        }
    }
}

/// The configured server if it answers, else the local cluster of `dev-db`: where throwaway
/// databases are made with `--build-on-server`. Returns the maintenance database's settings.
fn scratch_server(sh: &Shell, loaded: &Loaded) -> anyhow::Result<DatabaseSettings> {
    let db = target(loaded);
    let maintenance = db.with_database(MAINTENANCE_DATABASE);
    let probe = crate::base::interrupt::block_on(backend::db::connect_once(
        &maintenance,
        "prestart-scratch",
        Duration::from_secs(2),
    ));
    match probe {
        Ok(_) => Ok(maintenance),
        Err(backend::db::Failure::Fatal(fatal)) => Err(fail(Failure::Refused, anyhow!("{maintenance}: {fatal}"))),
        Err(backend::db::Failure::Retry(reason)) if is_loopback(db.host()) => {
            ui::line(format!(
                "the configured server does not answer ({reason}): using the local cluster of target/dev-db/"
            ));
            DevCluster::new(sh)?.start(&db, None)?;
            Ok(maintenance)
        }
        Err(backend::db::Failure::Retry(reason)) => Err(fail(
            Failure::Unreachable,
            anyhow!(
                "{db} does not answer ({reason}): start it, or set {}=localhost to use a local cluster",
                db.host_variable()
            ),
        )),
    }
}

/// A fresh session on a throwaway database, brought up to date by prestart's own migrate step
/// (here, not in `throwaway`, which the migrate path's release check uses: no circle).
pub async fn migrated_session<'a>(
    target: &'a Loaded,
    active: &'a crate::base::interrupt::ActiveBackend,
    plan: &crate::machinery::migrate::Plan<'_>,
) -> anyhow::Result<crate::connection::session::Session<'a>> {
    let mut session = crate::connection::session::Session::open(target, active).await?;
    session.make_stoppable();
    crate::machinery::migrate::migrate_step(&mut session, plan, None, None).await?;
    Ok(session)
}
