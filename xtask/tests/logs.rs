//! Logs a machine can read (issue 33, 6): with `PRESTART_LOG_FORMAT=json` or `--log-format json`
//! every line prestart, migrate, seed and wait-for-db print is one JSON object with its time,
//! level, step and message, the figures of the line as fields, and at the end the exit code and
//! its class; a failed and an interrupted run too; never a password.

use std::time::Duration;

use testkit::{Cluster, Migrations, Outcome, Run, with};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// Every line of stderr as JSON, each with the fields every line has.
fn objects(outcome: &Outcome) -> Vec<serde_json::Value> {
    let lines: Vec<serde_json::Value> = outcome
        .stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}\n{}", outcome.stderr))
        })
        .collect();
    for line in &lines {
        for key in ["time", "level", "message"] {
            assert!(line[key].is_string(), "{key} missing: {line}");
        }
        assert!(line["time"].as_str().is_some_and(|t| t.len() == 24 && t.ends_with('Z')), "{line}");
    }
    assert!(!lines.is_empty(), "no line at all");
    lines
}

fn last(lines: &[serde_json::Value]) -> &serde_json::Value {
    lines.last().expect("a line")
}

#[test]
fn every_line_of_a_run_a_failure_and_an_interruption_is_one_json_object() {
    let cluster = Cluster::started();
    let migrations = Migrations::workspace();
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    let env = with(cluster.env("app"), "PRESTART_LOG_FORMAT", "json");

    let run = Run::xtask(XTASK, &["prestart", "--source", &source], &env).output();
    run.assert_code(0).assert_lacks_secret(testkit::PASSWORD);
    let lines = objects(&run);
    assert_eq!(last(&lines)["exit_code"], 0);
    assert_eq!(last(&lines)["class"], "success");
    let applied: Vec<&serde_json::Value> = lines.iter().filter(|l| l["version"].is_i64()).collect();
    assert_eq!(applied.len(), 3, "{}", run.stderr);
    assert!(
        applied
            .iter()
            .all(|l| l["duration_ms"].is_u64() && l["step"].as_str().is_some_and(|s| s.starts_with("migrate")))
    );
    assert!(lines.iter().any(|l| l["step"] == "seed initial data" && l["superuser_created"] == true));

    // The flag does the same without the environment, for migrate, seed and wait-for-db.
    for command in [&["migrate", "--source", source.as_str()][..], &["seed"], &["wait-for-db"]] {
        let mut args = command.to_vec();
        args.extend(["--log-format", "json"]);
        let outcome = Run::xtask(XTASK, &args, &cluster.env("app")).output();
        outcome.assert_code(0);
        assert_eq!(last(&objects(&outcome))["exit_code"], 0, "{args:?}");
    }

    // A failed run: the error is the last object, with its code and class, and no password.
    let wrong = with(env.clone(), "POSTGRES_PASSWORD", "Zq7xK2pW9v");
    let failed = Run::xtask(XTASK, &["prestart", "--source", &source], &wrong).output();
    failed.assert_code(5).assert_lacks_secret("Zq7xK2pW9v");
    let lines = objects(&failed);
    assert_eq!(last(&lines)["level"], "error");
    assert_eq!(last(&lines)["exit_code"], 5);
    assert_eq!(last(&lines)["class"], "refused");

    // An interrupted run, waiting for a server that is down.
    cluster.stop();
    let waiting = Run::xtask(XTASK, &["prestart", "--source", &source], &env).spawn();
    waiting.wait_for_stderr("\"attempts\":", Duration::from_secs(20));
    waiting.signal("TERM");
    let interrupted = waiting.wait();
    interrupted.assert_code(143);
    let lines = objects(&interrupted);
    assert!(lines.iter().any(|l| l["attempts"].is_u64() && l["left_s"].is_u64()), "{}", interrupted.stderr);
    assert_eq!(last(&lines)["exit_code"], 143);
    assert_eq!(last(&lines)["class"], "interrupted");
}
