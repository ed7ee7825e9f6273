//! A real high-availability PostgreSQL cluster, as self-hosted production runs it: one etcd, two
//! Patroni nodes (a leader and a streaming replica, with short `ttl`/`loop_wait` so a failover
//! takes seconds, not half a minute), and HAProxy in front routing to whichever node Patroni's
//! REST API calls primary (`option httpchk GET /primary`, `on-marked-down shutdown-sessions`).
//! Everything runs on loopback ports of its own, as the `postgres` OS user when we are root, in
//! one temp folder; dropping the value stops all of it and removes the folder, on every path.
//!
//! Standard library only; everything else it needs comes from testkit's lib (`PASSWORD`,
//! `SUPERUSER`, `is_root`, `server_bindir`, `claim_port`, `eventually`, and xtask's std-only
//! `pgbouncer` module). `cargo xtask bench` measures its failover figures on it through testkit's
//! `switchover_figures` binary, so the harness never enters the tool.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{PASSWORD, Port, SUPERUSER, claim_port, eventually, is_root, run_ok, server_bindir};

const SERVER_OS_USER: &str = "postgres";
/// The superuser's password while Patroni bootstraps; the harness then sets [`PASSWORD`].
/// Patroni 3.0's `post_bootstrap` cannot quote a non-ASCII password (its psycopg2 quoting
/// decodes it as Latin-1 and dies with a UnicodeDecodeError), and testkit's has an `é`. Patroni
/// itself connects over the Unix socket (`use_unix_socket`, trusted), so the change costs it
/// nothing.
const BOOTSTRAP_PASSWORD: &str = "patroni bootstrap";
const REPLICATION_USER: (&str, &str) = ("replicator", "replication secret");
const REWIND_USER: (&str, &str) = ("rewinder", "rewind secret");
/// Every wait of the harness itself (a node starting, a switchover ending) gives up after this.
const PATIENCE: Duration = Duration::from_secs(60);

/// The programs of the HA parts, found on PATH or in Debian's folders.
#[derive(Debug, Clone)]
pub struct Programs {
    pub patroni: PathBuf,
    pub patronictl: PathBuf,
    pub etcd: PathBuf,
    pub haproxy: PathBuf,
}

impl Programs {
    /// The four programs, or the names of those missing.
    pub fn find() -> Result<Programs, Vec<&'static str>> {
        let find = |name: &str| {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        };
        let (patroni, patronictl, etcd, haproxy) = (find("patroni"), find("patronictl"), find("etcd"), find("haproxy"));
        let missing: Vec<&'static str> = [
            ("patroni", patroni.is_none()),
            ("patronictl", patronictl.is_none()),
            ("etcd", etcd.is_none()),
            ("haproxy", haproxy.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, missing)| missing.then_some(name))
        .collect();
        match (patroni, patronictl, etcd, haproxy) {
            (Some(patroni), Some(patronictl), Some(etcd), Some(haproxy)) => {
                Ok(Programs { patroni, patronictl, etcd, haproxy })
            }
            _ => Err(missing),
        }
    }
}

/// The one line a test prints when it cannot run here.
pub const INSTALL_HINT: &str = "install them with `cargo xtask test` (as root with apt), or `sudo apt-get install \
     patroni etcd-server haproxy`";

/// One Patroni node and its PostgreSQL.
struct Node {
    name: String,
    pg_port: Port,
    rest_port: Port,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn config(&self) -> PathBuf {
        self.dir.join("patroni.yml")
    }

    /// The status code of a GET on its REST API (0 when it does not answer).
    fn rest(&self, path: &str) -> u16 {
        http_status(self.rest_port.number, path)
    }
}

/// etcd, two Patroni nodes and HAProxy; stopped and removed when dropped.
pub struct Ha {
    dir: PathBuf,
    programs: Programs,
    /// HAProxy's frontend: what the programs under test connect to.
    pub port: u16,
    _frontend: Port,
    _etcd_ports: (Port, Port),
    nodes: Vec<Node>,
    etcd: Option<Child>,
    haproxy: Option<Child>,
    /// How long [`Ha::start`] took, to keep it short.
    pub started_in: Duration,
    poolers: std::sync::atomic::AtomicU32,
}

/// PgBouncer in front of HAProxy ([`Ha::pooler`]), stopped when dropped (before the cluster).
pub struct Pooler {
    dir: PathBuf,
    port: Port,
    child: Child,
}

impl Pooler {
    pub fn port(&self) -> u16 {
        self.port.number
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        // SIGTERM, which runuser passes on to PgBouncer (SIGKILL would leave it running).
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// A switchover started by [`Ha::start_switchover`]: patronictl runs in the background.
pub struct Switchover {
    child: Child,
    pub from: String,
    pub to: String,
    pub started: Instant,
    log: PathBuf,
}

impl Ha {
    /// The cluster, started, with the database `app` made on the leader; None (after one line
    /// saying why) where the HA parts are not installed.
    pub fn start() -> Option<Ha> {
        let programs = match Programs::find() {
            Ok(programs) => programs,
            Err(missing) => {
                eprintln!("skipped: the HA parts are not installed ({} missing): {INSTALL_HINT}", missing.join(", "));
                return None;
            }
        };
        let started = Instant::now();
        let dir = fresh_folder();
        let etcd_ports = (claim_port(), claim_port());
        let frontend = claim_port();
        let nodes = (0..2)
            .map(|i| Node {
                name: format!("node{i}"),
                pg_port: claim_port(),
                rest_port: claim_port(),
                dir: dir.join(format!("node{i}")),
                child: None,
            })
            .collect();
        let mut ha = Ha {
            dir,
            programs,
            port: frontend.number,
            _frontend: frontend,
            _etcd_ports: etcd_ports,
            nodes,
            etcd: None,
            haproxy: None,
            started_in: Duration::ZERO,
            poolers: std::sync::atomic::AtomicU32::new(0),
        };
        ha.write_configs();
        ha.launch();
        ha.started_in = started.elapsed();
        Some(ha)
    }

    fn write_configs(&self) {
        let (client, _) = self.etcd_ports();
        let scope = self.dir.file_name().and_then(|n| n.to_str()).expect("folder name").to_owned();
        for node in &self.nodes {
            std::fs::create_dir_all(&node.dir).expect("node folder");
            let config = patroni_config(&PatroniNode {
                scope: &scope,
                name: &node.name,
                dir: &node.dir,
                pg_port: node.pg_port.number,
                rest_port: node.rest_port.number,
                etcd_port: client,
                bin_dir: server_bindir(),
            });
            std::fs::write(node.config(), config).expect("write patroni.yml");
        }
        let servers: Vec<(String, u16, u16)> =
            self.nodes.iter().map(|n| (n.name.clone(), n.pg_port.number, n.rest_port.number)).collect();
        std::fs::write(self.dir.join("haproxy.cfg"), haproxy_config(self.port, &servers)).expect("write haproxy.cfg");
        hand_over(&self.dir);
    }

    fn etcd_ports(&self) -> (u16, u16) {
        (self._etcd_ports.0.number, self._etcd_ports.1.number)
    }

    fn launch(&mut self) {
        let (client, peer) = self.etcd_ports();
        let etcd_dir = self.dir.join("etcd");
        let mut etcd = as_server_user(&self.programs.etcd);
        etcd.arg("--name").arg("etcd").arg("--data-dir").arg(&etcd_dir);
        etcd.arg("--listen-client-urls").arg(format!("http://127.0.0.1:{client}"));
        etcd.arg("--advertise-client-urls").arg(format!("http://127.0.0.1:{client}"));
        etcd.arg("--listen-peer-urls").arg(format!("http://127.0.0.1:{peer}"));
        etcd.arg("--initial-advertise-peer-urls").arg(format!("http://127.0.0.1:{peer}"));
        etcd.arg("--initial-cluster").arg(format!("etcd=http://127.0.0.1:{peer}"));
        self.etcd = Some(spawn_logged(etcd, &self.dir, "etcd.log"));
        if !eventually(PATIENCE, || http_status(client, "/health") == 200) {
            panic!("etcd did not start:\n{}", self.log());
        }
        let mut haproxy = as_server_user(&self.programs.haproxy);
        haproxy.arg("-db").arg("-f").arg(self.dir.join("haproxy.cfg"));
        self.haproxy = Some(spawn_logged(haproxy, &self.dir, "haproxy.log"));
        for i in 0..self.nodes.len() {
            let mut patroni = as_server_user(&self.programs.patroni);
            patroni.arg(self.nodes[i].config());
            let child = spawn_logged(patroni, &self.nodes[i].dir, "patroni.log");
            self.nodes[i].child = Some(child);
        }
        let leader = self.wait_for_leader(PATIENCE);
        // The superuser's real password, on the leader over its trusted Unix socket: it
        // replicates to the standby with everything else.
        let leader_node = self.node(&leader);
        let sql = format!("ALTER ROLE \"{SUPERUSER}\" PASSWORD '{}'", PASSWORD.replace('\'', "''"));
        run_ok(self.local_psql(leader_node, "postgres").args(["-c", &sql]));
        let streaming = eventually(PATIENCE, || {
            self.local_psql(leader_node, "postgres")
                .args(["-c", "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "1")
        });
        assert!(streaming, "the replica does not stream from {leader}:\n{}", self.log());
        self.wait_routed_to(Some(&leader), PATIENCE);
        self.psql("postgres", "CREATE DATABASE app");
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The node whose REST API answers 200 on `/primary` now, when exactly one does: None while a
    /// failover is in progress, and then HAProxy has no backend (after one check, 300 ms).
    pub fn primary(&self) -> Option<String> {
        let leaders: Vec<&Node> = self.nodes.iter().filter(|n| n.rest("/primary") == 200).collect();
        match leaders.as_slice() {
            [one] => Some(one.name.clone()),
            _ => None,
        }
    }

    fn wait_for_leader(&self, timeout: Duration) -> String {
        let mut leader = None;
        if !eventually(timeout, || {
            leader = self.primary();
            leader.is_some()
        }) {
            panic!("no Patroni leader within {timeout:?}:\n{}", self.log());
        }
        leader.expect("a leader")
    }

    /// The leader's node name (Patroni's REST API, `GET /primary` on each node), waiting for one.
    pub fn leader(&self) -> String {
        self.wait_for_leader(PATIENCE)
    }

    /// The folder everything lives in (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node that is not the leader.
    pub fn replica(&self) -> String {
        let leader = self.leader();
        self.nodes.iter().find(|n| n.name != leader).expect("two nodes").name.clone()
    }

    /// The leader's PostgreSQL port (not through HAProxy).
    pub fn node_port(&self, name: &str) -> u16 {
        self.node(name).pg_port.number
    }

    /// POSTGRES_* settings through HAProxy for the superuser, and a first superuser, as
    /// `Cluster::env` gives them.
    pub fn env(&self, database: &str) -> Vec<(String, String)> {
        super::superuser_env(self.port, database)
    }

    /// A planned switchover to the replica, in the background: returns once patronictl runs.
    pub fn start_switchover(&self) -> Switchover {
        self.wait_healthy();
        let from = self.leader();
        let to = self.nodes.iter().find(|n| n.name != from).expect("two nodes").name.clone();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.dir.join(format!("switchover-{n:02}.log"));
        let mut command = Command::new(&self.programs.patronictl);
        command.arg("-c").arg(self.node(&from).config());
        command.args(["switchover", "--leader", &from, "--candidate", &to, "--force"]);
        let child = spawn_logged(command, &self.dir, log.file_name().and_then(|n| n.to_str()).expect("log name"));
        Switchover { child, from, to, started: Instant::now(), log }
    }

    /// Waits until the other node is a running replica streaming from the leader: after a
    /// switchover the old leader takes a few seconds to rejoin, and until then Patroni refuses
    /// another ("no good candidates have been found").
    pub fn wait_healthy(&self) {
        let healthy = eventually(PATIENCE, || {
            let Some(leader) = self.primary() else { return false };
            let others_replicate = self.nodes.iter().filter(|n| n.name != leader).all(|n| n.rest("/replica") == 200);
            others_replicate
                && self
                    .local_psql(self.node(&leader), "postgres")
                    .args(["-c", "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "1")
        });
        assert!(healthy, "the cluster is not back to a leader and a streaming replica:\n{}", self.log());
    }

    /// A planned switchover; returns when the new leader is up and HAProxy routes to it, with
    /// that moment.
    pub fn switchover(&self) -> Instant {
        self.start_switchover().finish(self)
    }

    /// SIGKILLs the leader's postmaster (an unplanned failover: Patroni promotes the replica,
    /// `primary_start_timeout` being 0); returns the killed node's name. Patroni's REST API on
    /// that node says primary until its next loop (up to `loop_wait`, 1 s), so HAProxy keeps
    /// sending connections to the dead port for as long (and retries them, holding the client).
    pub fn kill_leader_postmaster(&self) -> String {
        self.wait_healthy();
        let leader = self.leader();
        // Patroni fails over only to a replica it knows is close enough (`maximum_lag_on_failover`);
        // else it restarts the crashed primary in place. So the replica first replays everything,
        // and a Patroni loop publishes its position.
        let caught_up = eventually(PATIENCE, || {
            self.local_psql(self.node(&leader), "postgres")
                .args(["-c", "SELECT count(*) FROM pg_stat_replication WHERE replay_lsn = pg_current_wal_lsn()"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "1")
        });
        assert!(caught_up, "the replica does not catch up with {leader}:\n{}", self.log());
        std::thread::sleep(Duration::from_millis(1200));
        let pid_file =
            std::fs::read_to_string(self.node(&leader).data().join("postmaster.pid")).expect("postmaster.pid");
        let pid = pid_file.lines().next().map(str::trim).expect("pid");
        run_ok(Command::new("kill").args(["-KILL", pid]));
        leader
    }

    /// How many times HAProxy has marked `node` down so far (its log says so).
    pub fn times_marked_down(&self, node: &str) -> usize {
        let log = std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default();
        // Each event is logged twice (stderr's [WARNING] line and the log line): count one kind.
        log.lines().filter(|l| l.starts_with(&format!("Server leader/{node} is DOWN"))).count()
    }

    /// Waits until HAProxy has marked `node` down more than `before` times: from then until a
    /// new leader is marked up, HAProxy has no backend and accepts connections only to close them.
    pub fn wait_marked_down(&self, node: &str, before: usize) {
        let down = eventually(PATIENCE, || self.times_marked_down(node) > before);
        assert!(down, "HAProxy never marked {node} down:\n{}", self.log());
    }

    /// Waits until HAProxy routes to a node that takes writes; returns that moment.
    pub fn wait_routed_to_a_writable_leader(&self, timeout: Duration) -> Instant {
        self.wait_routed_to(None, timeout)
    }

    /// Waits until a connection through HAProxy lands on `node` (any node when None) and it is
    /// not in recovery.
    fn wait_routed_to(&self, node: Option<&str>, timeout: Duration) -> Instant {
        let wanted = node.map(|name| self.node_port(name).to_string());
        let routed = eventually(timeout, || {
            match self.try_psql("postgres", "SELECT pg_is_in_recovery()::text || ' ' || inet_server_port()") {
                Ok(out) => match out.split_once(' ') {
                    Some(("false", port)) => wanted.as_deref().is_none_or(|wanted| wanted == port),
                    _ => false,
                },
                Err(_) => false,
            }
        });
        assert!(
            routed,
            "HAProxy did not route to a writable {} within {timeout:?}:\n{}",
            node.unwrap_or("node"),
            self.log()
        );
        Instant::now()
    }

    /// Runs SQL through HAProxy (on the current leader) as the superuser; returns psql's
    /// unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        self.try_psql(database, sql).unwrap_or_else(|e| panic!("psql through HAProxy failed: {e}\n{sql}"))
    }

    pub fn try_psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let output = self.psql_command(database).args(["-c", sql]).output().map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
        }
    }

    /// psql through HAProxy, with a short connect timeout (a proxy without a backend).
    pub fn psql_command(&self, database: &str) -> Command {
        let mut command = Command::new(server_bindir().join("psql"));
        command.args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"]);
        command.args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-d", database]);
        command.env("PGPASSWORD", PASSWORD).env("PGCONNECT_TIMEOUT", "2").env("PGSSLMODE", "disable");
        command.stdin(Stdio::null());
        command
    }

    /// psql on a node's own Unix socket (trusted), as the server's OS user.
    fn local_psql(&self, node: &Node, database: &str) -> Command {
        let mut command = as_server_user(&server_bindir().join("psql"));
        command.args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h"]).arg(&node.dir);
        command.args(["-p", &node.pg_port.number.to_string(), "-U", SUPERUSER, "-d", database]);
        command.stdin(Stdio::null());
        command
    }

    /// Debian's PgBouncer in session mode in front of HAProxy (the configuration testkit's
    /// `Bouncer` runs): the other router of issue 21, where the clients' connections are the
    /// pooler's and only its server connections are cut.
    pub fn pooler(&self) -> Pooler {
        let dir =
            self.dir.join(format!("pgbouncer-{}", self.poolers.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
        std::fs::create_dir(&dir).expect("pooler folder");
        let secret = self.psql("postgres", &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{SUPERUSER}'"));
        let port = claim_port();
        let pool = super::pgbouncer::Pool { mode: "session", size: 20, sockets: None, fallback: true };
        let run_as = is_root().then_some(SERVER_OS_USER);
        let command = super::pgbouncer::prepare(&dir, port.number, self.port, pool, SUPERUSER, &secret, run_as)
            .expect("PgBouncer not found: apt-get install pgbouncer");
        // One failed server login (HAProxy closes while no node is primary) makes PgBouncer
        // refuse every client for `server_login_retry`, 15 s by default: measured here, /ready
        // came back 13 s after the switchover. Behind an HA router it wants 1 s. ([pgbouncer] is
        // the file's last section.)
        let ini = dir.join("pgbouncer.ini");
        let mut text = std::fs::read_to_string(&ini).expect("pgbouncer.ini");
        text.push_str("server_login_retry = 1\n");
        std::fs::write(&ini, text).expect("pgbouncer.ini");
        hand_over(&dir);
        let child = spawn_logged(command, &dir, "pgbouncer.out");
        let pooler = Pooler { dir, port, child };
        let listening =
            eventually(PATIENCE, || std::net::TcpStream::connect(("127.0.0.1", pooler.port.number)).is_ok());
        assert!(listening, "PgBouncer did not start:\n{}", pooler.log());
        pooler
    }

    /// `patronictl list`, for failure messages.
    pub fn topology(&self) -> String {
        let Some(node) = self.nodes.first() else { return String::new() };
        Command::new(&self.programs.patronictl)
            .arg("-c")
            .arg(node.config())
            .arg("list")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The tail of every log (Patroni's with its PostgreSQL's, etcd's, HAProxy's, patronictl's)
    /// and the topology, for failure messages.
    pub fn log(&self) -> String {
        let mut logs = vec![self.dir.join("etcd.log"), self.dir.join("haproxy.log")];
        logs.extend(self.nodes.iter().map(|n| n.dir.join("patroni.log")));
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            let mut switchovers: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("switchover-")))
                .collect();
            switchovers.sort();
            logs.extend(switchovers);
        }
        let mut text = format!("--- patronictl list\n{}", self.topology());
        for path in logs {
            let content = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            text.push_str(&format!("--- {} (last 40 lines)\n{tail}\n", path.display()));
        }
        text
    }
}

impl Switchover {
    /// Waits until HAProxy routes to the new leader, and for patronictl; returns the moment of
    /// the routing (patronictl says it is done a few hundred ms later: its own polling).
    pub fn finish(mut self, ha: &Ha) -> Instant {
        let routed = ha.wait_routed_to(Some(&self.to), PATIENCE);
        let finished = eventually(PATIENCE, || matches!(self.child.try_wait(), Ok(Some(_))));
        if !finished {
            let _ = self.child.kill();
        }
        let status = self.child.wait().expect("wait for patronictl");
        let said = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(
            finished && status.success() && said.contains("Successfully switched over"),
            "patronictl switchover from {} to {} failed ({status}):\n{said}\n{}",
            self.from,
            self.to,
            ha.log()
        );
        routed
    }
}

impl Drop for Ha {
    fn drop(&mut self) {
        // HAProxy first, so nothing reaches a node while it stops; then Patroni killed outright
        // (it must not restart or promote anything now), its PostgreSQL stopped at once, etcd.
        for child in
            [self.haproxy.take()].into_iter().flatten().chain(self.nodes.iter_mut().filter_map(|n| n.child.take()))
        {
            stop(child);
        }
        for node in &self.nodes {
            if node.data().join("postmaster.pid").exists() {
                let _ = as_server_user(&server_bindir().join("pg_ctl"))
                    .args(["stop", "-w", "-m", "immediate", "-D"])
                    .arg(node.data())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if let Some(etcd) = self.etcd.take() {
            stop(etcd);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// What one node's patroni.yml says.
pub struct PatroniNode<'a> {
    pub scope: &'a str,
    pub name: &'a str,
    pub dir: &'a Path,
    pub pg_port: u16,
    pub rest_port: u16,
    pub etcd_port: u16,
    pub bin_dir: &'a Path,
}

/// patroni.yml for one node. Quirks of Patroni 3.0.2 it works around: the superuser's bootstrap
/// password must be ASCII ([`BOOTSTRAP_PASSWORD`]); `primary_start_timeout: 0` makes a crashed
/// leader fail over at once instead of Patroni restarting PostgreSQL in place for up to 300 s;
/// `use_unix_socket` keeps Patroni's own connections on the trusted socket, so the superuser's
/// password can change after bootstrap.
pub fn patroni_config(node: &PatroniNode<'_>) -> String {
    let PatroniNode { scope, name, dir, pg_port, rest_port, etcd_port, bin_dir } = node;
    let dir = dir.display();
    let bin_dir = bin_dir.display();
    let (repl_user, repl_password) = REPLICATION_USER;
    let (rewind_user, rewind_password) = REWIND_USER;
    format!(
        "scope: {scope}
name: {name}
restapi:
  listen: 127.0.0.1:{rest_port}
  connect_address: 127.0.0.1:{rest_port}
etcd3:
  hosts: 127.0.0.1:{etcd_port}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    primary_start_timeout: 0
    maximum_lag_on_failover: 33554432
    synchronous_mode: false
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_log_hints: 'on'
        max_wal_senders: 5
        max_replication_slots: 5
  initdb:
    - encoding: UTF8
    - auth-host: scram-sha-256
    - auth-local: trust
    - no-sync
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {dir}/data
  bin_dir: {bin_dir}
  pgpass: {dir}/pgpass
  use_unix_socket: true
  remove_data_directory_on_rewind_failure: true
  remove_data_directory_on_diverged_timelines: true
  basebackup:
    - checkpoint: fast
    - no-sync
  authentication:
    superuser: {{username: {SUPERUSER}, password: '{BOOTSTRAP_PASSWORD}'}}
    replication: {{username: {repl_user}, password: '{repl_password}'}}
    rewind: {{username: {rewind_user}, password: '{rewind_password}'}}
  parameters:
    unix_socket_directories: '{dir}'
    shared_buffers: 16MB
    max_connections: 60
    fsync: 'off'
    synchronous_commit: 'off'
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 scram-sha-256
    - host replication {repl_user} 127.0.0.1/32 scram-sha-256
"
    )
}

/// haproxy.cfg: a TCP frontend on `port`, routed to the node whose Patroni says it is primary,
/// checked every 300 ms, one failed check marks a node down and cuts its sessions. `servers`:
/// (name, PostgreSQL port, REST port).
pub fn haproxy_config(port: u16, servers: &[(String, u16, u16)]) -> String {
    let mut config = format!(
        "global
  log stdout format raw local0
defaults
  mode tcp
  log global
  option tcplog
  timeout connect 1s
  timeout client 1h
  timeout server 1h
  timeout check 1s
frontend postgres
  bind 127.0.0.1:{port}
  default_backend leader
backend leader
  option httpchk GET /primary
  http-check expect status 200
  default-server inter 300ms fall 1 rise 1 on-marked-down shutdown-sessions
"
    );
    for (name, pg_port, rest_port) in servers {
        config.push_str(&format!("  server {name} 127.0.0.1:{pg_port} check port {rest_port}\n"));
    }
    config
}

/// A new folder in the temporary folder, ours alone until handed to the server's OS user.
fn fresh_folder() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("prestart-ha-{}-{n}-{:x}", std::process::id(), nanos & 0xffff));
    // create_dir, not create_dir_all: a folder someone made beforehand is refused.
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
    dir
}

/// Gives `path` and what is in it to the server's OS user, when we are root.
fn hand_over(path: &Path) {
    if is_root() {
        run_ok(Command::new("chown").arg("-R").arg(SERVER_OS_USER).arg(path));
    }
}

/// `program` as the server's OS user when we are root (Patroni, etcd and PostgreSQL refuse, or
/// should not be, root), with setuid in the child itself: the pid we hold is the program's, so a
/// SIGKILL reaches it (runuser would be killed alone and leave it running).
fn as_server_user(program: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(program);
    if is_root() {
        let id = |flag: &str| -> u32 {
            let out = run_ok(Command::new("id").args([flag, SERVER_OS_USER]));
            out.trim().parse().unwrap_or_else(|_| panic!("id {flag} {SERVER_OS_USER}: {out}"))
        };
        command.uid(id("-u")).gid(id("-g"));
        command.env("HOME", std::env::temp_dir()).env("USER", SERVER_OS_USER);
    }
    command
}

/// Starts `command` with stdout and stderr appended to `dir/name`.
fn spawn_logged(mut command: Command, dir: &Path, name: &str) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name)).expect("log file");
    let err = log.try_clone().expect("log file");
    command.current_dir(dir).stdin(Stdio::null()).stdout(log).stderr(err);
    command.spawn().unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"))
}

/// The status of `GET path` on a loopback port; 0 when nothing answers within a second.
fn http_status(port: u16, path: &str) -> u16 {
    use std::io::{Read, Write};
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)) else { return 0 };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return 0;
    }
    // The whole answer, small: closing early makes Patroni log a traceback per request.
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    response.get(9..12).and_then(|code| std::str::from_utf8(code).ok()?.parse().ok()).unwrap_or(0)
}

/// Whether PgBouncer, for [`Ha::pooler`], is not installed.
pub fn pgbouncer_missing() -> bool {
    super::pgbouncer::program().is_none()
}
