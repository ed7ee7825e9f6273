//! The wait for the database: bounded by the run's one budget, saying why it waits and the
//! likely causes; every session opens through it.

use std::time::{Duration, Instant};

use backend::config::DatabaseSettings;
use backend::db::{Ready, RetryKind, WaitError, WaitProgress};

use crate::base::exit::{Failure, fail};
use crate::base::ui;
use crate::connection::diagnose::{cause_lines, likely_causes};
use crate::settings::context::Loaded;
use crate::settings::place::RuntimeContext;

/// The default deadline, when the first attempt from a container meets what waiting seldom
/// fixes: nothing listening on the container's own loopback, or a name that does not resolve.
/// In compose, `up -d` waits silently for prestart all that while.
const HOPELESS_WAIT: Duration = Duration::from_secs(30);

/// From inside a container (not a pod, whose sidecars start beside it), loopback reaches only
/// the container itself, and compose creates a service's name with its container.
fn looks_hopeless(kind: RetryKind, db: &DatabaseSettings, context: RuntimeContext) -> bool {
    context == RuntimeContext::Container
        && match kind {
            RetryKind::Refused => crate::settings::place::is_loopback(db.host()),
            RetryKind::NameNotResolved => true,
            _ => false,
        }
}

/// While the reason stays the same, repeat the wait line this often rather than per attempt.
const REPEAT_EVERY: Duration = Duration::from_secs(5);
/// Whether this run has said that it waits for the database.
static ANNOUNCED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The name other sessions see in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "prestart";

/// Waits for the database, logging why while it waits, and returns the ready connection. The
/// time it takes comes out of the run's one wait budget.
pub async fn wait_step(loaded: &Loaded) -> anyhow::Result<Ready> {
    let started = Instant::now();
    let result = wait_within(loaded, loaded.wait_left()).await;
    loaded.spend_waiting(started.elapsed());
    result
}

async fn wait_within(loaded: &Loaded, deadline: Duration) -> anyhow::Result<Ready> {
    let db = &loaded.settings.database;
    let context = loaded.context;
    let budget = if deadline == loaded.wait_timeout {
        format!("deadline {} s", deadline.as_secs())
    } else {
        format!("{} s left of the {} s deadline", deadline.as_secs(), loaded.wait_timeout.as_secs())
    };
    // Said once a run: a command that connects several times (`database reset`) says it again
    // only for a wait that has something to say.
    let header = format!("wait for the database at {db} ({budget})");
    let mut announced = !ANNOUNCED.swap(true, std::sync::atomic::Ordering::Relaxed);
    if announced {
        ui::step(&header);
    }
    let started = Instant::now();
    let mut last_line: Option<Instant> = None;
    // The likely causes are said once, and again only when they change: a repeat of the wait line
    // says only what changed (the attempts, the time left).
    let mut told: Vec<String> = Vec::new();
    let may_shorten = !loaded.wait_timeout_chosen && deadline == loaded.wait_timeout;
    let mut report = |progress: &WaitProgress<'_>| {
        let hopeless = may_shorten && progress.attempts == 1 && looks_hopeless(progress.reason.kind, db, context);
        let due = last_line.is_none_or(|at| at.elapsed() >= REPEAT_EVERY);
        if !(progress.reason_changed || due) {
            return None;
        }
        last_line = Some(Instant::now());
        if !announced {
            ui::step(&header);
            announced = true;
        }
        ui::line_with(
            format!(
                "waiting: {} (attempt {}, {} elapsed, {} s left)",
                progress.reason,
                progress.attempts,
                ui::duration(progress.elapsed),
                progress.remaining.as_secs()
            ),
            &[
                ("attempts", progress.attempts.into()),
                ("elapsed_ms", ui::ms(progress.elapsed)),
                ("left_s", progress.remaining.as_secs().into()),
            ],
        );
        let causes = likely_causes(progress.reason.kind, db, context);
        if causes != told {
            for cause in cause_lines(&causes) {
                ui::line(format!("  {cause}"));
            }
            told = causes;
        }
        hopeless.then(|| {
            ui::line(format!(
                "  this is unlikely to change by waiting: the deadline is now {} s, not {} (PRESTART_WAIT_TIMEOUT=SECONDS \
                 waits as long as it says)",
                HOPELESS_WAIT.as_secs(),
                deadline.as_secs()
            ));
            HOPELESS_WAIT
        })
    };
    match backend::db::wait_for_database(db, APPLICATION_NAME, deadline, &mut report).await {
        Ok(ready) => {
            if announced {
                let took = started.elapsed();
                ui::line_with(format!("ready in {}", ui::duration(took)), &[("duration_ms", ui::ms(took))]);
            }
            Ok(ready)
        }
        // The `Fatal` stays in the chain, for callers that act on its kind.
        Err(WaitError::Fatal(fatal)) => Err(fail(Failure::Refused, anyhow::Error::new(fatal).context(db.to_string()))),
        Err(WaitError::Deadline { last, attempts, waited }) => {
            Err(deadline_passed(db, context, (&last, attempts, waited)))
        }
    }
}

/// The wait's end at its deadline: what the last attempt met, its likely causes, and where to
/// look next.
fn deadline_passed(
    db: &DatabaseSettings,
    context: RuntimeContext,
    (last, attempts, waited): (&backend::db::Retryable, u32, Duration),
) -> anyhow::Error {
    let mut message =
        format!("{db} did not become ready within {} ({attempts} attempts); last: {last}", ui::duration(waited));
    for cause in cause_lines(&likely_causes(last.kind, db, context)) {
        message.push_str(&format!("\n  {cause}"));
    }
    message.push_str("\n  for a full diagnosis: cargo xtask doctor (with the same settings)");
    fail(Failure::Unreachable, anyhow::anyhow!(message))
}

/// The wait ended on 3D000: the database does not exist.
pub fn database_missing(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<backend::db::Fatal>().is_some_and(|f| f.kind == backend::db::FatalKind::DatabaseMissing)
    })
}
