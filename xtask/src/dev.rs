//! `cargo xtask dev`: the whole stack on one machine without Docker. Uses the configured database
//! if it answers, else a local cluster (`dev-db`); then prestart; then backend and worker in the
//! foreground with prefixed logs until Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, bail};
use backend::db::Failure as ConnectFailure;
use xshell::{Shell, cmd};

use crate::context::{DbArgs, SourceArgs, cargo, root, runtime};
use crate::dev_db::DevCluster;
use crate::exit::{Failure, fail};
use crate::migrate::MigrateOptions;
use crate::prestart;
use crate::ui;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    migrate: MigrateOptions,
    /// Prepare the database and stop: do not run backend and worker
    #[arg(long)]
    no_services: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let root = root();
    let env_file = args.db.settings.env_file();
    let example = root.join(".env.example");
    if args.db.settings.env_file.is_none() && !env_file.exists() && example.exists() {
        sh.copy_file(&example, &env_file)?;
        // It holds passwords: readable by its owner only.
        std::fs::set_permissions(&env_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        ui::step(format!("created {} from .env.example: edit it to change the settings", env_file.display()));
    }
    let loaded = args.db.load()?;
    let db = &loaded.settings.database;

    ui::step(format!("look for the configured database at {db}"));
    let probe = runtime()?.block_on(backend::db::connect_once(db, "prestart-dev", Duration::from_secs(2)));
    match probe {
        Ok(_) => ui::line("it answers: using it"),
        Err(ConnectFailure::Fatal(fatal)) => {
            return Err(fail(Failure::Refused, anyhow::anyhow!("{db}: {fatal}")));
        }
        Err(ConnectFailure::Retry(reason)) => {
            if !is_local(db.host()) {
                bail!(
                    "the configured database at {} does not answer ({reason}) and is not on this machine: start it, or \
                     set {}=localhost to use a local cluster",
                    db.host(),
                    db.host_variable()
                );
            }
            ui::line(format!("it does not answer ({reason}): using the local cluster of target/dev-db/"));
            DevCluster::new(&sh)?.start(db)?;
        }
    }

    prestart::run(prestart::Args { db: args.db.clone(), source: args.source, migrate: args.migrate })?;
    if args.no_services {
        return Ok(());
    }
    run_services(&sh, &args.db)
}

fn is_local(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        || host.starts_with('/')
}

/// Builds and runs backend and worker until either exits or Ctrl-C (which the terminal sends to
/// the whole process group, children included).
fn run_services(sh: &Shell, db_args: &DbArgs) -> anyhow::Result<()> {
    ui::step("build backend and worker");
    cargo(sh, &["build", "--quiet", "--package", "backend", "--features", "server", "--bins"])
        .run()
        .context("cargo build failed")?;
    let bin = root().join("target").join("debug");
    let mut children = Vec::new();
    for name in ["backend", "worker"] {
        let mut command = Command::new(bin.join(name));
        command.current_dir(root());
        if let Some(file) = &db_args.settings.env_file {
            command.arg("--env-file").arg(file);
        }
        children.push((name, spawn_prefixed(command, name)?));
    }
    ui::step("backend and worker running: Ctrl-C stops them");
    let (name, status) = loop {
        let exited = children.iter_mut().find_map(|(name, child)| Some((*name, child.try_wait().ok()??)));
        if let Some(exited) = exited {
            break exited;
        }
        thread::sleep(Duration::from_millis(200));
    };
    // One service ended: stop the other the way a deploy would, with SIGTERM.
    for (_, other) in &children {
        let pid = other.id().to_string();
        let _ = cmd!(sh, "kill -TERM {pid}").quiet().ignore_stderr().run();
    }
    if !status.success() {
        bail!("{name} exited with {status}");
    }
    Ok(())
}

/// Starts `command` with its output copied to ours, each line prefixed with `[name]`.
fn spawn_prefixed(mut command: Command, name: &'static str) -> anyhow::Result<Child> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let streams: [Box<dyn std::io::Read + Send>; 2] =
        [Box::new(child.stdout.take().context("no stdout")?), Box::new(child.stderr.take().context("no stderr")?)];
    for stream in streams {
        thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                eprintln!("[{name}] {line}");
            }
        });
    }
    Ok(child)
}
