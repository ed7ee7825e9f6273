//! `cargo xtask seed`, and the seed step of prestart.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::anyhow;
use backend::config::{FirstSuperuser, Settings};
use backend::migrations::Followed;
use backend::seed::{Present, SeedError, SeedFile, SeedReport, init_db};
use sqlx::postgres::PgConnection;

use crate::base::exit::{Failure, fail};
use crate::base::ui;
use crate::connection::session::{self, Resumed, Session, Use};
use crate::settings::context::DbArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    seeds: SeedArgs,
    #[command(flatten)]
    source: crate::settings::context::SourceArgs,
    /// Run the seed twice on a throwaway migrated copy of the schema (a throwaway cluster on this
    /// machine, never the database) and name each table whose rows the second run changed
    #[arg(long)]
    check: bool,
}

/// Where the project's SQL seed files are.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SeedArgs {
    /// The folder of SQL seed files, run in name order after the first superuser and the default
    /// settings, in the seed's one transaction (default: `seeds/` of the workspace, or beside the
    /// binary, when it exists)
    #[arg(long, value_name = "DIR")]
    pub seeds: Option<PathBuf>,
}

impl SeedArgs {
    /// The `*.sql` files of the folder, in name order; none where the default folder is missing.
    pub fn load(&self, root: &Path) -> anyhow::Result<Vec<SeedFile>> {
        let dir = self.seeds.clone().unwrap_or_else(|| root.join("seeds"));
        if self.seeds.is_none() && !dir.is_dir() {
            return Ok(Vec::new());
        }
        let entries = std::fs::read_dir(&dir).map_err(|e| {
            fail(
                Failure::Config,
                anyhow!("cannot read the seed folder {}: {e}", crate::base::workspace::display_path(&dir)),
            )
        })?;
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "sql") {
                let sql = std::fs::read_to_string(&path).map_err(|e| {
                    fail(Failure::Config, anyhow!("cannot read {}: {e}", crate::base::workspace::display_path(&path)))
                })?;
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                files.push(SeedFile { name, sql });
            }
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let loaded = args.db.load()?;
    let superuser = required_superuser(&loaded.settings)?;
    let files = args.seeds.load(&loaded.root)?;
    if args.check {
        let (set, settings, _) = args.source.load(&loaded.root)?;
        return crate::machinery::seed_check::run(&set, &settings, superuser, &files);
    }
    session::run(&loaded, Use::Write, async |session| seed_step(session, Ahead::new(superuser, &files)).await)
}

/// The seed's work done ahead of its step, while prestart migrates: on a no-op run its check
/// rides along the read of the migrations table, and on a fresh database (where the account is
/// surely missing) the password is hashed on another core while the server runs the migrations
/// (argon2 takes tens of milliseconds).
pub struct Ahead<'a> {
    superuser: &'a FirstSuperuser,
    files: &'a [SeedFile],
    /// What the check found, and the server process it asked: after a reconnect (a failover) it
    /// says nothing of the server the seed then runs on.
    present: Option<(Present, backend::db::ServerProcess)>,
    hashing: Option<tokio::task::JoinHandle<Result<String, SeedError>>>,
}

impl<'a> Ahead<'a> {
    pub fn new(superuser: &'a FirstSuperuser, files: &'a [SeedFile]) -> Ahead<'a> {
        Ahead { superuser, files, present: None, hashing: None }
    }

    /// The check to send with the read of the migrations table.
    pub fn check_sql(&self) -> String {
        backend::seed::check_sql(Some(self.superuser))
    }

    /// What that check read on `process`, on a run that then changed nothing.
    pub fn found(&mut self, read: &Followed, process: &backend::db::ServerProcess) {
        if let Followed::Rows(rows) = read {
            self.present = Present::from_rows(rows, Some(self.superuser)).ok().map(|p| (p, process.clone()));
        }
    }

    /// The database is fresh: the account will be missing.
    pub fn hash_in_background(&mut self) {
        let password = self.superuser.password.expose().to_owned();
        self.hashing = Some(tokio::task::spawn_blocking(move || backend::seed::hash_password(&password)));
    }

    /// The hash made ahead, if one was started: `None` (hashed later, where needed) if its thread
    /// failed.
    async fn hashed(&mut self) -> Result<Option<String>, SeedError> {
        match self.hashing.take() {
            Some(hashing) => hashing.await.map_or(Ok(None), |hashed| hashed.map(Some)),
            None => Ok(None),
        }
    }
}

/// The seed needs the first superuser; checked before anything else runs.
pub fn required_superuser(settings: &Settings) -> anyhow::Result<&FirstSuperuser> {
    settings.first_superuser.as_ref().ok_or_else(|| {
        fail(
            Failure::Config,
            anyhow!("FIRST_SUPERUSER and FIRST_SUPERUSER_PASSWORD are not set: the seed creates that account (see .env.example)"),
        )
    })
}

/// Seeds in one transaction. One that a failover (or a restart) cuts off runs again whole on a
/// new connection: it only inserts what is missing, so a rerun after a COMMIT whose answer was
/// lost changes nothing.
pub async fn seed_step(session: &mut Session<'_>, mut ahead: Ahead<'_>) -> anyhow::Result<()> {
    ui::step("seed initial data");
    let started = Instant::now();
    let superuser = ahead.superuser;
    let mut retries = 0;
    let report = loop {
        let ran_on = session.ready.server.clone();
        // What was read ahead holds for the first try only: a rerun reads again.
        let tried = match ahead.hashed().await {
            Ok(hashed) => {
                let present = ahead.present.take().filter(|(_, on)| *on == session.ready.process).map(|(p, _)| p);
                seed_once(&mut session.ready.conn, superuser, (present, hashed), ahead.files).await
            }
            Err(error) => Err(error),
        };
        let error = match tried {
            Ok(report) => break report,
            Err(error) => error,
        };
        let failed = |note: String| {
            fail(
                Failure::Seed,
                anyhow!(
                    "{}\n  nothing was seeded: the seed runs in one transaction; rerun when the cause is fixed{note}",
                    describe(&error)
                ),
            )
        };
        let lost = match &error {
            SeedError::Database(e) | SeedError::File(_, e) => crate::connection::session::lost_connection(e),
            SeedError::Hash(_) => None,
        };
        let Some(lost) = lost.filter(|_| retries < SEED_RETRIES) else { return Err(failed(String::new())) };
        match session.resume_after(&ran_on, &lost, "while seeding").await {
            Resumed::Again => retries += 1,
            Resumed::Gone(gone) => {
                let cause = gone.root_cause().to_string();
                let first = cause.lines().next().unwrap_or_default();
                return Err(failed(format!("\n  note: no server answered again before the deadline: {first}")));
            }
            Resumed::NotAFailover(why) => return Err(failed(format!("\n  note: {why}: not seeded again"))),
        }
    };
    let user = if report.superuser_created {
        format!("created the first superuser {}", superuser.email)
    } else {
        format!("first superuser {} already exists", superuser.email)
    };
    let files = match report.files_run {
        0 => String::new(),
        n => format!("; {n} seed {} run", if n == 1 { "file" } else { "files" }),
    };
    ui::line_with(
        format!(
            "{user}; {} default settings inserted{files} ({})",
            report.settings_inserted,
            ui::duration(started.elapsed())
        ),
        &[
            ("superuser_created", report.superuser_created.into()),
            ("settings_inserted", report.settings_inserted.into()),
            ("seed_files", report.files_run.into()),
            ("duration_ms", ui::ms(started.elapsed())),
        ],
    );
    Ok(())
}

/// The seed's error in words: the server's message and SQLSTATE (sqlx's own text would add the
/// line of PostgreSQL's C source a message came from, as if it were the seed's).
fn describe(error: &SeedError) -> String {
    match error {
        SeedError::Database(e) => backend::db::describe_error(e),
        SeedError::File(name, e) => format!("the seed file {name}: {}", backend::db::describe_error(e)),
        other => other.to_string(),
    }
}

/// How many times a seed cut off by a failover runs again.
const SEED_RETRIES: u32 = 5;

/// One try of the seed, bounded: a server that stops answering is a lost connection.
async fn seed_once(
    conn: &mut PgConnection,
    superuser: &FirstSuperuser,
    ahead: (Option<Present>, Option<String>),
    files: &[SeedFile],
) -> Result<SeedReport, SeedError> {
    let limit = backend::db::QUERY_TIMEOUT;
    // The one timed-out error of the workspace: a bound of ours, never taken for a lost connection.
    tokio::time::timeout(limit, init_db(conn, Some(superuser), ahead, files))
        .await
        .unwrap_or_else(|_| Err(SeedError::from(backend::db::timed_out(limit))))
}
