//! Is a connection pooler between us and PostgreSQL, and does it keep our server session?
//!
//! Nothing in the protocol says so; the server and the pooler's behaviour do:
//! 1. The server tells where the session arrived (`inet_server_addr()`, `inet_server_port()` and
//!    its `port` setting, in the readiness query). When that is not the address and port we
//!    dialled (a Unix socket while we used TCP, TCP while we used a socket, another port), something
//!    relays the connection: a pooler, a proxy, or NAT.
//! 2. Only then, a second client connects. In transaction (and statement) pooling, PgBouncer
//!    hands it the server process our last transaction just gave back (it reuses the most
//!    recently freed one), and while that client holds a transaction open, our next query runs
//!    on another process. In session pooling our process stays ours, so neither can happen.
//!
//! The direct case costs nothing beyond the readiness query; a relayed one, one more
//! connection and three short queries.

use std::net::IpAddr;

use crate::config::DatabaseSettings;
use crate::db::{ATTEMPT_TIMEOUT, QUERY_TIMEOUT, Ready, bounded, connect_once};
use sqlx::Row;
use sqlx::postgres::PgConnection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The server sees the connection arrive where we dialled (or over our own Unix socket).
    Direct,
    /// Relayed, and our server session stays ours (session pooling, a TCP proxy, NAT).
    Session,
    /// Server sessions are shared between clients from one transaction to the next.
    Transaction,
    /// Relayed, and the probe could not finish (the pooler refused it: statement pooling refuses
    /// `BEGIN`; or it is full): treated as sharing sessions, since that is the safe assumption.
    Undetermined,
}

impl Pooling {
    /// Session state (advisory locks, `SET`s, named statements) may not last from one
    /// transaction to the next.
    pub fn shares_sessions(self) -> bool {
        matches!(self, Pooling::Transaction | Pooling::Undetermined)
    }
}

pub async fn detect_pooling(db: &DatabaseSettings, ready: &mut Ready) -> Pooling {
    if !is_relayed(db, &mut *ready).await {
        return Pooling::Direct;
    }
    match shares_server_sessions(db, ready).await {
        Ok(true) => Pooling::Transaction,
        Ok(false) => Pooling::Session,
        Err(_) => Pooling::Undetermined,
    }
}

/// The server says the session arrived somewhere we did not dial.
/// Over a socket, also asks the server which folders its sockets are in.
async fn is_relayed(db: &DatabaseSettings, ready: &mut Ready) -> bool {
    if let Some(socket) = db.socket() {
        if ready.server.address.is_some() || ready.server.port != db.port() {
            return true;
        }
        // Our socket is named after the port it serves, in a folder the server must list: a
        // pooler's socket may have the server's port in a folder of its own.
        let same = |dir: &str| {
            let dir = std::path::Path::new(dir.trim());
            dir == socket || dir.canonicalize().ok().zip(socket.canonicalize().ok()).is_some_and(|(a, b)| a == b)
        };
        // Asked only here, over a socket: reading pg_settings on every connect would cost each
        // run. A role that may not read it (it takes pg_read_all_settings) sees no row.
        let listed = sqlx::raw_sql("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'unix_socket_directories'")
            .fetch_optional(&mut ready.conn);
        let folders: Option<String> = match bounded(listed).await {
            Ok(Some(row)) => row.try_get(0).ok(),
            Ok(None) => None,
            Err(_) => return true,
        };
        return !folders.is_none_or(|dirs| dirs.split(',').any(same));
    }
    let Some((address, port)) = &ready.server.address else {
        // A Unix socket on the server's side, while we dialled TCP.
        return true;
    };
    if *port != db.port() {
        return true;
    }
    let Ok(address) = address.parse::<IpAddr>() else { return true };
    // The socket's own peer, where it was found: asking the resolver again would cost a lookup on
    // the blocking pool (a millisecond of the no-op run), and could answer another address.
    if let Some(dialled) = ready.dialled {
        return dialled != address;
    }
    let lookup = tokio::time::timeout(ATTEMPT_TIMEOUT, tokio::net::lookup_host((db.host(), db.port())));
    match lookup.await {
        Ok(Ok(mut dialled)) => !dialled.any(|candidate| candidate.ip() == address),
        _ => true,
    }
}

/// A second client connects, then, each round, opens a transaction (which pins a server
/// session to it) right after a query of ours. In transaction pooling PgBouncer hands it the
/// server process our query has just given back (it reuses the most recently freed one); with
/// other clients about, our next query may land on another process. Either shows in the pids;
/// in session pooling neither can happen. Rounds make a miss unlikely while other clients come
/// and go; the migration itself checks, in the same query, that its session holds the lock, so
/// a miss can stop a migration but never let one run unlocked.
async fn shares_server_sessions(db: &DatabaseSettings, ready: &mut Ready) -> Result<bool, sqlx::Error> {
    const ROUNDS: usize = 3;
    let ours = ready.process.pid;
    let mut other = connect_once(db, "prestart-pooler-probe", ATTEMPT_TIMEOUT).await.map_err(|failure| {
        sqlx::Error::Io(std::io::Error::other(format!("the pooler probe could not connect: {failure}")))
    })?;
    if other.process.pid == ours {
        return Ok(true);
    }
    // The simple protocol throughout: a transaction pooler would lose named statements.
    let pid = |sql| sqlx::raw_sql(sql);
    for _ in 0..ROUNDS {
        // Compared with our query just before, not with the readiness query: another client
        // may have freed a process since, which PgBouncer would hand out first.
        let before: i32 = bounded(pid("SELECT pg_backend_pid()").fetch_one(&mut ready.conn)).await?.try_get(0)?;
        let theirs: i32 =
            bounded(pid("BEGIN; SELECT pg_backend_pid()").fetch_one(&mut other.conn)).await?.try_get(0)?;
        let after = bounded(pid("SELECT pg_backend_pid()").fetch_one(&mut ready.conn)).await;
        let _ = bounded(pid("ROLLBACK").execute(&mut other.conn)).await;
        let after: i32 = after?.try_get(0)?;
        if before != ours || theirs == before || after != before {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Runs `work` in a transaction of its own, which holds behind any pooler and never outlives us:
/// - the server gives up each statement just before our own bound ([`QUERY_TIMEOUT`]), so a
///   statement we stopped waiting for (an UPDATE that claims a job, say) cannot commit later;
/// - our bound covers BEGIN and the work, never the COMMIT: a COMMIT in flight when a bound
///   fires may still commit (a job claim the caller has given up on), so it is awaited until it
///   answers or the connection is found dead ([`COMMIT_TIMEOUT`], past the keepalives'
///   verdict);
/// - behind a pooler that shares sessions, one transaction is one server session, from sqlx's
///   Parse to its Execute; `DEALLOCATE ALL` at its start and in the same message as its end
///   clears the statements sqlx prepares by name, which stay with that session, where another
///   client would meet them.
pub async fn in_own_transaction<T>(
    conn: &mut PgConnection,
    pooling: Pooling,
    work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
) -> Result<T, sqlx::Error> {
    in_own_transaction_telling(conn, pooling, work).await.map_err(|(error, _)| error)
}

/// Where a transaction of [`in_own_transaction`] failed: before its COMMIT was sent (the server
/// rolls it back, so running it again is safe), or at the COMMIT (which may have committed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedAt {
    BeforeCommit,
    Commit,
}

/// [`in_own_transaction`], saying where it failed.
pub async fn in_own_transaction_telling<T>(
    conn: &mut PgConnection,
    pooling: Pooling,
    work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
) -> Result<T, (sqlx::Error, FailedAt)> {
    let before = |error| (error, FailedAt::BeforeCommit);
    let server_bound = QUERY_TIMEOUT.saturating_sub(std::time::Duration::from_secs(1)).as_millis();
    let clear = if pooling.shares_sessions() { "; DEALLOCATE ALL" } else { "" };
    let begin = format!("BEGIN; SET LOCAL statement_timeout = {server_bound}{clear}");
    let started = std::time::Instant::now();
    bounded(sqlx::raw_sql(sqlx::AssertSqlSafe(begin)).execute(&mut *conn)).await.map_err(before)?;
    let left = QUERY_TIMEOUT.saturating_sub(started.elapsed());
    // Given up before the COMMIT: the caller closes the connection, and the server rolls back.
    let result = match tokio::time::timeout(left, work(&mut *conn)).await {
        Ok(Ok(result)) => result,
        Ok(Err(error)) => {
            let rollback = format!("ROLLBACK{clear}");
            let _ = bounded(sqlx::raw_sql(sqlx::AssertSqlSafe(rollback)).execute(&mut *conn)).await;
            return Err(before(error));
        }
        Err(_) => return Err(before(crate::db::timed_out(QUERY_TIMEOUT))),
    };
    let end = format!("COMMIT{clear}");
    let at_commit = |error| (error, FailedAt::Commit);
    match tokio::time::timeout(COMMIT_TIMEOUT, sqlx::raw_sql(sqlx::AssertSqlSafe(end)).execute(&mut *conn)).await {
        Ok(ended) => ended.map(|_| result).map_err(at_commit),
        Err(_) => Err(at_commit(crate::db::timed_out(COMMIT_TIMEOUT))),
    }
}

/// How long a COMMIT's answer is awaited: a connection that went half-open is found dead by
/// the keepalives first.
pub const COMMIT_TIMEOUT: std::time::Duration =
    std::time::Duration::from_secs(crate::keepalive::DEAD_AFTER.as_secs() + 5);
