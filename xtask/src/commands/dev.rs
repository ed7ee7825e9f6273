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

use crate::settings::context::{DbArgs, SourceArgs};

use crate::base::exit::{Failure, Signal, fail};
use crate::base::ui;
use crate::base::workspace::{cargo, root};
use crate::commands::prestart;
use crate::databases::dev_db::DevCluster;
use crate::machinery::migrate::MigrateOptions;

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
    let probe = crate::base::interrupt::block_on(backend::db::connect_once(db, "prestart-dev", Duration::from_secs(2)));
    match probe {
        Ok(_) => ui::line("it answers: using it"),
        // The workspace's own cluster takes the password .env names now (see dev_db::password).
        Err(ConnectFailure::Fatal(fatal))
            if fatal.kind == backend::db::FatalKind::BadPassword
                && crate::settings::place::is_loopback(db.host())
                && DevCluster::new(&sh)?.serves(db) =>
        {
            ui::line("it is the local cluster of target/dev-db/, with another password: it takes the one .env names");
            DevCluster::new(&sh)?.start(db, None)?;
        }
        Err(ConnectFailure::Fatal(fatal)) => {
            return Err(fail(Failure::Refused, anyhow::anyhow!("{db}: {fatal}")));
        }
        Err(ConnectFailure::Retry(reason)) => {
            if !crate::settings::place::is_loopback(db.host()) {
                return Err(fail(
                    Failure::Unreachable,
                    anyhow::anyhow!(
                        "the configured database at {} does not answer ({reason}) and is not on this machine: start \
                         it, or set {}=localhost to use a local cluster ({})",
                        db.host(),
                        db.host_variable(),
                        crate::settings::place::context_note(loaded.context)
                    ),
                ));
            }
            ui::line(format!("it does not answer ({reason}): using the local cluster of target/dev-db/"));
            DevCluster::new(&sh)?.start(db, None)?;
        }
    }

    prestart::run(prestart::Args {
        db: args.db.clone(),
        source: args.source,
        migrate: args.migrate,
        // A development stack creates what it needs.
        create_database: true,
        compatible_with: Vec::new(),
        seeds: crate::machinery::seed::SeedArgs::default(),
    })?;
    if args.no_services {
        return Ok(());
    }
    run_services(&sh, &args.db)
}

/// How long backend and worker get to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Builds and runs backend and worker until either exits, or SIGINT or SIGTERM arrives, which is
/// forwarded to both; both are reaped before this returns.
fn run_services(sh: &Shell, db_args: &DbArgs) -> anyhow::Result<()> {
    ui::step("build backend and worker");
    cargo(sh, &["build", "--package", "backend", "--features", "server", "--bins"])
        .run()
        .context("cargo build failed")?;
    let bin = root().join("target").join("debug");
    let mut children = Vec::new();
    let mut copiers = Vec::new();
    for name in ["backend", "worker"] {
        let mut command = Command::new(bin.join(name));
        command.current_dir(root());
        if let Some(file) = &db_args.settings.env_file {
            command.arg("--env-file").arg(file);
        }
        let (child, copying) = spawn_prefixed(command, name)?;
        children.push((name, child));
        copiers.extend(copying);
    }
    ui::step("backend and worker running: Ctrl-C stops them");
    let stop = crate::base::interrupt::block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                signal = crate::base::interrupt::signalled() => return anyhow::Ok(Stop::Signal(signal)),
                _ = tick.tick() => {
                    let exited = children.iter_mut().find_map(|(name, child)| Some((*name, child.try_wait().ok()??)));
                    if let Some((name, status)) = exited {
                        return anyhow::Ok(Stop::Exited(name, status));
                    }
                }
            }
        }
    })?;
    // Stop the others the way a deploy would, with SIGTERM (SIGINT for Ctrl-C), and reap them.
    let forwarded = match stop {
        Stop::Signal(Signal::Interrupt) => "-INT",
        _ => "-TERM",
    };
    for (name, child) in &mut children {
        if child.try_wait().ok().flatten().is_none() {
            let pid = child.id().to_string();
            let _ = cmd!(sh, "kill {forwarded} {pid}").quiet().ignore_stderr().run();
        }
        reap(name, child);
    }
    // Their last lines ("stopped") are still on the way through the pipes.
    for copier in copiers {
        let _ = copier.join();
    }
    match stop {
        Stop::Signal(signal) => {
            ui::step(
                "backend and worker stopped; the database keeps running (cargo xtask dev-db stop stops a local cluster)",
            );
            Err(fail(Failure::Interrupted(signal), crate::base::exit::Stopped))
        }
        Stop::Exited(name, status) if !status.success() => bail!("{name} exited with {status}"),
        Stop::Exited(..) => Ok(()),
    }
}

enum Stop {
    Signal(Signal),
    Exited(&'static str, std::process::ExitStatus),
}

/// Waits for a child told to stop; kills it when it takes longer than [`STOP_GRACE`].
fn reap(name: &str, child: &mut Child) {
    let started = std::time::Instant::now();
    while started.elapsed() < STOP_GRACE {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    ui::warn(format!("{name} did not stop within {} s: killing it", STOP_GRACE.as_secs()));
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts `command` with its output copied to ours, each line prefixed with `[name]`.
fn spawn_prefixed(mut command: Command, name: &'static str) -> anyhow::Result<(Child, Vec<thread::JoinHandle<()>>)> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let streams: [Box<dyn std::io::Read + Send>; 2] =
        [Box::new(child.stdout.take().context("no stdout")?), Box::new(child.stderr.take().context("no stderr")?)];
    let copiers = streams
        .into_iter()
        .map(|stream| {
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("[{name}] {line}");
                }
            })
        })
        .collect();
    Ok((child, copiers))
}
