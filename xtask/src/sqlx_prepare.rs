//! `cargo xtask sqlx-prepare [--check]`: the offline query data of `sqlx::query!` (`.sqlx/`),
//! made against a throwaway database that the prestart code path brought up to date, so the
//! order (database, migrations, prepare) cannot go wrong and nobody's data is touched.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use backend::config::DatabaseSettings;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use sqlx::postgres::PgSslMode;
use xshell::{Shell, cmd};

use crate::context::{DbArgs, Loaded, SourceArgs, cargo, root, runtime};
use crate::dev_db::DevCluster;
use crate::diagnose::is_loopback;
use crate::exit::{Failure, fail};
use crate::interrupt::ActiveBackend;
use crate::migrate::{MigrateOptions, Reconnect, migrate_step};
use crate::ui;
use crate::wait::wait_step;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Fail, naming the stale queries, when `.sqlx/` does not match the code (the CI gate)
    #[arg(long)]
    check: bool,
    /// Install the sqlx-cli version that matches Cargo.lock when it is missing
    #[arg(long)]
    install: bool,
    #[command(flatten)]
    db: DbArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let root = root();
    let _root = sh.push_dir(&root);
    let mut db_args = args.db.clone();
    if db_args.settings.env_file.is_none() && !root.join(".env").exists() {
        // A fresh clone or CI: the example's settings describe the local cluster.
        db_args.settings.env_file = Some(root.join(".env.example"));
        ui::line("no .env: using the settings of .env.example");
    }
    let loaded = db_args.load()?;
    ensure_sqlx_cli(&sh, &root, args.install)?;
    let server = server_for_prepare(&sh, &loaded)?;
    let throwaway = format!("sqlx_prepare_{}", std::process::id());
    let target = server.with_database(&throwaway);

    ui::step(format!("create the throwaway database {throwaway} on {}:{}", server.host(), server.port()));
    runtime()?.block_on(maintenance(&server, &format!("CREATE DATABASE \"{throwaway}\"")))?;
    let prepared = prepare_in(&sh, &loaded, &target, args.check);
    // Dropped on every path, failures included.
    let dropped =
        runtime()?.block_on(maintenance(&server, &format!("DROP DATABASE IF EXISTS \"{throwaway}\" WITH (FORCE)")));
    match (&prepared, dropped) {
        (_, Ok(())) => ui::line(format!("dropped {throwaway}")),
        (_, Err(e)) => ui::warn(format!("could not drop {throwaway}: {e:#}; drop it by hand")),
    }
    prepared
}

/// Migrates the throwaway database with prestart's code, then runs `cargo sqlx prepare`.
fn prepare_in(sh: &Shell, loaded: &Loaded, target: &DatabaseSettings, check: bool) -> anyhow::Result<()> {
    let (set, settings, dir) = SourceArgs::default().load(&loaded.root)?;
    let wait = Duration::from_secs(30);
    let plan = MigrateOptions::defaults().plan(&set, &settings, &dir, wait);
    let target_loaded = Loaded {
        root: loaded.root.clone(),
        settings: loaded.settings.with_database(target.database()),
        context: loaded.context,
    };
    runtime()?.block_on(async {
        let active = ActiveBackend::default();
        let mut ready = wait_step(&target_loaded, wait).await?;
        migrate_step(&mut ready, &plan, &Reconnect { loaded: &target_loaded, wait, active: &active }).await
    })?;

    ui::step(if check {
        "check .sqlx/ against the code (cargo sqlx prepare --check)"
    } else {
        "prepare .sqlx/ (cargo sqlx prepare)"
    });
    let mut args = vec!["sqlx", "prepare", "--workspace"];
    if check {
        args.push("--check");
    }
    // The macros live behind backend's `server` feature.
    args.extend(["--", "--all-targets", "--all-features"]);
    let url = database_url(target);
    let prepared = cargo(sh, &args).env("DATABASE_URL", &url).env("SQLX_OFFLINE", "false").run();
    if prepared.is_ok() {
        return Ok(());
    }
    let stale = if check { stale_queries(&loaded.root) } else { Vec::new() };
    if !stale.is_empty() {
        return Err(fail(
            Failure::ChecksFailed,
            anyhow!(
                ".sqlx/ does not match the queries in the code:\n  {}\n  fix: run `cargo xtask sqlx-prepare` and commit .sqlx/",
                stale.join("\n  ")
            ),
        ));
    }
    bail!("cargo sqlx prepare failed: see the messages above (a compile error, or a query the database rejects)")
}

/// The queries `--check` generated that `.sqlx/` lacks or holds differently (sqlx-cli leaves
/// them in `target/sqlx-prepare-check`).
fn stale_queries(root: &Path) -> Vec<String> {
    let read = |dir: &Path| -> BTreeMap<String, serde_json::Value> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let json = serde_json::from_str(&std::fs::read_to_string(entry.path()).ok()?).ok()?;
                Some((entry.file_name().to_string_lossy().into_owned(), json))
            })
            .collect()
    };
    let prepared = read(&root.join(".sqlx"));
    let generated = read(&root.join("target").join("sqlx-prepare-check"));
    let query = |json: &serde_json::Value| {
        json["query"].as_str().unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ")
    };
    generated
        .iter()
        .filter_map(|(name, json)| match prepared.get(name) {
            None => Some(format!("not prepared: {}", query(json))),
            Some(old) if old != json => Some(format!("prepared for another schema: {}", query(json))),
            Some(_) => None,
        })
        .collect()
}

/// The configured server if it answers, else the local cluster of `dev-db`.
fn server_for_prepare(sh: &Shell, loaded: &Loaded) -> anyhow::Result<DatabaseSettings> {
    let db = &loaded.settings.database;
    let maintenance = db.with_database("postgres");
    let probe =
        runtime()?.block_on(backend::db::connect_once(&maintenance, "prestart-sqlx-prepare", Duration::from_secs(2)));
    match probe {
        Ok(_) => Ok(maintenance),
        Err(backend::db::Failure::Fatal(fatal)) => Err(fail(Failure::Refused, anyhow!("{db}: {fatal}"))),
        Err(backend::db::Failure::Retry(reason)) if is_loopback(db.host()) => {
            ui::line(format!(
                "the configured server does not answer ({reason}): using the local cluster of target/dev-db/"
            ));
            DevCluster::new(sh)?.start(db)?;
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

async fn maintenance(server: &DatabaseSettings, sql: &str) -> anyhow::Result<()> {
    let mut ready = backend::db::connect_once(server, "prestart-sqlx-prepare", Duration::from_secs(10))
        .await
        .map_err(|e| anyhow!("cannot connect to {server}: {e:?}"))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut ready.conn)
        .await
        .with_context(|| format!("{server}: {sql}"))?;
    Ok(())
}

/// The URL sqlx-cli needs, password percent-encoded. Only ever passed in the environment.
fn database_url(db: &DatabaseSettings) -> String {
    let encode = |text: &str| utf8_percent_encode(text, NON_ALPHANUMERIC).to_string();
    let host = if db.host().contains(':') { format!("[{}]", db.host()) } else { db.host().to_owned() };
    let password = db.password().map(|p| format!(":{}", encode(p.expose()))).unwrap_or_default();
    let mode = match db.ssl_mode() {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    };
    format!("postgres://{}{password}@{host}:{}/{}?sslmode={mode}", encode(db.user()), db.port(), encode(db.database()))
}

/// The sqlx version of Cargo.lock.
pub fn locked_sqlx_version(root: &Path) -> Option<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"sqlx\"" {
            return lines.next()?.strip_prefix("version = \"")?.strip_suffix('"').map(str::to_owned);
        }
    }
    None
}

/// The exact command that installs the sqlx-cli matching Cargo.lock.
pub fn install_command(root: &Path) -> String {
    let version = locked_sqlx_version(root).unwrap_or_else(|| "0.9.0".into());
    format!("cargo install sqlx-cli --version ={version} --no-default-features --features postgres,rustls --locked")
}

/// The installed sqlx-cli's version, if any.
pub fn installed_sqlx_cli(sh: &Shell) -> Option<String> {
    let out = cmd!(sh, "cargo sqlx --version").quiet().ignore_stderr().read().ok()?;
    out.split_whitespace().last().map(str::to_owned)
}

pub fn ensure_sqlx_cli(sh: &Shell, root: &Path, install: bool) -> anyhow::Result<()> {
    let wanted = locked_sqlx_version(root).context("no sqlx in Cargo.lock")?;
    let command = install_command(root);
    match installed_sqlx_cli(sh) {
        Some(version) if version == wanted => Ok(()),
        Some(version) => {
            ui::warn(format!(
                "sqlx-cli {version} is installed but Cargo.lock has sqlx {wanted}: its query data may differ; {command}"
            ));
            Ok(())
        }
        None if install => {
            ui::step(format!("install sqlx-cli {wanted}: {command}"));
            let words: Vec<&str> = command.split_whitespace().skip(1).collect();
            cargo(sh, &words).run().context("installing sqlx-cli failed")?;
            Ok(())
        }
        None => Err(fail(
            Failure::Config,
            anyhow!("`cargo sqlx` (sqlx-cli) is not installed: {command} (or rerun with --install)"),
        )),
    }
}
