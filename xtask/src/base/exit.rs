//! Exit codes: one per kind of failure, so compose, Kubernetes and scripts can tell them apart.

use std::fmt;
use std::process::ExitCode;

/// Every exit code and what it means: the one source of `--help`'s list and of the README's
/// table (a test holds the README to it).
pub const EXIT_CODES: [(u8, &str); 12] = [
    (0, "success"),
    (
        1,
        "unexpected error (a bug, or this machine's files or tools); for `doctor`: a check failed; for `schema dump \
         --check` and `sqlx-prepare --check`: the committed file is stale",
    ),
    (2, "usage error (unknown command or option)"),
    (
        3,
        "configuration error (`.env`, environment, migrations folder, `sqlx.toml`); a throwaway this machine cannot \
         make, or a migration it may not replay there (one that can reach another server)",
    ),
    (4, "database not reachable before the wait deadline"),
    (
        5,
        "database refused us (password, `pg_hba.conf`, missing database or role, permission, TLS), or a pooler did (a \
         startup parameter; transaction pooling without direct migration settings)",
    ),
    (
        6,
        "migration failed (SQL error, changed or failed migration, lock not acquired, unknown versions with \
         `--strict`, a `--target-version` that does not fit, a revert without a down file), or refused: it breaks a \
         query of the release before (prestart's release check)",
    ),
    (7, "seed failed; for `seed --check`: its second run changes rows"),
    (8, "schema not up to date (`migrate status`; backend and worker refusing to start)"),
    (9, "schema drift: the live schema differs from what its applied migrations produce (`schema drift`)"),
    (130, "interrupted by SIGINT"),
    (143, "interrupted by SIGTERM"),
];

/// Shown at the end of `--help`: the codes of [`EXIT_CODES`], wrapped.
pub fn exit_codes_help() -> String {
    let mut help = String::from("Exit codes:\n");
    for (code, meaning) in EXIT_CODES {
        let mut line = format!("    {code:<5}");
        for word in meaning.replace('`', "").split_whitespace() {
            if line.len() + word.len() > 110 {
                help.push_str(line.trim_end());
                help.push('\n');
                line = " ".repeat(9);
            }
            line.push_str(word);
            line.push(' ');
        }
        help.push_str(line.trim_end());
        help.push('\n');
    }
    help.push_str("dev-db status exits 0 when the cluster runs and 3 when it does not, as pg_ctl status does.");
    help
}

/// The kind of a failure, attached to an `anyhow::Error` as its outermost context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `doctor` found problems; it has printed them.
    ChecksFailed,
    Config,
    Unreachable,
    Refused,
    Migration,
    Seed,
    NotUpToDate,
    Drift,
    Interrupted(Signal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl Failure {
    /// The class a log collector files the end of a run under.
    pub fn class(self) -> &'static str {
        match self {
            Failure::ChecksFailed => "checks_failed",
            Failure::Config => "config",
            Failure::Unreachable => "unreachable",
            Failure::Refused => "refused",
            Failure::Migration => "migration",
            Failure::Seed => "seed",
            Failure::NotUpToDate => "not_up_to_date",
            Failure::Drift => "drift",
            Failure::Interrupted(_) => "interrupted",
        }
    }

    pub fn exit_code(self) -> u8 {
        match self {
            Failure::ChecksFailed => 1,
            Failure::Config => 3,
            Failure::Unreachable => 4,
            Failure::Refused => 5,
            Failure::Migration => 6,
            Failure::Seed => 7,
            Failure::NotUpToDate => 8,
            Failure::Drift => 9,
            Failure::Interrupted(Signal::Interrupt) => 130,
            Failure::Interrupted(Signal::Terminate) => 143,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Failure::ChecksFailed => "checks failed",
            Failure::Config => "configuration error",
            Failure::Unreachable => "database not reachable",
            Failure::Refused => "database refused the connection",
            Failure::Migration => "migration failed",
            Failure::Seed => "seed failed",
            Failure::NotUpToDate => "schema not up to date",
            Failure::Drift => "schema drift",
            Failure::Interrupted(Signal::Interrupt) => "interrupted by SIGINT",
            Failure::Interrupted(Signal::Terminate) => "interrupted by SIGTERM",
        })
    }
}

/// Shortcut: `Err(fail(Failure::Seed, error))`.
pub fn fail(kind: Failure, error: impl Into<anyhow::Error>) -> anyhow::Error {
    error.into().context(kind)
}

/// A run that ended the way its user ends it (Ctrl-C of `dev`): its exit code still tells the
/// signal, but it has said what happened already, so no `error:` line follows.
#[derive(Debug)]
pub struct Stopped;

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stopped")
    }
}

impl std::error::Error for Stopped {}

/// Prints the error as `error: <kind>: <causes>` on stderr and turns it into the exit code.
pub fn report(result: anyhow::Result<()>) -> ExitCode {
    let Err(error) = result else {
        crate::base::ui::finish(None, 0, "success");
        return ExitCode::SUCCESS;
    };
    let kind = error.downcast_ref::<Failure>().copied();
    let code = kind.map_or(1, Failure::exit_code);
    let class = kind.map_or("bug", Failure::class);
    if error.downcast_ref::<Stopped>().is_some() {
        // Said already; a log collector still gets the end of the run.
        crate::base::ui::finish(None, code, class);
        return ExitCode::from(code);
    }
    let causes: Vec<String> = error.chain().map(ToString::to_string).collect();
    crate::base::ui::finish(Some(&causes.join(": ")), code, class);
    ExitCode::from(code)
}

/// A panic is a bug: print one line saying so (with where it happened) instead of a backtrace,
/// and end with exit code 1 like any unexpected error.
pub fn report_panics_as_bugs() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let payload = info.payload();
        let message =
            payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str));
        // A panic message may quote a value: through the same filter as every other line.
        let line = format!(
            "internal error{location}: {}; this is a bug in prestart, please report it",
            message.unwrap_or("panic")
        );
        crate::base::ui::finish(Some(&line), 1, "bug");
    }));
}

pub fn bug() -> anyhow::Error {
    anyhow::anyhow!("stopped after an internal error")
}

#[cfg(test)]
mod tests {
    use super::EXIT_CODES;

    /// The README's table is this one, row for row.
    #[test]
    fn the_readme_lists_every_exit_code_as_the_help_does() {
        let readme = include_str!("../../../README.md");
        let table = readme.split("## Exit codes").nth(1).expect("an exit code section");
        let rows: Vec<(u8, String)> = table
            .lines()
            .skip_while(|line| !line.starts_with("| 0 "))
            .take_while(|line| line.starts_with('|'))
            .filter_map(|line| {
                let mut cells = line.trim_matches('|').split('|').map(str::trim);
                Some((cells.next()?.parse().ok()?, cells.next()?.to_owned()))
            })
            .collect();
        let wanted: Vec<(u8, String)> = EXIT_CODES
            .iter()
            .map(|(code, meaning)| (*code, meaning.split_whitespace().collect::<Vec<_>>().join(" ")))
            .collect();
        assert_eq!(rows, wanted, "README.md's exit code table differs from exit::EXIT_CODES");
    }
}
