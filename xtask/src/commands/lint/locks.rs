//! `lint-migrations --locks`: measured locks, not guessed ones. The applied migrations build a
//! throwaway copy of the schema in a throwaway cluster on this machine (never the database being
//! checked); then each checked migration runs there the way sqlx runs it, one statement at a time,
//! and after each, `pg_locks` of our own session says which locks that statement took. A lock is
//! held until COMMIT, so in a transaction every statement's lock is seen. A `-- no-transaction`
//! statement runs in autocommit and its locks end with it: a second session samples them while it
//! runs, which may miss a short one, and says so.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use backend::migrations::{MigrationFile, MigrationSet, MigrationSettings};
use sqlx::PgConnection;
use squawk_syntax::SourceFile;
use squawk_syntax::ast::AstNode;

use crate::base::workspace::display_path;
use crate::databases::ddl::{Template, create_database};
use crate::databases::throwaway::{Binaries, LocalCluster};

/// Building the copy holds no rows, only DDL; the same bound as drift's.
const BUILD_TIMEOUT: Duration = Duration::from_secs(120);

/// Between two samples of an autocommit statement's locks: often enough for an index build on an
/// empty table, without taking a core from it.
const SAMPLE_PAUSE: Duration = Duration::from_millis(2);

/// The longest the watcher's snapshot holds an autocommit statement back.
const HOLD: Duration = Duration::from_secs(2);

/// The database the copy is built in, on the throwaway cluster.
const COPY: &str = "lint_locks";

/// Relation locks a session holds, outside the system catalogs (DDL takes those too, and the query
/// itself takes ACCESS SHARE on pg_locks).
const HELD: &str = "SELECT c.oid::int8, c.oid::regclass::text, c.relkind::text, l.mode \
                    FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_class c ON c.oid = l.relation \
                    WHERE l.pid = $1 AND l.locktype = 'relation' AND l.granted \
                    AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace) \
                    AND c.relnamespace::regnamespace::text NOT LIKE 'pg\\_toast%'";

/// The relations there are now, outside the system schemas: those that existed before.
const RELATIONS: &str = "SELECT c.oid::int8 FROM pg_catalog.pg_class c \
                         WHERE c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)";

/// One lock a statement took.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Lock {
    oid: i64,
    relation: String,
    kind: String,
    mode: String,
}

/// Prints the lock each statement of the checked migrations takes; returns how many statements
/// held a lock that blocks writes (SHARE and stronger) on a table that existed before while
/// scanning or rewriting it (the writes, and under ACCESS EXCLUSIVE the reads, wait that long; a
/// lock for a catalog change is said, and lasts an instant), plus the autocommit ones seen taking
/// ACCESS EXCLUSIVE, whose length is not measured. `applied` build the copy first,
/// after `roles` (the database's, when it answered) are made, as grants and owners name them. With
/// `deploy`, a table existed before when it existed before the first checked migration; without
/// (`--all`), before the migration itself.
pub fn measure(
    set: &MigrationSet,
    settings: &MigrationSettings,
    applied: &BTreeSet<i64>,
    roles: &[String],
    deploy: bool,
    to_stdout: bool,
) -> anyhow::Result<usize> {
    let say = |line: String| if to_stdout { println!("{line}") } else { crate::base::ui::line(line) };
    crate::base::ui::step("measure the locks of the checked migrations in a throwaway copy of the schema (--locks)");
    let bin = Binaries::find(None).ok_or_else(|| {
        anyhow!(
            "--locks needs PostgreSQL server binaries on this machine for a throwaway cluster: install them (`sudo \
             apt-get install postgresql`, `brew install postgresql@17`), or leave --locks out"
        )
    })?;
    crate::base::replay::refuse_reaching_out(&set.files, "--locks").map_err(|refused| anyhow!(refused))?;
    crate::base::interrupt::block_on(async {
        let cluster = LocalCluster::start(bin).await.context("start a throwaway cluster for --locks")?;
        let work = async {
            let mut admin = connect(&cluster.settings("postgres")?).await?;
            create_database(&mut admin.conn, COPY, Template::Pristine).await.context("create the copy's database")?;
            for role in roles {
                // The bootstrap superuser exists already; roles are cluster-wide, so made here once.
                let _ = execute(&mut admin.conn, &format!("CREATE ROLE {}", crate::base::sql::quote_identifier(role)))
                    .await;
            }
            let mut ready = connect(&cluster.settings(COPY)?).await?;
            let mut watcher = connect(&cluster.settings(COPY)?).await?;
            let mut sessions = Sessions { pid: 0, conn: &mut ready.conn, watcher: &mut watcher.conn };
            sessions.pid =
                sqlx::query_scalar("SELECT pg_catalog.pg_backend_pid()").fetch_one(&mut *sessions.conn).await?;
            run_all(&mut sessions, set, settings, applied, deploy, &say).await
        };
        let result = tokio::time::timeout(BUILD_TIMEOUT, work).await;
        cluster.stop().await;
        result.map_err(|_| anyhow!("measuring the locks took more than {} s", BUILD_TIMEOUT.as_secs()))?
    })
}

/// The session the migrations run in, and a second one that samples its locks.
struct Sessions<'c> {
    pid: i32,
    conn: &'c mut PgConnection,
    watcher: &'c mut PgConnection,
}

async fn run_all(
    sessions: &mut Sessions<'_>,
    set: &MigrationSet,
    settings: &MigrationSettings,
    applied: &BTreeSet<i64>,
    deploy: bool,
    say: &impl Fn(String),
) -> anyhow::Result<usize> {
    let conn = &mut *sessions.conn;
    for schema in &settings.create_schemas {
        execute(conn, &format!("CREATE SCHEMA IF NOT EXISTS {}", crate::base::sql::quote_identifier(schema))).await?;
    }
    let mut existing: Option<HashSet<i64>> = None;
    let mut blocking = 0;
    for file in &set.files {
        let name = file.path.as_deref().map(display_path).unwrap_or_else(|| file.name());
        if applied.contains(&file.migration.version) {
            execute(sessions.conn, file.migration.sql.as_ref())
                .await
                .with_context(|| format!("{name} (applied) fails on the copy, so nothing after it can be measured"))?;
            continue;
        }
        if existing.is_none() || !deploy {
            existing = Some(sqlx::query_scalar(RELATIONS).fetch_all(&mut *sessions.conn).await?.into_iter().collect());
        }
        let before = existing.as_ref().map(|e| e as &HashSet<i64>).ok_or_else(|| anyhow!("no tables read"))?;
        match measure_file(sessions, file, &name, before, say).await {
            Ok(count) => blocking += count,
            Err(error) => {
                say(format!("{name}: stopped here, nothing after it is measured: {error:#}"));
                return Ok(blocking);
            }
        }
    }
    Ok(blocking)
}

/// Runs one migration statement by statement and says what each locked.
async fn measure_file(
    sessions: &mut Sessions<'_>,
    file: &MigrationFile,
    name: &str,
    existing: &HashSet<i64>,
    say: &impl Fn(String),
) -> anyhow::Result<usize> {
    let sql = file.migration.sql.as_ref();
    let sql = sql.strip_prefix('\u{feff}').unwrap_or(sql);
    let in_transaction = !file.migration.no_tx;
    let parse = SourceFile::parse(sql);
    say(format!("{name} ({}):", if in_transaction { "one transaction" } else { "-- no-transaction, autocommit" }));
    if in_transaction {
        execute(sessions.conn, "BEGIN").await?;
    }
    let mut held: HashSet<Lock> = HashSet::new();
    let mut blocking = 0;
    for statement in parse.tree().stmts() {
        let range = statement.syntax().text_range();
        let text = sql.get(usize::from(range.start())..usize::from(range.end())).unwrap_or_default();
        let line = sql.get(..usize::from(range.start())).map_or(0, |before| before.matches('\n').count()) + 1;
        let shown: String = text.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(70).collect();
        say(format!("  line {line}: {shown}"));
        let (now, work) = if in_transaction {
            let before = work_of(sessions.conn, existing).await?;
            if let Err(error) = execute(sessions.conn, text).await {
                let _ = execute(sessions.conn, "ROLLBACK").await;
                return Err(error);
            }
            let after = work_of(sessions.conn, existing).await?;
            (locks_of(sessions.conn, sessions.pid).await?, Some(Work::between(&before, &after)))
        } else {
            say("    sampled while it ran (in autocommit its locks end with it; a short one may be missed):".into());
            held.clear();
            (sampled(sessions, text).await?, None)
        };
        say_taken(&now, &held, existing, in_transaction, say);
        blocking += say_what_blocks(&now, &held, existing, work.as_ref(), say);
        held = now;
    }
    if in_transaction {
        execute(sessions.conn, "COMMIT").await?;
    }
    Ok(blocking)
}

/// Says each lock the statement took that was not held before, and whom it blocks.
fn say_taken(
    now: &HashSet<Lock>,
    held: &HashSet<Lock>,
    existing: &HashSet<i64>,
    in_transaction: bool,
    say: &impl Fn(String),
) {
    let mut taken: Vec<&Lock> = now.difference(held).collect();
    taken.sort_by(|a, b| (&a.relation, &a.mode).cmp(&(&b.relation, &b.mode)));
    if taken.is_empty() {
        say(if in_transaction { "    no new lock on a table or index" } else { "    no lock seen" }.into());
    }
    for lock in taken {
        let what = match lock.kind.as_str() {
            "r" | "p" | "m" => "table",
            "i" | "I" => "index",
            _ => "relation",
        };
        let mode = lock.mode.trim_end_matches("Lock");
        // A relation this deploy made is used by nobody yet: its locks block no one.
        let effect = if existing.contains(&lock.oid) {
            format!("existed before: {}", blocks(mode))
        } else {
            "new in this deploy: blocks nobody yet".into()
        };
        say(format!("    {} on {what} {}, {effect}", spaced(mode), lock.relation));
    }
}

/// Says how long each lock that stops traffic is held, on each table that existed before; how
/// many of them block for more than an instant. What such a lock costs is how long it is held:
/// an instant for a change of the catalog, the whole table for a scan or a rewrite. The
/// statement's own scans and rewrites are measured, on each table that existed before and that
/// it holds such a lock on (its strongest), taken now or earlier.
fn say_what_blocks(
    now: &HashSet<Lock>,
    held: &HashSet<Lock>,
    existing: &HashSet<i64>,
    work: Option<&Work>,
    say: &impl Fn(String),
) -> usize {
    let mut blocking = 0;
    let mut strongest: Vec<&Lock> = Vec::new();
    for lock in now.iter().filter(|l| existing.contains(&l.oid) && matches!(l.kind.as_str(), "r" | "p" | "m")) {
        match strongest.iter_mut().find(|s| s.oid == lock.oid) {
            Some(kept) if strength(&kept.mode) < strength(&lock.mode) => *kept = lock,
            Some(_) => {}
            None => strongest.push(lock),
        }
    }
    for lock in strongest.into_iter().filter(|l| strength(&l.mode) >= strength("ShareLock")) {
        let exclusive = lock.mode == "AccessExclusiveLock";
        match work.map(|w| w.on(lock.oid)) {
            Some(Some(done)) => {
                say(format!(
                    "    it {done} table {} under {}: every {} waits for the whole of it",
                    lock.relation,
                    spaced(lock.mode.trim_end_matches("Lock")),
                    if exclusive { "read and write" } else { "write" }
                ));
                blocking += 1;
            }
            Some(None) if exclusive && !held.contains(lock) => {
                say(format!("    (on {}: for an instant, no scan and no rewrite)", lock.relation));
            }
            Some(None) => {}
            // Autocommit: how long it was held is not measured, so an ACCESS EXCLUSIVE counts.
            None => blocking += usize::from(exclusive),
        }
    }
    blocking
}

/// Per relation that existed before: its scans so far in this transaction, and its file (a
/// rewrite gives it a new one).
const WORK: &str = "SELECT c.oid::int8, pg_catalog.pg_stat_get_xact_numscans(c.oid), c.relfilenode::int8 \
                    FROM pg_catalog.pg_class c WHERE c.oid::int8 = ANY($1)";

async fn work_of(conn: &mut PgConnection, existing: &HashSet<i64>) -> anyhow::Result<Vec<(i64, i64, i64)>> {
    let oids: Vec<i64> = existing.iter().copied().collect();
    Ok(sqlx::query_as(WORK).bind(oids).fetch_all(&mut *conn).await?)
}

/// What one statement did to the tables that existed before.
struct Work {
    scanned: HashSet<i64>,
    rewritten: HashSet<i64>,
}

impl Work {
    fn between(before: &[(i64, i64, i64)], after: &[(i64, i64, i64)]) -> Work {
        let mut work = Work { scanned: HashSet::new(), rewritten: HashSet::new() };
        for (oid, scans, file) in after {
            if let Some((_, scans_before, file_before)) = before.iter().find(|(o, _, _)| o == oid) {
                if scans > scans_before {
                    work.scanned.insert(*oid);
                }
                if file != file_before {
                    work.rewritten.insert(*oid);
                }
            }
        }
        work
    }

    /// "rewrites" or "scans", when the statement did either to `oid`.
    fn on(&self, oid: i64) -> Option<&'static str> {
        if self.rewritten.contains(&oid) {
            Some("rewrites")
        } else if self.scanned.contains(&oid) {
            Some("scans")
        } else {
            None
        }
    }
}

async fn locks_of(conn: &mut PgConnection, pid: i32) -> anyhow::Result<HashSet<Lock>> {
    Ok(sqlx::query_as::<_, (i64, String, String, String)>(HELD)
        .bind(pid)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|(oid, relation, kind, mode)| Lock { oid, relation, kind, mode })
        .collect())
}

/// Runs `text` in autocommit while the watcher reads its locks every few milliseconds. The watcher
/// first takes a snapshot and keeps it: a CONCURRENTLY build waits for older snapshots, holding its
/// locks where the samples see them; the snapshot is let go once they have been seen twice (the
/// statement is waiting for it), or after [`HOLD`] anyway.
async fn sampled(sessions: &mut Sessions<'_>, text: &str) -> anyhow::Result<HashSet<Lock>> {
    let (pid, watcher) = (sessions.pid, &mut *sessions.watcher);
    execute(watcher, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1").await?;
    let mut holding = true;
    let started = std::time::Instant::now();
    let mut seen = HashSet::new();
    let run = execute(sessions.conn, text);
    tokio::pin!(run);
    let result = loop {
        tokio::select! {
            biased;
            result = &mut run => break result,
            locks = locks_of(watcher, pid) => {
                let locks = locks?;
                let waiting = !locks.is_empty() && locks.is_subset(&seen);
                seen.extend(locks);
                if holding && (waiting || started.elapsed() > HOLD) {
                    execute(watcher, "COMMIT").await?;
                    holding = false;
                }
                tokio::time::sleep(SAMPLE_PAUSE).await;
            }
        }
    };
    if holding {
        execute(watcher, "COMMIT").await?;
    }
    result.map(|()| seen)
}

/// `AccessExclusive` as PostgreSQL's docs spell it: ACCESS EXCLUSIVE.
fn spaced(mode: &str) -> String {
    let mut out = String::new();
    for (i, c) in mode.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Where a lock mode stands among those a statement takes on a table (PostgreSQL's order).
fn strength(mode: &str) -> u8 {
    match mode {
        "AccessShareLock" => 1,
        "RowShareLock" => 2,
        "RowExclusiveLock" => 3,
        "ShareUpdateExclusiveLock" => 4,
        "ShareLock" => 5,
        "ShareRowExclusiveLock" => 6,
        "ExclusiveLock" => 7,
        "AccessExclusiveLock" => 8,
        _ => 0,
    }
}

/// What the lock stops the application's queries from doing while it is held.
fn blocks(mode: &str) -> &'static str {
    match mode {
        "AccessExclusive" => "blocks reads and writes",
        "Exclusive" | "ShareRowExclusive" | "Share" => "blocks writes, not reads",
        _ => "blocks neither reads nor writes",
    }
}

async fn execute(conn: &mut PgConnection, sql: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .map_err(|e| anyhow!("{}", backend::db::describe_error(&e)))
}

async fn connect(db: &backend::config::DatabaseSettings) -> anyhow::Result<backend::db::Ready> {
    backend::db::connect_once(db, "prestart-lint-locks", backend::db::ATTEMPT_TIMEOUT)
        .await
        .map_err(|e| anyhow!("cannot connect to {db}: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn modes_read_as_the_docs_spell_them() {
        assert_eq!(super::spaced("AccessExclusive"), "ACCESS EXCLUSIVE");
        assert_eq!(super::spaced("ShareUpdateExclusive"), "SHARE UPDATE EXCLUSIVE");
        assert_eq!(super::blocks("Share"), "blocks writes, not reads");
    }
}
