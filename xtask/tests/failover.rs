//! Failover at any moment, on a real HA cluster (etcd, two Patroni nodes, HAProxy routing to
//! the primary: `testkit::ha`).

use std::time::{Duration, Instant};

use testkit::ha::Ha;

#[test]
fn the_harness_starts_switches_over_and_fails_over() {
    let Some(ha) = Ha::start() else { return };
    eprintln!("harness started in {:?}", ha.started_in);
    let first = ha.leader();
    assert_eq!(ha.psql("app", "SELECT pg_is_in_recovery()"), "f");
    let started = Instant::now();
    ha.switchover();
    eprintln!("switchover took {:?}", started.elapsed());
    assert_ne!(ha.leader(), first);
    let started = Instant::now();
    ha.kill_leader_postmaster();
    ha.wait_routed_to_a_writable_leader(Duration::from_secs(60));
    eprintln!("failover took {:?}", started.elapsed());
    assert_eq!(ha.leader(), first, "{}", ha.log());
}
