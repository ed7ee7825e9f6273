//! Connecting: one attempt with a bounded time, the classification of what went wrong, and the
//! wait loop that retries only what waiting can fix.
//!
//! Every command uses this one classification, so `wait-for-db`, `migrate`, the backend and
//! `doctor` agree on what a failure means.

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError, PgSslMode};
use sqlx::{ConnectOptions, Connection};

use crate::config::DatabaseSettings;

/// The longest one connection attempt may take, so a host that drops packets costs seconds.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a query of ours may take, outside a migration's own SQL: a connection that went
/// half-open (a paused VM, a NAT that forgot the flow) then ends in seconds, not after the
/// kernel's retransmissions (about 15 minutes), and is replaced like any broken one.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// `query` within [`QUERY_TIMEOUT`]; running out is a timed-out I/O error, which
/// [`Failure::classify`] takes for a connection that waiting (and a new connection) can fix. The
/// connection is then of no further use: the answer may still come.
pub async fn bounded<T>(query: impl std::future::Future<Output = Result<T, sqlx::Error>>) -> Result<T, sqlx::Error> {
    match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(result) => result,
        Err(_) => Err(timed_out(QUERY_TIMEOUT)),
    }
}

/// The error of a query whose answer did not come within `bound`.
pub fn timed_out(bound: Duration) -> sqlx::Error {
    sqlx::Error::Io(io::Error::new(io::ErrorKind::TimedOut, OurBound(bound)))
}

/// The error inside the I/O error of a bound of ours that fired: a slow server, not a lost one
/// (the kernel's own ETIMEDOUT, from the keepalives or TCP_USER_TIMEOUT, is a lost connection).
#[derive(Debug)]
pub struct OurBound(Duration);

impl std::fmt::Display for OurBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the server sent no answer within {} s", self.0.as_secs())
    }
}

impl std::error::Error for OurBound {}

/// `error` is a bound of ours that fired ([`timed_out`]), not the network.
pub fn is_our_bound(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Io(e) if e.get_ref().is_some_and(|inner| inner.is::<OurBound>()))
}

/// What a failover does to a connection in use: it breaks (an I/O error that is not a bound of
/// ours: a reset, an EOF, the kernel's timeout), the server ends the session (57P01 a shutdown,
/// 57P02 a crash elsewhere), or the node is now a standby that refuses writes (25006). A class 08
/// SQLSTATE in a reply is not one: a server that replies is there (dblink reports its own
/// connections' failures so).
pub fn lost_to_failover(error: &sqlx::Error) -> Option<LostHow> {
    match error {
        sqlx::Error::Io(_) if is_our_bound(error) => None,
        sqlx::Error::Io(_) => Some(LostHow::Broken),
        sqlx::Error::Database(e) => match e.code().as_deref() {
            Some("57P01") => Some(LostHow::ShutDown),
            Some("57P02") => Some(LostHow::Broken),
            Some("25006") => Some(LostHow::ReadOnly),
            _ => None,
        },
        _ => None,
    }
}

/// How a connection was lost, which decides what proves a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostHow {
    /// The server ended the session (57P01): a shutdown, a restart, a switchover, or
    /// `pg_terminate_backend`.
    ShutDown,
    /// The node turned into a standby under it (25006).
    ReadOnly,
    /// It broke (an EOF, a reset, the kernel's timeout, 57P02): a failover, a network fault, or a
    /// crash, which the statement running may have caused.
    Broken,
}

/// What went wrong with a query of ours, for a user: the server's message and SQLSTATE, or the
/// network's error; never a driver's decoding message, which would only confuse.
pub fn describe_error(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(e) => format!("{} (SQLSTATE {})", e.message(), e.code().unwrap_or_default()),
        sqlx::Error::Io(e) => e.to_string(),
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => {
            "the server's answer had an unexpected shape (a PostgreSQL version this tool does not know?)".to_owned()
        }
        other => other.to_string(),
    }
}

/// `SET LOCAL statement_timeout` a little under [`QUERY_TIMEOUT`], to put before a query of ours
/// in the same simple-query message (one implicit transaction): when our bound gives up on the
/// answer, the server has already given up the statement, so nothing of ours stays queued there.
pub fn server_side_bound() -> String {
    format!("SET LOCAL statement_timeout = {}; ", QUERY_TIMEOUT.saturating_sub(Duration::from_secs(1)).as_millis())
}

/// Between cheap attempts (refused, starting up): the server answers them at once, and readiness
/// must be noticed within 50 ms.
const CHEAP_POLL: Duration = Duration::from_millis(20);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The first pause after a read-only answer, doubling up to [`MAX_BACKOFF`]: each such answer
/// costs the server a full login (SCRAM) and a backend process, so a standby that stays one (or
/// `default_transaction_read_only = on`) is asked about once a second, not 50 times, by every
/// waiting pod. The first retries stay fast (20, 40, 80 ms...) for a promotion under way; one
/// noticed later costs at worst [`MAX_BACKOFF`] plus one attempt.
const READ_ONLY_FIRST_BACKOFF: Duration = CHEAP_POLL;

/// Why an attempt failed in a way that waiting can fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryKind {
    /// Nothing listens on the port (or the socket file is missing).
    Refused,
    /// The connection was reset or closed mid-handshake: a server restarting.
    Reset,
    /// The host name does not resolve (yet: compose creates names when containers start).
    NameNotResolved,
    /// No answer within the attempt timeout: firewall, wrong address, or a packet-dropping host.
    TimedOut,
    /// No route to the host or network.
    Unreachable,
    /// SQLSTATE 57P03: starting up, shutting down, or a standby not accepting connections.
    NotAccepting,
    /// The server answers but cannot write: a hot standby, or `default_transaction_read_only`.
    ReadOnly,
    /// SQLSTATE 57P01/57P02: the server was shut down or crashed during the attempt.
    ServerShutdown,
    /// SQLSTATE 53300: `max_connections` reached.
    TooManyConnections,
    /// Any other SQLSTATE class 08 (connection exception).
    ConnectionException,
    /// A TCP proxy or load balancer accepted the connection and closed it before the server's
    /// first byte: no server behind it (HAProxy, a cloud load balancer or a service mesh while
    /// the primary is down, as during a failover).
    NoServerBehind,
    /// Another I/O error on the way to the server.
    Network,
}

impl RetryKind {
    /// The server (or the kernel) answers these at once, before any login, so polling fast costs
    /// it nothing. Not [`RetryKind::ReadOnly`]: that answer comes after a full login; nor
    /// [`RetryKind::NoServerBehind`]: each try is two connections through a load balancer, which
    /// logs and tracks every one.
    fn is_cheap(self) -> bool {
        matches!(self, RetryKind::Refused | RetryKind::Reset | RetryKind::NotAccepting | RetryKind::ServerShutdown)
    }

    /// The first pause of the backoff for what is not cheap.
    fn first_backoff(self) -> Duration {
        match self {
            RetryKind::ReadOnly => READ_ONLY_FIRST_BACKOFF,
            _ => FIRST_BACKOFF,
        }
    }

    /// A short stable name, for logs and JSON.
    pub fn code(self) -> &'static str {
        match self {
            RetryKind::Refused => "connection_refused",
            RetryKind::Reset => "connection_reset",
            RetryKind::NameNotResolved => "name_not_resolved",
            RetryKind::TimedOut => "timed_out",
            RetryKind::Unreachable => "unreachable",
            RetryKind::NotAccepting => "not_accepting_connections",
            RetryKind::ReadOnly => "read_only",
            RetryKind::ServerShutdown => "server_shutdown",
            RetryKind::TooManyConnections => "too_many_connections",
            RetryKind::ConnectionException => "connection_exception",
            RetryKind::NoServerBehind => "no_server_behind",
            RetryKind::Network => "network_error",
        }
    }
}

/// A failure that waiting can fix, with what the server or the system said.
#[derive(Debug, Clone)]
pub struct Retryable {
    pub kind: RetryKind,
    pub detail: String,
}

impl fmt::Display for Retryable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Why the server refused us for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatalKind {
    /// 28P01.
    BadPassword,
    /// 28000 with "no pg_hba.conf entry".
    RejectedByHba,
    /// 28000 "role does not exist".
    UnknownRole,
    /// 3D000.
    DatabaseMissing,
    /// 42501: no CONNECT privilege.
    PermissionDenied,
    /// TLS negotiation or certificate problems.
    Tls,
    /// A connection pooler refused a startup parameter (08P01).
    PoolerRefusedParameter,
    /// A connection pooler has no entry for the database (PgBouncer's 08P01 without a fallback `*`):
    /// creating it on the server would not make the pooler route to it.
    PoolerUnknownDatabase,
    /// The peer does not speak the PostgreSQL protocol, or the settings cannot work.
    Other,
}

/// A failure that waiting cannot fix: what happened and how to fix it.
#[derive(Debug, Clone)]
pub struct Fatal {
    pub kind: FatalKind,
    /// What the server or the driver said.
    pub detail: String,
    /// SQLSTATE, when the server sent one.
    pub code: Option<String>,
    /// The fix, in one or two sentences.
    pub hint: String,
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{} (SQLSTATE {code})", self.detail)?,
            None => f.write_str(&self.detail)?,
        }
        write!(f, "\n  hint: {}", self.hint)
    }
}

impl std::error::Error for Fatal {}

/// One failed attempt, classified.
#[derive(Debug, Clone)]
pub enum Failure {
    Retry(Retryable),
    Fatal(Fatal),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Retry(retry) => retry.fmt(f),
            Failure::Fatal(fatal) => fatal.fmt(f),
        }
    }
}

impl Failure {
    /// Sorts a connect error into what waiting can fix and what it cannot.
    pub fn classify(error: &sqlx::Error, settings: &DatabaseSettings) -> Failure {
        match error {
            // rustls reports certificate problems as invalid data on the stream.
            sqlx::Error::Io(e) if e.kind() == io::ErrorKind::InvalidData => {
                Failure::Fatal(tls_failure(&e.to_string(), settings))
            }
            sqlx::Error::Io(e) => Failure::Retry(classify_io(e)),
            sqlx::Error::Database(e) => match e.try_downcast_ref::<PgDatabaseError>() {
                Some(pg) => classify_sqlstate(pg.code(), pg.message(), pg.routine(), settings),
                None => classify_sqlstate(e.code().as_deref().unwrap_or(""), e.message(), None, settings),
            },
            sqlx::Error::Tls(e) => Failure::Fatal(tls_failure(&e.to_string(), settings)),
            sqlx::Error::Protocol(message) => Failure::Fatal(Fatal {
                kind: FatalKind::Other,
                detail: format!(
                    "the server at {}:{} does not speak the PostgreSQL protocol as expected: {message}",
                    settings.host(),
                    settings.port()
                ),
                code: None,
                hint: "check that POSTGRES_SERVER and POSTGRES_PORT point at PostgreSQL, not at another service".into(),
            }),
            other => Failure::Fatal(Fatal {
                kind: FatalKind::Other,
                detail: other.to_string(),
                code: None,
                hint: "check the database settings (POSTGRES_* or DATABASE_URL)".into(),
            }),
        }
    }
}

fn classify_io(error: &io::Error) -> Retryable {
    use io::ErrorKind as K;
    let text = error.to_string();
    let kind = match error.kind() {
        K::ConnectionRefused | K::NotFound => RetryKind::Refused,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => RetryKind::Reset,
        K::TimedOut => RetryKind::TimedOut,
        // EADDRNOTAVAIL: `localhost` resolved to ::1 where there is no IPv6; for the user, as
        // good as nothing listening there.
        K::AddrNotAvailable => RetryKind::Refused,
        K::HostUnreachable | K::NetworkUnreachable => RetryKind::Unreachable,
        // A failed name lookup has no kind of its own (tokio reports getaddrinfo's errors as
        // uncategorised): `connect_once` asks the resolver itself to tell it apart.
        _ => RetryKind::Network,
    };
    let detail = match kind {
        RetryKind::Refused if error.kind() == K::AddrNotAvailable => "address not available on this machine".to_owned(),
        RetryKind::Refused => "connection refused".to_owned(),
        RetryKind::NameNotResolved => "host name does not resolve".to_owned(),
        _ => text,
    };
    Retryable { kind, detail }
}

/// By SQLSTATE and the error's fields, never by its message, which the server may send in
/// another language (`lc_messages`). Where one SQLSTATE covers several causes, PostgreSQL's
/// `routine` field (the C function that raised it, never translated) tells them apart.
fn classify_sqlstate(code: &str, message: &str, routine: Option<&str>, settings: &DatabaseSettings) -> Failure {
    let retry = |kind| Failure::Retry(Retryable { kind, detail: format!("{message} (SQLSTATE {code})") });
    let fatal = |kind, hint: String| {
        Failure::Fatal(Fatal { kind, detail: message.to_owned(), code: Some(code.to_owned()), hint })
    };
    let user = settings.user();
    let database = settings.database();
    match code {
        "57P03" => retry(RetryKind::NotAccepting),
        "57P01" | "57P02" => retry(RetryKind::ServerShutdown),
        "53300" => retry(RetryKind::TooManyConnections),
        "28P01" => fatal(
            FatalKind::BadPassword,
            format!(
                "the password is wrong, or role \"{user}\" does not exist: PostgreSQL gives one answer for both, on \
                 purpose. Check the role as a superuser (SELECT rolname FROM pg_roles WHERE rolname = '{user}'); fix \
                 {} (or {}), or set the role's password on the server (ALTER ROLE \"{user}\" PASSWORD '...'); a \
                 PostgreSQL data volume keeps the password it was first created with, whatever POSTGRES_PASSWORD says now",
                settings.password_variable(),
                settings.user_variable()
            ),
        ),
        // Refused by pg_hba.conf: no rule, or a `reject` one (raised in ClientAuthentication).
        "28000" if routine == Some("ClientAuthentication") => {
            // Unless the settings demand TLS the connection may have gone unencrypted: the rule
            // may be missing altogether, or exist only as `hostssl`. Both fixes are named.
            let without_tls =
                if !matches!(settings.ssl_mode(), PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull) {
                    "; if the server accepts only encrypted connections from here (hostssl lines), set \
                 POSTGRES_SSLMODE=require instead"
                } else {
                    ""
                };
            fatal(
                FatalKind::RejectedByHba,
                format!(
                    "pg_hba.conf on the server has no rule that lets role \"{user}\" reach database \"{database}\" from \
                     this address: add a `host {database} {user} <this client's network> scram-sha-256` line to \
                     pg_hba.conf and reload PostgreSQL (SELECT pg_reload_conf()){without_tls}"
                ),
            )
        }
        // Raised where the session's user is looked up: the role does not exist, or may not log in.
        "28000" if routine.is_some() => fatal(
            FatalKind::UnknownRole,
            format!(
                "create the role on the server (CREATE ROLE \"{user}\" LOGIN PASSWORD '...'), or let it log in (ALTER \
                 ROLE \"{user}\" LOGIN), or fix {}",
                settings.user_variable()
            ),
        ),
        "3D000" => fatal(FatalKind::DatabaseMissing, create_the_database(settings)),
        "42501" => fatal(
            FatalKind::PermissionDenied,
            format!("grant the role access (GRANT CONNECT ON DATABASE \"{database}\" TO \"{user}\")"),
        ),
        _ if code.starts_with("08") => retry(RetryKind::ConnectionException),
        _ => fatal(FatalKind::Other, "see the server's message above and its log".into()),
    }
}

/// The fix for a database that does not exist.
fn create_the_database(settings: &DatabaseSettings) -> String {
    format!(
        "create it (cargo xtask database create, or prestart --create-database; or CREATE DATABASE \"{}\" on {}:{}), or \
         fix POSTGRES_DB",
        settings.database(),
        settings.host(),
        settings.port()
    )
}

fn tls_failure(detail: &str, settings: &DatabaseSettings) -> Fatal {
    let hint = if detail.contains("does not support TLS") {
        "the server has TLS turned off while POSTGRES_SSLMODE requires it: turn on ssl in postgresql.conf, or use \
         POSTGRES_SSLMODE=prefer (or disable) for a server on a trusted network"
            .to_owned()
    } else {
        format!(
            "the server's certificate cannot be verified for \"{}\": set POSTGRES_SSLROOTCERT to the CA certificate that \
             signed it, or use POSTGRES_SSLMODE=require to encrypt without verifying",
            settings.host()
        )
    };
    Fatal { kind: FatalKind::Tls, detail: format!("TLS failed: {detail}"), code: None, hint }
}

/// A ready connection and the server process behind it.
pub struct Ready {
    pub conn: PgConnection,
    /// So a second connection can stop what this one runs.
    pub process: ServerProcess,
    /// What the readiness query learnt about the server, in the same round trip.
    pub server: ServerState,
    /// The address our TCP socket is connected to, when it was found (see `keepalive::arm`).
    pub dialled: Option<std::net::IpAddr>,
}

/// Whether the server can write, and where it says the connection arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// `pg_is_in_recovery()`: a standby.
    pub in_recovery: bool,
    /// `transaction_read_only` at connect: a standby, or `default_transaction_read_only = on`.
    pub read_only: bool,
    /// `inet_server_addr()` and `inet_server_port()`: `None` over a Unix socket. Behind a pooler
    /// or a proxy they are the server's side of the pooler's connection, not what we dialled.
    pub address: Option<(String, u16)>,
    /// `current_database()`: the server's name for it, which a pooler's alias may hide.
    pub database: String,
    /// The server's `port` setting, which names its Unix socket too.
    pub port: u16,
    /// `pg_postmaster_start_time()`, to the microsecond: which server instance this is. A crash
    /// restart keeps it; a failover, a switchover or a restart does not.
    pub postmaster_started: String,
    /// The primary's WAL timeline, once [`read_timeline`] read it: a promotion starts a new one, a
    /// crash recovery or a restart keeps it.
    pub timeline: Option<String>,
}

/// The WAL timeline of the primary behind `conn`; `None` where it cannot be read (a standby, or
/// a managed service without the WAL functions, as Aurora): then a broken connection proves no
/// failover. Not in the readiness query, which must work everywhere.
pub async fn read_timeline(conn: &mut PgConnection) -> Option<String> {
    let query = sqlx::raw_sql("SELECT substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8)");
    let row = bounded(query.fetch_one(conn)).await.ok()?;
    use sqlx::Row as _;
    row.try_get(0).ok()
}

impl ServerState {
    /// Both connections reached one server instance (the same postmaster, not restarted): what
    /// went wrong between them was not a failover.
    pub fn same_instance(&self, other: &ServerState) -> bool {
        self.postmaster_started == other.postmaster_started
    }

    /// Whether what lost a connection to `before` and reached `self` is known to be a failover
    /// or a restart, after which work the server rolled back may run again: the server ended the
    /// session and another instance answers, or the node turned read-only, or a promotion
    /// happened in between (a new timeline). A connection that just broke, then the same timeline
    /// (a crash restart, even by a supervisor that starts a new postmaster), proves nothing: the
    /// statement that ran may be what crashed it.
    pub fn failed_over_from(&self, before: &ServerState, how: LostHow) -> bool {
        match how {
            LostHow::ReadOnly => true,
            LostHow::ShutDown => !self.same_instance(before),
            LostHow::Broken => self.timeline.is_some() && self.timeline != before.timeline,
        }
    }

    /// Why the server cannot take writes, if it cannot.
    pub fn read_only_reason(&self) -> Option<Retryable> {
        let detail = if self.in_recovery {
            "the server is a standby in recovery (pg_is_in_recovery()): it answers but cannot write"
        } else if self.read_only {
            "the server takes no writes (default_transaction_read_only = on)"
        } else {
            return None;
        };
        Some(Retryable { kind: RetryKind::ReadOnly, detail: detail.into() })
    }
}

/// One server process, told apart from any other that may later have its pid: the same server
/// instance (a restarted server reuses pids), the same client port as the server sees it (ours,
/// which our open socket keeps from any other connection of this machine), and started before
/// the server's clock said `seen_at` to it (a process that took its pid later started later).
/// Cheaper than reading its `backend_start`, which costs a fresh server process a quarter of a
/// millisecond.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerProcess {
    pub pid: i32,
    /// `inet_client_port()`: none over a Unix socket.
    pub client_port: Option<i32>,
    /// `pg_postmaster_start_time()` as the server prints it.
    pub postmaster_started: String,
    /// `now()` of its first query, as the server prints it.
    pub seen_at: String,
}

impl fmt::Display for ServerProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server process {}", self.pid)
    }
}

/// What every connection asks first, in one round trip: whether the server can take writes, where
/// it saw us arrive (for pooler detection and keepalives) and which server process and instance
/// answer (see [`ServerProcess`]). Each value comes as the server prints it and is read here: an
/// operator (`= 'on'`) or a cast (`::int`, `::text`) costs a fresh server process a catalog
/// lookup, a fifth of a millisecond for this query.
pub const READINESS_SQL: &str = "SELECT pg_catalog.pg_backend_pid(), pg_catalog.pg_is_in_recovery(), \
     pg_catalog.current_setting('transaction_read_only'), \
     pg_catalog.host(pg_catalog.inet_server_addr()), pg_catalog.inet_server_port(), \
     pg_catalog.current_database(), pg_catalog.current_setting('port'), \
     pg_catalog.inet_client_port(), pg_catalog.pg_postmaster_start_time(), pg_catalog.now()";

/// One attempt: connect within `timeout` and prove the server answers a query.
pub async fn connect_once(
    settings: &DatabaseSettings,
    application_name: &str,
    timeout: Duration,
) -> Result<Ready, Failure> {
    let options = quiet(settings.connect_options(application_name));
    let attempt = async || {
        let mut conn = PgConnection::connect_with(&options).await?;
        // The simple protocol answers in one round trip; a prepared statement would take two.
        let row = sqlx::raw_sql(READINESS_SQL).fetch_one(&mut conn).await?;
        use sqlx::Row as _;
        // Our socket is the one whose local port the server saw (behind a relay it saw the
        // relay's, and the peer port alone picks).
        let client_port: Option<i32> = row.try_get(7)?;
        let dialled = crate::keepalive::arm(settings.port(), client_port.and_then(|p| u16::try_from(p).ok()));
        // The two `timestamptz` values as the server prints them (the simple protocol sends
        // text): compared as text, and handed back to the server as such.
        let postmaster_started: String = row.try_get_unchecked(8)?;
        let process = ServerProcess {
            pid: row.try_get(0)?,
            client_port,
            postmaster_started: postmaster_started.clone(),
            seen_at: row.try_get_unchecked(9)?,
        };
        let address: Option<String> = row.try_get(3)?;
        let port: Option<i32> = row.try_get(4)?;
        let read_only: String = row.try_get(2)?;
        let setting_port: String = row.try_get(6)?;
        let server = ServerState {
            in_recovery: row.try_get(1)?,
            read_only: read_only == "on",
            address: address.zip(port.and_then(|p| u16::try_from(p).ok())),
            database: row.try_get(5)?,
            port: setting_port.parse().unwrap_or_default(),
            postmaster_started,
            // Read only where a failover must be told apart (see `read_timeline`).
            timeline: None,
        };
        Ok::<_, sqlx::Error>(Ready { conn, process, server, dialled })
    };
    let started = Instant::now();
    let no_server_behind = || {
        Failure::Retry(Retryable {
            kind: RetryKind::NoServerBehind,
            detail: "the connection was accepted and closed before the server's first byte".into(),
        })
    };
    match tokio::time::timeout(timeout, attempt()).await {
        Ok(Ok(ready)) => Ok(ready),
        Ok(Err(error)) => {
            let left = || timeout.saturating_sub(started.elapsed());
            // Without an SSLRequest (sslmode=disable) the same closed stream is an EOF or a
            // reset, which a server restarting gives too: the probe tells them apart.
            let closed_early =
                matches!(Failure::classify(&error, settings), Failure::Retry(Retryable { kind: RetryKind::Reset, .. }));
            if matches!(error, sqlx::Error::Protocol(_)) || closed_early {
                match first_byte(settings, left()).await {
                    FirstByte::None => return Err(no_server_behind()),
                    // A proxy that had no server a moment ago has one now (a failover ending):
                    // asked once more at once. A second protocol error is the server's own.
                    FirstByte::Postgres => match tokio::time::timeout(left(), attempt()).await {
                        Ok(Ok(ready)) => return Ok(ready),
                        Ok(Err(again)) if !matches!(again, sqlx::Error::Protocol(_)) => {
                            return Err(Failure::classify(&again, settings));
                        }
                        Err(_) => return Err(no_server_behind()),
                        Ok(Err(_)) => {}
                    },
                    FirstByte::Other => {}
                }
            }
            if let Some(fatal) = refused_by_a_pooler(&error, settings, left()).await {
                return Err(Failure::Fatal(fatal));
            }
            let failure = Failure::classify(&error, settings);
            Err(tell_unresolved_apart(failure, settings, left()).await)
        }
        Err(_) => Err(Failure::Retry(Retryable {
            kind: RetryKind::TimedOut,
            detail: format!("no answer within {} s", timeout.as_secs_f32()),
        })),
    }
}

/// sqlx reports a stream that ends before the server's answer to its first message as a
/// protocol error (a zero byte for the answer to SSLRequest), as it reports a server that
/// answers with bytes that are not PostgreSQL's. Asked again ourselves: a proxy with no server
/// behind it accepts and closes without a byte, which waiting fixes; a real server that is not
/// PostgreSQL answers something else, and stays a fast failure.
enum FirstByte {
    /// Closed (or refused, or reset) before a byte: no server behind a proxy.
    None,
    /// `S` or `N`, a PostgreSQL server's answer to SSLRequest.
    Postgres,
    Other,
}

async fn first_byte(settings: &DatabaseSettings, left: Duration) -> FirstByte {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    if settings.socket().is_some() {
        return FirstByte::Other;
    }
    // The 8 bytes of an SSLRequest.
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((settings.host(), settings.port())).await?;
        stream.write_all(&SSL_REQUEST).await?;
        let mut answer = [0u8; 1];
        let read = stream.read(&mut answer).await?;
        Ok::<_, std::io::Error>((read, answer[0]))
    };
    match tokio::time::timeout(left.min(Duration::from_secs(2)), probe).await {
        Ok(Ok((0, _)) | Err(_)) => FirstByte::None,
        Ok(Ok((_, b'S' | b'N'))) => FirstByte::Postgres,
        Ok(Ok(_)) => FirstByte::Other,
        // No answer in time is no byte: what a proxy still looking for a server does.
        Err(_) => FirstByte::None,
    }
}

/// An error that a pooler sent, not PostgreSQL: 08P01 without the `routine` field that every
/// error of PostgreSQL's carries (PgBouncer answers every refusal so: an unknown database, a full
/// pool, a startup parameter it does not track).
fn from_a_pooler(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else { return false };
    db.try_downcast_ref::<PgDatabaseError>().is_some_and(|pg| pg.code() == "08P01" && pg.routine().is_none())
}

/// A pooler's 08P01 that waiting will not fix, told by asking (see the two probes below): its
/// refusal of the settings' startup options, or a database the server behind it does not have.
async fn refused_by_a_pooler(error: &sqlx::Error, settings: &DatabaseSettings, left: Duration) -> Option<Fatal> {
    if !from_a_pooler(error) {
        return None;
    }
    if settings.startup_options().is_some() && refuses_startup_options(settings, left).await {
        return Some(pooler_refused_options(error, settings));
    }
    if !database_missing_behind_a_pooler(settings, left).await {
        return unknown_to_the_pooler(error, settings, left).await;
    }
    Some(Fatal {
        kind: FatalKind::DatabaseMissing,
        detail: format!(
            "{} (the server, asked through the pooler's `postgres` database, has no database \"{}\")",
            describe_error(error),
            settings.database()
        ),
        code: None,
        hint: create_the_database(settings),
    })
}

/// Whether the pooler answers for the settings' database exactly as it answers for a database
/// that surely does not exist, where the server behind it cannot be asked (see
/// [`database_missing_behind_a_pooler`]): PgBouncer without a `*` fallback says "no such
/// database" as 08P01, the code of its transient refusals too, and no field tells them apart.
/// Nothing is matched against words of ours: the two answers of the same pooler are compared with
/// each other, each database's name taken out, so a pooler that words (or translates) its
/// refusals otherwise is judged the same way. A refusal that names no database (a full pool, a
/// pooler shutting down, a server down behind it) is never taken for one.
async fn unknown_to_the_pooler(error: &sqlx::Error, settings: &DatabaseSettings, left: Duration) -> Option<Fatal> {
    let ours = pooler_message(error)?;
    let database = settings.database();
    if !ours.contains(database) {
        return None;
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let nowhere = format!("prestart_no_such_database_{}_{nanos}", std::process::id());
    let probe = quiet(settings.with_database(&nowhere).connect_options("prestart-probe"));
    let answer = tokio::time::timeout(left.min(Duration::from_secs(2)), PgConnection::connect_with(&probe)).await;
    let Ok(Err(theirs)) = answer else { return None };
    let theirs = pooler_message(&theirs)?;
    (ours.replace(database, "\u{0}") == theirs.replace(&nowhere, "\u{0}")).then(|| Fatal {
        kind: FatalKind::PoolerUnknownDatabase,
        detail: format!("{ours} (the same answer it gives for a database that surely does not exist)"),
        code: Some("08P01".to_owned()),
        hint: format!(
            "the connection pooler at {}:{} answers for the database \"{database}\" as for one that does not exist: \
             it has no entry for it (add it to the pooler's [databases] in pgbouncer.ini, or a `*` fallback entry), or \
             the server behind it has no such database (create it there); or fix POSTGRES_DB. A database created on \
             the server is reached through the pooler only once it has an entry, so --create-database cannot make \
             it through this pooler",
            settings.host(),
            settings.port()
        ),
    })
}

/// The message of a pooler's own 08P01 (see [`from_a_pooler`]).
fn pooler_message(error: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(db) = error else { return None };
    from_a_pooler(error).then(|| db.message().to_owned())
}

/// Asked by trying once more without the settings' startup `options`: a pooler that lets that
/// attempt past its refusal refused the options (what waiting never fixes).
async fn refuses_startup_options(settings: &DatabaseSettings, left: Duration) -> bool {
    let bare = quiet(settings.connect_options_without_startup_options("prestart-probe"));
    match tokio::time::timeout(left.min(Duration::from_secs(2)), PgConnection::connect_with(&bare)).await {
        Ok(Ok(_)) => true,
        Ok(Err(error)) => !from_a_pooler(&error),
        Err(_) => false,
    }
}

/// Whether the server behind a pooler says that the database of `settings` does not exist. A
/// pooler passes the server's refusal of a missing database on as its own 08P01 (PgBouncer), which
/// no field tells from its refusals that waiting fixes (a pool whose server logins fail): the
/// server itself, reached through the pooler's `postgres` database with the same credentials, is
/// asked. Where that cannot be reached either, nothing is known, and the wait goes on.
async fn database_missing_behind_a_pooler(settings: &DatabaseSettings, left: Duration) -> bool {
    if settings.database() == "postgres" {
        return false;
    }
    let options = quiet(settings.with_database("postgres").connect_options("prestart-probe"));
    let sql = format!(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = {})",
        dollar_quoted(settings.database())
    );
    let ask = async {
        let mut conn = PgConnection::connect_with(&options).await.ok()?;
        let row = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_one(&mut conn).await.ok()?;
        sqlx::Row::try_get::<bool, _>(&row, 0).ok()
    };
    matches!(tokio::time::timeout(left.min(Duration::from_secs(2)), ask).await, Ok(Some(false)))
}

fn pooler_refused_options(error: &sqlx::Error, settings: &DatabaseSettings) -> Fatal {
    Fatal {
        kind: FatalKind::PoolerRefusedParameter,
        detail: describe_error(error),
        code: Some("08P01".to_owned()),
        hint: format!(
            "a connection pooler (PgBouncer?) at {}:{} refuses the startup parameter `options` (the `options` of \
             DATABASE_URL), and accepts the same connection without it: prestart sends no other parameter a pooler \
             refuses by itself. Remove `options`, or add `options` to ignore_startup_parameters in pgbouncer.ini",
            settings.host(),
            settings.port()
        ),
    }
}

/// A network failure of no known kind, to a host given by name, is a name that does not resolve
/// when the resolver, asked itself within what is left of the attempt, finds no address for it.
async fn tell_unresolved_apart(failure: Failure, settings: &DatabaseSettings, left: Duration) -> Failure {
    let Failure::Retry(Retryable { kind: RetryKind::Network, .. }) = &failure else { return failure };
    let host = settings.host();
    if settings.socket().is_some() || host.parse::<std::net::IpAddr>().is_ok() {
        return failure;
    }
    // A lookup that does not finish in time tells nothing: the failure stays as it was.
    let unresolved = match tokio::time::timeout(left, tokio::net::lookup_host((host, settings.port()))).await {
        Ok(Ok(mut addresses)) => addresses.next().is_none(),
        Ok(Err(_)) => true,
        Err(_) => false,
    };
    if !unresolved {
        return failure;
    }
    Failure::Retry(Retryable { kind: RetryKind::NameNotResolved, detail: "host name does not resolve".into() })
}

/// Our own logs say what a statement did; sqlx's per-statement log lines would only repeat it.
fn quiet(options: PgConnectOptions) -> PgConnectOptions {
    options.disable_statement_logging()
}

/// Progress of a wait, passed to the caller after each failed attempt.
pub struct WaitProgress<'a> {
    pub reason: &'a Retryable,
    /// The reason differs from the previous attempt's.
    pub reason_changed: bool,
    pub attempts: u32,
    pub elapsed: Duration,
    pub remaining: Duration,
}

/// Why waiting ended without a connection.
#[derive(Debug)]
pub enum WaitError {
    Fatal(Fatal),
    Deadline { last: Retryable, attempts: u32, waited: Duration },
}

/// Connects, retrying what waiting can fix until `deadline` has passed. After each failed
/// attempt `on_retry` hears why, and may bring the deadline closer (never further).
pub async fn wait_for_database(
    settings: &DatabaseSettings,
    application_name: &str,
    mut deadline: Duration,
    mut on_retry: impl FnMut(&WaitProgress<'_>) -> Option<Duration>,
) -> Result<Ready, WaitError> {
    let started = Instant::now();
    let mut attempts = 0u32;
    let mut previous: Option<RetryKind> = None;
    let mut backoff = FIRST_BACKOFF;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_sub(started.elapsed());
        let timeout = ATTEMPT_TIMEOUT.min(remaining).max(Duration::from_millis(100));
        let reason = match connect_once(settings, application_name, timeout).await {
            // Ready means able to write: migrations and jobs need it.
            Ok(ready) => match ready.server.read_only_reason() {
                None => return Ok(ready),
                Some(reason) => reason,
            },
            Err(Failure::Fatal(fatal)) => return Err(WaitError::Fatal(fatal)),
            Err(Failure::Retry(reason)) => reason,
        };
        let elapsed = started.elapsed();
        let reason_changed = previous != Some(reason.kind);
        if reason_changed {
            backoff = reason.kind.first_backoff();
        }
        previous = Some(reason.kind);
        let progress = WaitProgress {
            reason: &reason,
            reason_changed,
            attempts,
            elapsed,
            remaining: deadline.saturating_sub(elapsed),
        };
        if let Some(closer) = on_retry(&progress) {
            deadline = deadline.min(closer);
        }
        let remaining = deadline.saturating_sub(elapsed);
        if remaining.is_zero() {
            return Err(WaitError::Deadline { last: reason, attempts, waited: elapsed });
        }
        let pause = if reason.kind.is_cheap() {
            CHEAP_POLL
        } else {
            let pause = backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            pause
        };
        tokio::time::sleep(pause.min(remaining)).await;
    }
}

/// Stops what `process` is doing, from a second connection, by `deadline`: sqlx cannot send a
/// CancelRequest.
///
/// Terminating (rather than only cancelling the statement) also rolls back the open transaction
/// and releases the session's locks, advisory ones included, before we exit. A process of the
/// same pid that is not ours (see [`ServerProcess`]) is left alone.
pub async fn terminate_backend(
    settings: &DatabaseSettings,
    process: &ServerProcess,
    deadline: Instant,
) -> Result<bool, Failure> {
    let timed_out = || Failure::Retry(Retryable { kind: RetryKind::TimedOut, detail: "no answer in time".into() });
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut ready = connect_once(settings, "prestart-cancel", left()).await?;
    // Since PostgreSQL 14 the call can wait until the process is gone, so its locks are released
    // by the time we exit; it waits a little less than we do, so its answer still reaches us.
    let server_wait = left().saturating_sub(Duration::from_millis(100)).as_millis();
    let terminate = match ready.conn.server_version_num() {
        Some(version) if version >= 140_000 && server_wait > 0 => format!("pg_terminate_backend(pid, {server_wait})"),
        _ => "pg_terminate_backend(pid)".to_owned(),
    };
    // pg_stat_activity says -1 for a Unix socket's client port, where inet_client_port() says NULL.
    let sql = format!(
        "SELECT {terminate} FROM pg_stat_activity WHERE pid = $1 AND client_port = coalesce($2, -1) \
         AND pg_postmaster_start_time()::text = $3 AND backend_start <= $4::timestamptz"
    );
    let query = sqlx::query_scalar::<_, bool>(sqlx::AssertSqlSafe(sql))
        .bind(process.pid)
        .bind(process.client_port)
        .bind(&process.postmaster_started)
        .bind(&process.seen_at);
    match tokio::time::timeout(left(), query.fetch_optional(&mut ready.conn)).await {
        Ok(Ok(stopped)) => Ok(stopped.unwrap_or(false)),
        Ok(Err(error)) => Err(Failure::classify(&error, settings)),
        Err(_) => Err(timed_out()),
    }
}

/// A `timestamptz` as the server prints it (`2026-12-04 23:36:31.857694+00`: sqlx sets `DateStyle`
/// to ISO and `TimeZone` to UTC) as `2026-12-04T23:36:31Z`, UTC to the second even where a pooler
/// kept another time zone (`2026-12-05 05:06:31+05:30`). The value is read as the server prints it
/// rather than converted there: `AT TIME ZONE` or `to_char` cost a fresh server process a tenth of
/// a millisecond or more. A value of another shape (`infinity`, a year BC or past 9999, another
/// `DateStyle`, a local mean time's offset in seconds) stays as it is.
pub fn rfc3339_seconds(printed: &str) -> String {
    utc_to_the_second(printed).unwrap_or_else(|| printed.to_owned())
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]+HH[:MM]` in UTC, or `None` for any other shape.
fn utc_to_the_second(printed: &str) -> Option<String> {
    let number = |from: usize, to: usize| -> Option<i64> {
        let digits = printed.get(from..to)?;
        if digits.bytes().all(|b| b.is_ascii_digit()) { digits.parse().ok() } else { None }
    };
    let separators = [(4, '-'), (7, '-'), (10, ' '), (13, ':'), (16, ':')];
    if !separators.iter().all(|&(at, separator)| printed.get(at..).is_some_and(|rest| rest.starts_with(separator))) {
        return None;
    }
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    let rest = printed.get(19..)?;
    let offset =
        rest.strip_prefix('.').map_or(rest, |fraction| fraction.trim_start_matches(|c: char| c.is_ascii_digit()));
    let (sign, offset) = match offset.split_at_checked(1)? {
        ("+", offset) => (1, offset),
        ("-", offset) => (-1, offset),
        _ => return None,
    };
    let offset_minutes = match (offset.len(), offset.get(2..3)) {
        (2, None) => number(printed.len() - 2, printed.len())? * 60,
        (5, Some(":")) => {
            number(printed.len() - 5, printed.len() - 3)? * 60 + number(printed.len() - 2, printed.len())?
        }
        _ => return None,
    };
    let local = crate::calendar::days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let utc = local - sign * offset_minutes * 60;
    let (year, month, day) = crate::calendar::civil_from_days(utc.div_euclid(86_400));
    let seconds = utc.rem_euclid(86_400);
    (0..=9999).contains(&year).then(|| {
        format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", seconds / 3600, seconds % 3600 / 60, seconds % 60)
    })
}

/// `text` as a dollar-quoted literal whose tag it does not contain: no escaping, whatever
/// `standard_conforming_strings` says.
pub fn dollar_quoted(text: &str) -> String {
    let mut tag = "$d$".to_owned();
    // The text holds no `$` and tag name at all, so no part of it (nor its end) closes the quote.
    while text.contains(&tag[..tag.len() - 1]) {
        tag.insert(tag.len() - 1, 'x');
    }
    format!("{tag}{text}{tag}")
}

#[cfg(test)]
mod tests {
    use super::rfc3339_seconds;

    #[test]
    fn a_printed_timestamptz_becomes_rfc3339_utc_to_the_second() {
        assert_eq!(rfc3339_seconds("2026-12-04 23:36:31.857694+00"), "2026-12-04T23:36:31Z");
        assert_eq!(rfc3339_seconds("2026-12-04 23:36:31+00"), "2026-12-04T23:36:31Z");
        // A pooler that kept another time zone: the same instant, in UTC.
        assert_eq!(rfc3339_seconds("2026-12-05 05:06:31.5+05:30"), "2026-12-04T23:36:31Z");
        assert_eq!(rfc3339_seconds("2026-12-04 18:36:31-05"), "2026-12-04T23:36:31Z");
        // Across a month, a year and a leap day.
        assert_eq!(rfc3339_seconds("2027-01-01 01:00:00+02"), "2026-12-31T23:00:00Z");
        assert_eq!(rfc3339_seconds("2024-02-28 20:00:00-04:30"), "2024-02-29T00:30:00Z");
        assert_eq!(rfc3339_seconds("1970-01-01 00:00:00+00"), "1970-01-01T00:00:00Z");
        // No RFC 3339 UTC form, or another DateStyle: as printed.
        for printed in [
            "1850-01-01 00:00:00+00:53:28",
            "0044-03-15 00:00:00+00 BC",
            "12/04/2026 23:36:31+05:30",
            "Fri Dec 04 23:36:31.857694 2026 UTC",
            "2026-12-04 23:36:31",
            "infinity",
            "",
        ] {
            assert_eq!(rfc3339_seconds(printed), printed);
        }
    }
}
