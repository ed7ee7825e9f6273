//! `cargo xtask sqlx-prepare [--check]`: the offline query data of `sqlx::query!` (`.sqlx/`),
//! made against a throwaway database that the prestart code path brought up to date, so the
//! order (database, migrations, prepare) cannot go wrong and nobody's data is touched.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use backend::config::DatabaseSettings;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use xshell::{Shell, cmd};

use crate::settings::context::{Loaded, SettingsArgs, SourceArgs, WaitArgs};

use crate::base::exit::{Failure, fail};
use crate::base::interrupt::ActiveBackend;
use crate::base::ui;
use crate::base::workspace::{Tool, cargo, only_tool_environment, root};
use crate::databases::throwaway::{in_throwaway, throwaway_name};
use crate::machinery::migrate::MigrateOptions;
use crate::machinery::scratch::migrated_session;
use crate::machinery::scratch::{BuildArgs, Place};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Fail, naming the stale queries, when `.sqlx/` does not match the code (the CI gate)
    #[arg(long)]
    check: bool,
    /// Install the sqlx-cli version that matches Cargo.lock when it is missing
    #[arg(long)]
    install: bool,
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    build: BuildArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let root = root();
    let _root = sh.push_dir(&root);
    let loaded = args.wait.load(&args.settings.or_example(&root))?;
    ensure_sqlx_cli(&sh, &root, args.install)?;
    let throwaway = throwaway_name("sqlx_prepare");
    let (set, _, _) = SourceArgs::default().load(&loaded.root)?;
    let place = Place::find(&sh, &loaded, &throwaway, &args.build, &set.files, "sqlx-prepare")?;
    ui::step(format!("create the throwaway database {throwaway} in {place}"));
    crate::base::interrupt::block_on(async {
        let active = ActiveBackend::default();
        let prepared =
            in_throwaway(&place.server, &throwaway, &active, prepare_in(&sh, &place.target, &active, args.check)).await;
        place.finish().await;
        prepared
    })
}

/// Migrates the throwaway database with prestart's code, then runs `cargo sqlx prepare`.
async fn prepare_in(sh: &Shell, target: &Loaded, active: &ActiveBackend, check: bool) -> anyhow::Result<()> {
    let (set, settings, dir) = SourceArgs::default().load(&target.root)?;
    let plan = MigrateOptions::defaults().plan(&set, &settings, &dir, target.wait_timeout);
    drop(migrated_session(target, active, &plan).await?);
    active.set(None);

    ui::step(if check {
        "check .sqlx/ against the code (cargo sqlx prepare --check)"
    } else {
        "prepare .sqlx/ (cargo sqlx prepare)"
    });
    let mut args = vec!["sqlx", "prepare", "--workspace"];
    if check {
        args.push("--check");
    }
    args.push("--");
    // Only the packages that hold checked queries are compiled again: the rest of the workspace
    // (xtask and its tests, most of a run's time) has no query for sqlx to record.
    let metadata = workspace_metadata(sh, &target.root);
    let with_queries = metadata.as_ref().map(packages_with_checked_queries).unwrap_or_default();
    for package in &with_queries {
        args.extend(["--package", package]);
    }
    // The macros live behind backend's `server` feature.
    args.extend(["--all-targets", "--all-features"]);
    let url = database_url(&target.settings.database);
    // The one connection it needs, and nothing else of the settings or our environment.
    let command =
        only_tool_environment(cargo(sh, &args), Tool::Cargo).env("DATABASE_URL", &url).env("SQLX_OFFLINE", "false");
    let mut command = tokio::process::Command::from(std::process::Command::from(command));
    // Its own process group, so that stopping it (when this future is dropped on a signal) stops
    // the compilers and sqlx-cli that cargo started, not cargo alone.
    command.process_group(0);
    let child = command.spawn().context("cannot start cargo")?;
    let mut group = ProcessGroup(child.id());
    let prepared = child.wait_with_output().await.context("cargo sqlx prepare")?.status.success();
    group.0 = None;
    if prepared {
        ui::line(if check { ".sqlx/ matches every query in the code" } else { "wrote .sqlx/: commit it" });
        return Ok(());
    }
    let target_dir = metadata
        .as_ref()
        .and_then(|json| json["target_directory"].as_str().map(std::path::PathBuf::from))
        .unwrap_or_else(|| target.root.join("target"));
    let stale = if check { stale_queries(&target.root, &target_dir) } else { Vec::new() };
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

/// A running process group, sent SIGTERM when dropped before it ended.
struct ProcessGroup(Option<u32>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = std::process::Command::new("kill").arg("-TERM").arg("--").arg(format!("-{pid}")).status();
        }
    }
}

/// `cargo metadata` of the workspace (its packages, and the target folder wherever
/// CARGO_TARGET_DIR or a config file puts it); `None` when cargo cannot say.
fn workspace_metadata(sh: &Shell, root: &Path) -> Option<serde_json::Value> {
    let _dir = sh.push_dir(root);
    let metadata = only_tool_environment(cargo(sh, &["metadata", "--format-version", "1", "--no-deps"]), Tool::Cargo)
        .quiet()
        .ignore_stderr()
        .read();
    serde_json::from_str(&metadata.ok()?).ok()
}

/// The workspace's packages that can hold compile-time checked queries: those that turn on
/// sqlx's `macros` feature (in a feature of their own, `sqlx/macros` or `sqlx?/macros`, on the
/// dependency, or through sqlx's default features, which hold it), or depend on `sqlx-macros`
/// itself; a renamed sqlx counts under its new name. Empty when none is found, and then the whole
/// workspace is checked.
fn packages_with_checked_queries(metadata: &serde_json::Value) -> Vec<String> {
    let strings = |value: &serde_json::Value| -> Vec<String> {
        value.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
    };
    let packages = metadata["packages"].as_array().into_iter().flatten();
    packages
        .filter(|package| {
            let dependencies: Vec<&serde_json::Value> =
                package["dependencies"].as_array().into_iter().flatten().collect();
            let sqlx_names: Vec<&str> = dependencies
                .iter()
                .filter(|d| d["name"] == "sqlx")
                .map(|d| d["rename"].as_str().or(d["name"].as_str()).unwrap_or("sqlx"))
                .collect();
            let turns_on = |feature: &str| {
                let feature = feature.replace("?/", "/");
                sqlx_names.iter().any(|name| feature == format!("{name}/macros"))
            };
            let in_features = package["features"]
                .as_object()
                .is_some_and(|features| features.values().any(|f| strings(f).iter().any(|n| turns_on(n))));
            let on_the_dependency = dependencies.iter().any(|d| {
                (d["name"] == "sqlx"
                    && (strings(&d["features"]).iter().any(|n| n == "macros") || d["uses_default_features"] == true))
                    || d["name"] == "sqlx-macros"
            });
            in_features || on_the_dependency
        })
        .filter_map(|package| package["name"].as_str().map(str::to_owned))
        .collect()
}

/// The queries `--check` generated that `.sqlx/` lacks or holds differently (sqlx-cli leaves
/// them in `target/sqlx-prepare-check`).
fn stale_queries(root: &Path, target_dir: &Path) -> Vec<String> {
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
    let generated = read(&target_dir.join("sqlx-prepare-check"));
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

/// The URL sqlx-cli needs, password percent-encoded. Only ever passed in the environment.
fn database_url(db: &DatabaseSettings) -> String {
    let encode = |text: &str| utf8_percent_encode(text, NON_ALPHANUMERIC).to_string();
    // A Unix socket's folder goes in the `host` parameter, as libpq and sqlx read it.
    let (host, socket) = match db.socket() {
        Some(dir) => ("localhost".to_owned(), format!("&host={}", encode(&dir.to_string_lossy()))),
        None if db.host().contains(':') => (format!("[{}]", db.host()), String::new()),
        None => (db.host().to_owned(), String::new()),
    };
    let root_cert = db.ssl_root_cert().map(|path| format!("&sslrootcert={}", encode(path))).unwrap_or_default();
    let password = db.password().map(|p| format!(":{}", encode(p.expose()))).unwrap_or_default();
    let mode = db.ssl_mode_name();
    format!(
        "postgres://{}{password}@{host}:{}/{}?sslmode={mode}{root_cert}{socket}",
        encode(db.user()),
        db.port(),
        encode(db.database())
    )
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
    // sqlx-toml: with it off, sqlx-cli refuses to run beside a sqlx.toml, which this workspace has.
    format!(
        "cargo install sqlx-cli --version ={version} --no-default-features --features postgres,rustls,sqlx-toml --locked"
    )
}

/// The installed sqlx-cli's version, if any.
pub fn installed_sqlx_cli(sh: &Shell) -> Option<String> {
    let out =
        only_tool_environment(cmd!(sh, "cargo sqlx --version"), Tool::Cargo).quiet().ignore_stderr().read().ok()?;
    out.split_whitespace().last().map(str::to_owned)
}

/// sqlx-cli built without `sqlx-toml` stops at once beside a sqlx.toml, before it reads the URL.
fn lacks_sqlx_toml(sh: &Shell, root: &Path) -> bool {
    if !root.join("sqlx.toml").is_file() {
        return false;
    }
    let _dir = sh.push_dir(root);
    let output = only_tool_environment(cmd!(sh, "cargo sqlx migrate info --database-url not-a-url"), Tool::Cargo)
        .quiet()
        .ignore_status()
        .output();
    output.is_ok_and(|o| String::from_utf8_lossy(&o.stderr).contains("`sqlx-toml` feature was not enabled"))
}

pub fn ensure_sqlx_cli(sh: &Shell, root: &Path, install: bool) -> anyhow::Result<()> {
    let wanted = locked_sqlx_version(root).context("no sqlx in Cargo.lock")?;
    let command = install_command(root);
    let install_now = |how: &str| -> anyhow::Result<()> {
        ui::step(format!("install sqlx-cli {wanted} ({how}): {command}"));
        let words: Vec<&str> = command.split_whitespace().skip(1).collect();
        let mut install =
            std::process::Command::from(only_tool_environment(cargo(sh, &words).arg("--force"), Tool::Cargo));
        let mut child = install.stderr(std::process::Stdio::piped()).spawn().context("cannot start cargo install")?;
        // Cargo's progress goes on; its warnings about yanked crates in sqlx-cli's own lock file
        // concern sqlx-cli's authors, not the user.
        let stderr = child.stderr.take().context("cargo install's stderr")?;
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if !(line.contains("is yanked") || line.contains("consider running without --locked")) {
                eprintln!("{line}");
            }
        }
        anyhow::ensure!(child.wait()?.success(), "installing sqlx-cli failed: {command}");
        Ok(())
    };
    match installed_sqlx_cli(sh) {
        Some(version) if version == wanted && lacks_sqlx_toml(sh, root) => {
            if install {
                return install_now("the installed one lacks the sqlx-toml feature");
            }
            Err(fail(
                Failure::Config,
                anyhow!(
                    "sqlx-cli {version} was built without the sqlx-toml feature, so it refuses to run beside this \
                     workspace's sqlx.toml: {command} --force (or rerun with --install)"
                ),
            ))
        }
        Some(version) if version == wanted => Ok(()),
        Some(version) => {
            ui::warn(format!(
                "sqlx-cli {version} is installed but Cargo.lock has sqlx {wanted}: its query data may differ; {command}"
            ));
            Ok(())
        }
        None if install => install_now("it is missing"),
        None => Err(fail(
            Failure::Config,
            anyhow!("`cargo sqlx` (sqlx-cli) is not installed: {command} (or rerun with --install)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::packages_with_checked_queries;

    #[test]
    fn the_packages_that_turn_on_sqlxs_macros_are_found_in_every_spelling() {
        let package = |name: &str, features: serde_json::Value, dependency: serde_json::Value| serde_json::json!({"name": name, "features": features, "dependencies": [dependency]});
        let sqlx = |features: serde_json::Value, defaults: bool| serde_json::json!({"name": "sqlx", "rename": null, "features": features, "uses_default_features": defaults});
        let metadata = serde_json::json!({"packages": [
            package("feature", serde_json::json!({"server": ["sqlx/macros"]}), sqlx(serde_json::json!([]), false)),
            package("optional", serde_json::json!({"server": ["sqlx?/macros"]}), sqlx(serde_json::json!([]), false)),
            package("dependency", serde_json::json!({}), sqlx(serde_json::json!(["macros"]), false)),
            package("defaults", serde_json::json!({}), sqlx(serde_json::json!([]), true)),
            package("renamed", serde_json::json!({"s": ["db/macros"]}),
                serde_json::json!({"name": "sqlx", "rename": "db", "features": [], "uses_default_features": false})),
            package("direct", serde_json::json!({}), serde_json::json!({"name": "sqlx-macros", "features": []})),
            package("none", serde_json::json!({"x": ["sqlx/json"]}), sqlx(serde_json::json!(["postgres"]), false)),
        ]});
        assert_eq!(
            packages_with_checked_queries(&metadata),
            ["feature", "optional", "dependency", "defaults", "renamed", "direct"]
        );
    }
}
