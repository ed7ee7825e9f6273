//! A seed that must survive a rerun (the seed document's sections 5 and 8.3): `seed --check` and
//! doctor run it twice on a throwaway migrated copy and name each table the second run changed;
//! the template's own seed passes, a SQL seed file that inserts without a key fails.

use testkit::{Cluster, Migrations, Project, Run};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn seeds(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("prestart-seeds-").tempdir().expect("temp dir");
    for (name, sql) in files {
        std::fs::write(dir.path().join(name), sql).expect("write a seed file");
    }
    dir
}

#[test]
fn the_templates_seed_passes_and_a_seed_without_a_key_fails_by_table() {
    let cluster = Cluster::started();
    let env = cluster.env("app");
    Run::xtask(XTASK, &["seed", "--check"], &env)
        .output()
        .assert_code(0)
        .assert_stderr_contains("the second run changed no table");
    let keyless = seeds(&[("1_welcome.sql", "INSERT INTO jobs (kind) VALUES ('welcome');\n")]);
    Run::xtask(XTASK, &["seed", "--check", "--seeds", keyless.path().to_str().expect("utf-8")], &env)
        .output()
        .assert_code(7)
        .assert_stderr_contains(
            "the second run of the seed changed public.jobs (1 rows after the first run, 2 after the second)",
        )
        .assert_stderr_contains("ON CONFLICT");
    // The server the settings name was never touched.
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), "0");
}

#[test]
fn prestart_runs_the_sql_seed_files_in_the_seeds_transaction_and_a_keyed_one_reruns_unchanged() {
    let cluster = Cluster::started();
    let env = cluster.env("app");
    let keyed = seeds(&[(
        "1_welcome.sql",
        "INSERT INTO app_settings (key, value) VALUES ('welcome.text', '\"hello\"') ON CONFLICT (key) DO NOTHING;\n",
    )]);
    let dir = keyed.path().to_str().expect("utf-8");
    Run::xtask(XTASK, &["seed", "--check", "--seeds", dir], &env).output().assert_code(0);
    let migrations = Migrations::workspace();
    let source = migrations.path().to_str().expect("utf-8");
    for _ in 0..2 {
        Run::xtask(XTASK, &["prestart", "--source", source, "--seeds", dir], &env)
            .output()
            .assert_code(0)
            .assert_stderr_contains("1 seed file run");
    }
    assert_eq!(cluster.psql("app", "SELECT count(*) FROM app_settings WHERE key = 'welcome.text'"), "1");
    // A failing file rolls the whole seed back and names itself.
    let failing = seeds(&[("2_broken.sql", "INSERT INTO no_such_table VALUES (1);\n")]);
    Run::xtask(XTASK, &["seed", "--seeds", failing.path().to_str().expect("utf-8")], &env)
        .output()
        .assert_code(7)
        .assert_stderr_contains("the seed file 2_broken.sql")
        .assert_stderr_contains("nothing was seeded");
}

#[test]
fn doctor_fails_a_seed_that_a_rerun_changes() {
    let cluster = Cluster::started();
    let project = Project::new(XTASK);
    project.write("seeds/1_welcome.sql", "INSERT INTO jobs (kind) VALUES ('welcome');\n");
    let env = cluster.env("app");
    let doctor = Run::program(
        project.path().join("xtask"),
        &["doctor", "--json", "--env-file", "/dev/null", "--context", "host"],
        &env,
    )
    .output();
    let check = doctor.doctor_check("migrations.seed_rerun");
    assert_eq!(check["status"], "fail", "{check}");
    assert!(check["message"].as_str().unwrap_or_default().contains("public.jobs"), "{check}");
}

/// Ctrl-C during the check stops it at once (exit 130), and the throwaway cluster goes with it:
/// no server of it left running, no folder of it left behind.
#[test]
fn a_signal_stops_the_seed_check_and_its_throwaway_goes() {
    let cluster = Cluster::started();
    let slow = seeds(&[("1_slow.sql", "SELECT pg_sleep(60);\n")]);
    let args = ["seed", "--check", "--seeds", slow.path().to_str().expect("utf-8")];
    let running = Run::xtask(XTASK, &args, &cluster.env("app")).spawn();
    // This run's throwaway: its folder is named after the process (other tests have their own).
    let ours = format!("prestart-throwaway-{}-", running.child.id());
    let throwaway_servers = || {
        let found = std::process::Command::new("pgrep").args(["-f", &ours]).output().expect("pgrep");
        String::from_utf8_lossy(&found.stdout).lines().count()
    };
    // The seed sleeps in the throwaway's server: the state to interrupt.
    let sleeping = || {
        let found =
            std::process::Command::new("pgrep").args(["-f", "postgres.*prestart_seed_check"]).output().expect("pgrep");
        !found.stdout.is_empty()
    };
    assert!(testkit::eventually(std::time::Duration::from_secs(60), sleeping), "the check never reached its seed");
    running.signal("INT");
    let outcome = running.wait_within(std::time::Duration::from_secs(20));
    outcome.assert_code(130).assert_stderr_contains("interrupted by SIGINT");
    assert!(
        testkit::eventually(std::time::Duration::from_secs(10), || throwaway_servers() == 0),
        "a throwaway server is left"
    );
}
