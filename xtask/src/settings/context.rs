//! What every database command starts from: the workspace, the settings, the migrations.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backend::config::{DatabaseSettings, Env, Settings};
use backend::migrations::{FolderReader, MigrationSet, MigrationSettings};

use crate::base::exit::{Failure, fail};
use crate::base::workspace::root;
use crate::settings::place::RuntimeContext;

/// Where settings come from: every command that reads settings has this.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SettingsArgs {
    /// Read settings from this file instead of the workspace's `.env` (it must exist; variables
    /// already in the environment win)
    #[arg(long, value_name = "PATH", global = true)]
    pub env_file: Option<PathBuf>,
}

/// Where we run, which decides what `localhost` means in diagnoses: the commands that diagnose.
#[derive(clap::Args, Debug, Clone)]
pub struct ContextArgs {
    /// Where this runs, which decides what `localhost` means in diagnoses
    #[arg(long, value_enum, default_value_t = ContextArg::Auto)]
    pub context: ContextArg,
}

impl ContextArgs {
    pub fn runtime_context(&self, in_kubernetes: bool) -> RuntimeContext {
        match self.context {
            ContextArg::Auto => RuntimeContext::detect(in_kubernetes),
            ContextArg::Host => RuntimeContext::Host,
            ContextArg::Container => RuntimeContext::Container,
            ContextArg::Kubernetes => RuntimeContext::Kubernetes,
        }
    }
}

impl SettingsArgs {
    /// The `.env` file to read.
    pub fn env_file(&self) -> PathBuf {
        self.env_file.clone().unwrap_or_else(|| root().join(".env"))
    }

    /// Reads `.env` and the environment once; every later step gets what it needs from here.
    /// An `--env-file` that does not exist is a mistake, unlike a workspace without `.env`.
    pub fn load(&self) -> anyhow::Result<Loaded> {
        self.load_with(ContextArg::Auto, None)
    }

    /// These settings, or `.env.example`'s where neither `--env-file` nor `.env` give any: on a
    /// fresh clone or in CI the example describes the local cluster.
    pub fn or_example(&self, root: &Path) -> SettingsArgs {
        if self.env_file.is_some() || root.join(".env").exists() {
            return self.clone();
        }
        crate::base::ui::line("no .env: using the settings of .env.example");
        SettingsArgs { env_file: Some(root.join(".env.example")) }
    }

    /// An `--env-file` that does not exist is a mistake (exit 3), unlike a workspace without `.env`.
    pub fn check_named_file(&self) -> anyhow::Result<()> {
        match &self.env_file {
            Some(file) if !file.exists() => Err(fail(
                Failure::Config,
                anyhow::anyhow!("--env-file {}: no such file; pass an existing file, or leave it out", file.display()),
            )),
            _ => Ok(()),
        }
    }

    /// `.env` and the environment, for the few settings beside the database's.
    pub fn load_env(&self) -> anyhow::Result<Env> {
        self.check_named_file()?;
        let (env, _) = Env::load(&self.env_file(), std::env::vars_os()).map_err(|e| fail(Failure::Config, e))?;
        Ok(env)
    }

    fn load_with(&self, context_arg: ContextArg, wait_timeout: Option<u64>) -> anyhow::Result<Loaded> {
        let env = self.load_env()?;
        let mut settings = Settings::from_env(&env).map_err(|e| fail(Failure::Config, e))?;
        let context = ContextArgs { context: context_arg }.runtime_context(settings.in_kubernetes);
        if context == RuntimeContext::Host {
            as_seen_from_the_host(&mut settings, context_arg == ContextArg::Host);
        }
        let chosen = wait_timeout.is_some() || env.get("PRESTART_WAIT_TIMEOUT").is_some();
        let wait_timeout = match wait_timeout {
            Some(secs) => Duration::from_secs(secs),
            None => wait_timeout_setting(&env)?,
        };
        let mut loaded = Loaded::new(root(), settings, context, wait_timeout);
        loaded.wait_timeout_chosen = chosen;
        Ok(loaded)
    }
}

/// The compose containers' name for this machine (`extra_hosts: host-gateway`), which one `.env`
/// gives both the containers and the host.
pub const CONTAINERS_NAME_FOR_THE_HOST: &str = "host.docker.internal";

/// On the host, `host.docker.internal` means this machine, where a Linux host does not resolve
/// the name: host commands reach the same server through loopback, and say so once. Not for
/// `verify-full`, whose certificate names the host as configured; and not where this machine's
/// `/etc/hosts` maps the name (a development container started with `--add-host`, Docker
/// Desktop's host), unless `--context host` said so: the name then leads where it says.
fn as_seen_from_the_host(settings: &mut Settings, host_chosen: bool) {
    let mut said = false;
    for db in std::iter::once(&mut settings.database).chain(settings.migration_database.as_mut()) {
        let var = db.host_variable();
        match host_view(db, host_chosen) {
            Some(on_the_host) => {
                if !said {
                    crate::base::ui::line(format!(
                        "{var}={CONTAINERS_NAME_FOR_THE_HOST} is the compose containers' name for this machine: on \
                         the host, connecting through 127.0.0.1"
                    ));
                }
                *db = on_the_host;
            }
            None if kept_as_named(db, host_chosen) && !said => crate::base::ui::line(format!(
                "{var}={CONTAINERS_NAME_FOR_THE_HOST}: this development container's /etc/hosts maps the name \
                 (--add-host), so it is used as named, as the compose containers use it; for a server in this \
                 container, set {var}=localhost (or give --context host where the command takes it)"
            )),
            None => continue,
        }
        said = true;
    }
}

/// The settings a command on the host connects with when `db` names the containers' name for
/// this machine: the same server through loopback. `None` when `db` names another host, or the
/// name is kept (see [`kept_as_named`]). `host_chosen`: `--context host` was given.
pub fn host_view(db: &DatabaseSettings, host_chosen: bool) -> Option<DatabaseSettings> {
    let aliased = db.host().eq_ignore_ascii_case(CONTAINERS_NAME_FOR_THE_HOST);
    let verify_full = matches!(db.ssl_mode(), sqlx::postgres::PgSslMode::VerifyFull);
    (aliased && !verify_full && !kept_as_named(db, host_chosen)).then(|| db.with_host("127.0.0.1"))
}

/// The containers' name for this machine, kept because this is a development container (a
/// container, judged as a host for its checkout) whose `/etc/hosts` maps the name (`--add-host`):
/// it leads to the Docker host, as for the compose containers. Not on a host itself, whose
/// `/etc/hosts` may map the name elsewhere (WSL copies Windows' hosts file, where Docker Desktop
/// writes the LAN address); not for `verify-full` (see [`host_view`]); not after `--context host`.
pub fn kept_as_named(db: &DatabaseSettings, host_chosen: bool) -> bool {
    db.host().eq_ignore_ascii_case(CONTAINERS_NAME_FOR_THE_HOST)
        && !host_chosen
        && !matches!(db.ssl_mode(), sqlx::postgres::PgSslMode::VerifyFull)
        && crate::settings::place::Evidence::gather(false).container
        && crate::settings::place::hosts_file_maps(CONTAINERS_NAME_FOR_THE_HOST)
}

/// `PRESTART_WAIT_TIMEOUT` from `.env` or the environment, else the default.
fn wait_timeout_setting(env: &Env) -> anyhow::Result<Duration> {
    let Some(value) = env.get("PRESTART_WAIT_TIMEOUT") else {
        return Ok(Duration::from_secs(DEFAULT_WAIT_SECS));
    };
    value.trim().parse().map(Duration::from_secs).map_err(|_| {
        fail(Failure::Config, anyhow::anyhow!("PRESTART_WAIT_TIMEOUT is not a whole number of seconds (300, say)"))
    })
}

/// How long to wait for the database when neither `--wait-timeout` nor `PRESTART_WAIT_TIMEOUT` say.
pub const DEFAULT_WAIT_SECS: u64 = 300;

/// Options shared by the commands that wait for the database and explain why they wait.
#[derive(clap::Args, Debug, Clone)]
pub struct DbArgs {
    #[command(flatten)]
    pub settings: SettingsArgs,
    #[command(flatten)]
    pub context: ContextArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// How lines are written: text for people, or one JSON object a line for a log collector
    /// (default: PRESTART_LOG_FORMAT from the environment, else text)
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<crate::base::ui::LogFormat>,
}

/// How long to wait for the database.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct WaitArgs {
    /// Give up waiting for the database after this many seconds, across every reconnect (default:
    /// PRESTART_WAIT_TIMEOUT from .env or the environment, else 300)
    #[arg(long, value_name = "SECS")]
    pub wait_timeout: Option<u64>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextArg {
    /// Look at /.dockerenv, /run/.containerenv, cgroups and KUBERNETES_SERVICE_HOST
    Auto,
    Host,
    Container,
    Kubernetes,
}

impl DbArgs {
    /// Reads `.env` and the environment once; every later step gets what it needs from here.
    pub fn load(&self) -> anyhow::Result<Loaded> {
        if let Some(format) = self.log_format {
            crate::base::ui::set_format(format);
        }
        self.settings.load_with(self.context.context, self.wait.wait_timeout)
    }
}

impl WaitArgs {
    /// The settings, for a command that waits but diagnoses as wherever it runs.
    pub fn load(&self, settings: &SettingsArgs) -> anyhow::Result<Loaded> {
        settings.load_with(ContextArg::Auto, self.wait_timeout)
    }
}

pub struct Loaded {
    pub root: PathBuf,
    pub settings: Settings,
    pub context: RuntimeContext,
    /// `--wait-timeout`: how long all waiting for the database may take, across reconnects.
    pub wait_timeout: Duration,
    /// What is left of it after the waits so far; shared with `for_migrations`.
    wait_left: std::rc::Rc<std::cell::Cell<Duration>>,
    /// The user set the deadline (`--wait-timeout`, `PRESTART_WAIT_TIMEOUT`): it is kept as given.
    pub wait_timeout_chosen: bool,
}

impl Loaded {
    pub fn new(root: PathBuf, settings: Settings, context: RuntimeContext, wait_timeout: Duration) -> Loaded {
        Loaded {
            root,
            settings,
            context,
            wait_timeout,
            wait_left: std::rc::Rc::new(std::cell::Cell::new(wait_timeout)),
            // A deadline derived from another is not ours to shorten.
            wait_timeout_chosen: true,
        }
    }

    /// The direct connection for migrations (`MIGRATION_DATABASE_URL`, `POSTGRES_MIGRATION_*`) as
    /// the database to connect to, drawing on the same wait budget; `None` when none is set.
    pub fn for_migrations(&self) -> Option<Loaded> {
        let direct = self.settings.migration_database.clone()?;
        Some(Loaded {
            root: self.root.clone(),
            settings: backend::config::Settings { database: direct, ..self.settings.clone() },
            context: self.context,
            wait_timeout: self.wait_timeout,
            wait_left: std::rc::Rc::clone(&self.wait_left),
            wait_timeout_chosen: self.wait_timeout_chosen,
        })
    }

    /// The same, for another database on the same server; the wait budget starts afresh.
    pub fn with_database(&self, database: &str) -> Loaded {
        Loaded::new(self.root.clone(), self.settings.with_database(database), self.context, self.wait_left())
    }

    /// What is left of the wait budget: every wait of a run, reconnects included, draws on one.
    pub fn wait_left(&self) -> Duration {
        self.wait_left.get()
    }

    pub fn spend_waiting(&self, waited: Duration) {
        self.wait_left.set(self.wait_left.get().saturating_sub(waited));
    }
}

/// Options of the commands that read migrations.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SourceArgs {
    /// The migrations folder (default: `migrations/` of the workspace, or beside the binary)
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
}

impl SourceArgs {
    /// The migrations and the `sqlx.toml` settings they are applied with.
    pub fn load(&self, root: &Path) -> anyhow::Result<(MigrationSet, MigrationSettings, PathBuf)> {
        let settings = MigrationSettings::load(root).map_err(|e| fail(Failure::Config, e))?;
        let dir = self.dir_for(root, &settings);
        let set = MigrationSet::read_dir(&dir, &settings).map_err(|e| fail(Failure::Config, e))?;
        Ok((set, settings, dir))
    }

    /// The first half of [`SourceArgs::load`], for a run that reads the files while its first
    /// query runs on the server: the settings, the folder, and its files listed, their names
    /// checked, so that a folder that cannot be used fails before any wait. A future that does
    /// its work when polled, so that `session::run_alongside` lists while the server starts our
    /// session (a quarter of a millisecond of a no-op run's).
    pub async fn list(&self, root: &Path) -> anyhow::Result<Listing> {
        let settings = MigrationSettings::load(root).map_err(|e| fail(Failure::Config, e))?;
        let dir = self.dir_for(root, &settings);
        let reader = FolderReader::open(&dir, &settings).map_err(|e| fail(Failure::Config, e))?;
        Ok(Listing { reader, settings, dir })
    }
}

/// A migrations folder listed by [`SourceArgs::list`], its files not read yet.
pub struct Listing {
    reader: FolderReader,
    pub settings: MigrationSettings,
    pub dir: PathBuf,
}

impl Listing {
    /// The versions of its forward migrations.
    pub fn versions(&self) -> impl Iterator<Item = i64> + '_ {
        self.reader.versions()
    }

    /// The files, read and checksummed. Callers read them while the server answers their first
    /// query, polling that query first ([`futures_util::future::try_join`] keeps the order;
    /// tokio's `join!` turns it round), so that it goes out before the files are read; the
    /// answer waits in the socket's buffer meanwhile. Reading is the client's biggest cost in a
    /// no-op run (1.1-1.25 ms for 203 files on a 2-core machine, 2026-12-07): pausing every few files to take in
    /// the answer cost the no-op 0.4 ms more, and reading during the login, on two cores,
    /// slowed the server's start of our session as much as it saved (2026-12-07).
    pub fn read(self) -> anyhow::Result<(MigrationSet, MigrationSettings, PathBuf)> {
        let Listing { mut reader, settings, dir } = self;
        while reader.read_next().map_err(|e| fail(Failure::Config, e))? {}
        let set = reader.finish().map_err(|e| fail(Failure::Config, e))?;
        Ok((set, settings, dir))
    }
}

impl SourceArgs {
    /// The migrations folder, even when `sqlx.toml` does not parse.
    pub fn dir(&self, root: &Path) -> PathBuf {
        self.dir_for(root, &MigrationSettings::load(root).unwrap_or_default())
    }

    fn dir_for(&self, root: &Path, settings: &MigrationSettings) -> PathBuf {
        self.source.clone().unwrap_or_else(|| root.join(&settings.migrations_dir))
    }
}
