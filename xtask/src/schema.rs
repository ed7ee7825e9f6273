//! `cargo xtask schema dump [--check]` and `schema drift`: the schema the migrations produce,
//! written to `schema.sql` for review in pull requests, and compared with a live database to
//! name what someone changed by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, anyhow};
use backend::config::DatabaseSettings;
use backend::schema::{MigrationSet, MigrationSettings, State, Status, applied_rows};
use serde::Serialize;
use sqlx::migrate::Migrate as _;
use sqlx::postgres::PgConnection;
use xshell::{Shell, cmd};

use crate::context::{Loaded, SettingsArgs, SourceArgs, WaitArgs, display_path, root, runtime};
use crate::database::{in_throwaway, migrated_session, scratch_server, throwaway_name, throwaway_target};
use crate::exit::{Failure, fail};
use crate::interrupt::ActiveBackend;
use crate::migrate::MigrateOptions;
use crate::session::{self, Use};
use crate::ui;
use backend::db::bounded;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Write schema.sql: the schema the migrations produce, built in a throwaway database and
    /// dumped without owners, privileges or anything that varies by machine
    Dump(DumpArgs),
    /// Compare the live database with the schema its applied migrations produce, and name each
    /// difference; exit 0 when there is none, 9 when there is drift
    Drift(DriftArgs),
}

#[derive(clap::Args, Debug)]
struct DumpArgs {
    /// Change nothing; fail when schema.sql is missing or differs (the CI gate)
    #[arg(long)]
    check: bool,
    /// Where to write (default: schema.sql of the workspace)
    #[arg(long, value_name = "PATH")]
    output: Option<PathBuf>,
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    source: SourceArgs,
}

#[derive(clap::Args, Debug)]
struct DriftArgs {
    /// Print one JSON document instead of lines
    #[arg(long)]
    json: bool,
    /// Build the expected schema in this empty database on the same server (emptied again after)
    /// instead of a throwaway one: for a role that may not create databases
    #[arg(long, value_name = "NAME")]
    shadow_database: Option<String>,
    #[command(flatten)]
    db: crate::context::DbArgs,
    #[command(flatten)]
    source: SourceArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Action::Dump(args) => dump(args),
        Action::Drift(args) => drift(args),
    }
}

fn dump(args: DumpArgs) -> anyhow::Result<()> {
    let sh = Shell::new()?;
    let root = root();
    let loaded = args.wait.load(&args.settings.or_example(&root))?;
    let (set, settings, dir) = args.source.load(&root)?;
    let output = args.output.clone().unwrap_or_else(|| root.join("schema.sql"));
    let pg_dump = crate::dev_db::ensure_server_bindir(&sh)?.join("pg_dump");
    let server = scratch_server(&sh, &loaded)?;
    let throwaway = throwaway_name("prestart_schema");
    let target = throwaway_target(&loaded, &throwaway);
    ui::step(format!("build the schema of {} in the throwaway database {throwaway}", display_path(&dir)));
    let plan = MigrateOptions::defaults().plan(&set, &settings, &dir, target.wait_timeout);
    let dumped = runtime()?.block_on(async {
        let active = ActiveBackend::default();
        in_throwaway(&server, &throwaway, &active, async {
            drop(migrated_session(&target, &active, &plan).await?);
            run_pg_dump(&sh, &pg_dump, &target.settings.database, &settings).await
        })
        .await
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
    let password = db.password().map(|p| p.expose().to_owned()).unwrap_or_default();
    let command = cmd!(
        sh,
        "{pg_dump} --schema-only --no-owner --no-privileges --no-tablespaces --exclude-table={table} -h {host} -p {port} -U {user} -d {name}"
    )
    .env("PGPASSWORD", password)
    .env("PGSSLMODE", db.ssl_mode_name())
    .env("PGCONNECT_TIMEOUT", "10")
    .quiet()
    .ignore_status();
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
        let stderr = String::from_utf8_lossy(&output.stderr);
        let fix = if stderr.contains("version mismatch") {
            "\n  fix: pg_dump must be at least the server's major version: install that PostgreSQL's client"
        } else {
            ""
        };
        return Err(anyhow!("pg_dump failed: {}{fix}", stderr.trim()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The longest pg_dump may take on a throwaway database that holds no rows.
const PG_DUMP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

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

fn drift(args: DriftArgs) -> anyhow::Result<()> {
    let loaded = args.db.load()?;
    let (set, settings, _) = args.source.load(&loaded.root)?;
    let started = Instant::now();
    // Write: over the direct settings where a pooler is in the way, which the throwaway needs.
    let found = session::run(&loaded, Use::Write, async |session| {
        let server = session.settings().clone();
        find_drift(&server, &mut session.ready.conn, &set, &settings, args.shadow_database.as_deref()).await
    })?;
    let differences = match found {
        Ok(differences) => differences,
        Err(cannot) => return Err(fail(Failure::Refused, anyhow!("cannot look for drift: {cannot}"))),
    };
    if args.json {
        let document = serde_json::json!({ "drift": !differences.is_empty(), "differences": differences });
        ui::print(format!("{}\n", serde_json::to_string_pretty(&document)?));
    } else {
        for difference in &differences {
            ui::line(difference.to_string());
        }
    }
    if differences.is_empty() {
        ui::line(format!(
            "no drift: the database has the schema its migrations produce ({})",
            ui::duration(started.elapsed())
        ));
        return Ok(());
    }
    Err(fail(
        Failure::Drift,
        anyhow!(
            "the database differs from the schema its migrations produce in {} {}: someone changed it by hand, or a \
             migration was edited after it ran\n  fix: undo the changes by hand, or put them in a new migration \
             (cargo xtask new-migration NAME) that makes them on every database",
            differences.len(),
            if differences.len() == 1 { "place" } else { "places" }
        ),
    ))
}

/// One difference between the schema the migrations produce and the live one.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub kind: String,
    pub name: String,
    pub change: Change,
    /// What the migrations give.
    pub expected: Option<String>,
    /// What the database has.
    pub found: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// The migrations make it; the database lacks it.
    Missing,
    /// The database has it; no migration makes it.
    Unexpected,
    /// Both have it, defined differently.
    Differs,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = |text: &Option<String>| {
            let text = text.as_deref().unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ");
            if text.chars().count() > 100 { format!("{}...", text.chars().take(100).collect::<String>()) } else { text }
        };
        match self.change {
            Change::Missing => {
                write!(f, "{} {}: missing (a migration makes it; dropped by hand?)", self.kind, self.name)
            }
            Change::Unexpected => {
                write!(f, "{} {}: not made by any migration (made by hand?)", self.kind, self.name)
            }
            Change::Differs => write!(
                f,
                "{} {}: differs; the migrations give `{}`, the database has `{}`",
                self.kind,
                self.name,
                short(&self.expected),
                short(&self.found)
            ),
        }
    }
}

/// The live database's schema against the one its applied migrations produce, built in a
/// throwaway database on the same server (same version, same extensions available). `Err`
/// says why it cannot be told (no right to create a database, migrations this code lacks).
pub async fn find_drift(
    server: &DatabaseSettings,
    live: &mut PgConnection,
    set: &MigrationSet,
    settings: &MigrationSettings,
    shadow: Option<&str>,
) -> anyhow::Result<Result<Vec<Difference>, String>> {
    let may_create: bool = shadow.is_some() || {
        let role =
            sqlx::query_scalar("SELECT rolcreatedb OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user");
        bounded(role.fetch_one(&mut *live)).await?
    };
    if !may_create {
        return Ok(Err(format!(
            "the role {} may not create databases, and the expected schema is built in a throwaway one (ALTER ROLE \"{}\" \
             CREATEDB; or give it an empty database of its own: cargo xtask schema drift --shadow-database NAME)",
            server.user(),
            server.user()
        )));
    }
    let applied = match bounded(applied_rows(live, &settings.table_name)).await {
        Ok(applied) => applied,
        Err(error) if error.as_database_error().and_then(|e| e.code()).as_deref() == Some("42501") => {
            return Ok(Err(format!(
                "the role {} may not read {} (GRANT SELECT ON {} TO \"{}\")",
                server.user(),
                settings.table_name,
                settings.table_name,
                server.user()
            )));
        }
        Err(error) => return Err(error.into()),
    };
    let status = Status::compare(set, &applied);
    let unknown: Vec<String> = status.with_state(State::Unknown).map(|e| e.version.to_string()).collect();
    if !unknown.is_empty() {
        return Ok(Err(format!(
            "the database has applied migrations this code does not have ({}): compare with the code that applied them",
            unknown.join(", ")
        )));
    }
    let applied_files: Vec<_> = set
        .files
        .iter()
        .filter(|f| status.entries.iter().any(|e| e.version == f.migration.version && e.state != State::Pending))
        .collect();
    let found = snapshot(live, &settings.table_name).await?;
    let build = async |conn: &mut PgConnection| -> anyhow::Result<Snapshot> {
        for schema in &settings.create_schemas {
            conn.create_schema_if_not_exists(schema).await?;
        }
        conn.ensure_migrations_table(&settings.table_name).await?;
        for file in &applied_files {
            conn.apply(&settings.table_name, &file.migration).await.with_context(|| {
                format!("{} fails on an empty database, so the expected schema cannot be built", file.name())
            })?;
        }
        snapshot(conn, &settings.table_name).await
    };
    let expected = match shadow {
        Some(shadow) => match in_shadow(server, live, shadow, build).await? {
            Ok(expected) => expected,
            Err(cannot) => return Ok(Err(cannot)),
        },
        None => {
            let throwaway = throwaway_name("prestart_drift");
            let maintenance = server.with_database("postgres");
            let active = ActiveBackend::default();
            in_throwaway(&maintenance, &throwaway, &active, async {
                let mut ready = connect_to(&server.with_database(&throwaway)).await?;
                active.set(Some(&ready.process));
                let expected = build(&mut ready.conn).await?;
                active.set(None);
                Ok(expected)
            })
            .await?
        }
    };
    Ok(Ok(compare(&expected, &found)))
}

async fn connect_to(db: &DatabaseSettings) -> anyhow::Result<backend::db::Ready> {
    backend::db::connect_once(db, "prestart-drift", backend::db::ATTEMPT_TIMEOUT)
        .await
        .map_err(|e| anyhow!("cannot connect to {db}: {e}"))
}

/// Builds the expected schema in `shadow`, a database the user gave prestart for this (for a
/// role that may not create databases): it must be empty, and is emptied again after, of what
/// the build made and nothing else.
async fn in_shadow(
    server: &DatabaseSettings,
    live: &mut PgConnection,
    shadow: &str,
    build: impl AsyncFnOnce(&mut PgConnection) -> anyhow::Result<Snapshot>,
) -> anyhow::Result<Result<Snapshot, String>> {
    let live_name: String = bounded(sqlx::query_scalar("SELECT current_database()").fetch_one(&mut *live)).await?;
    if live_name == shadow {
        return Ok(Err(format!(
            "--shadow-database {shadow} is the database itself: give an empty database of its own"
        )));
    }
    let mut ready =
        match backend::db::connect_once(&server.with_database(shadow), "prestart-drift", backend::db::ATTEMPT_TIMEOUT)
            .await
        {
            Ok(ready) => ready,
            Err(e) => return Ok(Err(format!("cannot use the shadow database {shadow}: {e}"))),
        };
    let held: i64 = bounded(sqlx::query_scalar(SHADOW_OBJECTS).fetch_one(&mut ready.conn)).await?;
    if held > 0 {
        return Ok(Err(format!(
            "the shadow database {shadow} is not empty ({held} schemas, extensions, tables, functions or types): drift \
             empties it after each use, so it only takes an empty database of its own (CREATE DATABASE {shadow}_shadow)"
        )));
    }
    let built = build(&mut ready.conn).await;
    let emptied = bounded(sqlx::raw_sql(EMPTY_SHADOW).execute(&mut ready.conn)).await;
    let expected = built?;
    emptied.with_context(|| format!("could not empty the shadow database {shadow} after use"))?;
    Ok(Ok(expected))
}

/// What a shadow database holds beyond an empty one's.
const SHADOW_OBJECTS: &str = r#"
SELECT (SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname NOT IN ('public', 'pg_catalog', 'information_schema', 'pg_toast')
          AND nspname NOT LIKE 'pg\_temp\_%' AND nspname NOT LIKE 'pg\_toast\_temp\_%')
     + (SELECT count(*) FROM pg_catalog.pg_extension WHERE extname <> 'plpgsql')
     + (SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public')
     + (SELECT count(*) FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public')
     + (SELECT count(*) FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'c', 'r', 'm') AND t.typrelid = 0)
"#;

/// Drops what a build made in a shadow database that was empty before it.
const EMPTY_SHADOW: &str = r#"
DO $prestart$ DECLARE r record; BEGIN
    FOR r IN SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname NOT IN ('public', 'pg_catalog', 'information_schema', 'pg_toast')
               AND nspname NOT LIKE 'pg\_temp\_%' AND nspname NOT LIKE 'pg\_toast\_temp\_%' LOOP
        EXECUTE pg_catalog.format('DROP SCHEMA %I CASCADE', r.nspname);
    END LOOP;
    FOR r IN SELECT extname FROM pg_catalog.pg_extension WHERE extname <> 'plpgsql' LOOP
        EXECUTE pg_catalog.format('DROP EXTENSION %I CASCADE', r.extname);
    END LOOP;
    FOR r IN SELECT c.relname, c.relkind FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
             -- Sequences last: an identity column's goes with its table, and cannot go first.
             ORDER BY c.relkind = 'S' LOOP
        EXECUTE pg_catalog.format('DROP %s IF EXISTS public.%I CASCADE', CASE r.relkind WHEN 'v' THEN 'VIEW'
            WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, r.relname);
    END LOOP;
    FOR r IN SELECT p.oid::pg_catalog.regprocedure AS signature, p.prokind FROM pg_catalog.pg_proc p
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' LOOP
        EXECUTE pg_catalog.format('DROP %s IF EXISTS %s CASCADE', CASE r.prokind WHEN 'p' THEN 'PROCEDURE'
            WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END, r.signature);
    END LOOP;
    FOR r IN SELECT t.typname, t.typtype FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
             WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'c', 'r', 'm') AND t.typrelid = 0 LOOP
        EXECUTE pg_catalog.format('DROP %s IF EXISTS public.%I CASCADE', CASE r.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
            r.typname);
    END LOOP;
END $prestart$;
"#;

/// Every object of the schema as (kind, name) → definition, outside the system schemas, the
/// objects of extensions and sqlx's own table.
type Snapshot = BTreeMap<(String, String), String>;

const SNAPSHOT: &str = r#"
WITH ns AS (
    SELECT oid, nspname FROM pg_catalog.pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
      AND nspname NOT LIKE 'pg\_temp\_%' AND nspname NOT LIKE 'pg\_toast\_temp\_%'
), members AS (
    SELECT classid, objid FROM pg_catalog.pg_depend WHERE deptype = 'e'
), rel AS (
    SELECT c.oid, c.relkind, pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) AS qname
    FROM pg_catalog.pg_class c JOIN ns n ON n.oid = c.relnamespace
    WHERE (c.oid IS DISTINCT FROM pg_catalog.to_regclass($1))
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indexrelid = c.oid AND i.indrelid = pg_catalog.to_regclass($1))
      AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND m.objid = c.oid)
)
SELECT 'extension', extname::text, '' FROM pg_catalog.pg_extension WHERE extname <> 'plpgsql'
UNION ALL
SELECT 'schema', pg_catalog.quote_ident(nspname), '' FROM ns
UNION ALL
SELECT 'table', qname, CASE relkind WHEN 'p' THEN 'partitioned' ELSE '' END FROM rel WHERE relkind IN ('r', 'p')
UNION ALL
SELECT 'column', r.qname || '.' || pg_catalog.quote_ident(a.attname),
       pg_catalog.format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE ' NULL' END
       || coalesce(' DEFAULT ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid), '')
       || CASE a.attidentity WHEN 'a' THEN ' GENERATED ALWAYS AS IDENTITY' WHEN 'd' THEN ' GENERATED BY DEFAULT AS IDENTITY' ELSE '' END
FROM rel r JOIN pg_catalog.pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE r.relkind IN ('r', 'p')
UNION ALL
SELECT 'index', qname, pg_catalog.pg_get_indexdef(oid) FROM rel WHERE relkind IN ('i', 'I')
UNION ALL
SELECT 'constraint', r.qname || '.' || pg_catalog.quote_ident(con.conname), pg_catalog.pg_get_constraintdef(con.oid)
FROM pg_catalog.pg_constraint con JOIN rel r ON r.oid = con.conrelid
UNION ALL
SELECT 'sequence', r.qname,
       pg_catalog.format('%s start %s increment %s min %s max %s%s', pg_catalog.format_type(s.seqtypid, NULL),
                         s.seqstart, s.seqincrement, s.seqmin, s.seqmax, CASE WHEN s.seqcycle THEN ' cycle' ELSE '' END)
FROM rel r JOIN pg_catalog.pg_sequence s ON s.seqrelid = r.oid
UNION ALL
SELECT CASE relkind WHEN 'v' THEN 'view' ELSE 'materialized view' END, qname, pg_catalog.pg_get_viewdef(oid)
FROM rel WHERE relkind IN ('v', 'm')
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END,
       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(p.proname)
       || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')',
       pg_catalog.pg_get_functiondef(p.oid)
FROM pg_catalog.pg_proc p JOIN ns n ON n.oid = p.pronamespace
WHERE p.prokind IN ('f', 'p')
  AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND m.objid = p.oid)
UNION ALL
SELECT 'trigger', r.qname || '.' || pg_catalog.quote_ident(t.tgname), pg_catalog.pg_get_triggerdef(t.oid)
FROM pg_catalog.pg_trigger t JOIN rel r ON r.oid = t.tgrelid WHERE NOT t.tgisinternal
UNION ALL
SELECT 'enum', pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(t.typname),
       pg_catalog.string_agg(pg_catalog.quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
FROM pg_catalog.pg_type t JOIN ns n ON n.oid = t.typnamespace JOIN pg_catalog.pg_enum e ON e.enumtypid = t.oid
WHERE NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND m.objid = t.oid)
GROUP BY n.nspname, t.typname
"#;

/// Read with `search_path` set to the catalog alone, so every name comes schema-qualified and
/// both databases word their definitions alike whatever their search paths. The version of an
/// extension is left out: one created before an upgrade differs from a fresh one by right.
async fn snapshot(conn: &mut PgConnection, migrations_table: &str) -> anyhow::Result<Snapshot> {
    use sqlx::Connection as _;
    let read = async {
        let mut tx = conn.begin().await?;
        sqlx::raw_sql("SET LOCAL search_path = pg_catalog").execute(&mut *tx).await?;
        let rows: Vec<(String, String, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(SNAPSHOT)).bind(migrations_table).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(rows)
    };
    let rows = bounded(read).await?;
    Ok(rows.into_iter().map(|(kind, name, definition)| ((kind, name), definition)).collect())
}

/// The differences, without the columns, indexes, constraints and triggers of a table that is
/// missing or unexpected as a whole: the table says it.
fn compare(expected: &Snapshot, found: &Snapshot) -> Vec<Difference> {
    let tables_only_in = |one: &Snapshot, other: &Snapshot| -> BTreeSet<String> {
        one.keys()
            .filter(|(kind, name)| kind == "table" && !other.contains_key(&(kind.clone(), name.clone())))
            .map(|(_, n)| n.clone())
            .collect()
    };
    let whole: BTreeSet<String> =
        tables_only_in(expected, found).union(&tables_only_in(found, expected)).cloned().collect();
    let part_of_whole = |kind: &str, name: &str, definition: &str| {
        matches!(kind, "column" | "constraint" | "trigger") && whole.iter().any(|t| name.starts_with(&format!("{t}.")))
            || kind == "index"
                && whole.iter().any(|t| {
                    definition.contains(&format!(" ON {t} ")) || definition.contains(&format!(" ON ONLY {t} "))
                })
    };
    let mut differences = Vec::new();
    for ((kind, name), definition) in expected {
        match found.get(&(kind.clone(), name.clone())) {
            None if part_of_whole(kind, name, definition) => {}
            None => differences.push(Difference {
                kind: kind.clone(),
                name: name.clone(),
                change: Change::Missing,
                expected: Some(definition.clone()),
                found: None,
            }),
            Some(live) if live != definition => differences.push(Difference {
                kind: kind.clone(),
                name: name.clone(),
                change: Change::Differs,
                expected: Some(definition.clone()),
                found: Some(live.clone()),
            }),
            Some(_) => {}
        }
    }
    for ((kind, name), definition) in found {
        if !expected.contains_key(&(kind.clone(), name.clone())) && !part_of_whole(kind, name, definition) {
            differences.push(Difference {
                kind: kind.clone(),
                name: name.clone(),
                change: Change::Unexpected,
                expected: None,
                found: Some(definition.clone()),
            });
        }
    }
    // The largest changes first: a table missing says more than a default changed.
    differences.sort_by_key(|d| (KINDS.iter().position(|k| *k == d.kind), d.name.clone()));
    differences
}

/// The kinds of objects, from the largest.
const KINDS: [&str; 13] = [
    "extension",
    "schema",
    "table",
    "view",
    "materialized view",
    "enum",
    "sequence",
    "function",
    "procedure",
    "column",
    "constraint",
    "index",
    "trigger",
];

/// For a failed migration: whether the database has drifted, in one line; nothing when that
/// cannot be told (the server is gone, say). An interruption meanwhile is the run's outcome.
pub fn drift_note(
    loaded: &Loaded,
    set: &MigrationSet,
    settings: &MigrationSettings,
) -> Result<Option<String>, anyhow::Error> {
    let direct = loaded.for_migrations();
    let target = direct.as_ref().unwrap_or(loaded);
    let db = target.settings.database.clone();
    let look = async {
        let mut ready = backend::db::connect_once(&db, "prestart-drift", backend::db::ATTEMPT_TIMEOUT).await.ok()?;
        // The throwaway database is dropped however this ends, the timeout included.
        tokio::time::timeout(DRIFT_NOTE_BOUND, find_drift(&db, &mut ready.conn, set, settings, None)).await.ok()
    };
    let found = match runtime()?.block_on(look) {
        None => return Ok(None),
        Some(Err(error)) if matches!(error.downcast_ref::<Failure>(), Some(Failure::Interrupted(_))) => {
            return Err(error);
        }
        Some(Err(_)) => return Ok(None),
        Some(Ok(found)) => found,
    };
    Ok(Some(match found {
        Ok(differences) if differences.is_empty() => {
            "no drift: the applied migrations produce exactly this database's schema".to_owned()
        }
        Ok(differences) => format!(
            "the database has drifted from its migrations (changed by hand?): {}; `cargo xtask schema drift` lists it all",
            differences.iter().take(5).map(ToString::to_string).collect::<Vec<_>>().join("; ")
        ),
        Err(cannot) => format!("drift not checked: {cannot}"),
    }))
}

/// How long a failed migration's report waits for the drift check.
const DRIFT_NOTE_BOUND: std::time::Duration = std::time::Duration::from_secs(30);
