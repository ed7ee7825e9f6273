//! `cargo xtask dev`: the stack runs until a signal, which reaches backend and worker, and the exit
//! code says which signal it was.

use std::time::Duration;

use testkit::{Cluster, Run, eventually, free_tcp_port, http};

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
        let bind = format!("127.0.0.1:{}", free_tcp_port());
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
        running.signal(signal);
        running
            .wait()
            .assert_code(code)
            .assert_stderr_contains("[worker] worker: stopped")
            .assert_stderr_contains("cargo xtask dev-db stop");
        for pid in &services {
            assert!(!process_exists(pid), "service process {pid} outlived `dev`");
        }
    }
}
