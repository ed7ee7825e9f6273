//! Is a connection pooler between us and PostgreSQL, and does it keep our server session?
//!
//! Nothing in the protocol says so; the server and the pooler's behaviour do:
//! 1. The server tells where the session arrived (`inet_server_addr()`, `inet_server_port()`, in
//!    the readiness query). When that is not the address and port we dialled (or a Unix socket
//!    while we used TCP), something relays the connection: a pooler, a proxy, or NAT.
//! 2. Only then, a second client connects. In transaction (and statement) pooling, PgBouncer
//!    hands it the server process our last transaction just gave back (it reuses the most
//!    recently freed one), and while that client holds a transaction open, our next query runs
//!    on another process. In session pooling our process stays ours, so neither can happen.
//!
//! The direct case costs nothing beyond the readiness query; a relayed one, one more
//! connection and three short queries.

use std::net::IpAddr;

use crate::config::DatabaseSettings;
use crate::db::{ATTEMPT_TIMEOUT, Ready, bounded, connect_once};
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
}

pub async fn detect_pooling(db: &DatabaseSettings, ready: &mut Ready) -> Pooling {
    if db.socket().is_some() || !is_relayed(db, ready).await {
        return Pooling::Direct;
    }
    match shares_server_sessions(db, ready).await {
        Ok(true) => Pooling::Transaction,
        // A probe that cannot finish proves nothing; the session-scoped work that follows would
        // fail loudly if sessions were shared.
        Ok(false) | Err(_) => Pooling::Session,
    }
}

/// The server says the session arrived somewhere we did not dial.
async fn is_relayed(db: &DatabaseSettings, ready: &Ready) -> bool {
    let Some((address, port)) = &ready.server.address else {
        // A Unix socket on the server's side, while we dialled TCP.
        return true;
    };
    if *port != db.port() {
        return true;
    }
    let Ok(address) = address.parse::<IpAddr>() else { return true };
    match tokio::net::lookup_host((db.host(), db.port())).await {
        Ok(mut dialled) => !dialled.any(|candidate| candidate.ip() == address),
        Err(_) => true,
    }
}

/// A second client connects, then, each round, opens a transaction, which pins a server session
/// to it. Without other clients, PgBouncer hands it ours (the most recently freed); with others,
/// our own next query lands on a process of theirs. Either shows in the pids. Rounds make a
/// miss unlikely while other clients come and go; the migration itself checks, in the same query,
/// that its session holds the lock, so a miss can stop a migration but never let one run unlocked.
async fn shares_server_sessions(db: &DatabaseSettings, ready: &mut Ready) -> Result<bool, sqlx::Error> {
    const ROUNDS: usize = 3;
    let ours = ready.process.pid;
    let Ok(mut other) = connect_once(db, "prestart-pooler-probe", ATTEMPT_TIMEOUT).await else {
        return Ok(false);
    };
    if other.process.pid == ours {
        return Ok(true);
    }
    for _ in 0..ROUNDS {
        // The simple protocol throughout: a transaction pooler would lose named statements.
        let theirs: i32 =
            bounded(sqlx::raw_sql("BEGIN; SELECT pg_backend_pid()").fetch_one(&mut other.conn)).await?.try_get(0)?;
        let now: i32 =
            bounded(sqlx::raw_sql("SELECT pg_backend_pid()").fetch_one(&mut ready.conn)).await?.try_get(0)?;
        let _ = bounded(sqlx::raw_sql("ROLLBACK").execute(&mut other.conn)).await;
        if theirs == ours || now != ours {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Runs `work` so that it holds behind any pooler. Behind a transaction pooler, that is inside a
/// transaction of its own, since sqlx prepares a statement in one round trip and runs it in the
/// next, which the pooler could otherwise send to two server sessions; and it ends with
/// `DEALLOCATE ALL` in the same message as the `COMMIT`, since the statements sqlx prepared by name
/// stay with that server session, where the next client would meet them. Elsewhere, just `work`.
pub async fn in_one_session<T>(
    conn: &mut PgConnection,
    pooling: Pooling,
    work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
) -> Result<T, sqlx::Error> {
    if pooling != Pooling::Transaction {
        return work(conn).await;
    }
    sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
    let result = work(&mut *conn).await;
    // COMMIT of a transaction a failed statement aborted rolls it back, without an error.
    let end = if result.is_ok() { "COMMIT; DEALLOCATE ALL" } else { "ROLLBACK; DEALLOCATE ALL" };
    let ended = sqlx::raw_sql(end).execute(&mut *conn).await;
    let value = result?;
    ended?;
    Ok(value)
}
