//! How often the wait loop asks a server that answers but cannot write: each answer costs the
//! server a full login and a backend process, so it backs off instead of polling every 20 ms.

use testkit::{Cluster, Run};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// Logins to `app` the server logged since `from` bytes into its log.
fn logins_to_app(cluster: &Cluster, from: usize) -> usize {
    let log = cluster.log();
    log.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("connection authorized") && line.contains("database=app"))
        .count()
}

/// `default_transaction_read_only = on` with connections logged, once new sessions see it (the
/// postmaster reads a reload a moment later).
fn make_read_only(cluster: &Cluster) {
    cluster.write_conf("default_transaction_read_only = on\nlog_connections = on");
    cluster.reload();
    assert!(
        testkit::eventually(std::time::Duration::from_secs(10), || {
            cluster.psql("app", "SHOW default_transaction_read_only") == "on"
        }),
        "the server did not take the new settings"
    );
}

#[test]
fn a_read_only_server_is_polled_with_a_backoff() {
    let cluster = Cluster::started();
    make_read_only(&cluster);
    let from = cluster.log().len();

    let outcome = Run::xtask(XTASK, &["wait-for-db", "--wait-timeout", "4"], &cluster.env("app")).output();
    assert_ne!(outcome.code, Some(0), "a read-only server is not ready:\n{}", outcome.stderr);
    outcome.assert_stderr_contains("default_transaction_read_only");

    let logins = logins_to_app(&cluster, from);
    eprintln!("{logins} logins in 4 s");
    // At 20 ms throughout this was about 200; with the backoff 20 ms doubling to 1 s it is about 10.
    assert!(logins >= 3, "the server was asked {logins} times: is log_connections on?\n{}", cluster.log());
    assert!(
        logins < 40,
        "the server was asked {logins} times in 4 s\n{}\n{}",
        outcome.stderr,
        cluster.log().get(from..).unwrap_or_default()
    );
}

#[test]
fn a_server_that_becomes_writable_is_noticed_within_the_longest_pause() {
    let cluster = Cluster::started();
    make_read_only(&cluster);
    let running = Run::xtask(XTASK, &["wait-for-db", "--wait-timeout", "30"], &cluster.env("app")).spawn();
    running.wait_for_stderr("default_transaction_read_only", std::time::Duration::from_secs(10));
    // Long enough for the pauses to reach their longest (1 s).
    std::thread::sleep(std::time::Duration::from_secs(3));
    cluster.write_conf("log_connections = on");
    cluster.reload();
    let writable = std::time::Instant::now();
    let outcome = running.wait();
    outcome.assert_code(0);
    let noticed = writable.elapsed();
    eprintln!("noticed after {noticed:?}");
    // At worst the longest pause (1 s) and one attempt, plus the reload reaching new sessions.
    assert!(noticed < std::time::Duration::from_millis(2500), "noticed after {noticed:?}:\n{}", outcome.stderr);
}

/// A TCP proxy with no server behind it (HAProxy while a failover runs, a cloud load balancer,
/// a service mesh) accepts and closes before the server's first byte: a wait, not a refusal,
/// and prestart goes on once a server is behind it. A server that answers bytes that are not
/// PostgreSQL's stays a fast failure.
#[test]
fn a_proxy_with_no_server_behind_is_waited_for_and_a_foreign_server_is_not() {
    use std::io::{Read as _, Write as _};
    let cluster = Cluster::started();
    // sqlx meets the closed stream as a protocol error after its SSLRequest, as an EOF without:
    // either way it is a proxy with no server, backed off from (#30 3d: with `disable` it was
    // taken for a server restarting and tried every 20 ms, 215 connections in 5 s).
    for sslmode in ["prefer", "disable"] {
        let (port, closed) = proxy_with_no_server_for(std::time::Duration::from_millis(2000), cluster.port);
        let env = testkit::with(cluster.env("app"), "POSTGRES_PORT", &port.to_string());
        let env = testkit::with(env, "POSTGRES_SSLMODE", sslmode);
        Run::xtask(XTASK, &["wait-for-db", "--wait-timeout", "20"], &env)
            .output()
            .assert_code(0)
            .assert_stderr_contains("no healthy server behind it");
        let closed = closed.load(std::sync::atomic::Ordering::SeqCst);
        // The backoff's pauses in 2 s (0.1, 0.2, 0.4, 0.8 s), two connections a try.
        assert!(closed <= 16, "sslmode={sslmode}: {closed} connections closed by the proxy in 2 s");
    }

    // An HTTP server where PostgreSQL was expected: exit 5 at once.
    let http = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let http_port = http.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for mut client in http.incoming().flatten() {
            let mut request = [0u8; 64];
            let _ = client.read(&mut request);
            let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    let env = testkit::with(cluster.env("app"), "POSTGRES_PORT", &http_port.to_string());
    let env = testkit::with(env, "POSTGRES_SSLMODE", "prefer");
    let started = std::time::Instant::now();
    Run::xtask(XTASK, &["wait-for-db", "--wait-timeout", "20"], &env)
        .output()
        .assert_code(5)
        .assert_stderr_contains("does not speak the PostgreSQL protocol");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
}

/// A relay to `backend_port` that, for its first `closed_for`, accepts and closes at once; and
/// how many it closed so.
fn proxy_with_no_server_for(
    closed_for: std::time::Duration,
    backend_port: u16,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let opened = std::time::Instant::now();
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&closed);
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            if opened.elapsed() < closed_for {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(client);
                continue;
            }
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", backend_port)) else { continue };
            for (mut from, mut to) in
                [(client.try_clone().expect("clone"), server.try_clone().expect("clone")), (server, client)]
            {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    (port, closed)
}
