//! The one harness for throwaway PostgreSQL clusters, shared by every test file.
//!
//! Each cluster lives in its own temp folder on a free port; as root, the server runs as the
//! `postgres` OS user. `initdb` runs once per test binary; each cluster starts from a copy of it.
//! Every run of the binary goes through [`Run`], which fails the test if the password shows up
//! in any output.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The superuser's password in every test cluster: every test also proves that such a password
/// works and never leaks.
pub const PASSWORD: &str = "p@ss:w/rd%#é x";
pub const SUPERUSER: &str = "postgres";
const SERVER_OS_USER: &str = "postgres";

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Where initdb and pg_ctl are: PATH first, then Debian's versioned folders.
/// The folder of the newest PostgreSQL server binaries here (pgbench, pg_dump, ...).
pub fn server_bindir() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(out) = Command::new("which").arg("pg_ctl").output()
            && out.status.success()
        {
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            let path = std::fs::canonicalize(&path).unwrap_or(path);
            if let Some(dir) = path.parent().filter(|d| d.join("initdb").exists()) {
                return dir.to_path_buf();
            }
        }
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries not found: run `cargo xtask test`, which installs them")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .collect();
        versions.sort();
        versions.pop().expect("PostgreSQL server binaries not found: run `cargo xtask test`, which installs them")
    })
}

/// Runs a server program, as the postgres OS user when we are root.
fn server_command(program: &str) -> Command {
    let path = server_bindir().join(program);
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", SERVER_OS_USER, "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

fn chown_to_server_user(path: &Path) {
    if is_root() {
        run_ok(Command::new("chown").arg("-R").arg(SERVER_OS_USER).arg(path));
    }
}

/// A cluster made by initdb once per checkout and server version, copied for each test: test
/// processes share it (nextest runs each test in a process of its own), the first one making it
/// under an exclusive lock while the others wait. It lives under target/ (so `cargo clean`
/// removes it and nothing is left in /tmp), named after our uid and the server binaries, and is
/// refused if someone else owns it.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (server_bindir(), PASSWORD, SUPERUSER).hash(&mut hasher);
        let dir = own_files().join(format!("template-{uid}-{:016x}", hasher.finish()));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = std::fs::symlink_metadata(&dir).expect("template folder").uid();
                assert!(owner == uid, "{} belongs to uid {owner}, not to us: remove it", dir.display());
            }
            Err(e) => panic!("cannot create {}: {e}", dir.display()),
        }
        let lock = std::fs::File::create(dir.join("lock")).expect("template lock");
        lock.lock().expect("lock the template");
        let ready = dir.join("ready");
        // The server user's part: the folder itself stays ours, so its owner can be checked.
        let cluster = dir.join("cluster");
        if !ready.exists() {
            let _ = std::fs::remove_dir_all(&cluster);
            std::fs::create_dir(&cluster).expect("template cluster folder");
            let password_file = cluster.join("pw");
            std::fs::write(&password_file, PASSWORD).expect("write password file");
            chown_to_server_user(&cluster);
            run_ok(
                server_command("initdb")
                    .args(["--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-sync", "-U"])
                    .arg(SUPERUSER)
                    .arg(format!("--pwfile={}", password_file.display()))
                    .arg("-D")
                    .arg(cluster.join("data")),
            );
            std::fs::write(&ready, "").expect("mark the template ready");
        }
        cluster
    })
}

/// `env` with `key` set to `value` (in place of any value it had).
pub fn with(mut env: Vec<(String, String)>, key: &str, value: &str) -> Vec<(String, String)> {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value.to_owned()));
    env
}

/// The folder for what the tests keep between processes: target/testkit, when the server's OS
/// user can reach it (as root the server runs as `postgres`), else the temporary folder.
fn own_files() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let target = workspace().join("target");
    let reachable = !is_root()
        || target
            .canonicalize()
            .map(|path| {
                path.ancestors().all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
            })
            .unwrap_or(false);
    let dir = if reachable { target.join("testkit") } else { std::env::temp_dir().join("prestart-testkit") };
    std::fs::create_dir_all(&dir).expect("testkit folder");
    dir
}

/// A TCP port on 127.0.0.1 that no other test on this machine takes while this value lives.
/// The ports are below Linux's ephemeral range (32768 and up), so no `bind(0)` and no outgoing
/// connection lands on one; each is claimed by binding an abstract Unix socket named after it,
/// which the kernel releases when the process ends, however it ends, and which leaves no file.
pub struct Port {
    pub number: u16,
    _claim: std::os::unix::net::UnixListener,
}

const CLAIMED_PORTS: std::ops::Range<u16> = 20000..32000;

pub fn claim_port() -> Port {
    use std::os::linux::net::SocketAddrExt;
    let span = CLAIMED_PORTS.end - CLAIMED_PORTS.start;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let offset = ((std::process::id() ^ nanos) % u32::from(span)) as u16;
    for step in 0..span {
        let number = CLAIMED_PORTS.start + (offset + step) % span;
        let name = std::os::unix::net::SocketAddr::from_abstract_name(format!("prestart-test-port-{number}"))
            .expect("abstract socket name");
        let Ok(claim) = std::os::unix::net::UnixListener::bind_addr(&name) else { continue };
        if TcpListener::bind(("127.0.0.1", number)).is_ok() {
            return Port { number, _claim: claim };
        }
    }
    panic!("no free port in {CLAIMED_PORTS:?}")
}

/// A throwaway cluster, stopped and deleted when dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
    pub port: u16,
    _port_claim: Port,
}

impl Cluster {
    /// A new cluster, not started yet.
    pub fn stopped() -> Cluster {
        let dir = tempfile::Builder::new().prefix("prestart-test-").tempdir().expect("temp dir");
        run_ok(Command::new("cp").arg("-a").arg(template().join("data")).arg(dir.path().join("data")));
        chown_to_server_user(dir.path());
        let claim = claim_port();
        let cluster = Cluster { dir, port: claim.number, _port_claim: claim };
        cluster.write_conf("");
        cluster
    }

    /// A new cluster, started, with the database `app`.
    pub fn started() -> Cluster {
        let cluster = Cluster::stopped();
        cluster.start();
        cluster.create_database("app");
        cluster
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The folder of the cluster's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A folder for the test's own files, readable by the server's OS user.
    pub fn scratch(&self) -> PathBuf {
        let dir = self.dir.path().join("scratch");
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    /// Rewrites postgresql.auto.conf: the harness's settings, then `extra` lines.
    pub fn write_conf(&self, extra: &str) {
        let conf = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n\
             synchronous_commit = off\nfull_page_writes = off\nmax_connections = 60\nshared_buffers = 16MB\n{extra}\n",
            self.port,
            self.dir.path().display()
        );
        let path = self.data().join("postgresql.auto.conf");
        std::fs::write(&path, conf).expect("write postgresql.auto.conf");
        chown_to_server_user(&path);
    }

    /// Restarts the cluster listening on `address` too, with password logins from the networks
    /// it is on.
    pub fn serve(&self, address: &str) {
        self.stop();
        self.write_conf(&format!("listen_addresses = '127.0.0.1,{address}'"));
        let hba = self.data().join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        rules.push_str("host all all samenet scram-sha-256\n");
        std::fs::write(&hba, rules).expect("write pg_hba.conf");
        self.start();
    }

    pub fn start(&self) {
        let log = self.log_path();
        run_ok(server_command("pg_ctl").args(["start", "-w", "-t", "30", "-D"]).arg(self.data()).arg("-l").arg(&log));
    }

    /// `pg_ctl start` without waiting (for a standby that will not accept connections).
    pub fn start_no_wait(&self) {
        let log = self.log_path();
        run_ok(server_command("pg_ctl").args(["start", "-W", "-D"]).arg(self.data()).arg("-l").arg(&log));
    }

    pub fn stop(&self) {
        run_ok(server_command("pg_ctl").args(["stop", "-w", "-m", "fast", "-D"]).arg(self.data()));
    }

    pub fn reload(&self) {
        run_ok(server_command("pg_ctl").args(["reload", "-D"]).arg(self.data()));
    }

    pub fn promote(&self) {
        run_ok(server_command("pg_ctl").args(["promote", "-w", "-D"]).arg(self.data()));
    }

    /// Turns the (stopped) cluster into a standby that refuses every connection with 57P03.
    pub fn make_standby_without_hot_standby(&self) {
        self.write_conf("hot_standby = off");
        let signal = self.data().join("standby.signal");
        std::fs::write(&signal, "").expect("standby.signal");
        chown_to_server_user(&signal);
    }

    /// Runs SQL as the superuser over the Unix socket (trusted) and returns psql's unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        run_ok(self.psql_command(database).args(["-c", sql])).trim().to_owned()
    }

    pub fn psql_command(&self, database: &str) -> Command {
        let mut command = server_command("psql");
        command.args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h"]).arg(self.dir.path()).args([
            "-p",
            &self.port.to_string(),
            "-U",
            SUPERUSER,
            "-d",
            database,
        ]);
        command
    }

    pub fn create_database(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }

    /// `pg_dump` of the schema and the rows (the migrations table's among them), to compare two
    /// states.
    pub fn dump(&self, database: &str) -> String {
        let mut command = server_command("pg_dump");
        // prestart's records of the environment and the releases are its own bookkeeping, beside
        // sqlx's table, and hold when they were recorded: no part of a state to compare (with sqlx-cli's, say).
        command.args(["--exclude-table=_prestart_environment", "--exclude-table=_prestart_releases", "-h"]);
        command.arg(self.dir.path());
        command.args(["-p", &self.port.to_string(), "-U", SUPERUSER, database]);
        let dump = run_ok(&mut command);
        // pg_dump 15.14 and later print a random `\restrict` key on every run.
        dump.lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `pg_dump --schema-only`, without prestart's own tables (`_prestart_environment` and
    /// `_prestart_releases`, in any schema): the schema two tools must agree on.
    pub fn schema(&self, database: &str) -> String {
        let mut command = server_command("pg_dump");
        command.args([
            "--schema-only",
            "--exclude-table=*._prestart_environment",
            "--exclude-table=*._prestart_releases",
        ]);
        command.arg("-h").arg(self.dir.path());
        command.args(["-p", &self.port.to_string(), "-U", SUPERUSER, database]);
        run_ok(&mut command)
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A URL for the superuser over TCP, the password percent-encoded.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}?sslmode=disable", url_encoded(PASSWORD), self.port)
    }

    /// Settings for the binary: POSTGRES_* for the superuser over TCP, and a first superuser.
    pub fn env(&self, database: &str) -> Vec<(String, String)> {
        superuser_env(self.port, database)
    }

    /// A streaming replica of this (running) cluster, made with `pg_basebackup -R`, on a port of
    /// its own; started, and a hot standby unless `extra` says otherwise.
    pub fn replica(&self, extra: &str) -> Cluster {
        let dir = tempfile::Builder::new().prefix("prestart-replica-").tempdir().expect("temp dir");
        chown_to_server_user(dir.path());
        let data = dir.path().join("data");
        run_ok(
            server_command("pg_basebackup")
                .arg("-h")
                .arg(self.dir.path())
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    SUPERUSER,
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "--no-sync",
                    "-D",
                ])
                .arg(&data),
        );
        // -R wrote primary_conninfo into postgresql.auto.conf, which write_conf rewrites.
        let written = std::fs::read_to_string(data.join("postgresql.auto.conf")).expect("postgresql.auto.conf");
        let conninfo: String = written.lines().filter(|l| l.starts_with("primary_conninfo")).collect();
        let claim = claim_port();
        let replica = Cluster { dir, port: claim.number, _port_claim: claim };
        replica.write_conf(&format!("{conninfo}\n{extra}"));
        replica.start_no_wait();
        replica
    }

    /// The postmaster's pid, from postmaster.pid.
    pub fn postmaster_pid(&self) -> u32 {
        let pid_file = std::fs::read_to_string(self.data().join("postmaster.pid")).expect("postmaster.pid");
        pid_file.lines().next().and_then(|l| l.trim().parse().ok()).expect("pid")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = server_command("pg_ctl")
            .args(["stop", "-w", "-m", "immediate", "-D"])
            .arg(self.data())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// How PgBouncer hands server connections to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Session,
    Transaction,
}

/// Debian's PgBouncer in front of a cluster, with its default settings but the pool mode:
/// SCRAM passed through from the server's own secret, no `ignore_startup_parameters`. Every
/// database passes through under its own name, and `app` under [`Bouncer::ALIAS`] too.
pub struct Bouncer {
    dir: tempfile::TempDir,
    pub port: u16,
    _port_claim: Option<Port>,
    child: Child,
    socket: Option<tempfile::TempDir>,
}

impl Bouncer {
    /// Another name for the database `app`, as pooler configurations often give one.
    pub const ALIAS: &str = pgbouncer::ALIAS;

    pub fn start(cluster: &Cluster, mode: PoolMode) -> Bouncer {
        Bouncer::start_with_pool_size(cluster, mode, 20)
    }

    /// The same with `default_pool_size` set: a small pool fills, and clients queue for it.
    pub fn start_with_pool_size(cluster: &Cluster, mode: PoolMode, pool_size: u32) -> Bouncer {
        Bouncer::launch(cluster, mode, (pool_size, true), None)
    }

    /// Without the `*` fallback entry: PgBouncer knows `app` and the alias only, and refuses any
    /// other database itself ("no such database", 08P01).
    pub fn start_without_fallback(cluster: &Cluster, mode: PoolMode) -> Bouncer {
        Bouncer::launch(cluster, mode, (20, false), None)
    }

    /// PgBouncer on a Unix socket only, in a folder of its own, with the server's port number, in
    /// front of the server's socket: what the server sees is a socket with its own port.
    pub fn start_on_socket(cluster: &Cluster, mode: PoolMode) -> Bouncer {
        let dir = tempfile::Builder::new().prefix("prestart-pgbouncer-socket-").tempdir().expect("temp dir");
        set_mode(dir.path(), 0o755);
        chown_to_server_user(dir.path());
        Bouncer::launch(cluster, mode, (20, true), Some(dir))
    }

    /// The folder of its Unix socket, when it listens on one (for POSTGRES_SERVER).
    pub fn socket_dir(&self) -> Option<&Path> {
        self.socket.as_ref().map(tempfile::TempDir::path)
    }

    fn launch(
        cluster: &Cluster,
        mode: PoolMode,
        (pool_size, fallback): (u32, bool),
        socket: Option<tempfile::TempDir>,
    ) -> Bouncer {
        let dir = tempfile::Builder::new().prefix("prestart-pgbouncer-").tempdir().expect("temp dir");
        let secret =
            cluster.psql("postgres", &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{SUPERUSER}'"));
        // On a socket it takes the server's port number (in a folder of its own); on TCP, a free one.
        let claim = socket.is_none().then(claim_port);
        let port = claim.as_ref().map_or(cluster.port, |claim| claim.number);
        let mode = match mode {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        };
        let run_as = is_root().then_some(SERVER_OS_USER);
        let sockets = socket.as_ref().map(|ours| (ours.path(), cluster.dir.path()));
        let mut command = pgbouncer::prepare(
            dir.path(),
            port,
            cluster.port,
            pgbouncer::Pool { mode, size: pool_size, sockets, fallback },
            SUPERUSER,
            &secret,
            run_as,
        )
        .expect("PgBouncer not found: run `cargo xtask test`, which installs it (apt-get install pgbouncer)");
        chown_to_server_user(dir.path());
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start pgbouncer");
        let bouncer = Bouncer { dir, port, _port_claim: claim, child, socket };
        let listening = || match bouncer.socket_dir() {
            Some(dir) => dir.join(format!(".s.PGSQL.{}", bouncer.port)).exists(),
            None => std::net::TcpStream::connect(("127.0.0.1", bouncer.port)).is_ok(),
        };
        assert!(eventually(Duration::from_secs(10), listening), "PgBouncer did not start:\n{}", bouncer.log());
        bouncer
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }

    /// The cluster's settings for the binary, through PgBouncer.
    pub fn env(&self, cluster: &Cluster, database: &str) -> Vec<(String, String)> {
        let mut env = cluster.env(database);
        for (key, value) in &mut env {
            if key == "POSTGRES_PORT" {
                *value = self.port.to_string();
            }
        }
        env
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        // runuser passes SIGTERM on to PgBouncer.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// A network namespace with a broken network, to run a program in: 10.98.0.0/24 leads to a
/// device that drops every packet (a firewall that drops, a host that is gone), 10.99.0.0/16 is
/// unreachable (no route). Removed when dropped. Needs root and `ip` (iproute2).
pub struct BrokenNetwork {
    pub name: String,
}

impl BrokenNetwork {
    /// An address whose packets are dropped.
    pub const DROPPING: &str = "10.98.0.9";
    /// An address with no route to it.
    pub const UNREACHABLE: &str = "10.99.0.9";

    /// The namespace, or why it cannot be made here (not root, no iproute2, no permission).
    pub fn create() -> Result<BrokenNetwork, String> {
        if !is_root() {
            return Err("network namespaces need root".into());
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("prestart-test-{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        let network = BrokenNetwork { name };
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", network.name.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["link", "set", "lo", "up"])?;
        // A veth pair with both ends inside: frames to 10.98.0.9 go to a hardware address that
        // nothing has, so they are dropped without a word, as a firewall that drops would.
        inside(&["link", "add", "sink0", "type", "veth", "peer", "name", "sink1"])?;
        inside(&["addr", "add", "10.98.0.1/24", "dev", "sink0"])?;
        inside(&["link", "set", "sink0", "up"])?;
        inside(&["link", "set", "sink1", "up"])?;
        inside(&["neigh", "add", Self::DROPPING, "lladdr", "02:00:00:00:00:09", "dev", "sink0", "nud", "permanent"])?;
        inside(&["route", "add", "unreachable", "10.99.0.0/16"])?;
        Ok(network)
    }
}

impl BrokenNetwork {
    /// A veth link from the namespace to the host (one per test process); returns the host's
    /// address on it. A cluster must listen on it and let it
    /// in ([`Cluster::serve`]).
    pub fn link_to_host(&self) -> Result<String, String> {
        let Link { host, inside, host_end, inside_end } = Link::of_this_process();
        ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &inside_end, "netns", &self.name])?;
        ip(&["addr", "add", &format!("{host}/30"), "dev", &host_end])?;
        ip(&["link", "set", &host_end, "up"])?;
        ip(&["netns", "exec", &self.name, "ip", "addr", "add", &format!("{inside}/30"), "dev", &inside_end])?;
        ip(&["netns", "exec", &self.name, "ip", "link", "set", &inside_end, "up"])?;
        Ok(host)
    }

    /// From now on, packets over the link are dropped without a word, both ways (sent to a
    /// hardware address nothing has), as when a NAT forgets the flow: connections go half-open.
    pub fn cut_link(&self) {
        let Link { host, inside, host_end, inside_end } = Link::of_this_process();
        let to_nowhere = ["lladdr", "02:00:00:00:00:09", "nud", "permanent", "dev"];
        run_ok(Command::new("ip").args(["neigh", "replace", &inside]).args(to_nowhere).arg(&host_end));
        run_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.name, "ip", "neigh", "replace", &host])
                .args(to_nowhere)
                .arg(&inside_end),
        );
    }
}

/// The veth link of [`BrokenNetwork::link_to_host`]: a /30 of 10.97.0.0/16 and interface names
/// that no other test process picks.
struct Link {
    host: String,
    inside: String,
    host_end: String,
    inside_end: String,
}

impl Link {
    fn of_this_process() -> Link {
        let pid = std::process::id();
        let slot = (pid % 16384) * 4;
        let address = |n: u32| format!("10.97.{}.{}", slot / 256, slot % 256 + n);
        Link { host: address(1), inside: address(2), host_end: format!("pt{pid}h"), inside_end: format!("pt{pid}n") }
    }
}

/// `ip ARGS` (iproute2), with its complaint as the error.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

impl Drop for BrokenNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// One run of the xtask binary with exactly the given environment (no `.env` of the workspace).
pub struct Run {
    command: Command,
}

/// A migrations folder in a temp dir, with the workspace's migrations or custom files.
pub struct Migrations {
    pub dir: tempfile::TempDir,
}

impl Migrations {
    /// A copy of the workspace's migrations.
    pub fn workspace() -> Migrations {
        let migrations = Migrations::empty();
        for entry in std::fs::read_dir(workspace().join("migrations")).expect("migrations").flatten() {
            std::fs::copy(entry.path(), migrations.path().join(entry.file_name())).expect("copy migration");
        }
        migrations
    }

    pub fn empty() -> Migrations {
        Migrations { dir: tempfile::Builder::new().prefix("prestart-migrations-").tempdir().expect("temp dir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, sql: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, sql).expect("write migration");
        path
    }
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Secrets that must never appear in any output.
fn secrets() -> Vec<String> {
    vec![PASSWORD.to_owned(), url_encoded(PASSWORD), FIRST_SUPERUSER_PASSWORD.to_owned()]
}

/// Percent-encodes every byte but ASCII letters and digits, as a DATABASE_URL needs.
pub fn url_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

impl Run {
    /// `program args` with exactly the environment `env` (plus PATH, HOME and LANG).
    pub fn program(program: impl AsRef<Path>, args: &[&str], env: &[(String, String)]) -> Run {
        let mut command = Command::new(program.as_ref());
        command.args(args);
        command.env_clear();
        for key in ["PATH", "HOME", "LANG"] {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
        command.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        Run { command }
    }

    /// The xtask binary, never reading the workspace's `.env` (a test's settings are exactly its
    /// environment) and judging diagnoses as on a host, since tests run on hosts and in
    /// containers alike.
    pub fn xtask(binary: &str, args: &[&str], env: &[(String, String)]) -> Run {
        let mut run = Run::program(binary, args, env);
        run.judge_as_on_a_host(args);
        if !args.contains(&"--env-file") {
            run.command.args(["--env-file", "/dev/null"]);
        }
        run
    }

    /// `--context host` for the commands that diagnose, unless the test chose a context.
    fn judge_as_on_a_host(&mut self, args: &[&str]) {
        const DIAGNOSE: &[&str] = &["prestart", "wait-for-db", "migrate", "seed", "doctor", "dev"];
        if args.first().is_some_and(|command| DIAGNOSE.contains(command)) && !args.contains(&"--context") {
            self.command.args(["--context", "host"]);
        }
    }

    /// The same run inside the network namespace `network`.
    pub fn inside(self, network: &BrokenNetwork) -> Run {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &network.name]).arg(self.command.get_program()).args(self.command.get_args());
        command.env_clear();
        for (key, value) in self.command.get_envs() {
            if let Some(value) = value {
                command.env(key, value);
            }
        }
        Run { command }
    }

    pub fn env(mut self, key: &str, value: &str) -> Run {
        self.command.env(key, value);
        self
    }

    pub fn output(mut self) -> Outcome {
        let started = Instant::now();
        let output = self.command.output().expect("run xtask");
        Outcome::new(output, started.elapsed())
    }

    pub fn spawn(mut self) -> Running {
        let mut child = self.command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn xtask");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().expect("stderr pipe");
        let sink = Arc::clone(&stderr);
        let stderr_reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut pipe, &mut buffer) {
                sink.lock().expect("stderr buffer").extend_from_slice(&buffer[..n]);
            }
        });
        let mut pipe = child.stdout.take().expect("stdout pipe");
        let stdout_reader = std::thread::spawn(move || {
            let mut stdout = Vec::new();
            let _ = std::io::Read::read_to_end(&mut pipe, &mut stdout);
            stdout
        });
        Running { child, started: Instant::now(), stderr, stderr_reader, stdout_reader }
    }
}

/// A program running in the background; its output is collected as it comes.
pub struct Running {
    pub child: Child,
    started: Instant,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: std::thread::JoinHandle<()>,
    stdout_reader: std::thread::JoinHandle<Vec<u8>>,
}

impl Running {
    pub fn signal(&self, name: &str) {
        run_ok(Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()));
    }

    /// Waits until the program has printed `needle` on stderr: a point its own output proves it
    /// reached (a signal handler installed, a wait begun), where a fixed sleep would only guess.
    #[track_caller]
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) {
        let printed = || String::from_utf8_lossy(&self.stderr.lock().expect("stderr buffer")).into_owned();
        assert!(
            eventually(timeout, || printed().contains(needle)),
            "no {needle:?} on stderr within {timeout:?}:\n{}",
            printed()
        );
    }

    /// Waits at most `timeout`; a program still running then is killed and the test fails.
    #[track_caller]
    pub fn wait_within(mut self, timeout: Duration) -> Outcome {
        let finished = eventually(timeout, || matches!(self.child.try_wait(), Ok(Some(_))));
        if !finished {
            let _ = self.child.kill();
        }
        let outcome = self.wait();
        assert!(finished, "still running after {timeout:?}, killed:\n{}", outcome.stderr);
        outcome
    }

    pub fn wait(mut self) -> Outcome {
        let status = self.child.wait().expect("wait for xtask");
        let elapsed = self.started.elapsed();
        self.stderr_reader.join().expect("stderr reader");
        let stdout = self.stdout_reader.join().expect("stdout reader");
        let stderr = std::mem::take(&mut *self.stderr.lock().expect("stderr buffer"));
        Outcome::new(Output { status, stdout, stderr }, elapsed)
    }
}

/// What a run printed and how it ended.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    fn new(output: Output, elapsed: Duration) -> Outcome {
        let outcome = Outcome {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed,
        };
        for secret in secrets() {
            assert!(
                !outcome.stdout.contains(&secret) && !outcome.stderr.contains(&secret),
                "a secret appeared in the output:\n{}\n{}",
                outcome.stdout,
                outcome.stderr
            );
        }
        outcome
    }

    /// Fails when `secret`, or any part of it six characters long, appears in stdout or stderr,
    /// as typed or percent-encoded.
    #[track_caller]
    pub fn assert_lacks_secret(&self, secret: &str) -> &Self {
        let chars: Vec<char> = secret.chars().collect();
        let window = chars.len().min(6);
        let mut parts: Vec<String> = chars.windows(window).map(|w| w.iter().collect()).collect();
        parts.push(url_encoded(secret));
        for part in parts {
            assert!(
                !self.stdout.contains(&part) && !self.stderr.contains(&part),
                "{part:?} of a secret appeared in the output:\nstdout:\n{}\nstderr:\n{}",
                self.stdout,
                self.stderr
            );
        }
        self
    }

    #[track_caller]
    /// The finding `id` of a `doctor --json` run.
    pub fn doctor_check(&self, id: &str) -> serde_json::Value {
        let report: serde_json::Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}):\n{}\n{}", self.stdout, self.stderr));
        let checks = report["checks"].as_array().cloned().unwrap_or_default();
        checks.into_iter().find(|c| c["id"] == id).unwrap_or_else(|| panic!("doctor has no check {id}:\n{report}"))
    }

    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "unexpected exit code\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    #[track_caller]
    pub fn assert_stderr_contains(&self, needle: &str) -> &Self {
        assert!(self.stderr.contains(needle), "stderr lacks {needle:?}:\n{}", self.stderr);
        self
    }

    #[track_caller]
    pub fn assert_stderr_lacks(&self, needle: &str) -> &Self {
        assert!(!self.stderr.contains(needle), "stderr has {needle:?}:\n{}", self.stderr);
        self
    }
}

#[path = "../../xtask/src/base/http.rs"]
mod http_client;

mod common;
pub mod ha;

use common::run_ok;
pub use common::{eventually, superuser_env};

/// The first superuser's password in the settings the tests give the binary.
const FIRST_SUPERUSER_PASSWORD: &str = "first superuser secret";

#[path = "../../xtask/src/tooling/pgbouncer.rs"]
mod pgbouncer;

/// A minimal HTTP/1.1 request over a fresh connection; returns the status code and the body.
pub use http_client::request as http;

/// A project folder of its own: a link to the xtask binary beside `migrations/`, `.env`,
/// `.env.example` and whatever else a test writes, so the binary takes it as its root.
pub struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    /// A project with the workspace's migrations and `.env.example`.
    pub fn new(xtask_binary: &str) -> Project {
        let dir = tempfile::Builder::new().prefix("prestart-project-").tempdir().expect("temp dir");
        let link = dir.path().join("xtask");
        if std::fs::hard_link(xtask_binary, &link).is_err() {
            std::fs::copy(xtask_binary, &link).expect("copy xtask");
        }
        let project = Project { dir };
        std::fs::create_dir_all(project.path().join("migrations")).expect("migrations dir");
        for entry in std::fs::read_dir(workspace().join("migrations")).expect("migrations").flatten() {
            std::fs::copy(entry.path(), project.path().join("migrations").join(entry.file_name()))
                .expect("copy migration");
        }
        std::fs::copy(workspace().join(".env.example"), project.path().join(".env.example"))
            .expect("copy .env.example");
        project
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file relative to the project, creating folders; returns its path.
    pub fn write(&self, relative: &str, content: &str) -> PathBuf {
        let path = self.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create folder");
        }
        std::fs::write(&path, content).expect("write file");
        path
    }

    /// A `.env` with every key of `.env.example`, pointing at `cluster`, readable by its owner only.
    pub fn write_env(&self, cluster: &Cluster, overrides: &[(&str, &str)]) -> PathBuf {
        let mut vars: Vec<(String, String)> = vec![
            ("ENVIRONMENT".into(), "local".into()),
            ("POSTGRES_SSLROOTCERT".into(), String::new()),
            ("BACKEND_BIND".into(), "127.0.0.1:8000".into()),
        ];
        vars.extend(cluster.env("app"));
        for (key, value) in overrides {
            vars.retain(|(k, _)| k != key);
            vars.push(((*key).to_owned(), (*value).to_owned()));
        }
        let text: String = vars.iter().map(|(k, v)| format!("{k}='{v}'\n")).collect();
        let path = self.write(".env", &text);
        set_mode(&path, 0o600);
        path
    }

    /// The project's binary with its own `.env` (unless `--env-file` is given) and nothing else.
    pub fn run(&self, args: &[&str], env: &[(String, String)]) -> Run {
        let mut run = Run::program(self.path().join("xtask"), args, env);
        run.judge_as_on_a_host(args);
        run
    }
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// sqlx's own migration lock on a database of `cluster`, taken with `Migrate::lock` (not a copy of
/// its key formula, so a change of key upstream fails the tests), held until dropped.
pub struct MigrationLock {
    runtime: tokio::runtime::Runtime,
    conn: Option<sqlx::PgConnection>,
}

impl MigrationLock {
    pub fn take(cluster: &Cluster, database: &str, application_name: &str) -> MigrationLock {
        use sqlx::Connection;
        use sqlx::migrate::Migrate;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let conn = runtime.block_on(async {
            let options = sqlx::postgres::PgConnectOptions::new_without_pgpass()
                .host("127.0.0.1")
                .port(cluster.port)
                .username(SUPERUSER)
                .password(PASSWORD)
                .database(database)
                .ssl_mode(sqlx::postgres::PgSslMode::Disable)
                .application_name(application_name);
            let mut conn = sqlx::PgConnection::connect_with(&options).await.expect("connect");
            conn.lock().await.expect("take the migration lock");
            conn
        });
        MigrationLock { runtime, conn: Some(conn) }
    }
}

impl Drop for MigrationLock {
    fn drop(&mut self) {
        use sqlx::Connection;
        if let Some(conn) = self.conn.take() {
            let _ = self.runtime.block_on(conn.close());
        }
    }
}

/// A psql session fed `sql` and kept open: it holds whatever the SQL takes (a lock, a snapshot)
/// until dropped.
pub struct Session(Child);

impl Session {
    pub fn open(cluster: &Cluster, sql: &str) -> Session {
        use std::io::Write;
        let mut child = cluster.psql_command("app").stdin(Stdio::piped()).stdout(Stdio::null()).spawn().expect("psql");
        let stdin = child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{sql}").expect("send");
        stdin.flush().expect("flush");
        Session(child)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}
