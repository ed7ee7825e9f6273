//! `cargo xtask dev-db start|stop|status|destroy`: a PostgreSQL cluster for this workspace under
//! `target/dev-db/`, made from the server binaries installed on this machine, matching `.env`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use backend::config::DatabaseSettings;
use xshell::{Shell, cmd};

use crate::settings::context::SettingsArgs;

use crate::base::exit::{Failure, fail};
use crate::base::ui;
use crate::base::workspace::root;
use crate::settings::place::fallback_dir;

mod password;
mod server;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    #[command(flatten)]
    settings: SettingsArgs,
}

#[derive(clap::Subcommand, Debug, Clone, Copy)]
enum Action {
    /// Create the cluster if needed and start it on POSTGRES_PORT, with the user, password and
    /// database of `.env`; it listens on this machine only unless `--serve-compose`
    Start {
        /// Serve the compose containers too: listen on Docker's bridge address and let the compose
        /// network (COMPOSE_SUBNET) in through pg_hba.conf, with no other address
        #[arg(long)]
        serve_compose: bool,
    },
    /// Stop the cluster
    Stop,
    /// Say whether the cluster exists and runs; exit 3 when it does not run (as `pg_ctl status`)
    Status,
    /// Stop the cluster and delete its data
    Destroy,
}

/// The exit code of `dev-db status` for a cluster that does not run, as `pg_ctl status` has it.
const NOT_RUNNING: u8 = 3;

pub fn run(args: Args) -> anyhow::Result<()> {
    let loaded = args.settings.load()?;
    let sh = Shell::new()?;
    let cluster = DevCluster::new(&sh)?;
    match args.action {
        Action::Start { serve_compose } => {
            let audience = if serve_compose {
                let env = args.settings.load_env()?;
                let subnet = crate::settings::docker_host::compose_subnet(&env)
                    .map_err(|e| fail(Failure::Config, anyhow!(e)))?;
                Audience::compose(subnet)?
            } else {
                Audience::ThisMachine
            };
            cluster.start(&loaded.settings.database, Some(&audience))
        }
        Action::Stop => cluster.stop(),
        Action::Status => {
            println!("{}", cluster.status()?);
            if !cluster.is_running() {
                // Not a failure to report: the answer, in pg_ctl's exit code, for scripts.
                std::process::exit(NOT_RUNNING.into());
            }
            Ok(())
        }
        Action::Destroy => cluster.destroy(),
    }
}

/// Who may connect besides this machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Audience {
    ThisMachine,
    /// The compose containers, arriving at Docker's bridge address from the compose network.
    Compose {
        bridge: String,
        subnet: String,
    },
}

impl Audience {
    pub fn compose(subnet: String) -> anyhow::Result<Audience> {
        let bridge = crate::settings::docker_host::bridge_gateway().ok_or_else(|| {
            fail(
                Failure::Config,
                anyhow!(
                    "--serve-compose: no Docker engine answers, so Docker's bridge address is unknown: start Docker"
                ),
            )
        })?;
        Ok(Audience::Compose { bridge, subnet })
    }

    fn listen_addresses(&self) -> String {
        match self {
            Audience::ThisMachine => "127.0.0.1".into(),
            Audience::Compose { bridge, .. } => format!("127.0.0.1,{bridge}"),
        }
    }
}

/// The `pg_hba.conf` lines `--serve-compose` adds follow this line, up to the next blank one.
const COMPOSE_HBA_MARK: &str = "# cargo xtask dev-db start --serve-compose: the compose network only";

/// The cluster of `target/dev-db/`.
pub struct DevCluster<'a> {
    sh: &'a Shell,
    dir: PathBuf,
    bin: PathBuf,
    /// Set when we are root: PostgreSQL refuses to run as root, so it runs as this OS user.
    run_as: Option<&'static str>,
}

const SERVER_USER: &str = "postgres";

impl<'a> DevCluster<'a> {
    /// The cluster of `target/dev-db/`.
    pub fn new(sh: &'a Shell) -> anyhow::Result<Self> {
        Self::in_dir(sh, root().join("target").join("dev-db"))
    }

    /// A cluster in `dir` (the benchmarks keep theirs apart from the developer's).
    pub fn in_dir(sh: &'a Shell, dir: PathBuf) -> anyhow::Result<Self> {
        let bin = ensure_server_bindir(sh)?;
        let is_root = cmd!(sh, "id -u").quiet().read().map(|uid| uid.trim() == "0").unwrap_or(false);
        let run_as = is_root.then_some(SERVER_USER);
        let dir = match run_as {
            Some(user) => reachable_for(sh, user, dir)?,
            None => dir,
        };
        Ok(DevCluster { sh, dir, bin, run_as })
    }

    /// Starts the server without waiting until it accepts connections.
    pub fn start_in_background(&self) -> anyhow::Result<()> {
        let (data, log) = (self.data(), self.log());
        self.server_cmd("pg_ctl")
            .args(["start", "-W", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .quiet()
            .ignore_stdout()
            .run()?;
        Ok(())
    }

    /// `pg_isready` over TCP answers yes. It is a client: it runs as us, with no `runuser` in
    /// between to slow the polling down.
    pub fn is_ready(&self, port: u16) -> bool {
        let (program, port) = (self.bin.join("pg_isready"), port.to_string());
        cmd!(self.sh, "{program} -q -h 127.0.0.1 -p {port}").quiet().run().is_ok()
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// Runs a server binary, as the `postgres` OS user when we are root.
    fn server_cmd(&self, program: &str) -> xshell::Cmd<'a> {
        let program = self.bin.join(program);
        match self.run_as {
            Some(user) => cmd!(self.sh, "runuser -u {user} -- {program}"),
            None => cmd!(self.sh, "{program}"),
        }
    }

    pub fn exists(&self) -> bool {
        self.data().join("PG_VERSION").is_file()
    }

    pub fn is_running(&self) -> bool {
        let data = self.data();
        self.exists()
            && self.server_cmd("pg_ctl").args(["status", "-D"]).arg(&data).quiet().ignore_stdout().run().is_ok()
    }

    pub fn status(&self) -> anyhow::Result<String> {
        Ok(match (self.exists(), self.is_running()) {
            (false, _) => format!("no cluster at {} (cargo xtask dev-db start creates one)", self.dir.display()),
            (true, false) => format!("cluster at {} is stopped", self.dir.display()),
            (true, true) => format!("cluster at {} is running", self.dir.display()),
        })
    }

    /// Creates (once) and starts the cluster, then makes sure the database exists. `audience`
    /// says who may connect; `None` keeps what the last `dev-db start` chose. A running cluster
    /// whose settings change is restarted.
    pub fn start(&self, db: &DatabaseSettings, audience: Option<&Audience>) -> anyhow::Result<()> {
        if !self.exists() {
            self.init(db)?;
        }
        let listen = match audience {
            Some(audience) => audience.listen_addresses(),
            None => self.listen_addresses().unwrap_or_else(|| Audience::ThisMachine.listen_addresses()),
        };
        let mut changed = self.write_conf(db.port(), &listen)?;
        if let Some(audience) = audience {
            changed |= self.write_hba(audience)?;
        }
        let running = self.is_running();
        if running && !changed {
            ui::line(format!("local cluster already running on port {} (listen_addresses = '{listen}')", db.port()));
        } else {
            let verb = if running { "restart" } else { "start" };
            ui::step(format!("{verb} the local cluster on port {} (listen_addresses = '{listen}')", db.port()));
            self.launch(verb, db.port())?;
        }
        // A POSTGRES_PASSWORD changed since the cluster was made: the cluster is ours, so it
        // takes the new one.
        self.take_the_password_of(db)?;
        if let Some(Audience::Compose { subnet, .. }) = audience {
            ui::line(format!("containers of the compose network {subnet} may connect through host.docker.internal"));
        }
        // The cluster is on this machine, whatever POSTGRES_SERVER says for the containers.
        crate::base::interrupt::block_on(create_database(&db.with_host("127.0.0.1")))
    }

    fn init(&self, db: &DatabaseSettings) -> anyhow::Result<()> {
        ui::step(format!("create a local cluster in {} (user {})", self.dir.display(), db.user()));
        self.sh.create_dir(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        if let Some(user) = self.run_as {
            let dir = &self.dir;
            cmd!(self.sh, "chown -R {user} {dir}").quiet().run()?;
        }
        let server_uid = self.server_uid()?;
        // The password reaches initdb through a pipe, never a file: nothing is left behind if
        // initdb is interrupted. The pipe is the server user's, so initdb may open /dev/stdin.
        let (reader, mut writer) = std::io::pipe()?;
        if let Some(uid) = server_uid {
            std::os::unix::fs::fchown(&reader, Some(uid), None).context("cannot hand the password pipe to initdb")?;
        }
        std::io::Write::write_all(&mut writer, db.password().map(|p| p.expose()).unwrap_or_default().as_bytes())?;
        drop(writer);
        let (data, user) = (self.data(), db.user());
        let initdb = self
            .server_cmd("initdb")
            .args(["--auth=scram-sha-256", "--encoding=UTF8", "--no-instructions", "-U"])
            .arg(user)
            .arg("--pwfile=/dev/stdin")
            .arg("-D")
            .arg(&data);
        let output = std::process::Command::from(initdb).stdin(reader).output().context("cannot start initdb")?;
        if !output.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(())
    }

    /// The port and addresses, with the socket inside the cluster folder; true when they changed.
    fn write_conf(&self, port: u16, listen: &str) -> anyhow::Result<bool> {
        let conf = self.data().join("postgresql.auto.conf");
        let socket_dir = self.dir.display();
        let settings = format!(
            "# Written by cargo xtask dev-db start.\nport = {port}\nlisten_addresses = '{listen}'\nunix_socket_directories = '{socket_dir}'\n"
        );
        rewrite(&conf, &settings)
    }

    /// `listen_addresses` as the last start wrote it.
    fn listen_addresses(&self) -> Option<String> {
        let conf = std::fs::read_to_string(self.data().join("postgresql.auto.conf")).ok()?;
        conf.lines().find_map(|line| {
            line.strip_prefix("listen_addresses = '").and_then(|rest| rest.strip_suffix('\'')).map(str::to_owned)
        })
    }

    /// initdb's rules, plus the compose network's line for `Audience::Compose`; true when the file
    /// changed.
    fn write_hba(&self, audience: &Audience) -> anyhow::Result<bool> {
        let hba = self.data().join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).with_context(|| format!("cannot read {}", hba.display()))?;
        let base = match rules.split_once(COMPOSE_HBA_MARK) {
            Some((before, after)) => {
                let rest = after.split_once("\n\n").map_or("", |(_, rest)| rest);
                format!("{}{rest}", before.trim_end_matches('\n').to_owned() + "\n")
            }
            None => rules.clone(),
        };
        let wanted = match audience {
            Audience::ThisMachine => base,
            Audience::Compose { subnet, .. } => {
                format!("{base}\n{COMPOSE_HBA_MARK}\n{}\n\n", crate::settings::docker_host::hba_rule(subnet))
            }
        };
        rewrite(&hba, &wanted)
    }

    pub fn stop(&self) -> anyhow::Result<()> {
        if !self.is_running() {
            ui::line(self.status()?);
            return Ok(());
        }
        self.halt()?;
        ui::line("local cluster stopped");
        Ok(())
    }

    /// Stops a running cluster without a word (the bench stops it again and again).
    pub fn halt(&self) -> anyhow::Result<()> {
        let data = self.data();
        self.server_cmd("pg_ctl").args(["stop", "-w", "-m", "fast", "-D"]).arg(&data).quiet().ignore_stdout().run()?;
        Ok(())
    }

    pub fn destroy(&self) -> anyhow::Result<()> {
        self.stop()?;
        if self.dir.exists() {
            self.sh.remove_path(&self.dir)?;
            ui::line(format!("deleted {}", self.dir.display()));
        }
        Ok(())
    }
}

async fn create_database(db: &DatabaseSettings) -> anyhow::Result<()> {
    let maintenance = db.with_database(crate::databases::ddl::MAINTENANCE_DATABASE);
    let mut ready = backend::db::connect_once(&maintenance, "prestart-dev-db", Duration::from_secs(10))
        .await
        .map_err(|e| fail(Failure::Refused, anyhow!("{e}")))?;
    if !crate::databases::ddl::database_exists(&mut ready.conn, db.database()).await? {
        let template = crate::databases::ddl::Template::Default;
        crate::databases::ddl::create_database(&mut ready.conn, db.database(), template).await?;
        ui::line(format!("created database {}", db.database()));
    }
    Ok(())
}

/// Writes `content` to `path` unless it holds it already; true when it wrote.
fn rewrite(path: &Path, content: &str) -> anyhow::Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|current| current == content) {
        return Ok(false);
    }
    std::fs::write(path, content).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(true)
}

/// `dir` if `user` can reach it; else (a checkout under /root, say) a folder of its own under
/// /var/tmp, named after `dir`, since the server runs as `user` and must open its data folder.
fn reachable_for(sh: &Shell, user: &str, dir: PathBuf) -> anyhow::Result<PathBuf> {
    let existing = dir.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/")).to_path_buf();
    if cmd!(sh, "runuser -u {user} -- test -x {existing}").quiet().ignore_stderr().run().is_ok() {
        return Ok(dir);
    }
    let fallback = fallback_dir(&dir);
    ui::line(format!(
        "the {user} OS user cannot reach {}: keeping the cluster in {} instead",
        dir.display(),
        fallback.display()
    ));
    let server_uid: u32 =
        cmd!(sh, "id -u {user}").quiet().read()?.trim().parse().context("the uid of the server user")?;
    claim_private_dir(&fallback, server_uid)?;
    Ok(fallback)
}

/// `dir` under the world-writable /var/tmp: made here with mode 0700, or, when it exists, only
/// taken if it is a real folder that we or the server user own and nobody else may write to, so
/// another user cannot plant a cluster, a link or a password file there.
fn claim_private_dir(dir: &Path, server_uid: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let meta = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            return Ok(());
        }
        other => other.with_context(|| format!("cannot inspect {}", dir.display()))?,
    };
    let owned_by_us = meta.uid() == 0 || meta.uid() == server_uid;
    if !meta.is_dir() || !owned_by_us || meta.mode() & 0o022 != 0 {
        bail!(
            "{} exists but is not a private folder of root or the server user (uid {}, mode {:o}): someone else may \
             have made it; remove it (rm -rf {}) and run again",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777,
            dir.display()
        );
    }
    Ok(())
}

/// Where `initdb` and `pg_ctl` live. Where they are missing and we are root with apt, installs
/// them (and says so); elsewhere the error gives the install command for this platform.
pub fn ensure_server_bindir(sh: &Shell) -> anyhow::Result<PathBuf> {
    if let Some(bin) = find_server_bindir(sh) {
        return Ok(bin);
    }
    if !can_apt_install(sh) {
        bail!("PostgreSQL server binaries (initdb, pg_ctl) not found: {}", install_hint(Path::new("/etc/os-release")));
    }
    // Debian's package would create and start a `main` cluster on port 5432; we only want the
    // binaries, and that port may be the one `.env` names.
    sh.create_dir("/etc/postgresql-common")?;
    if !Path::new("/etc/postgresql-common/createcluster.conf").exists() {
        sh.write_file("/etc/postgresql-common/createcluster.conf", "create_main_cluster = false\n")?;
    }
    apt_install(sh, "postgresql", "the PostgreSQL server binaries")?;
    find_server_bindir(sh)
        .ok_or_else(|| anyhow!("apt-get installed postgresql but initdb and pg_ctl are still not found"))
}

/// PATH first, then Debian's versioned folders, newest first.
fn find_server_bindir(sh: &Shell) -> Option<PathBuf> {
    if let Ok(path) = cmd!(sh, "which pg_ctl").quiet().ignore_stderr().read() {
        let resolved = std::fs::canonicalize(path.trim()).unwrap_or_else(|_| PathBuf::from(path.trim()));
        if let Some(dir) = resolved.parent().filter(|dir| dir.join("initdb").is_file()) {
            return Some(dir.to_path_buf());
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("pg_ctl").is_file() && bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The exact install command for this platform.
/// We run as root on a system with apt: missing tools may be installed, saying so.
pub fn can_apt_install(sh: &Shell) -> bool {
    let is_root = cmd!(sh, "id -u").quiet().read().is_ok_and(|uid| uid.trim() == "0");
    is_root && cmd!(sh, "which apt-get").quiet().ignore_stdout().ignore_stderr().run().is_ok()
}

/// `apt-get install package`, announced with what it provides.
pub fn apt_install(sh: &Shell, package: &str, provides: &str) -> anyhow::Result<()> {
    ui::step(format!("install {provides}: apt-get install {package} (missing, and we run as root)"));
    let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
    cmd!(sh, "apt-get update -qq").run().context("apt-get update failed")?;
    cmd!(sh, "apt-get install -y -qq --no-install-recommends {package}")
        .run()
        .with_context(|| format!("apt-get install {package} failed"))
}

fn install_hint(os_release: &Path) -> String {
    let release = std::fs::read_to_string(os_release).unwrap_or_default();
    let like =
        |name: &str| release.lines().any(|l| (l.starts_with("ID=") || l.starts_with("ID_LIKE=")) && l.contains(name));
    if cfg!(target_os = "macos") {
        "install them with `brew install postgresql@17`".into()
    } else if like("debian") || like("ubuntu") {
        "install them with `sudo apt-get install postgresql` (as root, the README's commands do it for you)".into()
    } else if like("fedora") || like("rhel") {
        "install them with `sudo dnf install postgresql-server`".into()
    } else if like("arch") {
        "install them with `sudo pacman -S postgresql`".into()
    } else if like("alpine") {
        "install them with `apk add postgresql`".into()
    } else {
        "install the PostgreSQL server package of your system (it provides initdb and pg_ctl)".into()
    }
}
