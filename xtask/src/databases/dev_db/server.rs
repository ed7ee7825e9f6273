//! Starting the workspace's cluster, and the OS user it runs as.

use anyhow::bail;
use xshell::cmd;

use super::DevCluster;

impl DevCluster<'_> {
    /// `pg_ctl start` or `restart`, waiting until the server accepts connections.
    pub(super) fn launch(&self, verb: &str, port: u16) -> anyhow::Result<()> {
        let (data, log) = (self.data(), self.log());
        let started = self
            .server_cmd("pg_ctl")
            .args([verb, "-w", "-t", "60", "-m", "fast", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .quiet()
            .ignore_stdout()
            .run();
        if started.is_err() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
            bail!(
                "the local cluster did not start (is port {port} taken by another server?); its log says:\n  {}",
                tail.join("\n  ")
            );
        }
        Ok(())
    }

    /// The server's OS user's id, when it runs as another user than us.
    pub(super) fn server_uid(&self) -> anyhow::Result<Option<u32>> {
        let Some(user) = self.run_as else { return Ok(None) };
        Ok(Some(cmd!(self.sh, "id -u {user}").quiet().read()?.trim().parse::<u32>()?))
    }
}
