//! SIGINT and SIGTERM end a run within a second, and stop the server-side work too.
//!
//! Dropping our future closes the socket, but a backend busy with a long statement would not
//! notice for a while; sqlx cannot send a CancelRequest, so a second connection terminates it.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use backend::config::DatabaseSettings;
use backend::db::ServerProcess;
use tokio::signal::unix::{SignalKind, signal};

use crate::exit::{Failure, Signal, fail};
use crate::ui;

/// How long stopping the server-side work may take, from the signal: connecting, terminating,
/// and the server's wait for the process to end, all within it, so the whole stop stays within a
/// second.
const STOP_BUDGET: Duration = Duration::from_millis(800);

/// The server process that runs our current statement, if any.
#[derive(Clone, Default)]
pub struct ActiveBackend(Rc<RefCell<Option<ServerProcess>>>);

impl ActiveBackend {
    pub fn set(&self, process: Option<&ServerProcess>) {
        *self.0.borrow_mut() = process.cloned();
    }
}

/// Runs `work` until it ends or a signal arrives; on a signal, stops the active backend.
pub async fn interruptible<T>(
    db: &DatabaseSettings,
    active: &ActiveBackend,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let received = tokio::select! {
        result = work => return result,
        _ = interrupt.recv() => Signal::Interrupt,
        _ = terminate.recv() => Signal::Terminate,
    };
    let name = match received {
        Signal::Interrupt => "SIGINT",
        Signal::Terminate => "SIGTERM",
    };
    let deadline = Instant::now() + STOP_BUDGET;
    let process = active.0.borrow().clone();
    let outcome = match process {
        None => "nothing was running on the server".to_owned(),
        Some(process) => match backend::db::terminate_backend(db, &process, deadline).await {
            Ok(true) => format!("stopped {process}: its open transaction rolled back and its locks were released"),
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
    ui::line(format!("received {name}: {outcome}"));
    Err(fail(Failure::Interrupted(received), anyhow::anyhow!("stopped before finishing; rerun to complete")))
}
