//! `cargo xtask schema dump [--check]`: the schema the migrations produce, built in a throwaway
//! database and written to `schema.sql` for review in pull requests.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use backend::config::DatabaseSettings;
use backend::migrations::{MigrationSet, MigrationSettings};
use xshell::{Shell, cmd};

use super::DumpArgs;
use crate::base::exit::{Failure, fail};
use crate::base::interrupt::ActiveBackend;
use crate::base::ui;
use crate::base::workspace::{Tool, display_path, only_tool_environment, root};
use crate::databases::throwaway::{in_throwaway, throwaway_name};
use crate::machinery::migrate::MigrateOptions;
use crate::machinery::scratch::Place;
use crate::machinery::scratch::migrated_session;

pub fn run(args: DumpArgs) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let root = root();
    let loaded = args.wait.load(&args.settings.or_example(&root))?;
    let (set, settings, dir) = args.source.load(&root)?;
    let output = args.output.clone().unwrap_or_else(|| root.join("schema.sql"));
    let pg_dump = crate::databases::dev_db::ensure_server_bindir(&sh)?.join("pg_dump");
    let throwaway = throwaway_name("prestart_schema");
    let place = Place::find(&sh, &loaded, &throwaway, &args.build, &set.files, "schema dump")?;
    ui::step(format!("build the schema of {} in the throwaway database {throwaway}, in {place}", display_path(&dir)));
    let plan = MigrateOptions::defaults().plan(&set, &settings, &dir, place.target.wait_timeout);
    let dumped = crate::base::interrupt::block_on(async {
        let active = ActiveBackend::default();
        let dumped = in_throwaway(&place.server, &throwaway, &active, async {
            let session = migrated_session(&place.target, &active, &plan).await?;
            let server_major = session.ready.conn.server_version_num().map(|v| v / 10_000);
            drop(session);
            run_pg_dump(&sh, &pg_dump, &place.target.settings.database, &settings)
                .await
                .map_err(|e| with_version_fix(e, &pg_dump, server_major))
        })
        .await;
        place.finish().await;
        dumped
    })?;
    let written = render_dump(&dumped, &set);
    if !args.check {
        std::fs::write(&output, &written).with_context(|| format!("cannot write {}", output.display()))?;
        ui::line(format!("wrote {}: commit it with the migrations", display_path(&output)));
        return Ok(());
    }
    let committed = std::fs::read_to_string(&output).unwrap_or_default();
    if committed == written {
        ui::line(format!("{} matches the schema the migrations produce", display_path(&output)));
        return Ok(());
    }
    Err(fail(
        Failure::ChecksFailed,
        anyhow!(
            "{} does not match the schema the migrations produce{}\n  fix: run `cargo xtask schema dump` and commit {}",
            display_path(&output),
            first_difference(&committed, &written),
            display_path(&output)
        ),
    ))
}

/// `pg_dump --schema-only` of `db`, without owners, privileges, tablespaces and sqlx's table.
async fn run_pg_dump(
    sh: &Shell,
    pg_dump: &std::path::Path,
    db: &DatabaseSettings,
    settings: &MigrationSettings,
) -> anyhow::Result<String> {
    let host = db.socket().map_or_else(|| db.host().to_owned(), |socket| socket.display().to_string());
    let (port, user, name, table) = (db.port().to_string(), db.user(), db.database(), &settings.table_name);
    let environment_table = crate::databases::environment::table_for(table);
    let command = cmd!(
        sh,
        "{pg_dump} --schema-only --no-owner --no-privileges --no-tablespaces --exclude-table={table} --exclude-table={environment_table} -h {host} -p {port} -U {user} -d {name}"
    );
    // Nothing of our environment but PATH, HOME and the language: no settings variable, no libpq
    // variable that would add to the connection.
    let command = only_tool_environment(command, Tool::Postgres)
        .env("PGSSLMODE", db.ssl_mode_name())
        .env("PGCONNECT_TIMEOUT", "10")
        .quiet()
        .ignore_status();
    // Without a password, libpq would look in ~/.pgpass: like every connection of ours, it must not.
    let command = match db.password() {
        Some(password) => command.env("PGPASSWORD", password.expose()),
        None => command.env("PGPASSFILE", "/dev/null"),
    };
    // A certificate file for verify-ca and verify-full (an inline PEM would need a file).
    let command = match db.ssl_root_cert().filter(|cert| std::path::Path::new(cert).is_file()) {
        Some(cert) => command.env("PGSSLROOTCERT", cert),
        None => command,
    };
    // Awaited, not blocking: a signal stops it (killed with the future) like the rest of the run.
    let mut command = tokio::process::Command::from(std::process::Command::from(command));
    command.kill_on_drop(true);
    let output = tokio::time::timeout(PG_DUMP_TIMEOUT, command.output())
        .await
        .map_err(|_| anyhow!("pg_dump gave no result within {} s", PG_DUMP_TIMEOUT.as_secs()))?
        .context("cannot run pg_dump")?;
    if !output.status.success() {
        return Err(anyhow!("pg_dump failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The longest pg_dump may take on a throwaway database that holds no rows.
const PG_DUMP_TIMEOUT: Duration = Duration::from_secs(120);

/// pg_dump's output without what varies by machine or run (versions, random keys, the client
/// encoding), with a header and the migrations that make it.
fn render_dump(dumped: &str, set: &MigrationSet) -> String {
    let varies = ["-- Dumped from database version", "-- Dumped by pg_dump version", "\\restrict", "\\unrestrict"];
    let mut out = String::from(
        "-- The schema that the migrations produce, written by `cargo xtask schema dump` (pg_dump --schema-only,\n\
         -- without owners or privileges). Do not edit it: change the migrations, run `cargo xtask schema dump`,\n\
         -- and commit this file with them; CI runs `cargo xtask schema dump --check`.\n",
    );
    let mut blank = false;
    for line in dumped.lines() {
        if varies.iter().any(|v| line.starts_with(v)) || line.starts_with("SET client_encoding") {
            continue;
        }
        // One blank line between statements is enough.
        let is_blank = line.trim().is_empty();
        if !(is_blank && blank) {
            out.push_str(line);
            out.push('\n');
        }
        blank = is_blank;
    }
    out.push_str("\n-- Migrations:\n");
    for file in &set.files {
        out.push_str(&format!("--   {} {}\n", file.migration.version, file.migration.description));
    }
    out
}

/// Where two texts part, as a few lines of each.
fn first_difference(committed: &str, written: &str) -> String {
    if committed.is_empty() {
        return " (it is missing or empty)".to_owned();
    }
    let (old, new): (Vec<&str>, Vec<&str>) = (committed.lines().collect(), written.lines().collect());
    let at = old.iter().zip(&new).position(|(a, b)| a != b).unwrap_or(old.len().min(new.len()));
    let show = |lines: &[&str]| lines.iter().skip(at).take(3).map(|l| format!("\n      {l}")).collect::<String>();
    format!("; first difference at line {}:\n    committed:{}\n    migrations give:{}", at + 1, show(&old), show(&new))
}

/// A failed pg_dump older than the server: its fix, told by the two versions (not by pg_dump's
/// words, which follow the language of the environment).
fn with_version_fix(error: anyhow::Error, pg_dump: &std::path::Path, server_major: Option<u32>) -> anyhow::Error {
    let ours = pg_dump.parent().and_then(crate::databases::throwaway::major_of);
    match (ours, server_major) {
        (Some(ours), Some(server)) if ours < server => error.context(format!(
            "pg_dump {ours} is older than the server's PostgreSQL {server}, and pg_dump must be at least the server's \
             major version: install PostgreSQL {server}'s client"
        )),
        _ => error,
    }
}
