//! What testkit and the bench's failover rows share: the bench cannot depend on testkit (a
//! dev-dependency), so it includes this file and `ha.rs` by path. Each includer gives the
//! constants it names: `PASSWORD`, `SUPERUSER`, `FIRST_SUPERUSER_PASSWORD`.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{FIRST_SUPERUSER_PASSWORD, PASSWORD, SUPERUSER};

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    condition()
}

/// Settings for the binary: POSTGRES_* for the superuser over TCP to `port`, and a first
/// superuser.
pub fn superuser_env(port: u16, database: &str) -> Vec<(String, String)> {
    [
        ("POSTGRES_SERVER", "127.0.0.1".to_owned()),
        ("POSTGRES_PORT", port.to_string()),
        ("POSTGRES_DB", database.to_owned()),
        ("POSTGRES_USER", SUPERUSER.to_owned()),
        ("POSTGRES_PASSWORD", PASSWORD.to_owned()),
        ("POSTGRES_SSLMODE", "disable".to_owned()),
        ("FIRST_SUPERUSER", "admin@example.com".to_owned()),
        ("FIRST_SUPERUSER_PASSWORD", FIRST_SUPERUSER_PASSWORD.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Runs `command` to its end, which must be a success; its stdout.
pub fn run_ok(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
