//! One connection attempt, bounded, with the readiness query in its first round trip; what a
//! failure is, told by probes where the error alone cannot say.

use super::*;

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
        ready_from(conn, &row, settings)
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

/// The ready connection, from the row of [`READINESS_SQL`] its first query read: the server
/// process behind it, the server's state, and the keepalive armed on our socket.
fn ready_from(
    conn: PgConnection,
    row: &sqlx::postgres::PgRow,
    settings: &DatabaseSettings,
) -> Result<Ready, sqlx::Error> {
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
    Ok(Ready { conn, process, server, dialled })
}

/// sqlx reports a stream that ends before the server's answer to its first message as a
/// protocol error (a zero byte for the answer to SSLRequest), as it reports a server that
/// answers with bytes that are not PostgreSQL's. Asked again ourselves: a proxy with no server
/// behind it accepts and closes without a byte, which waiting fixes; a real server that is not
/// PostgreSQL answers something else, and stays a fast failure.
pub(super) enum FirstByte {
    /// Closed (or refused, or reset) before a byte: no server behind a proxy.
    None,
    /// `S` or `N`, a PostgreSQL server's answer to SSLRequest.
    Postgres,
    Other,
}

pub(super) async fn first_byte(settings: &DatabaseSettings, left: Duration) -> FirstByte {
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

/// A network failure of no known kind, to a host given by name, is a name that does not resolve
/// when the resolver, asked itself within what is left of the attempt, finds no address for it.
pub(super) async fn tell_unresolved_apart(failure: Failure, settings: &DatabaseSettings, left: Duration) -> Failure {
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
pub(super) fn quiet(options: PgConnectOptions) -> PgConnectOptions {
    options.disable_statement_logging()
}
