//! The one database session of a command: which settings it connects with, the wait budget it
//! draws on, the server process a signal must stop, and the reconnect after a server restart.
//!
//! Commands that change the database (prestart, migrate, seed) take it through [`run`], which
//! routes them over the direct connection of `MIGRATION_DATABASE_URL` or `POSTGRES_MIGRATION_*`
//! when one is set, and refuses a transaction pooler otherwise: session advisory locks and
//! `lock_timeout` do not outlive a transaction there.

use std::time::{Duration, Instant};

use backend::config::DatabaseSettings;
use backend::db::{LostHow, Ready, ServerState};
use backend::migrations::{AppliedRow, Followed};

use crate::base::exit::{Failure, fail};
use crate::base::interrupt::{ActiveBackend, interruptible};
use crate::base::ui;
use crate::connection::wait::wait_step;
use crate::settings::context::Loaded;
use backend::pooler::{Pooling, detect_pooling};

/// What the command does with the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Waits: the app's own connection settings, nothing more.
    Wait,
    /// Reads: the app's settings, and whether a pooler shares server sessions, which decides how
    /// queries must travel.
    Read,
    /// Migrates or seeds: a session of its own, over the direct settings when they are given,
    /// never through a pooler that shares server sessions; a signal stops its server process.
    Write,
}

/// A ready connection, with what it takes to replace it and to stop its work on a signal.
pub struct Session<'a> {
    loaded: &'a Loaded,
    active: &'a ActiveBackend,
    pub ready: Ready,
    /// Whether a pooler shares server sessions (`Direct` until detected).
    pub pooling: Pooling,
    /// A signal terminates the server process behind the connection: only where that process
    /// is ours alone, never one a pooler shares with other clients.
    stoppable: bool,
}

impl<'a> Session<'a> {
    /// Waits for the database of `loaded`, out of the run's one wait budget.
    pub async fn open(loaded: &'a Loaded, active: &'a ActiveBackend) -> anyhow::Result<Session<'a>> {
        let ready = wait_step(loaded).await?;
        Ok(Session { loaded, active, ready, pooling: Pooling::Direct, stoppable: false })
    }

    /// From now on a signal stops the server process behind the connection (and behind the
    /// ones that replace it).
    pub fn make_stoppable(&mut self) {
        self.stoppable = true;
        self.active.set(Some(&self.ready.process));
    }

    pub fn settings(&self) -> &'a DatabaseSettings {
        &self.loaded.settings.database
    }

    /// `ENVIRONMENT` of the settings, which migrations record in the database.
    /// Where this run is: a host, a container, a Kubernetes pod.
    pub fn context(&self) -> crate::settings::place::RuntimeContext {
        self.loaded.context
    }

    pub fn environment(&self) -> Option<&'a str> {
        self.loaded.settings.environment.as_deref()
    }

    /// What is left of the run's one wait budget.
    pub fn wait_left(&self) -> Duration {
        self.loaded.wait_left()
    }

    /// Replaces the connection when `error` is one that waiting can fix (the server restarted, the
    /// network broke); gives the error back when it is not. The time since `tried` (the failed
    /// query's start: a query that got no answer was a wait) comes out of the run's wait budget,
    /// so a loop of queries that time out and reconnects that succeed still ends at the deadline.
    pub async fn reconnect_after(
        &mut self,
        error: sqlx::Error,
        doing: &str,
        tried: Instant,
    ) -> anyhow::Result<Result<(), sqlx::Error>> {
        self.loaded.spend_waiting(tried.elapsed());
        match backend::db::Failure::classify(&error, self.settings()) {
            backend::db::Failure::Retry(reason) => {
                ui::line(format!("lost the connection {doing} ({reason}): connecting again"));
                self.reconnect().await?;
                Ok(Ok(()))
            }
            backend::db::Failure::Fatal(_) => Ok(Err(error)),
        }
    }

    /// A new connection in place of one that is gone, waited for out of the run's one budget
    /// (a failover's new primary, a restarted server).
    pub async fn reconnect(&mut self) -> anyhow::Result<()> {
        self.active.set(None);
        self.ready = wait_step(self.loaded).await?;
        if self.stoppable {
            self.active.set(Some(&self.ready.process));
        }
        Ok(())
    }

    /// The connection still answers, or is replaced: a server that restarted between two steps
    /// costs a reconnect, not the run.
    pub async fn ensure_alive(&mut self) -> anyhow::Result<()> {
        let tried = Instant::now();
        let ping = backend::db::bounded(sqlx::raw_sql("SELECT 1").execute(&mut self.ready.conn)).await;
        let Err(error) = ping else { return Ok(()) };
        self.reconnect_after(error, "since the last step", tried).await?.map_err(|error| {
            fail(Failure::Refused, anyhow::anyhow!("{}", backend::db::Failure::classify(&error, self.settings())))
        })
    }
}

/// What a connection lost while work ran comes to, once a new one is had.
pub enum Resumed {
    /// A failover or a restart, proven: the work the server rolled back may run again.
    Again,
    /// Nothing proves one (the same instance ended the session, or the connection broke and no
    /// promotion followed: a crash restart the work itself may have caused); why, in words.
    NotAFailover(&'static str),
    /// No server answered again before the run's deadline.
    Gone(anyhow::Error),
}

impl Session<'_> {
    /// After the connection was lost (`lost`) while work ran on `ran_on`: a new one, out of the
    /// run's one wait budget, and whether that work may run again there. Says both in a line.
    pub async fn resume_after(&mut self, ran_on: &ServerState, lost: &Lost, what: &str) -> Resumed {
        let lost_at = Instant::now();
        ui::line(format!("lost the connection {what} ({}; a failover?): connecting again", lost.reason));
        if let Err(gone) = self.reconnect().await {
            return Resumed::Gone(gone);
        }
        if lost.how == LostHow::Broken && ran_on.timeline.is_some() {
            self.ready.server.timeline = backend::db::read_timeline(&mut self.ready.conn).await;
        }
        if !self.ready.server.failed_over_from(ran_on, lost.how) {
            return Resumed::NotAFailover(match lost.how {
                LostHow::ShutDown => {
                    "the same server instance ended the session and answers again (pg_terminate_backend?), so this \
                     was no failover"
                }
                _ => {
                    "the connection broke and no promotion followed (the same timeline: a crash restart, which this \
                     work may have caused), so this was no failover"
                }
            });
        }
        ui::line(format!(
            "reconnected to {} in {}, {}: going on from what the database records",
            self.settings(),
            ui::duration(lost_at.elapsed()),
            match lost.how {
                LostHow::ReadOnly => "a writable primary",
                LostHow::ShutDown => "another server instance",
                LostHow::Broken => "a newly promoted primary",
            }
        ));
        Resumed::Again
    }

    /// The applied rows of `table`, within the run's one wait budget: a table another session
    /// holds locked is waited for (naming it), a lost connection is replaced.
    pub async fn read_applied(&mut self, table: &str) -> anyhow::Result<Vec<AppliedRow>> {
        Ok(self.read_applied_and(table, &[]).await?.0)
    }

    /// [`Session::read_applied`], and what each of `then` reads, in the same round trip.
    pub async fn read_applied_and(
        &mut self,
        table: &str,
        then: &[&str],
    ) -> anyhow::Result<(Vec<AppliedRow>, Vec<Followed>)> {
        loop {
            let tried = Instant::now();
            let deadline = tried + self.wait_left();
            let read = crate::connection::lock::read_applied_and(&mut self.ready.conn, table, then, deadline).await?;
            match read {
                Ok(rows) => {
                    self.loaded.spend_waiting(tried.elapsed());
                    return Ok(rows);
                }
                Err(error) => self
                    .reconnect_after(error, crate::connection::lock::BEFORE_MIGRATING, tried)
                    .await?
                    .map_err(|e| fail(Failure::Migration, e))?,
            }
        }
    }
}

/// Runs `body` on a session, with SIGINT and SIGTERM stopping the server-side work. For
/// [`Use::Write`], the session is over the direct settings when they are given (only they are
/// waited for: a pooler may not run yet, as a sidecar that starts after an init container), and
/// no pooler that shares server sessions may be in the way, on either.
pub fn run<T>(
    loaded: &Loaded,
    purpose: Use,
    body: impl AsyncFnOnce(&mut Session<'_>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    run_alongside(loaded, purpose, async { Ok(()) }, async |session, ()| body(session).await)
}

/// [`run`], with `ahead` (work that needs no database, such as listing the migrations) going on
/// while the session opens, in the waits of its login; `body` gets its result. A failure of
/// `ahead` ends the run at once, without waiting for the database (see [`open_beside`]).
pub fn run_alongside<A, T>(
    loaded: &Loaded,
    purpose: Use,
    ahead: impl Future<Output = anyhow::Result<A>>,
    body: impl AsyncFnOnce(&mut Session<'_>, A) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let direct = match purpose {
        Use::Write => loaded.for_migrations(),
        Use::Wait | Use::Read => None,
    };
    let target = direct.as_ref().unwrap_or(loaded);
    if direct.is_some() {
        ui::line(format!(
            "migrations and seed go over the direct connection of {} ({})",
            target.settings.database.variables.origin, target.settings.database
        ));
    }
    let active = ActiveBackend::default();
    crate::base::interrupt::block_on(interruptible(&target.settings.database, &active, async {
        let (mut session, ahead) = open_beside(Session::open(target, &active), ahead).await?;
        if purpose != Use::Wait {
            session.pooling = detect_pooling(session.settings(), &mut session.ready).await;
        }
        if purpose == Use::Write {
            refuse_shared_sessions(&session)?;
            session.make_stoppable();
        }
        body(&mut session, ahead).await
    }))
}

/// The session opened with `ahead` beside it. `ahead` starts once the connection's first message
/// is out, where the connect completes at once (an address on this machine, a socket): the
/// server starts our session (its process is forked at the connect, and then waits for that
/// message) while `ahead` works. So the connection is polled first, each time, and `ahead`
/// yields once before its work; done before that message, the same work cost a no-op run 1-1.4
/// ms more (2026-12-07). `ahead` never waits: its failure ends the run at once, and is the one
/// said when the connection failed too (a folder that cannot be used is exit 3 even with
/// `--wait-timeout 0`).
async fn open_beside<S, A>(
    open: impl Future<Output = anyhow::Result<S>>,
    ahead: impl Future<Output = anyhow::Result<A>>,
) -> anyhow::Result<(S, A)> {
    use futures_util::future::maybe_done;
    let mut open = std::pin::pin!(maybe_done(open));
    let mut ahead = std::pin::pin!(maybe_done(async {
        tokio::task::yield_now().await;
        ahead.await
    }));
    std::future::poll_fn(|cx| {
        let opened = open.as_mut().poll(cx).is_ready();
        if ahead.as_mut().poll(cx).is_pending() {
            return std::task::Poll::Pending;
        }
        let ahead_failed = matches!(ahead.as_mut().output_mut(), Some(Err(_)));
        if ahead_failed || opened { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    })
    .await;
    let ahead = ahead
        .as_mut()
        .take_output()
        .unwrap_or_else(|| Err(anyhow::anyhow!("the work beside the login ended early")))?;
    let open = open.as_mut().take_output().unwrap_or_else(|| Err(anyhow::anyhow!("the login ended early")))?;
    Ok((open, ahead))
}

/// Stops before anything changes when the connection goes through a pooler that shares server
/// sessions between transactions (or whose mode could not be told).
fn refuse_shared_sessions(session: &Session<'_>) -> anyhow::Result<()> {
    let db = session.settings();
    let origin = db.variables.origin;
    let fix = if origin.starts_with("POSTGRES_MIGRATION") || origin == "MIGRATION_DATABASE_URL" {
        format!("point {origin} at PostgreSQL itself, not at the pooler")
    } else {
        "set MIGRATION_DATABASE_URL (or POSTGRES_MIGRATION_SERVER, _PORT, _USER, _PASSWORD over the POSTGRES_* values) \
         to a direct connection to PostgreSQL for prestart; backend and worker keep using the pooler. Or let prestart \
         use the pooler's session mode"
            .to_owned()
    };
    let what = match session.pooling {
        Pooling::Direct => return Ok(()),
        Pooling::Session => {
            ui::line("a connection pooler or proxy is in the way, and keeps our server session: fine for migrations");
            return Ok(());
        }
        Pooling::Transaction => {
            "a connection pooler in transaction pooling mode (two clients were handed one server session)"
        }
        Pooling::Undetermined => "a connection pooler or proxy whose mode could not be told (it refused the probe)",
    };
    Err(fail(
        Failure::Refused,
        anyhow::anyhow!(
            "{db} goes through {what}: the migration lock and lock_timeout would not hold from one transaction to the \
             next, so nothing was migrated\n  fix: {fix}"
        ),
    ))
}

/// A lost connection, or a server that turned read-only under it; `None` for an error of the
/// SQL itself, or a bound of ours (a slow server is not a lost one).
pub fn lost_connection(error: &sqlx::Error) -> Option<Lost> {
    let how = backend::db::lost_to_failover(error)?;
    Some(Lost { reason: backend::db::describe_error(error), how })
}

/// Why a connection was lost to a migration.
#[derive(Debug, Clone)]
pub struct Lost {
    pub reason: String,
    pub how: backend::db::LostHow,
}
