//! SIGINT and SIGTERM end a run within a second, and stop the server-side work too.
//!
//! Dropping our future closes the socket, but a backend busy with a long statement would not
//! notice for a while; sqlx cannot send a CancelRequest, so a second connection terminates it.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use backend::config::DatabaseSettings;
use tokio::signal::unix::{SignalKind, signal};

use crate::exit::{Failure, Signal, fail};
use crate::ui;

/// How long the second connection may take: the whole stop stays within a second.
const TERMINATE_TIMEOUT: Duration = Duration::from_millis(900);

/// The server process that runs our current statement, if any.
#[derive(Clone, Default)]
pub struct ActiveBackend(Rc<Cell<Option<i32>>>);

impl ActiveBackend {
    pub fn set(&self, backend_pid: Option<i32>) {
        self.0.set(backend_pid);
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
    let outcome = match active.0.get() {
        None => "nothing was running on the server".to_owned(),
        Some(pid) => match backend::db::terminate_backend(db, pid, TERMINATE_TIMEOUT).await {
            Ok(true) => {
                format!("stopped server process {pid}: its open transaction rolled back and its locks were released")
            }
            Ok(false) => format!("server process {pid} had already ended"),
            Err(e) => format!(
                "could not stop server process {pid} ({}); the server rolls its transaction back when it notices we are gone",
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
