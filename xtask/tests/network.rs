//! Broken networks, made for real in a network namespace: a host that drops every packet and
//! one with no route to it. Each attempt is bounded, the whole wait by the deadline, and the
//! likely cause names the network. Skipped, saying why, where namespaces cannot be made.

use std::time::Duration;

use testkit::{BrokenNetwork, Migrations, Run};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn settings(host: &str) -> Vec<(String, String)> {
    [
        ("POSTGRES_SERVER", host),
        ("POSTGRES_PORT", "5432"),
        ("POSTGRES_DB", "app"),
        ("POSTGRES_USER", "postgres"),
        ("POSTGRES_PASSWORD", testkit::PASSWORD),
        ("POSTGRES_SSLMODE", "disable"),
        ("FIRST_SUPERUSER", "admin@example.com"),
        ("FIRST_SUPERUSER_PASSWORD", "first superuser secret"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn network() -> Option<BrokenNetwork> {
    match BrokenNetwork::create() {
        Ok(network) => Some(network),
        Err(why) => {
            eprintln!("skipped: cannot make a network namespace here ({why})");
            None
        }
    }
}

#[test]
fn a_host_that_drops_packets_is_retried_with_bounded_attempts_until_the_deadline() {
    let Some(network) = network() else { return };
    let migrations = Migrations::workspace();
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    let args = ["prestart", "--source", &source, "--wait-timeout", "8"];
    let outcome = Run::xtask(XTASK, &args, &settings(BrokenNetwork::DROPPING)).inside(&network).output();
    outcome
        .assert_code(4)
        .assert_stderr_contains("no answer within 5 s")
        .assert_stderr_contains("packets to 10.98.0.9:5432 get no answer: a firewall or security group drops them");
    // Attempts of 5 s, and the deadline of 8 s holds across them.
    assert!(outcome.elapsed < Duration::from_secs(12), "took {:?}", outcome.elapsed);
    assert!(outcome.elapsed >= Duration::from_secs(7), "gave up early, after {:?}", outcome.elapsed);
}

#[test]
fn an_unreachable_host_says_so_and_stops_at_the_deadline() {
    let Some(network) = network() else { return };
    let outcome = Run::xtask(XTASK, &["wait-for-db", "--wait-timeout", "3"], &settings(BrokenNetwork::UNREACHABLE))
        .inside(&network)
        .output();
    outcome
        .assert_code(4)
        .assert_stderr_contains("No route to host")
        .assert_stderr_contains("packets to 10.99.0.9:5432 get no answer");
    assert!(outcome.elapsed < Duration::from_secs(8), "took {:?}", outcome.elapsed);
}

#[test]
fn doctor_names_the_dropped_packets() {
    let Some(network) = network() else { return };
    let outcome =
        Run::xtask(XTASK, &["doctor", "--json"], &settings(BrokenNetwork::DROPPING)).inside(&network).output();
    let report: serde_json::Value = serde_json::from_str(&outcome.stdout).expect("doctor --json");
    let tcp =
        report["checks"].as_array().expect("checks").iter().find(|c| c["id"] == "network.tcp").expect("network.tcp");
    assert_eq!(tcp["status"], "fail", "{tcp}");
    assert!(tcp["message"].as_str().unwrap_or_default().contains("packets are dropped"), "{tcp}");
    assert!(tcp["hint"].as_str().unwrap_or_default().contains("firewall"), "{tcp}");
}
