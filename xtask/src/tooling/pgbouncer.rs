//! Debian's PgBouncer with its default settings, as the tests and the bench run it in front of a
//! local cluster: SCRAM passed through from the server's own secret, no
//! `ignore_startup_parameters`. Standard library only: `testkit` includes this file too.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Another name for the database `app`, as pooler configurations often give one.
pub const ALIAS: &str = "app_via_alias";

/// `pgbouncer` on PATH, or in /usr/sbin, which a non-root PATH may lack.
pub fn program() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("pgbouncer"))
        .find(|candidate| candidate.is_file())
}

/// How PgBouncer pools: `session` or `transaction`, and how many server connections a pool has.
#[derive(Debug, Clone, Copy)]
pub struct Pool<'a> {
    pub mode: &'a str,
    pub size: u32,
    /// Over Unix sockets only, both ways: PgBouncer's socket in the first folder, the server's in
    /// the second (with the same port number, as a pooler beside the server often is).
    pub sockets: Option<(&'a Path, &'a Path)>,
    /// A `*` entry that passes every other database through; without it only `app` and the alias
    /// are known, and PgBouncer refuses any other name itself.
    pub fallback: bool,
}

/// Writes `pgbouncer.ini` and `userlist.txt` into `dir` and returns the command that runs it in
/// the foreground. `secret` is the role's SCRAM verifier from `pg_authid`; `run_as` the OS user
/// when we are root, which PgBouncer refuses to be.
pub fn prepare(
    dir: &Path,
    listen_port: u16,
    server_port: u16,
    pool: Pool<'_>,
    user: &str,
    secret: &str,
    run_as: Option<&str>,
) -> std::io::Result<Command> {
    let program = program().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "pgbouncer not found: apt-get install pgbouncer")
    })?;
    std::fs::write(dir.join("userlist.txt"), format!("\"{user}\" \"{secret}\"\n"))?;
    let (server_host, listen_addr, socket_dir) = match pool.sockets {
        Some((ours, servers)) => (servers.display().to_string(), String::new(), ours.display().to_string()),
        None => ("127.0.0.1".to_owned(), "127.0.0.1".to_owned(), String::new()),
    };
    let ini = format!(
        "[databases]\n{ALIAS} = host={server_host} port={server_port} dbname=app\n{entries}\n\
         [pgbouncer]\nlisten_addr = {listen_addr}\nlisten_port = {listen_port}\nunix_socket_dir = {socket_dir}\n\
         auth_type = scram-sha-256\nauth_file = {dir}/userlist.txt\npool_mode = {mode}\nmax_client_conn = 200\n\
         default_pool_size = {size}\nlogfile = {dir}/pgbouncer.log\n",
        entries = match pool.fallback {
            true => format!("* = host={server_host} port={server_port}\n"),
            false => format!("app = host={server_host} port={server_port}\n"),
        },
        dir = dir.display(),
        mode = pool.mode,
        size = pool.size
    );
    std::fs::write(dir.join("pgbouncer.ini"), ini)?;
    let mut command = match run_as {
        Some(user) => {
            let mut command = Command::new("runuser");
            command.args(["-u", user, "--"]).arg(&program);
            command
        }
        None => Command::new(&program),
    };
    command.arg(dir.join("pgbouncer.ini"));
    Ok(command)
}
