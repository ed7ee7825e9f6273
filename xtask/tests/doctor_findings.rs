//! `cargo xtask doctor`: a user's mistake is a finding that says what is wrong and how to fix it,
//! never a check that failed itself; and ENVIRONMENT is judged by the one rule (unset is not local).

use std::collections::BTreeMap;

use testkit::{Cluster, Outcome, Project};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

#[derive(Debug, Clone)]
struct Check {
    status: String,
    message: String,
    hint: String,
}

struct Report {
    outcome: Outcome,
    checks: BTreeMap<String, Check>,
}

impl Report {
    #[track_caller]
    fn get(&self, id: &str) -> &Check {
        self.checks.get(id).unwrap_or_else(|| panic!("no check {id} in:\n{}", self.outcome.stdout))
    }

    /// No check failed itself: every failure is a finding.
    #[track_caller]
    fn no_check_crashed(&self) -> &Self {
        let crashed: Vec<_> = self
            .checks
            .iter()
            .filter(|(_, c)| c.message.contains("the check itself failed") || c.hint.contains("a bug in doctor"))
            .collect();
        assert!(crashed.is_empty(), "checks that failed themselves: {crashed:#?}");
        self
    }
}

fn doctor(project: &Project) -> Report {
    let outcome = project.run(&["doctor", "--json"], &[]).output();
    let document: serde_json::Value = serde_json::from_str(&outcome.stdout)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}):\n{}\n{}", outcome.stdout, outcome.stderr));
    let checks = document["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            let text = |key: &str| c[key].as_str().unwrap_or_default().to_owned();
            (text("id"), Check { status: text("status"), message: text("message"), hint: text("hint") })
        })
        .collect();
    Report { outcome, checks }
}

#[test]
fn a_database_url_with_a_port_out_of_range_is_a_finding_without_the_password() {
    let cluster = Cluster::started();
    let project = Project::new(XTASK);
    let password = "Zq8xKw3vLp9tR";
    // Beside POSTGRES_* as in a .env made from the example: both are compared.
    project.write_env(&cluster, &[("DATABASE_URL", &format!("postgres://u:{password}@localhost:99999/app"))]);
    let report = doctor(&project);
    report.no_check_crashed();
    report.outcome.assert_code(1).assert_lacks_secret(password);
    let settings = report.get("env.settings");
    assert_eq!(settings.status, "fail", "{settings:?}");
    assert!(settings.message.contains("DATABASE_URL"), "{settings:?}");
    assert!(settings.message.contains("port") && settings.message.contains("out of range"), "{settings:?}");
    assert!(settings.message.contains("1 to 65535"), "says how to fix it: {settings:?}");
    assert!(!settings.message.contains("percent-encode"), "the password is not the problem: {settings:?}");
    // The comparison cannot be made; it points at the finding instead of failing itself.
    let compared = report.get("env.url_vs_variables");
    assert_eq!(compared.status, "skipped", "{compared:?}");
    assert!(compared.message.contains("env.settings"), "{compared:?}");

    // POSTGRES_* unusable beside a valid DATABASE_URL: a finding too.
    let url = cluster.url("app");
    project.write_env(&cluster, &[("DATABASE_URL", &url), ("POSTGRES_PORT", "99999")]);
    let report = doctor(&project);
    let compared = report.get("env.url_vs_variables");
    assert_eq!(compared.status, "warn", "{compared:?}");
    assert!(compared.message.contains("POSTGRES_PORT is out of range"), "{compared:?}");
}

#[test]
fn a_password_that_ends_early_is_not_taken_for_a_port() {
    let cluster = Cluster::started();
    let project = Project::new(XTASK);
    // The `/` ends the authority for a URL reader: `u:12345678` would be host and port.
    let password = "12345678/9x";
    project.write_env(&cluster, &[("DATABASE_URL", &format!("postgres://u:{password}@localhost:5432/app"))]);
    let report = doctor(&project);
    report.no_check_crashed();
    report.outcome.assert_lacks_secret(password).assert_lacks_secret("12345678");
    let settings = report.get("env.settings");
    assert_eq!(settings.status, "fail", "{settings:?}");
    assert!(settings.message.contains("percent-encode"), "{settings:?}");
    assert!(!settings.message.contains("out of range"), "{settings:?}");
}

#[test]
fn a_placeholder_secret_with_environment_unset_is_judged_as_outside_local() {
    let cluster = Cluster::started();
    let project = Project::new(XTASK);
    let env = project.write_env(&cluster, &[("FIRST_SUPERUSER_PASSWORD", "changethis")]);
    let with_local = std::fs::read_to_string(&env).expect("read .env");
    assert!(with_local.contains("ENVIRONMENT='local'\n"), "{with_local}");

    let local = doctor(&project);
    let local = local.get("env.default_secrets");
    assert_eq!(local.status, "ok", "{local:?}");

    std::fs::write(&env, with_local.replace("ENVIRONMENT='local'\n", "ENVIRONMENT='production'\n")).expect("write");
    let production = doctor(&project);
    let production = production.get("env.default_secrets").clone();
    assert_eq!(production.status, "fail", "{production:?}");

    std::fs::write(&env, with_local.replace("ENVIRONMENT='local'\n", "")).expect("write");
    let unset = doctor(&project);
    let unset = unset.get("env.default_secrets");
    assert_eq!(unset.status, production.status, "unset is what a non-local environment is: {unset:?}");
    assert_eq!(unset.hint, production.hint, "{unset:?}");
    assert!(unset.message.contains("FIRST_SUPERUSER_PASSWORD"), "{unset:?}");
    assert!(unset.message.contains("ENVIRONMENT is not set"), "{unset:?}");
    assert!(unset.message.contains("ENVIRONMENT=local"), "says what relaxes it: {unset:?}");
}
