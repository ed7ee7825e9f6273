//! What went wrong on a connection: retried (waiting can fix it) or fatal (it cannot), by
//! SQLSTATE, the error's fields and the I/O error's kind, never by the message's words.

use super::*;

/// Between cheap attempts (refused, starting up): the server answers them at once, and readiness
/// must be noticed within 50 ms.
pub(super) const CHEAP_POLL: Duration = Duration::from_millis(20);
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The first pause after a read-only answer, doubling up to [`MAX_BACKOFF`]: each such answer
/// costs the server a full login (SCRAM) and a backend process, so a standby that stays one (or
/// `default_transaction_read_only = on`) is asked about once a second, not 50 times, by every
/// waiting pod. The first retries stay fast (20, 40, 80 ms...) for a promotion under way; one
/// noticed later costs at worst [`MAX_BACKOFF`] plus one attempt.
pub(super) const READ_ONLY_FIRST_BACKOFF: Duration = CHEAP_POLL;

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
    pub(super) fn is_cheap(self) -> bool {
        matches!(self, RetryKind::Refused | RetryKind::Reset | RetryKind::NotAccepting | RetryKind::ServerShutdown)
    }

    /// The first pause of the backoff for what is not cheap.
    pub(super) fn first_backoff(self) -> Duration {
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

pub(super) fn classify_io(error: &io::Error) -> Retryable {
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
pub(super) fn classify_sqlstate(
    code: &str,
    message: &str,
    routine: Option<&str>,
    settings: &DatabaseSettings,
) -> Failure {
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
pub(super) fn create_the_database(settings: &DatabaseSettings) -> String {
    format!(
        "create it (cargo xtask database create, or prestart --create-database; or CREATE DATABASE \"{}\" on {}:{}), or \
         fix POSTGRES_DB",
        settings.database(),
        settings.host(),
        settings.port()
    )
}

pub(super) fn tls_failure(detail: &str, settings: &DatabaseSettings) -> Fatal {
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
