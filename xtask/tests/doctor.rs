//! `cargo xtask doctor`: every check against the broken state it names, made for real.

use std::collections::BTreeMap;

use testkit::{Cluster, Outcome, Project, set_mode};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// One check of the JSON report.
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

    /// Asserts the status of `id` and that its message and hint hold the given texts.
    #[track_caller]
    fn expect(&self, id: &str, status: &str, message: &str, hint: &str) -> &Self {
        let check = self.get(id);
        assert_eq!(check.status, status, "{id}: {check:?}");
        assert!(check.message.contains(message), "{id} message lacks {message:?}: {check:?}");
        assert!(check.hint.contains(hint), "{id} hint lacks {hint:?}: {check:?}");
        self
    }
}

fn doctor(project: &Project, args: &[&str], env: &[(String, String)]) -> Report {
    let mut all = vec!["doctor", "--json"];
    all.extend_from_slice(args);
    let outcome = project.run(&all, env).output();
    let document: serde_json::Value = serde_json::from_str(&outcome.stdout)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}):\n{}\n{}", outcome.stdout, outcome.stderr));
    assert_eq!(document["schema_version"], 1);
    let checks = document["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            let text = |key: &str| c[key].as_str().unwrap_or_default().to_owned();
            (text("id"), Check { status: text("status"), message: text("message"), hint: text("hint") })
        })
        .collect();
    let failures = document["summary"]["fail"].as_u64().expect("summary");
    assert_eq!(outcome.code, Some(if failures > 0 { 1 } else { 0 }), "exit code vs summary: {}", outcome.stdout);
    Report { outcome, checks }
}

/// A healthy project: cluster up, .env complete and private, migrations applied.
fn healthy() -> (Cluster, Project) {
    let cluster = Cluster::started();
    let project = Project::new(XTASK);
    project.write_env(&cluster, &[]);
    project.run(&["prestart"], &[]).output().assert_code(0);
    (cluster, project)
}

#[test]
fn a_healthy_setup_passes_with_no_warnings() {
    let (_cluster, project) = healthy();
    let report = doctor(&project, &[], &[]);
    let bad: Vec<_> = report.checks.iter().filter(|(_, c)| c.status == "warn" || c.status == "fail").collect();
    assert!(bad.is_empty(), "{bad:#?}");
    report.outcome.assert_code(0);
    // The human report ends with the summary.
    let human = project.run(&["doctor"], &[]).output();
    human.assert_code(0);
    assert!(human.stdout.contains("  ✓ connected to postgres@127.0.0.1:"), "{}", human.stdout);
    assert!(
        human.stdout.trim_end().lines().last().unwrap_or_default().starts_with("no problems ("),
        "{}",
        human.stdout
    );
    assert!(!human.stdout.contains("\x1b["), "colour codes when not a terminal");
}

#[test]
fn env_file_problems() {
    let cluster = Cluster::started();
    let project = Project::new(XTASK);

    // No .env and nothing in the environment.
    doctor(&project, &[], &[]).expect("env.file", "fail", "does not exist", "cp .env.example .env");

    // No .env, settings from the environment (a container): the file checks are skipped.
    let report = doctor(&project, &[], &cluster.env("app"));
    report.expect("env.file", "skipped", "the settings come from the environment", "");
    report.expect("env.example_keys", "skipped", "", "");

    // A line that does not parse.
    let env = project.write_env(&cluster, &[]);
    let mut text = std::fs::read_to_string(&env).expect("read .env");
    text.push_str("BROKEN='unterminated\n");
    std::fs::write(&env, text).expect("write .env");
    let report = doctor(&project, &[], &[]);
    report.expect("env.parse", "fail", "line 12: cannot parse the value of BROKEN", "quote");
    report.expect("env.typos", "skipped", "does not parse", "");
    report.expect("env.permissions", "skipped", "does not parse", "");

    // `$` in an unquoted or double-quoted value is expanded by the reader: the password changes.
    project.write_env(&cluster, &[]);
    let mut text = std::fs::read_to_string(&env).expect("read .env");
    text.push_str("FIRST_SUPERUSER_PASSWORD=pa$word\n");
    std::fs::write(&env, text).expect("write .env");
    doctor(&project, &[], &[]).expect("env.dollar", "warn", "FIRST_SUPERUSER_PASSWORD", "single quotes");

    // A missing key of .env.example, a typo, a world-readable file with a password.
    project.write(".env", &std::fs::read_to_string(project.path().join(".env.example")).expect("example"));
    let env = project.write_env(&cluster, &[("POSTGRES_SERVR", "x")]);
    let text = std::fs::read_to_string(&env).expect("read .env").replace("BACKEND_BIND='127.0.0.1:8000'\n", "");
    std::fs::write(&env, text).expect("write .env");
    set_mode(&env, 0o644);
    let report = doctor(&project, &[], &[]);
    report.expect("env.example_keys", "warn", "BACKEND_BIND", "copy them from .env.example");
    report.expect("env.typos", "warn", "POSTGRES_SERVR (did you mean POSTGRES_SERVER?)", "rename");
    report.expect("env.permissions", "warn", "every user of this machine can read it (mode 644)", "chmod 600");
}

#[test]
fn settings_problems() {
    let cluster = Cluster::started();
    let project = Project::new(XTASK);
    project.write_env(&cluster, &[("POSTGRES_PORT", "abc")]);
    doctor(&project, &[], &[]).expect("env.settings", "fail", "POSTGRES_PORT is not a number", "");
    project.write_env(&cluster, &[("POSTGRES_DB", "")]);
    doctor(&project, &[], &[]).expect("env.settings", "fail", "POSTGRES_DB is not set", "");

    let url = format!("postgres://postgres:x@127.0.0.1:{}/other", cluster.port);
    project.write_env(&cluster, &[("DATABASE_URL", &url)]);
    doctor(&project, &[], &[]).expect("env.url_vs_variables", "warn", "disagree; DATABASE_URL wins", "remove one");

    project.write_env(&cluster, &[("ENVIRONMENT", "production"), ("FIRST_SUPERUSER_PASSWORD", "changethis")]);
    let report = doctor(&project, &[], &[]);
    report.expect("env.default_secrets", "fail", "FIRST_SUPERUSER_PASSWORD still hold", "openssl rand");
    assert!(!report.outcome.stdout.contains("changethis"), "the placeholder secret is not repeated");
}

#[test]
fn where_the_database_is() {
    let cluster = Cluster::started();
    let project = Project::new(XTASK);
    cluster.stop();
    project.write_env(&cluster, &[("POSTGRES_SERVER", "localhost")]);
    let report = doctor(&project, &["--context", "container"], &[]);
    report.expect(
        "location.host",
        "fail",
        "POSTGRES_SERVER=localhost inside a container points at the container itself",
        "`db`",
    );
    report.expect("network.tcp", "fail", "refused: nothing listens there", "inside a container");
    report.expect("postgres.connect", "skipped", "cannot be reached", "");
    doctor(&project, &["--context", "kubernetes"], &[]).expect("location.host", "warn", "sidecar", "Service");

    // On the host, the containers' name for this machine is this machine: reached through
    // loopback, where the stopped server is then looked for.
    project.write_env(&cluster, &[("POSTGRES_SERVER", "host.docker.internal")]);
    let report = doctor(&project, &["--context", "host"], &[]);
    report.expect("location.host", "ok", "commands on this host connect through 127.0.0.1", "");
    report.expect("network.tcp", "fail", &format!("127.0.0.1:{} refused", cluster.port), "start it");
    // verify-full keeps the name for the certificate, which this host cannot resolve.
    project.write_env(&cluster, &[("POSTGRES_SERVER", "host.docker.internal"), ("POSTGRES_SSLMODE", "verify-full")]);
    doctor(&project, &["--context", "host"], &[]).expect("location.host", "fail", "verify-full", "certificate");

    project.write_env(&cluster, &[("POSTGRES_SERVER", "db.does-not-exist.invalid")]);
    let report = doctor(&project, &["--context", "host"], &[]);
    report.expect("location.resolve", "fail", "does not resolve", "does not resolve on this machine");
    report.expect("network.tcp", "skipped", "", "");
}

#[test]
fn postgres_refusals() {
    let cluster = Cluster::started();
    let project = Project::new(XTASK);
    project.write_env(&cluster, &[("POSTGRES_PASSWORD", "wrong")]);
    doctor(&project, &[], &[]).expect(
        "postgres.connect",
        "fail",
        "password authentication failed",
        "data volume keeps the password",
    );
    project.write_env(&cluster, &[("POSTGRES_DB", "missing")]);
    doctor(&project, &[], &[]).expect(
        "postgres.connect",
        "fail",
        "database \"missing\" does not exist",
        "cargo xtask database create, or prestart --create-database",
    );
    project.write_env(&cluster, &[("POSTGRES_SSLMODE", "require")]);
    doctor(&project, &[], &[]).expect("postgres.connect", "fail", "TLS", "turn on ssl in postgresql.conf");

    std::fs::write(cluster.data().join("pg_hba.conf"), "local all all trust\nhost all all 127.0.0.1/32 reject\n")
        .expect("pg_hba");
    cluster.reload();
    project.write_env(&cluster, &[]);
    doctor(&project, &[], &[]).expect("postgres.connect", "fail", "pg_hba.conf", "pg_hba.conf");
}

#[test]
fn a_role_without_create_on_the_schema() {
    let cluster = Cluster::started();
    cluster.psql("postgres", "CREATE ROLE app_user LOGIN PASSWORD 'app user pw'");
    let project = Project::new(XTASK);
    project.write_env(&cluster, &[("POSTGRES_USER", "app_user"), ("POSTGRES_PASSWORD", "app user pw")]);
    doctor(&project, &[], &[]).expect(
        "postgres.create_privilege",
        "fail",
        "app_user may not create tables in schema public",
        "GRANT CREATE ON SCHEMA public TO \"app_user\"",
    );
    cluster.psql("app", "GRANT CREATE ON SCHEMA public TO app_user");
    doctor(&project, &[], &[]).expect("postgres.create_privilege", "ok", "may create tables", "");
}

#[test]
fn listen_addresses_too_narrow_for_containers() {
    let cluster = Cluster::started();
    let project = Project::new(XTASK);
    // On the host, prestart connects over 127.0.0.1; the compose containers use host.docker.internal
    // from the compose network, whose subnet .env sets.
    project.write_env(&cluster, &[("COMPOSE_SUBNET", "10.77.0.0/24")]);
    project.write("compose.env", &format!("POSTGRES_SERVER=host.docker.internal\nPOSTGRES_PORT={}\n", cluster.port));
    project.write(
        "docker-compose.yml",
        "services:\n  prestart:\n    image: app\n    command: [\"/app/xtask\", \"prestart\"]\n    env_file: [compose.env]\n    \
         extra_hosts: [\"host.docker.internal:host-gateway\"]\n",
    );
    let report = doctor(&project, &[], &[]);
    // The server is found where it listens; the containers' address is what it leaves out. The
    // narrowest rule: that subnet alone, and the bridge address beside localhost.
    report
        .expect(
            "postgres.listen_addresses",
            "fail",
            &format!("the server runs on this machine (127.0.0.1:{} answers), but nothing listens on", cluster.port),
            "`host all all 10.77.0.0/24 scram-sha-256` (the compose network, COMPOSE_SUBNET)",
        )
        .expect("postgres.listen_addresses", "fail", "listen_addresses", "cargo xtask dev-db start --serve-compose")
        .expect("postgres.connect", "ok", "", "");
}

/// The seed's case 8.1: `.env` says `host.docker.internal`, the server listens on 127.0.0.1
/// only. doctor on the host finds the server (through loopback) and names the setting that keeps
/// the containers out, instead of calling a running server stopped.
#[test]
fn the_seeds_case_a_server_on_loopback_only_is_found_and_the_setting_named() {
    if !docker_bridge() {
        return;
    }
    let cluster = Cluster::started();
    let project = Project::new(XTASK);
    project.write_env(&cluster, &[("POSTGRES_SERVER", "host.docker.internal")]);
    let report = doctor(&project, &["--context", "host"], &[]);
    report
        .no_check_crashed()
        .expect("location.host", "ok", "the compose containers' name for this machine", "")
        .expect("network.tcp", "ok", &format!("127.0.0.1:{} accepts", cluster.port), "")
        .expect("postgres.connect", "ok", "", "")
        .expect("postgres.listen_addresses", "fail", "the server runs on this machine", "--serve-compose")
        .expect("postgres.containers_hba", "skipped", "", "");
    assert!(!report.outcome.stdout.contains("nothing listens there"), "a running server called stopped");
}

/// A server that serves the compose network alone (the bridge address, and pg_hba for that
/// subnet, as `dev-db start --serve-compose` makes it) passes on the host, whose own connection
/// would come through the bridge from another address. Each path is judged from where it starts.
#[test]
fn a_server_that_serves_the_compose_network_passes_and_its_login_rule_is_judged_for_the_containers() {
    if !docker_bridge() {
        return;
    }
    let cluster = Cluster::started();
    let project = Project::new(XTASK);
    project.write_env(&cluster, &[("POSTGRES_SERVER", "host.docker.internal"), ("COMPOSE_SUBNET", "10.78.0.0/24")]);
    cluster.stop();
    cluster.write_conf(&format!("listen_addresses = '127.0.0.1,{BRIDGE}'"));
    let hba = cluster.data().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    std::fs::write(&hba, format!("{rules}host all all 10.78.0.0/24 scram-sha-256\n")).expect("write pg_hba.conf");
    cluster.start();
    let report = doctor(&project, &["--context", "host"], &[]);
    report
        .no_check_crashed()
        .expect("postgres.connect", "ok", "", "")
        .expect("postgres.listen_addresses", "ok", &format!("{BRIDGE}:{} (Docker's bridge address", cluster.port), "")
        .expect("postgres.containers_hba", "ok", "10.78.0.0/24", "");
    for (id, check) in &report.checks {
        let path = ["location.", "network.", "postgres."].iter().any(|area| id.starts_with(area));
        assert!(!(path && check.status == "fail"), "{id} fails on a working setup: {check:?}");
    }

    // Another subnet in pg_hba: the containers reach the server and are refused; the fix is
    // the one line for theirs.
    std::fs::write(&hba, format!("{rules}host all all 10.79.0.0/24 scram-sha-256\n")).expect("write pg_hba.conf");
    cluster.reload();
    doctor(&project, &["--context", "host"], &[]).expect(
        "postgres.containers_hba",
        "fail",
        "no pg_hba.conf line lets the compose network (10.78.0.0/24, COMPOSE_SUBNET) log in",
        "`host all all 10.78.0.0/24 scram-sha-256`",
    );
    // A reject line above it decides first, as on the server.
    std::fs::write(&hba, format!("host all all 10.0.0.0/8 reject\n{rules}host all all 10.78.0.0/24 scram-sha-256\n"))
        .expect("write pg_hba.conf");
    cluster.reload();
    doctor(&project, &["--context", "host"], &[]).expect(
        "postgres.containers_hba",
        "fail",
        "line 1",
        "above that line",
    );
    // The compose line written but not loaded yet: what the file says, and that a reload is due.
    // (The file's time has a resolution of its own: the edit comes a second after the reload.)
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(&hba, format!("{rules}host all all 10.78.0.0/24 scram-sha-256\n")).expect("write pg_hba.conf");
    doctor(&project, &["--context", "host"], &[]).expect(
        "postgres.containers_hba",
        "warn",
        "it changed after the server last loaded it",
        "pg_reload_conf()",
    );
    // A line that does not parse: the server keeps its old rules, which doctor cannot see.
    std::fs::write(&hba, format!("{rules}host all all 10.78.0.0/24 no-such-method\n")).expect("write pg_hba.conf");
    doctor(&project, &["--context", "host"], &[]).expect(
        "postgres.containers_hba",
        "fail",
        "pg_hba.conf does not parse",
        "fix that line",
    );
    // A role that may not read pg_hba_file_rules: said, not guessed.
    std::fs::write(&hba, format!("{rules}host all all 10.78.0.0/24 scram-sha-256\n")).expect("write pg_hba.conf");
    cluster.reload();
    cluster.psql("app", "CREATE ROLE plain LOGIN PASSWORD 'Xq7pLm2vR9kW'");
    project.write_env(
        &cluster,
        &[
            ("POSTGRES_SERVER", "host.docker.internal"),
            ("COMPOSE_SUBNET", "10.78.0.0/24"),
            ("POSTGRES_USER", "plain"),
            ("POSTGRES_PASSWORD", "Xq7pLm2vR9kW"),
        ],
    );
    let report = doctor(&project, &["--context", "host"], &[]);
    report.expect("postgres.containers_hba", "skipped", "takes a superuser", "");
    report.outcome.assert_lacks_secret("Xq7pLm2vR9kW");
}

/// In a container that is not one of the compose file's services (a devcontainer), findings
/// about `host.docker.internal` agree: the name fails to resolve here, and the advice is for
/// this container, not for the compose services, which the compose check finds mapped.
#[test]
fn findings_about_host_docker_internal_in_a_container_agree() {
    let resolves = std::process::Command::new("getent")
        .args(["hosts", "host.docker.internal"])
        .output()
        .is_ok_and(|o| o.status.success());
    if resolves {
        eprintln!("skipped: host.docker.internal resolves in this container");
        return;
    }
    let (cluster, project) = healthy();
    project.write_env(&cluster, &[("POSTGRES_SERVER", "host.docker.internal")]);
    let every_service_maps_it = GOOD_COMPOSE.replace(
        "    env_file: .env\n    depends_on",
        "    env_file: .env\n    extra_hosts: [\"host.docker.internal:host-gateway\"]\n    depends_on",
    );
    project.write("docker-compose.yml", &every_service_maps_it);
    let report = doctor(&project, &["--context", "container"], &[]);
    report
        .expect("location.host", "ok", "fits where this runs (in a container)", "")
        .expect(
            "location.resolve",
            "fail",
            "does not resolve in a container",
            "--add-host=host.docker.internal:host-gateway",
        )
        .expect("compose.extra_hosts", "ok", "every service of the compose file", "");
    // The pairs that could contradict: the compose services map it, so the advice for the name
    // that fails here must not be to add the mapping to them.
    let resolve = report.get("location.resolve");
    assert!(!resolve.hint.starts_with("the compose service lacks"), "contradicts compose.extra_hosts: {resolve:?}");
    let unmapped = report.checks.values().filter(|c| c.message.contains("does not map")).count();
    assert_eq!(unmapped, 0, "a finding says a mapping is missing while compose.extra_hosts says it is there");
}

/// Docker's default bridge address, where `host.docker.internal` leads containers.
const BRIDGE: &str = "172.17.0.1";

/// The tests of the containers' path need Docker's default bridge on this machine.
fn docker_bridge() -> bool {
    let present = std::process::Command::new("ip")
        .args(["-4", "addr", "show", "docker0"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("inet {BRIDGE}/")));
    if !present {
        eprintln!("skipped: no Docker bridge at {BRIDGE} on this machine");
    }
    present
}

#[test]
fn migrations_on_disk() {
    let (_cluster, project) = healthy();
    let first = project.path().join("migrations/20261125090000_create_users.sql");
    let text = std::fs::read_to_string(&first).expect("read");
    std::fs::write(&first, format!("\u{feff}{}", text.replace('\n', "\r\n"))).expect("write");
    project.write("migrations/20261201000000_pair.up.sql", "CREATE TABLE pair (id int);\n");
    project.write("migrations/20261201000001.sql", "SELECT 1;\n");
    project.write(
        "migrations/20261201000003_index.sql",
        "CREATE INDEX CONCURRENTLY users_created ON users (created_at);\n",
    );
    let report = doctor(&project, &[], &[]);
    report.expect(
        "migrations.transactions",
        "fail",
        "20261201000003_index.sql:1: CREATE INDEX CONCURRENTLY cannot run inside a transaction block",
        "-- no-transaction",
    );
    report.expect(
        "migrations.lint",
        "warn",
        "20261201000003_index.sql:1: needs-no-transaction",
        "cargo xtask lint-migrations",
    );
    report.expect("migrations.line_endings", "warn", "CRLF line endings in 20261125090000_create_users.sql", "eol=lf");
    report.expect("migrations.line_endings", "warn", "a byte-order mark in 20261125090000_create_users.sql", "");
    report.expect("migrations.reversible_pairs", "warn", "20261201000000_pair.down.sql missing", "beside");
    report.expect("migrations.files", "warn", "20261201000001.sql", "rename");
    report.expect("migrations.changed", "fail", "20261125090000_create_users.sql", "new migration");
    report.expect(
        "migrations.pending",
        "warn",
        "2 pending: 20261201000000 pair, 20261201000003 index",
        "prestart applies them",
    );

    project.write("migrations/20261201000002_dup.sql", "SELECT 1;\n");
    project.write("migrations/20261201000002_again.sql", "SELECT 2;\n");
    doctor(&project, &[], &[]).expect("migrations.files", "fail", "two migrations share version 20261201000002", "");
}

/// One rule for reversible migrations: a down file beside an applied plain `X.sql` is how a
/// down file is added to it (the applied file untouched); doctor, revert and new-migration agree.
#[test]
fn a_down_file_beside_an_applied_plain_migration() {
    let (cluster, project) = healthy();
    project.write("migrations/20261201000000_notes.sql", "CREATE TABLE notes (id int);\n");
    project.run(&["prestart"], &[]).output().assert_code(0);
    project.write("migrations/20261201000000_notes.down.sql", "DROP TABLE notes;\n");
    doctor(&project, &[], &[]).expect("migrations.reversible_pairs", "ok", "1 migration has its down file", "").expect(
        "migrations.changed",
        "ok",
        "",
        "",
    );
    project.run(&["migrate", "revert"], &[]).output().assert_code(0);
    assert_eq!(cluster.psql("app", "SELECT to_regclass('notes') IS NULL"), "t");
    // The next migration comes as a pair, as the folder now has a down file.
    project.run(&["new-migration", "more"], &[]).output().assert_code(0);
    let names: Vec<String> = std::fs::read_dir(project.path().join("migrations"))
        .expect("read")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.ends_with("_more.up.sql")), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("_more.down.sql")), "{names:?}");
    // A down file whose migration is gone is named, not silently ignored.
    project.write("migrations/20261201000009_gone.down.sql", "SELECT 1;\n");
    doctor(&project, &[], &[]).expect("migrations.reversible_pairs", "warn", "no migration of their version", "");
}

/// doctor knows, not guesses, whether the pending migrations run: it applies them to a throwaway
/// copy of the schema on this machine, never to the server it diagnoses.
#[test]
fn pending_migrations_are_tried_on_a_throwaway_copy() {
    let (cluster, project) = healthy();
    project.write("migrations/20261201000000_notes.sql", "CREATE TABLE notes (id int);\n");
    if !testkit::is_root() {
        // Pending migrations run only where nothing they connect to is real: a network namespace.
        doctor(&project, &[], &[]).expect("migrations.rehearsal", "skipped", "network namespace", "");
        return;
    }
    doctor(&project, &[], &[]).expect("migrations.rehearsal", "ok", "the 1 pending migration run, in order", "");
    project.write("migrations/20261201000001_broken.sql", "SELECT 1;\nCREATE TABL things (id int);\n");
    doctor(&project, &[], &[])
        .expect(
            "migrations.rehearsal",
            "fail",
            "20261201000001_broken.sql:2: syntax error at or near \"TABL\" (SQLSTATE 42601)",
            "fix that file",
        )
        // One finding, said alike: the pending line does not promise that prestart applies them.
        .expect("migrations.pending", "warn", "2 pending", "up to the one that fails on a throwaway copy");
    // Nothing of it reached the server diagnosed.
    assert_eq!(cluster.psql("app", "SELECT to_regclass('notes') IS NULL"), "t");
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM _sqlx_migrations"), "3");
}

/// One cause that holds back many checks is said once in the report, with the checks it holds.
#[test]
fn one_network_failure_is_said_once() {
    let cluster = Cluster::started();
    let project = Project::new(XTASK);
    project.write_env(&cluster, &[]);
    cluster.stop();
    let outcome = project.run(&["doctor"], &[]).output();
    assert_eq!(outcome.stdout.matches("the server cannot be reached").count(), 1, "{}", outcome.stdout);
    assert!(outcome.stdout.contains("postgres.connect, postgres.writable"), "{}", outcome.stdout);
}

#[test]
fn migrations_against_the_database() {
    let (cluster, project) = healthy();
    cluster.psql(
        "app",
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES \
         (20990101000000, 'from the future', true, '\\x00', 0), (20990101000001, 'halfway', false, '\\x00', 0)",
    );
    project.write("migrations/20200101000000_late_merge.sql", "CREATE TABLE late (id int);\n");
    // An interrupted CREATE INDEX CONCURRENTLY, for real: it fails on duplicates and stays INVALID.
    cluster.psql("app", "CREATE TABLE dupes (x int); INSERT INTO dupes VALUES (1), (1)");
    let _ = cluster.psql_command("app").args(["-c", "CREATE UNIQUE INDEX CONCURRENTLY dupes_x ON dupes (x)"]).output();
    let report = doctor(&project, &[], &[]);
    report.expect("migrations.unknown", "warn", "20990101000000 from the future", "newer release");
    report.expect("migrations.failed", "fail", "20990101000001 halfway", "delete its row");
    report.expect("migrations.out_of_order", "warn", "20200101000000 late merge", "out of order");
    report.expect("migrations.invalid_indexes", "fail", "dupes_x", "DROP INDEX CONCURRENTLY dupes_x;");
}

#[test]
fn a_held_migration_lock_is_named() {
    let (cluster, project) = healthy();
    let _holder = testkit::MigrationLock::take(&cluster, "app", "stuck-deploy");
    doctor(&project, &[], &[]).expect("migrations.lock", "warn", "stuck-deploy", "pg_terminate_backend");
}

const GOOD_COMPOSE: &str = r#"services:
  prestart:
    image: app
    command: ["/app/xtask", "prestart"]
    env_file: .env
    extra_hosts: ["host.docker.internal:host-gateway"]
  backend:
    image: app
    env_file: .env
    depends_on:
      prestart:
        condition: service_completed_successfully
  worker:
    image: app
    env_file: .env
    depends_on:
      prestart:
        condition: service_completed_successfully
  db:
    image: postgres:17
    profiles: [db]
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -h 127.0.0.1 -U postgres"]
"#;

#[test]
fn compose_files_with_each_mistake() {
    let (_cluster, project) = healthy();
    project.write("docker-compose.yml", GOOD_COMPOSE);
    let report = doctor(&project, &[], &[]);
    for id in [
        "compose.prestart_service",
        "compose.backend_waits",
        "compose.worker_waits",
        "compose.same_image",
        "compose.same_env_file",
        "compose.extra_hosts",
        "compose.db_healthcheck",
    ] {
        report.expect(id, "ok", "", "");
    }
    report.expect("compose.file", "ok", "resolved by `docker", "");
    // With Debian's docker-compose alone, doctor says to spell the README's commands its way.
    let plugin =
        std::process::Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success());
    let standalone =
        std::process::Command::new("docker-compose").arg("version").output().is_ok_and(|o| o.status.success());
    if standalone && !plugin {
        report.expect(
            "compose.file",
            "ok",
            "write `docker-compose ...` where the README says `docker compose ...`",
            "",
        );
    }
    // The compose containers would get POSTGRES_SERVER=127.0.0.1 from .env: a warning on the host.
    report.expect(
        "location.containers_view",
        "warn",
        "POSTGRES_SERVER=127.0.0.1, which is the container itself",
        "host.docker.internal",
    );

    let broken = |from: &str, to: &str| GOOD_COMPOSE.replacen(from, to, 1);
    for (compose, id, message, hint) in [
        (
            broken("condition: service_completed_successfully", "condition: service_started"),
            "compose.backend_waits",
            "condition service_started",
            "service_completed_successfully",
        ),
        (
            broken(
                "    depends_on:\n      prestart:\n        condition: service_completed_successfully\n  db:",
                "  db:",
            ),
            "compose.worker_waits",
            "does not depend on prestart",
            "depends_on",
        ),
        (
            broken("  backend:\n    image: app", "  backend:\n    image: other"),
            "compose.same_image",
            "backend uses image other",
            "the backend's image",
        ),
        (
            broken(
                "  backend:\n    image: app\n    env_file: .env",
                "  backend:\n    image: app\n    env_file: other.env",
            ),
            "compose.same_env_file",
            "other.env",
            "env_file: .env",
        ),
        (
            broken("command: [\"/app/xtask\", \"prestart\"]", "command: [\"/app/backend\"]"),
            "compose.prestart_service",
            "not the prestart task",
            "prestart",
        ),
        (
            broken("    env_file: .env\n    extra_hosts", "    env_file: .env\n    restart: always\n    extra_hosts"),
            "compose.prestart_service",
            "restart: always",
            "must not restart",
        ),
        (
            broken("pg_isready -h 127.0.0.1 -U postgres", "pg_isready -U postgres"),
            "compose.db_healthcheck",
            "Unix socket",
            "-h 127.0.0.1",
        ),
        (
            broken("  prestart:\n    image: app", "  migrate:\n    image: app"),
            "compose.prestart_service",
            "no `prestart` service",
            "one-shot",
        ),
        (
            broken("  prestart:\n    image: app", "  migrate:\n    image: app"),
            "compose.file",
            "prestart",
            "read it as written",
        ),
        ("services: [oops".to_owned(), "compose.file", "", "fix the compose file"),
    ] {
        project.write("other.env", "POSTGRES_SERVER=db\n");
        project.write("docker-compose.yml", &compose);
        doctor(&project, &[], &[]).expect(id, "fail", message, hint);
    }
}

#[test]
fn compose_without_a_compose_tool_reads_the_yaml() {
    let (cluster, project) = healthy();
    project.write("compose.env", &format!("POSTGRES_SERVER=host.docker.internal\nPOSTGRES_PORT={}\n", cluster.port));
    project.write(
        "docker-compose.yml",
        &GOOD_COMPOSE.replace(
            "env_file: .env\n    extra_hosts: [\"host.docker.internal:host-gateway\"]",
            "env_file: compose.env",
        ),
    );
    let report = doctor(&project, &[], &[("PATH".to_owned(), "/nonexistent".to_owned())]);
    report.expect("compose.file", "ok", "read as written", "");
    report.expect(
        "compose.extra_hosts",
        "fail",
        "prestart uses host.docker.internal without mapping it",
        "host-gateway",
    );
}

#[test]
fn the_projects_own_compose_file_passes_with_and_without_a_compose_tool() {
    let (cluster, project) = healthy();
    let compose = std::fs::read_to_string(testkit::workspace().join("docker-compose.yml")).expect("docker-compose.yml");
    project.write("docker-compose.yml", &compose);
    project.write_env(&cluster, &[("POSTGRES_SERVER", "host.docker.internal")]);
    let ids = [
        "compose.file",
        "compose.prestart_service",
        "compose.backend_waits",
        "compose.worker_waits",
        "compose.same_image",
        "compose.same_env_file",
        "compose.extra_hosts",
    ];
    for env in [vec![], vec![("PATH".to_owned(), "/nonexistent".to_owned())]] {
        let report = doctor(&project, &["--context", "container"], &env);
        for id in ids {
            report.expect(id, "ok", "", "");
        }
    }
    // With the bundled db added the way .env.example says, compose's model has it, and its
    // healthcheck is judged.
    if compose_tool().is_some() {
        let bundled = std::fs::read_to_string(testkit::workspace().join("docker-compose.db.yml")).expect("db file");
        project.write("docker-compose.db.yml", &bundled);
        project.write_env(
            &cluster,
            &[("POSTGRES_SERVER", "db"), ("COMPOSE_FILE", "docker-compose.yml:docker-compose.db.yml")],
        );
        doctor(&project, &["--context", "container"], &[]).expect(
            "compose.db_healthcheck",
            "ok",
            "postgres healthchecks go over TCP",
            "",
        );
    }
}

/// A stack without the bundled db gets no volume: compose creates every volume a file it reads
/// declares, profile or not, so the db's lives in its own file.
#[test]
fn the_stack_without_the_bundled_db_declares_no_volume() {
    let Some(tool) = compose_tool() else {
        eprintln!("skipped: no compose tool");
        return;
    };
    let (program, rest) = tool.split_first().expect("a program");
    let project = Project::new(XTASK);
    for file in ["docker-compose.yml", "docker-compose.db.yml"] {
        project.write(file, &std::fs::read_to_string(testkit::workspace().join(file)).expect("compose file"));
    }
    project.write(".env", "POSTGRES_PASSWORD=x\n");
    let config = |files: &[&str]| {
        let mut command = std::process::Command::new(program);
        command.args(rest).current_dir(project.path());
        for file in files {
            command.args(["-f", file]);
        }
        let output = command.args(["config", "--volumes"]).output().expect("compose config");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    assert_eq!(config(&["docker-compose.yml"]), "");
    assert_eq!(config(&["docker-compose.yml", "docker-compose.db.yml"]), "db-data");
}

/// `docker compose` or `docker-compose`, whichever this machine has.
fn compose_tool() -> Option<Vec<&'static str>> {
    let works = |program: &str, args: &[&str]| {
        std::process::Command::new(program).args(args).output().is_ok_and(|o| o.status.success())
    };
    if works("docker", &["compose", "version"]) {
        Some(vec!["docker", "compose"])
    } else if works("docker-compose", &["version"]) {
        Some(vec!["docker-compose"])
    } else {
        None
    }
}

// A user's mistake is a finding that says what is wrong and how to fix it, never a check that
// failed itself; and ENVIRONMENT is judged by the one rule (unset is not local).

#[test]
fn a_database_url_with_a_port_out_of_range_is_a_finding_without_the_password() {
    let cluster = Cluster::started();
    let project = Project::new(XTASK);
    let password = "Zq8xKw3vLp9tR";
    // Beside POSTGRES_* as in a .env made from the example: both are compared.
    project.write_env(&cluster, &[("DATABASE_URL", &format!("postgres://u:{password}@localhost:99999/app"))]);
    let report = doctor(&project, &[], &[]);
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
    let report = doctor(&project, &[], &[]);
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
    let report = doctor(&project, &[], &[]);
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

    let local = doctor(&project, &[], &[]);
    let local = local.get("env.default_secrets");
    assert_eq!(local.status, "ok", "{local:?}");

    std::fs::write(&env, with_local.replace("ENVIRONMENT='local'\n", "ENVIRONMENT='production'\n")).expect("write");
    let production = doctor(&project, &[], &[]);
    let production = production.get("env.default_secrets").clone();
    assert_eq!(production.status, "fail", "{production:?}");

    std::fs::write(&env, with_local.replace("ENVIRONMENT='local'\n", "")).expect("write");
    let unset = doctor(&project, &[], &[]);
    let unset = unset.get("env.default_secrets");
    assert_eq!(unset.status, production.status, "unset is what a non-local environment is: {unset:?}");
    assert_eq!(unset.hint, production.hint, "{unset:?}");
    assert!(unset.message.contains("FIRST_SUPERUSER_PASSWORD"), "{unset:?}");
    assert!(unset.message.contains("ENVIRONMENT is not set"), "{unset:?}");
    assert!(unset.message.contains("ENVIRONMENT=local"), "says what relaxes it: {unset:?}");
}
