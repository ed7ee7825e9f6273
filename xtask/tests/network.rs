//! Broken networks, made for real in a network namespace: a host that drops every packet and
//! one with no route to it. Each attempt is bounded, the whole wait by the deadline, and the
//! likely cause names the network. Skipped, saying why, where namespaces cannot be made.

use std::time::Duration;

use testkit::{BrokenNetwork, Cluster, Migrations, Run};

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

/// A connection that goes half-open while a migration's own SQL runs (which has no time bound of
/// ours: it may rightly take an hour) ends within the keepalive's half minute, on both sides: the
/// server ends the session and frees the migration lock, so the rerun applies the migration.
#[test]
fn a_connection_cut_mid_migration_ends_in_seconds_and_the_rerun_applies_it() {
    let Some(network) = network() else { return };
    let host = network.link_to_host().expect("veth link to the host");
    let cluster = Cluster::started();
    cluster.serve(&host);
    let migrations = Migrations::empty();
    migrations.write("1_slow.sql", "SELECT pg_sleep(600);\nCREATE TABLE slow ();\n");
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    let mut env = cluster.env("app");
    env.retain(|(key, _)| key != "POSTGRES_SERVER");
    env.push(("POSTGRES_SERVER".to_owned(), host.clone()));
    let args = ["migrate", "--source", &source, "--wait-timeout", "5"];
    let running = Run::xtask(XTASK, &args, &env).inside(&network).spawn();
    running.wait_for_stderr("applying 1_slow.sql", Duration::from_secs(20));
    assert!(
        testkit::eventually(Duration::from_secs(10), || cluster.psql("app", SLEEPING).trim() == "1"),
        "the migration never reached the server"
    );
    network.cut_link();
    let outcome = running.wait_within(Duration::from_secs(90));
    outcome.assert_code(6).assert_stderr_contains("1_slow.sql").assert_stderr_contains("nothing of it was applied");
    assert!(outcome.elapsed < Duration::from_secs(60), "took {:?}", outcome.elapsed);
    // The server noticed too: the session is gone, and with it the lock and the transaction.
    assert!(
        testkit::eventually(Duration::from_secs(45), || cluster.psql("app", SLEEPING).trim() == "0"),
        "the server still runs the cut-off migration"
    );
    let mut local = cluster.env("app");
    local.push(("PRESTART_WAIT_TIMEOUT".to_owned(), "5".to_owned()));
    migrations.write("1_slow.sql", "CREATE TABLE slow ();\n");
    let rerun = Run::xtask(XTASK, &["migrate", "--source", &source], &local).output();
    rerun.assert_code(0).assert_stderr_contains("applied 1");
}

const SLEEPING: &str =
    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(600)%' AND pid <> pg_backend_pid()";
