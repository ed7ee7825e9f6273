//! The process's one runtime and its one signal listener: SIGINT and SIGTERM end a run within a
//! second, stop the server-side work too, and a second signal ends the process at once.
//!
//! The listener is installed before any work and lives as long as the process: tokio keeps a
//! handler once registered, and a signal that arrives while no listener of a runtime polls it is
//! lost, so a runtime per step dropped signals between steps. It runs on a thread of its own
//! (with a runtime of its own that wakes only for a signal), so it answers during synchronous
//! steps too; the commands' one current-thread runtime pays no cross-thread wake-up for each
//! answer from the server.
//!
//! Dropping our future closes the socket, but a backend busy with a long statement would not
//! notice for a while; sqlx cannot send a CancelRequest, so a second connection terminates it,
//! while our own connection to it is still open: closed first, a pooler may hand that server
//! process to another client before the terminate arrives.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use backend::config::DatabaseSettings;
use backend::db::ServerProcess;
use tokio::runtime::Runtime;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::base::exit::{Failure, Signal, fail};
use crate::base::ui;

/// How long stopping the server-side work may take, from the signal: connecting, terminating,
/// and the server's wait for the process to end, all within it, so the whole stop stays within a
/// second.
const STOP_BUDGET: Duration = Duration::from_millis(800);
/// How long the cleanups still running at exit (throwaway databases and clusters being dropped)
/// may take before the process ends without them; a second signal ends it at once.
pub const CLEANUP_BUDGET: Duration = Duration::from_secs(10);

struct Process {
    runtime: Runtime,
    /// The first signal received, if any; later ones end the process.
    received: watch::Receiver<Option<Signal>>,
    /// Cleanups spawned where nothing could wait for them (a guard dropped by a cancellation).
    cleanups: Mutex<Vec<JoinHandle<()>>>,
}

static PROCESS: OnceLock<Process> = OnceLock::new();

/// Builds the runtime and installs the signal listener; call once, before any work. The
/// runtime lives in a static, never dropped: a name lookup stuck in `getaddrinfo` on its blocking
/// pool must not hold the exit.
pub fn start() -> anyhow::Result<()> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    let (sender, received) = watch::channel(None);
    let register = || Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?));
    // Registered here, before this returns: a signal from then on is the listener's. The
    // listener's runtime is built on this thread and moved to its own, so the start waits for no
    // other thread.
    // Signals need the I/O driver alone: no timer wheel for this runtime.
    let signals =
        tokio::runtime::Builder::new_current_thread().enable_io().build().context("cannot start the async runtime")?;
    let (interrupt, terminate) =
        signals.block_on(async { register() }).context("cannot listen for SIGINT and SIGTERM")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || signals.block_on(listen(interrupt, terminate, sender)))
        .context("cannot start the signal listener")?;
    let process = Process { runtime, received, cleanups: Mutex::default() };
    if PROCESS.set(process).is_err() {
        anyhow::bail!("the runtime was started twice");
    }
    Ok(())
}

async fn listen(
    mut interrupt: tokio::signal::unix::Signal,
    mut terminate: tokio::signal::unix::Signal,
    sender: watch::Sender<Option<Signal>>,
) {
    loop {
        let signal = tokio::select! {
            _ = interrupt.recv() => Signal::Interrupt,
            _ = terminate.recv() => Signal::Terminate,
        };
        if let Some(first) = *sender.borrow() {
            ui::line(format!("received {} again: exiting now, without cleaning up", name(signal)));
            std::process::exit(Failure::Interrupted(first).exit_code().into());
        }
        sender.send_replace(Some(signal));
    }
}

/// Waits for the cleanups still running, within their budget.
pub fn finish_cleanups() {
    let Some(process) = PROCESS.get() else { return };
    let cleanups = std::mem::take(&mut *process.cleanups.lock().unwrap_or_else(|e| e.into_inner()));
    if cleanups.is_empty() {
        return;
    }
    let all = futures_util::future::join_all(cleanups);
    if process.runtime.block_on(async { tokio::time::timeout(CLEANUP_BUDGET, all).await }).is_err() {
        ui::warn(format!("cleanup did not finish within {} s: exiting without it", CLEANUP_BUDGET.as_secs()));
    }
}

/// Runs `work` to its end on the process's runtime, from synchronous code.
pub fn block_on<F: Future>(work: F) -> F::Output {
    match PROCESS.get() {
        Some(process) => process.runtime.block_on(work),
        // Only unit tests get here: main starts the runtime before any command runs.
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for a unit test")
            .block_on(work),
    }
}

/// Runs `cleanup` as a task of its own, to its end even when whoever started it is cancelled
/// (or is a `Drop`, which cannot wait); the process waits for it before it exits, within the
/// cleanup budget. The receiver says when it is done, for those who can wait.
pub fn spawn_cleanup(cleanup: impl Future<Output = ()> + Send + 'static) -> tokio::sync::oneshot::Receiver<()> {
    let (done, finished) = tokio::sync::oneshot::channel();
    let cleanup = async move {
        cleanup.await;
        let _ = done.send(());
    };
    match PROCESS.get() {
        Some(process) => {
            let handle = process.runtime.spawn(cleanup);
            process.cleanups.lock().unwrap_or_else(|e| e.into_inner()).push(handle);
        }
        // Only unit tests run without the process's runtime.
        None => drop(tokio::spawn(cleanup)),
    }
    finished
}

/// The first signal the process received, if any.
pub fn received() -> Option<Signal> {
    PROCESS.get().and_then(|p| *p.received.borrow())
}

/// Resolves when the process has received a signal (at once when it already has).
pub async fn signalled() -> Signal {
    let Some(process) = PROCESS.get() else { return std::future::pending().await };
    let mut received = process.received.clone();
    match received.wait_for(Option::is_some).await {
        Ok(signal) => signal.unwrap_or(Signal::Interrupt),
        // The listener never ends while the process runs.
        Err(_) => std::future::pending().await,
    }
}

pub fn name(signal: Signal) -> &'static str {
    match signal {
        Signal::Interrupt => "SIGINT",
        Signal::Terminate => "SIGTERM",
    }
}

/// The error of a run a signal stopped.
pub fn interrupted(signal: Signal) -> anyhow::Error {
    fail(Failure::Interrupted(signal), anyhow::anyhow!("stopped before finishing; rerun to complete"))
}

/// Runs `work` unless a signal came or comes first; a cleanup of its own needs nothing else.
pub async fn unless_signalled<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::select! {
        result = work => result,
        signal = signalled() => Err(interrupted(signal)),
    }
}

/// The server process that runs our current statement, if any.
#[derive(Clone, Default)]
pub struct ActiveBackend(Rc<RefCell<Option<ServerProcess>>>);

impl ActiveBackend {
    pub fn set(&self, process: Option<&ServerProcess>) {
        *self.0.borrow_mut() = process.cloned();
    }
}

/// Runs `work` until it ends or a signal arrives; on a signal, stops the active backend while
/// `work`, and so its connection to that backend, still lives, and only then drops `work`.
pub async fn interruptible<T>(
    db: &DatabaseSettings,
    active: &ActiveBackend,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let mut work = Box::pin(work);
    let received = tokio::select! {
        result = &mut work => return result,
        signal = signalled() => signal,
    };
    let deadline = Instant::now() + STOP_BUDGET;
    let process = active.0.borrow().clone();
    let outcome = match process {
        None => "nothing was running on the server".to_owned(),
        Some(process) => match backend::db::terminate_backend(db, &process, deadline).await {
            Ok(true) => format!(
                "stopped {process}: its open transaction, if any, rolled back and its locks were released (what a \
                 -- no-transaction migration ran before it stays)"
            ),
            Ok(false) => format!("{process} had already ended"),
            Err(e) => format!(
                "could not stop {process} ({}); the server rolls its transaction back when it notices we are gone",
                match e {
                    backend::db::Failure::Retry(r) => r.to_string(),
                    backend::db::Failure::Fatal(f) => f.detail,
                }
            ),
        },
    };
    drop(work);
    ui::line(format!("received {}: {outcome}", name(received)));
    Err(interrupted(received))
}
