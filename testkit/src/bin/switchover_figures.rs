//! The failover figures of `cargo xtask bench`, on testkit's real HA cluster (etcd, two Patroni
//! nodes, HAProxy routing to the primary): from the end of a switchover to the exit of a prestart
//! started mid-switchover, and to the backend's first successful write. The harness lives in the
//! test support crate, not in the tool, so the bench runs this binary and reads its lines:
//! `figure<TAB>name<TAB>unit<TAB>sample,sample,...`.
//!
//! Usage: `switchover_figures PRESTART_BINARY BACKEND_BINARY MIGRATIONS_DIR`; exit 2 when the HA
//! parts are missing (the line says which), 1 when a trial fails.

use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use testkit::ha::{Ha, INSTALL_HINT, Programs};

const TRIALS: usize = 3;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [prestart, backend, source] = args.as_slice() else {
        eprintln!("usage: switchover_figures PRESTART_BINARY BACKEND_BINARY MIGRATIONS_DIR");
        return ExitCode::from(2);
    };
    if let Err(missing) = Programs::find() {
        eprintln!("the HA parts are not installed ({} missing): {INSTALL_HINT}", missing.join(", "));
        return ExitCode::from(2);
    }
    match measure(prestart, backend, source) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

fn measure(prestart: &str, backend: &str, source: &str) -> Result<(), String> {
    let cluster = Ha::start().ok_or("the HA parts went missing")?;
    eprintln!("the HA cluster started in {} ms", cluster.started_in.as_millis());
    let mut exits = Vec::new();
    for trial in 0..TRIALS {
        let database = format!("switchover{trial}");
        cluster.psql("postgres", &format!("CREATE DATABASE {database}"));
        let before = cluster.times_marked_down(&cluster.leader());
        let switchover = cluster.start_switchover();
        cluster.wait_marked_down(&switchover.from, before);
        let mut child = Command::new(prestart)
            .args(["prestart", "--source", source, "--wait-timeout", "60", "--env-file", "/dev/null"])
            .args(["--context", "host"])
            .envs(testkit::superuser_env(cluster.port, &database))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start prestart: {e}"))?;
        let waiter = std::thread::spawn(move || child.wait().map(|status| (status, Instant::now())));
        let end = switchover.finish(&cluster);
        let (status, exited) = waiter.join().map_err(|_| "the waiting thread panicked")?.map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("prestart started mid-switchover failed ({status})"));
        }
        exits.push(signed_ms(end, exited));
    }
    print_figure("switchover end → prestart exits (started mid-switchover)", &exits);

    let bind = format!("127.0.0.1:{}", testkit::claim_port().number);
    let _api = KillOnDrop(
        Command::new(backend)
            .args(["--env-file", "/dev/null"])
            .envs(testkit::superuser_env(cluster.port, "switchover0"))
            .env("BACKEND_BIND", &bind)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the backend: {e}"))?,
    );
    let write = || {
        let body = r#"{"kind":"echo","payload":{}}"#;
        testkit::http("POST", &bind, "/api/jobs", Some(body)).is_ok_and(|(status, _)| status == 201)
    };
    if !testkit::eventually(Duration::from_secs(30), write) {
        return Err("the backend never took a write through HAProxy".into());
    }
    let mut writes = Vec::new();
    for _ in 0..TRIALS {
        let end = cluster.switchover();
        while !write() {
            if end.elapsed() > Duration::from_secs(30) {
                return Err("the backend took no write within 30 s of a switchover".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        writes.push(end.elapsed().as_secs_f64() * 1000.0);
    }
    print_figure("switchover end → backend's first successful write", &writes);
    Ok(())
}

fn print_figure(name: &str, samples: &[f64]) {
    let samples: Vec<String> = samples.iter().map(|s| format!("{s:.3}")).collect();
    println!("figure\t{name}\tms\t{}", samples.join(","));
}

/// Negative when the event came before `end`.
fn signed_ms(end: Instant, event: Instant) -> f64 {
    match event.checked_duration_since(end) {
        Some(after) => after.as_secs_f64() * 1000.0,
        None => -end.duration_since(event).as_secs_f64() * 1000.0,
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
