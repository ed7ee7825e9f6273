//! What every database command starts from: the workspace, the settings, the migrations.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use backend::config::{Env, Settings};
use backend::schema::{MigrationSet, MigrationSettings};

use crate::diagnose::RuntimeContext;
use crate::exit::{Failure, fail};

/// Where settings come from and where we run: every command that reads settings has these.
#[derive(clap::Args, Debug, Clone)]
pub struct SettingsArgs {
    /// Read settings from this file instead of the workspace's `.env` (a missing file is fine;
    /// variables already in the environment win)
    #[arg(long, value_name = "PATH")]
    pub env_file: Option<PathBuf>,
    /// Where this runs, which decides what `localhost` means in diagnoses
    #[arg(long, value_enum, default_value_t = ContextArg::Auto)]
    pub context: ContextArg,
}

impl SettingsArgs {
    /// The `.env` file to read.
    pub fn env_file(&self) -> PathBuf {
        self.env_file.clone().unwrap_or_else(|| root().join(".env"))
    }

    pub fn runtime_context(&self, in_kubernetes: bool) -> RuntimeContext {
        match self.context {
            ContextArg::Auto => RuntimeContext::detect(in_kubernetes),
            ContextArg::Host => RuntimeContext::Host,
            ContextArg::Container => RuntimeContext::Container,
            ContextArg::Kubernetes => RuntimeContext::Kubernetes,
        }
    }
}

/// Options shared by the commands that talk to the database.
#[derive(clap::Args, Debug, Clone)]
pub struct DbArgs {
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Give up waiting for the database after this many seconds
    #[arg(long, value_name = "SECS", env = "PRESTART_WAIT_TIMEOUT")]
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
    pub fn wait_timeout_or(&self, default_secs: u64) -> Duration {
        Duration::from_secs(self.wait_timeout.unwrap_or(default_secs))
    }

    /// Reads `.env` and the environment once; every later step gets what it needs from here.
    pub fn load(&self) -> anyhow::Result<Loaded> {
        let (env, _) =
            Env::load(&self.settings.env_file(), std::env::vars_os()).map_err(|e| fail(Failure::Config, e))?;
        let settings = Settings::from_env(&env).map_err(|e| fail(Failure::Config, e))?;
        let context = self.settings.runtime_context(settings.in_kubernetes);
        Ok(Loaded { root: root(), settings, context })
    }
}

pub struct Loaded {
    pub root: PathBuf,
    pub settings: Settings,
    pub context: RuntimeContext,
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

/// The folder holding `.env`, `sqlx.toml` and `migrations/`: beside the binary in the image
/// (`/app/xtask`, `/app/migrations`, or `/app/sqlx.toml`), else the workspace this binary was
/// built from.
pub fn root() -> PathBuf {
    let beside_binary = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf));
    if let Some(dir) = beside_binary.filter(|dir| dir.join("migrations").is_dir() || dir.join("sqlx.toml").is_file()) {
        return dir;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if workspace.join("Cargo.toml").is_file() {
        return workspace.canonicalize().unwrap_or(workspace);
    }
    PathBuf::from(".")
}

/// Shows a path relative to the current folder when it is inside it.
pub fn display_path(path: &Path) -> String {
    let cwd = std::env::current_dir().ok();
    let shown = cwd.as_deref().and_then(|cwd| path.strip_prefix(cwd).ok()).unwrap_or(path);
    shown.display().to_string()
}

/// A tokio runtime for one command: current-thread, since each command does one thing at a time.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")
}

/// `cargo ARGS`, without the package variables `cargo run` gave us (CARGO_PKG_NAME, ...): ring's
/// build script watches them, and would make every build started from xtask begin again at ring.
pub fn cargo<'a>(sh: &'a xshell::Shell, args: &[&str]) -> xshell::Cmd<'a> {
    let mut command = xshell::cmd!(sh, "cargo {args...}");
    for (name, _) in std::env::vars_os() {
        let is_package_variable = name.to_str().is_some_and(|name| {
            ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_PRIMARY_"]
                .iter()
                .any(|p| name.starts_with(p))
        });
        if is_package_variable {
            command = command.env_remove(name);
        }
    }
    command
}
