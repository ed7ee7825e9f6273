//! What backend and worker share at start-up: settings, a pool, and the refusal to run on a
//! schema that prestart has not brought up to date.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};

use crate::config::{Env, Settings};
use crate::migrations::{MigrationSettings, embedded};
use crate::pooler::{FailedAt, Pooling, detect_pooling, in_own_transaction, in_own_transaction_telling};

/// Exit codes of backend and worker, the same numbers as xtask's for the same causes.
pub const EXIT_CONFIG: u8 = 3;
pub const EXIT_UNREACHABLE: u8 = 4;
pub const EXIT_REFUSED: u8 = 5;
pub const EXIT_NOT_UP_TO_DATE: u8 = 8;

/// How long a starting service waits for the database before giving up; prestart has waited
/// already, so this only covers a database restarting at that moment.
const STARTUP_WAIT: Duration = Duration::from_secs(30);

pub struct Service {
    pub settings: Settings,
    pub migrations: MigrationSettings,
    pub db: Db,
}

/// The services' connections, and how their queries must travel to hold behind a pooler.
#[derive(Clone)]
pub struct Db {
    pool: PgPool,
    pooling: Pooling,
}

impl Db {
    /// Runs the work `make` makes on a connection of the pool, in a transaction of its own (see
    /// [`in_own_transaction`]). Bounded: a connection gone half-open (a paused VM, a NAT that
    /// forgot it) costs one failed call, not a worker hanging for good. A connection lost to a
    /// failover (or a node that turned read-only under it) is closed, and the work is made and
    /// run once more on another, where that is safe: when it failed before its COMMIT was sent,
    /// so the server rolled it back.
    pub async fn run<T, W>(&self, make: impl Fn() -> W) -> Result<T, sqlx::Error>
    where
        W: AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    {
        self.run_retrying(make, FailedAt::BeforeCommit).await
    }

    /// [`Db::run`] for work that may run twice (a job's outcome recorded again): run once more
    /// after a lost COMMIT too.
    pub async fn run_idempotent<T, W>(&self, make: impl Fn() -> W) -> Result<T, sqlx::Error>
    where
        W: AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    {
        self.run_retrying(make, FailedAt::Commit).await
    }

    async fn run_retrying<T, W>(&self, make: impl Fn() -> W, again_up_to: FailedAt) -> Result<T, sqlx::Error>
    where
        W: AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let mut guard = CloseUnlessFinished { conn: self.pool.acquire().await?, finished: false };
            // Bounded inside, where the bound may fire: before the COMMIT, never during it.
            let result = in_own_transaction_telling(&mut guard.conn, self.pooling, make()).await;
            // A failed call may have left the connection mid-transaction or awaiting an answer.
            guard.finished = result.is_ok();
            match result {
                Ok(done) => return Ok(done),
                Err((error, at))
                    if tries == 1
                        && crate::db::lost_to_failover(&error).is_some()
                        && (at == FailedAt::BeforeCommit || again_up_to == FailedAt::Commit) =>
                {
                    drop(guard);
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
}

/// A pooled connection whose server is now a standby (after a failover behind a pooler or a DNS
/// name that flipped, nothing cuts it): closed when it is taken from the pool, in the round trip
/// sqlx's own liveness ping would cost.
pub async fn still_writable(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Row as _;
    let row = sqlx::raw_sql("SELECT NOT (pg_is_in_recovery() OR current_setting('transaction_read_only')::bool)")
        .fetch_one(conn)
        .await?;
    row.try_get(0)
}

/// A pooled connection that goes back to the pool only when its work finished; one dropped
/// before (a request the client gave up on, a failure) is closed, so no later caller inherits
/// its open transaction.
struct CloseUnlessFinished {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    finished: bool,
}

impl Drop for CloseUnlessFinished {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.close_on_drop();
        }
    }
}

/// A start-up failure: the message for stderr and the exit code.
pub struct StartError {
    pub message: String,
    pub code: u8,
}

impl StartError {
    pub fn report(self, name: &str) -> ExitCode {
        say(format!("error: {name}: {}", self.message));
        ExitCode::from(self.code)
    }
}

/// Prints one line on stderr through the redaction filter: every line backend and worker print
/// goes through here, since a server's or a driver's message may quote a settings value.
pub fn say(line: impl AsRef<str>) {
    eprintln!("{}", crate::redact::redact(line.as_ref()));
}

/// A panic is a bug: one redacted line saying so (with where it happened) instead of the default
/// report, whose message may quote a value.
fn report_panics_as_bugs(name: &str) {
    let name = name.to_owned();
    std::panic::set_hook(Box::new(move |info| {
        let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let payload = info.payload();
        let message =
            payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str));
        let message = message.unwrap_or("panic").lines().collect::<Vec<_>>().join(" ");
        say(format!("error: {name}: internal error{location}: {message}; this is a bug, please report it"));
    }));
}

/// Reads settings (`--env-file PATH`, else `.env` in the current folder), connects, and checks
/// that the database has every migration this build embeds.
pub async fn start(name: &str, args: impl Iterator<Item = String>) -> Result<Service, StartError> {
    let env_file = env_file_argument(args)?;
    let config = |e: crate::config::ConfigError| StartError { message: e.to_string(), code: EXIT_CONFIG };
    let (env, _) = Env::load(&env_file, std::env::vars_os()).map_err(config)?;
    let settings = Settings::from_env(&env).map_err(config)?;
    let migrations = MigrationSettings::load(&PathBuf::from(".")).map_err(config)?;
    let db = &settings.database;

    let mut ready = crate::db::wait_for_database(db, name, STARTUP_WAIT, |_| None).await.map_err(|e| match e {
        crate::db::WaitError::Fatal(fatal) => StartError { message: format!("{db}: {fatal}"), code: EXIT_REFUSED },
        crate::db::WaitError::Deadline { last, .. } => {
            StartError { message: format!("{db} is not reachable: {last}"), code: EXIT_UNREACHABLE }
        }
    })?;
    let pooling = detect_pooling(db, &mut ready).await;
    let checked =
        in_own_transaction(&mut ready.conn, pooling, async |conn| Ok(embedded::check(conn, &migrations).await))
            .await
            .map_err(|e| e.to_string())
            .and_then(|checked| checked);
    checked.map_err(|message| StartError { message, code: EXIT_NOT_UP_TO_DATE })?;

    let mut options = db.connect_options(name);
    if pooling.shares_sessions() {
        // No statement survives its transaction there (see `in_one_session`): cache none.
        options = options.statement_cache_capacity(0);
    }
    let port = db.port();
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .before_acquire(|conn, _| Box::pin(async move { still_writable(conn).await }))
        .after_connect(move |_, _| {
            Box::pin(async move {
                // The pool's connect gives no way to ask the server which port it saw.
                crate::keepalive::arm(port, None);
                Ok(())
            })
        })
        .connect_lazy_with(options);
    let through = match pooling {
        Pooling::Direct => "",
        Pooling::Session => " through a pooler or proxy that keeps sessions",
        Pooling::Transaction => " through a transaction pooler: no statement cache",
        Pooling::Undetermined => " through a pooler whose mode could not be told: treated as transaction pooling",
    };
    say(format!("{name}: connected to {db}{through}; schema up to date"));
    Ok(Service { settings, migrations, db: Db { pool, pooling } })
}

fn env_file_argument(mut args: impl Iterator<Item = String>) -> Result<PathBuf, StartError> {
    let mut file = PathBuf::from(".env");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--env-file" => match args.next() {
                Some(path) => file = PathBuf::from(path),
                None => return Err(StartError { message: "--env-file needs a path".into(), code: 2 }),
            },
            other => {
                return Err(StartError {
                    message: format!("unknown argument {other}; usage: [--env-file PATH]"),
                    code: 2,
                });
            }
        }
    }
    Ok(file)
}

/// Runs a binary's async `main` on a fresh runtime; `threads` 0 means a current-thread runtime.
/// A panic prints one redacted line (see [`say`]); one that ends `main` exits 1.
pub fn block_on(name: &str, threads: usize, main: impl Future<Output = ExitCode>) -> ExitCode {
    crate::config::isolate_from_libpq_environment();
    report_panics_as_bugs(name);
    let built = match threads {
        0 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    };
    match built {
        Ok(runtime) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(main)))
            .unwrap_or(ExitCode::FAILURE),
        Err(e) => {
            say(format!("error: {name}: cannot start the async runtime: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are in place from the call on, not from the first
/// poll: a signal that comes in between is neither lost nor fatal (the default action kills).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()));
    async move {
        match handlers {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
}
