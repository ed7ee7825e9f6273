//! `cargo xtask doctor`: finds what keeps prestart from working and says how to fix it.
//!
//! Each check is a value with an area and a stable id that returns a status, one line of what it
//! found and, for warn and fail, a hint. A check that errors or panics becomes a failed check and
//! the run goes on. Areas, in the order a connection needs them: env, location, network,
//! postgres, migrations, compose.

mod compose;
mod env;
mod hba;
mod location;
mod migrations;
mod postgres;
mod releases;
mod render;
mod seed;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

use backend::config::{ConfigError, Env, Settings};
use futures_util::FutureExt;
use serde::Serialize;

use crate::settings::context::{ContextArg, ContextArgs, SettingsArgs, SourceArgs};

use crate::base::exit::{Failure, fail};
use crate::base::workspace::root;
use crate::settings::place::RuntimeContext;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(flatten)]
    context: ContextArgs,
    #[command(flatten)]
    source: SourceArgs,
    /// Print one JSON document (see the README for its fields) instead of the report
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Area {
    Env,
    Location,
    Network,
    Postgres,
    Migrations,
    Compose,
    Tools,
}

impl Area {
    fn title(self) -> &'static str {
        match self {
            Area::Env => "settings (.env and environment)",
            Area::Location => "where the database is",
            Area::Network => "network",
            Area::Postgres => "PostgreSQL",
            Area::Migrations => "migrations",
            Area::Compose => "docker compose",
            Area::Tools => "tools",
        }
    }
}

/// What one check found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    pub message: String,
    pub hint: Option<String>,
}

impl Outcome {
    pub fn ok(message: impl Into<String>) -> Self {
        Outcome { status: Status::Ok, message: message.into(), hint: None }
    }

    pub fn warn(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Outcome { status: Status::Warn, message: message.into(), hint: Some(hint.into()) }
    }

    pub fn fail(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Outcome { status: Status::Fail, message: message.into(), hint: Some(hint.into()) }
    }

    pub fn skipped(reason: impl Into<String>) -> Self {
        Outcome { status: Status::Skipped, message: reason.into(), hint: None }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub area: Area,
    pub id: &'static str,
    pub status: Status,
    pub message: String,
    pub hint: Option<String>,
}

/// Everything the checks look at, read once.
pub struct Inputs {
    pub root: PathBuf,
    pub env_file: PathBuf,
    /// The file's variables: `Ok(None)` when there is no file.
    pub file_vars: Result<Option<Env>, ConfigError>,
    /// The process environment over the file (or alone, when the file does not parse).
    pub env: Env,
    pub settings: Result<Settings, ConfigError>,
    pub context: RuntimeContext,
    /// `--context host` was given: `host.docker.internal` is this machine, whatever `/etc/hosts` says.
    pub host_chosen: bool,
    pub source: SourceArgs,
}

impl Inputs {
    fn read(args: &Args) -> Inputs {
        let env_file = args.settings.env_file();
        let file_vars = backend::config::read_env_file(&env_file).map(|vars| vars.map(Env::from_map));
        let env = match Env::load(&env_file, std::env::vars_os()) {
            Ok((env, _)) => env,
            Err(_) => Env::process_only(&env_file, std::env::vars_os()),
        };
        let settings = Settings::from_env(&env);
        let context = args.context.runtime_context(env.get("KUBERNETES_SERVICE_HOST").is_some());
        let host_chosen = args.context.context == ContextArg::Host;
        Inputs { root: root(), env_file, file_vars, env, settings, context, host_chosen, source: args.source.clone() }
    }

    /// The database settings, when they are valid.
    pub fn settings(&self) -> Option<&Settings> {
        self.settings.as_ref().ok()
    }
}

/// Collects findings; runs each check so that an error or a panic fails that check only.
#[derive(Default)]
pub struct Doctor {
    findings: Vec<Finding>,
}

impl Doctor {
    pub fn check(&mut self, area: Area, id: &'static str, run: impl FnOnce() -> anyhow::Result<Outcome>) -> Status {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|_| Err(panicked()));
        self.record(area, id, outcome)
    }

    pub async fn check_async(
        &mut self,
        area: Area,
        id: &'static str,
        run: impl Future<Output = anyhow::Result<Outcome>>,
    ) -> Status {
        let outcome = AssertUnwindSafe(run).catch_unwind().await.unwrap_or_else(|_| Err(panicked()));
        self.record(area, id, outcome)
    }

    fn record(&mut self, area: Area, id: &'static str, outcome: anyhow::Result<Outcome>) -> Status {
        let outcome = outcome.unwrap_or_else(|error| {
            Outcome::fail(
                format!("the check itself failed: {error:#}"),
                "this is a bug in doctor if the cause is not clear",
            )
        });
        let status = outcome.status;
        self.findings.push(Finding { area, id, status, message: outcome.message, hint: outcome.hint });
        status
    }

    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// Says more in the hint of an earlier finding, so that two lines about one thing agree (what
    /// `migrations.pending` says prestart does, once a later check knows it would stop).
    pub fn amend_hint(&mut self, id: &str, hint: String) {
        if let Some(finding) = self.findings.iter_mut().find(|f| f.id == id) {
            finding.hint = Some(hint);
        }
    }
}

fn panicked() -> anyhow::Error {
    anyhow::anyhow!("it panicked")
}

pub fn run(args: Args) -> anyhow::Result<()> {
    args.settings.check_named_file()?;
    let inputs = Inputs::read(&args);
    let mut doctor = Doctor::default();
    let compose = compose::Model::load(&inputs);
    env::run(&mut doctor, &inputs);
    // A signal ends doctor, not only the check it came during (which would report it as failed).
    crate::base::interrupt::block_on(crate::base::interrupt::unless_signalled(async {
        let target = location::run(&mut doctor, &inputs, compose.as_ref().ok().and_then(Option::as_ref)).await;
        let conn = postgres::run(&mut doctor, &inputs, &target).await;
        migrations::run(&mut doctor, &inputs, conn).await;
        Ok(())
    }))?;
    if let Some(signal) = crate::base::interrupt::received() {
        return Err(crate::base::interrupt::interrupted(signal));
    }
    compose::run(&mut doctor, &inputs, &compose);
    doctor.check(Area::Tools, "tools.sqlx_cli", || {
        let sh = xshell::Shell::new()?;
        let Some(wanted) = crate::commands::sqlx_prepare::locked_sqlx_version(&inputs.root) else {
            return Ok(Outcome::skipped("no Cargo.lock here: not a workspace checkout"));
        };
        Ok(match crate::commands::sqlx_prepare::installed_sqlx_cli(&sh) {
            None => Outcome::skipped("sqlx-cli is not installed; only `cargo xtask sqlx-prepare` needs it"),
            Some(version) if version == wanted => Outcome::ok(format!("sqlx-cli {version} matches Cargo.lock")),
            Some(version) => Outcome::warn(
                format!("sqlx-cli {version} is installed but Cargo.lock has sqlx {wanted}: the query data it writes may differ"),
                crate::commands::sqlx_prepare::install_command(&inputs.root),
            ),
        })
    });

    // The checks after the database's run synchronously: a signal meanwhile ends doctor too.
    if let Some(signal) = crate::base::interrupt::received() {
        return Err(crate::base::interrupt::interrupted(signal));
    }
    if args.json {
        crate::base::ui::print(format!("{}\n", render::json(&doctor, inputs.context)));
    } else {
        crate::base::ui::print(render::human(&doctor, render::use_color()));
    }
    let failed = doctor.findings().iter().filter(|f| f.status == Status::Fail).count();
    if failed > 0 {
        return Err(fail(
            Failure::ChecksFailed,
            anyhow::anyhow!("{failed} {} found", if failed == 1 { "problem" } else { "problems" }),
        ));
    }
    Ok(())
}
