//! TCP keepalives on our database connections, both ways.
//!
//! A connection can go half-open: a paused VM, a NAT or firewall that forgot the flow, a server
//! host that lost power. A read on it then waits for the kernel's defaults, over two hours, and a
//! migration's own SQL has no bound of ours (it may rightly run for an hour). Keepalive probes
//! end such a connection in about [`DEAD_AFTER`], while a healthy server's kernel answers them
//! however long a query runs.
//!
//! sqlx 0.9 opens its sockets without keepalives and has no hook to set them, so after each
//! connect [`arm`] finds this process's TCP sockets to the database port that have none yet
//! and arms them (Linux, through `/proc/self/fd`; elsewhere the kernel's defaults stay).
//! [`server_side`] asks the server to do the same for the session, so that it ends the
//! session (and frees its locks) when we are the ones cut off.

use std::time::Duration;

/// Silence before the first probe.
const IDLE: Duration = Duration::from_secs(10);
/// Between probes.
const INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes that end the connection.
const PROBES: u32 = 3;
/// How long a dead peer goes unnoticed at most; also the bound on data the peer never
/// acknowledges (`TCP_USER_TIMEOUT`).
pub const DEAD_AFTER: Duration = Duration::from_secs(IDLE.as_secs() + INTERVAL.as_secs() * PROBES as u64);

/// An SQL expression that sets the same keepalives on the server's side of this session, and
/// makes the server check during a long statement that we are still there. It costs no round
/// trip: it rides along a query we send anyway. Settings the server does not have (the check
/// came in PostgreSQL 14) are left out rather than failing.
pub fn server_side() -> String {
    format!(
        "(SELECT count(pg_catalog.set_config(name, value, false)) FROM (VALUES ('tcp_keepalives_idle', '{}'), \
         ('tcp_keepalives_interval', '{}'), ('tcp_keepalives_count', '{PROBES}'), ('tcp_user_timeout', '{}'), \
         ('client_connection_check_interval', '{}')) AS wanted (name, value) \
         WHERE name IN (SELECT name FROM pg_catalog.pg_settings))",
        IDLE.as_secs(),
        INTERVAL.as_secs(),
        DEAD_AFTER.as_millis(),
        INTERVAL.as_millis()
    )
}

/// Arms keepalives on the TCP socket of this process connected to `port` from `local_port` (the
/// connection's own pair, as the server saw it); where no socket has that pair (behind a relay
/// the server sees the relay's port), on every one to `port` that has none yet. Best effort: a
/// socket that cannot be armed keeps the kernel's defaults. Returns the address the socket with
/// that pair is connected to: the one we dialled, found without asking the resolver again.
#[cfg(target_os = "linux")]
pub fn arm(port: u16, local_port: Option<u16>) -> Option<std::net::IpAddr> {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return None };
    // Each descriptor's socket pair, asked once, cheapest question first: most descriptors are
    // no stream socket at all (one system call tells), and a connect runs on every no-op start.
    let mut to_database: Vec<(i32, Option<u16>, std::net::IpAddr)> = Vec::new();
    for fd in fds.flatten().filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok()) {
        with_socket(fd, |socket| {
            if socket.r#type().ok() != Some(socket2::Type::STREAM) {
                return;
            }
            let Some(peer) = socket.peer_addr().ok().and_then(|a| a.as_socket()).filter(|a| a.port() == port) else {
                return;
            };
            let local = socket.local_addr().ok().and_then(|a| a.as_socket()).map(|a| a.port());
            to_database.push((fd, local, peer.ip()));
        });
    }
    let dialled = local_port
        .and_then(|wanted| to_database.iter().find(|(_, local, _)| *local == Some(wanted)))
        .map(|(_, _, peer)| *peer);
    let exact = dialled.is_some();
    for (fd, local, _) in to_database {
        if exact && local != local_port {
            continue;
        }
        with_socket(fd, |socket| {
            if socket.keepalive().ok() == Some(false) {
                let probes = socket2::TcpKeepalive::new().with_time(IDLE).with_interval(INTERVAL).with_retries(PROBES);
                let _ = socket.set_tcp_keepalive(&probes);
                let _ = socket.set_tcp_user_timeout(Some(DEAD_AFTER));
            }
        });
    }
    dialled
}

#[cfg(not(target_os = "linux"))]
pub fn arm(_port: u16, _local_port: Option<u16>) -> Option<std::net::IpAddr> {
    None
}

/// Calls `f` with the socket behind file descriptor `fd` of this process.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn with_socket(fd: i32, f: impl FnOnce(socket2::SockRef<'_>)) {
    // SAFETY: `fd` was listed in /proc/self/fd a moment ago and the borrow ends with this call;
    // nothing here reads, writes or closes it. Strictly, another thread (the services' pool
    // connects on several) may close the number meanwhile, which the borrow's contract forbids:
    // the option calls then fail with EBADF, or, should the number be reused at once, they touch
    // that file and change it only where it is a TCP socket to the database port, which wants
    // keepalives anyway. No memory is involved, so at worst an option lands on a socket of ours.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    f(socket2::SockRef::from(&fd));
}
