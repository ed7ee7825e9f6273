//! The workspace's own cluster takes the password `.env` names: it is ours (made by `dev-db
//! start` under `target/dev-db/`), so a `POSTGRES_PASSWORD` changed after it was made is set on
//! it, in single-user mode (no login, so the old password is not needed), rather than ending
//! `dev` and `dev-db start` with "the password is wrong". Any other server keeps that hint.

use std::time::Duration;

use anyhow::{Context as _, bail};
use backend::config::DatabaseSettings;
use backend::db::{Failure as ConnectFailure, FatalKind};

use super::DevCluster;
use crate::base::ui;

impl DevCluster<'_> {
    /// Whether this cluster is running on `db`'s port (so a server on this machine at that port
    /// is ours).
    pub fn serves(&self, db: &DatabaseSettings) -> bool {
        self.is_running() && self.port() == Some(db.port())
    }

    /// The port the last start wrote.
    fn port(&self) -> Option<u16> {
        let conf = std::fs::read_to_string(self.data().join("postgresql.auto.conf")).ok()?;
        conf.lines().find_map(|line| line.strip_prefix("port = ")?.trim().parse().ok())
    }

    /// Sets `db`'s password on the running cluster where a login with it is refused for the
    /// password (28P01), and says so in one line. The cluster restarts for it.
    pub(super) fn take_the_password_of(&self, db: &DatabaseSettings) -> anyhow::Result<()> {
        let local = db.with_host("127.0.0.1");
        let login = crate::base::interrupt::block_on(backend::db::connect_once(
            &local,
            "prestart-dev-db",
            Duration::from_secs(5),
        ));
        let Err(ConnectFailure::Fatal(fatal)) = login else { return Ok(()) };
        if fatal.kind != FatalKind::BadPassword {
            return Ok(());
        }
        self.halt()?;
        let set = self.alter_password(db);
        // Started again whatever the change did: the cluster was running.
        self.launch("start", db.port())?;
        set?;
        ui::line(format!(
            "the local cluster's password for {} is now the one POSTGRES_PASSWORD names (it changed since the cluster \
             was made)",
            db.user()
        ));
        Ok(())
    }

    /// `ALTER ROLE ... PASSWORD` in single-user mode, the statement through a pipe: never on a
    /// command line or in a file.
    fn alter_password(&self, db: &DatabaseSettings) -> anyhow::Result<()> {
        let password = db.password().map(|p| p.expose().to_owned()).unwrap_or_default();
        let statement = format!(
            "ALTER ROLE \"{}\" PASSWORD E'{}';\n",
            db.user().replace('"', "\"\""),
            password.replace('\\', "\\\\").replace('\'', "\\'").replace('\n', "\\n").replace('\r', "\\r")
        );
        let (reader, mut writer) = std::io::pipe()?;
        if let Some(uid) = self.server_uid()? {
            std::os::unix::fs::fchown(&reader, Some(uid), None).context("cannot hand the statement's pipe over")?;
        }
        std::io::Write::write_all(&mut writer, statement.as_bytes())?;
        drop(writer);
        let data = self.data();
        let single = self.server_cmd("postgres").args(["--single", "-D"]).arg(&data).args([
            "-c",
            "log_statement=none",
            "postgres",
        ]);
        let output = std::process::Command::from(single)
            .stdin(reader)
            .stdout(std::process::Stdio::null())
            .output()
            .context("cannot start the server in single-user mode")?;
        if !output.status.success() {
            // The server's own lines, without the one that would quote the statement back.
            let said = String::from_utf8_lossy(&output.stderr);
            let lines: Vec<&str> = said.lines().filter(|l| !l.trim_start().starts_with("STATEMENT")).collect();
            bail!("setting the local cluster's password failed: {}", lines.join("; ").trim());
        }
        Ok(())
    }
}
