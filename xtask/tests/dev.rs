//! `cargo xtask dev`: the stack runs until a signal, which reaches backend and worker, and the exit
//! code says which signal it was.

use std::time::Duration;

use testkit::{Cluster, Run, claim_port, eventually, http};

fn process_exists(pid: &str) -> bool {
    std::path::Path::new("/proc").join(pid).exists()
}

/// The pids of backend and worker started by `parent`.
fn services_of(parent: u32) -> Vec<String> {
    let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).unwrap_or_default();
    children.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn sigterm_and_sigint_stop_backend_and_worker_and_exit_with_the_signal_code() {
    let cluster = Cluster::started();
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let port = claim_port();
        let bind = format!("127.0.0.1:{}", port.number);
        let mut env = cluster.env("app");
        env.push(("BACKEND_BIND".into(), bind.clone()));
        let running = Run::xtask(env!("CARGO_BIN_EXE_xtask"), &["dev"], &env).spawn();
        let up =
            eventually(Duration::from_secs(120), || http("GET", &bind, "/health", None).is_ok_and(|(s, _)| s == 200));
        let services = services_of(running.child.id());
        if !up {
            running.signal("KILL");
            panic!("the backend never answered: {:?}", running.wait());
        }
        assert_eq!(services.len(), 2, "expected backend and worker, found {services:?}");
        // The worker is up too, not only started.
        running.wait_for_stderr("[worker] worker: waiting for jobs", Duration::from_secs(60));
        running.signal(signal);
        running
            .wait()
            .assert_code(code)
            .assert_stderr_contains("[worker] worker: stopped")
            .assert_stderr_contains("cargo xtask dev-db stop")
            // Stopping is how `dev` ends: said as a step, with no error line after it.
            .assert_stderr_lacks("error:");
        for pid in &services {
            assert!(!process_exists(pid), "service process {pid} outlived `dev`");
        }
    }
}

/// As root, the server user cannot reach a checkout in a private folder, so the cluster moves to
/// /var/tmp: a folder planted there by another user is refused, and the password never touches
/// the disk.
#[test]
fn dev_db_refuses_a_planted_fallback_folder_and_keeps_the_password_off_the_disk() {
    let is_root = std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n");
    if !is_root {
        eprintln!("skipped: only root moves the cluster to /var/tmp");
        return;
    }
    let cluster = Cluster::stopped();
    let project = testkit::Project::new(env!("CARGO_BIN_EXE_xtask"));
    // A private checkout, as one under /root: the postgres OS user cannot reach it.
    testkit::set_mode(project.path(), 0o700);
    let claim = claim_port();
    let port = claim.number.to_string();
    project.write_env(&cluster, &[("POSTGRES_PORT", &port)]);
    let name: String = project
        .path()
        .join("target/dev-db")
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let fallback = std::path::PathBuf::from(format!("/var/tmp/prestart{name}"));
    std::fs::create_dir_all(&fallback).expect("plant a folder");
    assert!(std::process::Command::new("chown").arg("nobody").arg(&fallback).status().expect("chown").success());
    project
        .run(&["dev-db", "start"], &[])
        .output()
        .assert_code(1)
        .assert_stderr_contains("exists but is not a private folder of root or the server user");
    std::fs::remove_dir_all(&fallback).expect("remove the planted folder");

    project.run(&["dev-db", "start"], &[]).output().assert_code(0).assert_stderr_contains("created database app");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&fallback).expect("fallback").permissions());
    assert_eq!(mode & 0o777, 0o700, "the cluster folder is open to others");
    let leftovers = std::process::Command::new("grep")
        .args(["-rl", "--", testkit::PASSWORD])
        .arg(&fallback)
        .output()
        .expect("grep");
    assert!(leftovers.stdout.is_empty(), "the password is on disk: {}", String::from_utf8_lossy(&leftovers.stdout));
    project.run(&["dev-db", "destroy"], &[]).output().assert_code(0);
}

/// The cluster is on this machine whatever POSTGRES_SERVER says for the containers; `status`
/// answers in pg_ctl's exit codes; options go before or after the subcommand.
#[test]
fn dev_db_serves_this_machine_whatever_the_containers_host_and_status_exits_3_when_stopped() {
    let cluster = Cluster::stopped();
    let project = testkit::Project::new(env!("CARGO_BIN_EXE_xtask"));
    let claim = claim_port();
    let port = claim.number.to_string();
    let env_file =
        project.write_env(&cluster, &[("POSTGRES_PORT", &port), ("POSTGRES_SERVER", "host.docker.internal")]);
    let env_file = env_file.to_str().expect("utf-8");
    project.run(&["dev-db", "status", "--env-file", env_file], &[]).output().assert_code(3);
    let started = project.run(&["dev-db", "start"], &[]).output();
    started.assert_code(0).assert_stderr_contains("created database app").assert_stderr_lacks("Retry(");
    let status = project.run(&["dev-db", "--env-file", env_file, "status"], &[]).output();
    status.assert_code(0);
    assert!(status.stdout.contains("is running"), "{}", status.stdout);
    project.run(&["dev-db", "stop"], &[]).output().assert_code(0);
    let status = project.run(&["dev-db", "status"], &[]).output();
    status.assert_code(3);
    assert!(status.stdout.contains("is stopped"), "{}", status.stdout);
    project.run(&["dev-db", "destroy"], &[]).output().assert_code(0);
}

/// Refused on this machine while this workspace's cluster is stopped: that cluster comes first
/// among the likely causes, in a development container too, before compose advice.
#[test]
fn a_stopped_workspace_cluster_is_the_first_likely_cause() {
    let cluster = Cluster::stopped();
    let project = testkit::Project::new(env!("CARGO_BIN_EXE_xtask"));
    let claim = claim_port();
    let port = claim.number.to_string();
    project.write_env(&cluster, &[("POSTGRES_PORT", &port), ("POSTGRES_SERVER", "localhost")]);
    project.run(&["dev-db", "start"], &[]).output().assert_code(0);
    project.run(&["dev-db", "stop"], &[]).output().assert_code(0);
    for context in ["host", "container"] {
        project
            .run(&["wait-for-db", "--wait-timeout", "1", "--context", context], &[])
            .output()
            .assert_code(4)
            .assert_stderr_contains("likely cause: this workspace's local cluster exists but does not listen on");
    }
    project.run(&["dev-db", "destroy"], &[]).output().assert_code(0);
}

/// The workspace's own cluster takes a POSTGRES_PASSWORD changed in `.env` (issue 33, 3): `dev-db
/// start` and `dev` set it and say so in one line, where they used to end with "the password is
/// wrong"; a server that is not ours keeps that hint.
#[test]
fn the_workspaces_cluster_takes_the_password_env_names_and_another_server_keeps_the_hint() {
    let cluster = Cluster::started();
    let project = testkit::Project::new(env!("CARGO_BIN_EXE_xtask"));
    let claim = claim_port();
    let port = claim.number.to_string();
    project.write_env(&cluster, &[("POSTGRES_PORT", &port), ("POSTGRES_SERVER", "localhost")]);
    project.run(&["dev-db", "start"], &[]).output().assert_code(0);
    project.write_env(
        &cluster,
        &[("POSTGRES_PORT", &port), ("POSTGRES_SERVER", "localhost"), ("POSTGRES_PASSWORD", "a new one 2")],
    );
    project
        .run(&["dev-db", "start"], &[])
        .output()
        .assert_code(0)
        .assert_stderr_contains("the local cluster's password for postgres is now the one POSTGRES_PASSWORD names")
        .assert_lacks_secret("a new one 2");
    project.run(&["wait-for-db", "--wait-timeout", "5"], &[]).output().assert_code(0);
    project.write_env(
        &cluster,
        &[("POSTGRES_PORT", &port), ("POSTGRES_SERVER", "localhost"), ("POSTGRES_PASSWORD", "and another 3")],
    );
    project
        .run(&["dev", "--no-services"], &[])
        .output()
        .assert_code(0)
        .assert_stderr_contains("it is the local cluster of target/dev-db/, with another password");
    project.run(&["dev-db", "destroy"], &[]).output().assert_code(0);
    // Not ours: the hint stays.
    project.write_env(&cluster, &[("POSTGRES_PASSWORD", "wrong for that server")]);
    project.run(&["dev", "--no-services"], &[]).output().assert_code(5).assert_stderr_contains("password");
}
