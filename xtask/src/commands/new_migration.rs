//! `cargo xtask new-migration NAME`: a new file in sqlx-cli's format, with a version greater than
//! every existing one.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use backend::migrations::MigrationSettings;

use crate::settings::context::SourceArgs;

use crate::base::exit::{Failure, fail};
use crate::base::workspace::{display_path, root};

/// Longer names make unwieldy file names; sqlx has no limit, file systems do (255 bytes).
const MAX_NAME_LENGTH: usize = 100;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// What the migration does, in one or more words (`add users email index`, quoted or not);
    /// becomes lower snake case
    #[arg(required = true, num_args = 1..)]
    name: Vec<String>,
    /// Create `.up.sql` and `.down.sql` (default: what the folder already uses)
    #[arg(long, conflicts_with = "simple")]
    reversible: bool,
    /// Create one `.sql` file even where the folder uses reversible pairs
    #[arg(long)]
    simple: bool,
    /// Start the file with `-- no-transaction`, for statements such as CREATE INDEX CONCURRENTLY
    #[arg(long)]
    no_transaction: bool,
    #[command(flatten)]
    source: SourceArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let name = snake_case(&args.name.join(" ")).map_err(|e| fail(Failure::Config, e))?;
    let root = root();
    let settings = MigrationSettings::load(&root).map_err(|e| fail(Failure::Config, e))?;
    let dir = args.source.source.clone().unwrap_or_else(|| root.join(&settings.migrations_dir));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let existing = existing_migrations(&dir)?;
    let reversible = if args.reversible {
        true
    } else if args.simple {
        false
    } else {
        // Pairs where a migration already has a down file (beside `X.up.sql` or `X.sql`).
        settings.reversible_by_default.unwrap_or_else(|| existing.iter().any(|(_, name)| name.ends_with(".down.sql")))
    };
    let newest = existing.iter().max_by_key(|(version, _)| *version);
    let now = utc_timestamp(SystemTime::now());
    let Some(version) = next_version(newest.map(|(version, _)| *version), settings.sequential_versions, now) else {
        let (version, file) = newest.map_or((i64::MAX, String::new()), |(v, file)| (*v, display_path(&dir.join(file))));
        return Err(fail(
            Failure::Config,
            anyhow!(
                "{file} has version {version}, the largest a migration version can be (sqlx stores versions as \
                 64-bit bigint): no version can follow it; give that file a smaller version if it was never applied \
                 anywhere"
            ),
        ));
    };
    let header = if args.no_transaction { "-- no-transaction\n" } else { "" };
    let files: Vec<(PathBuf, String)> = if reversible {
        vec![
            (dir.join(format!("{version}_{name}.up.sql")), format!("{header}{}", template(&name, "up"))),
            (dir.join(format!("{version}_{name}.down.sql")), format!("{header}{}", template(&name, "down"))),
        ]
    } else {
        vec![(dir.join(format!("{version}_{name}.sql")), format!("{header}{}", template(&name, "up")))]
    };
    for (path, content) in &files {
        // create_new: an existing file is never overwritten.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(content.as_bytes())?;
        println!("{}", display_path(path));
    }
    Ok(())
}

fn template(name: &str, direction: &str) -> String {
    let what = name.replace('_', " ");
    match direction {
        "down" => format!("-- Revert: {what}\n\n"),
        _ => format!(
            "-- {what}\n-- Applied once by `cargo xtask prestart`; never edit it after it has been applied anywhere.\n\
             -- Check it with `cargo xtask lint-migrations` before merging.\n\n"
        ),
    }
}

/// `(version, file name)` of every migration file in `dir`.
fn existing_migrations(dir: &Path) -> anyhow::Result<Vec<(i64, String)>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    Ok(entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_owned();
            let version = name.split_once('_')?.0.parse().ok()?;
            name.ends_with(".sql").then_some((version, name))
        })
        .collect())
}

/// A timestamp version, or the next sequential one; always above `newest`, even when the clock
/// is behind it or two migrations are made in the same second. `None` when `newest` is
/// `i64::MAX`, which nothing can follow.
fn next_version(newest: Option<i64>, sequential: Option<bool>, now: i64) -> Option<i64> {
    // sqlx-cli's inference: versions below a plausible timestamp mean sequential numbering.
    let sequential = sequential.unwrap_or_else(|| newest.is_some_and(|v| v < 1_000_000_000_000));
    match (sequential, newest) {
        (true, Some(newest)) => newest.checked_add(1),
        (true, None) => Some(1),
        (false, Some(newest)) if newest >= now => newest.checked_add(1),
        (false, _) => Some(now),
    }
}

/// `YYYYMMDDHHMMSS` in UTC.
fn utc_timestamp(time: SystemTime) -> i64 {
    let secs = time.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = backend::calendar::civil_from_days(days);
    let (hour, minute, second) = (rest / 3600, rest % 3600 / 60, rest % 60);
    ((((year * 100 + month) * 100 + day) * 100 + hour) * 100 + minute) * 100 + second
}

/// `Add users.Email index` → `add_users_email_index`; refuses what is not ASCII letters, digits
/// and separators.
fn snake_case(name: &str) -> Result<String, anyhow::Error> {
    let allowed = "use ASCII letters, digits, spaces, `-` and `_` (e.g. `add users email index`)";
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '_'))) {
        return Err(anyhow!("the migration name may not contain {bad:?}: {allowed}"));
    }
    let mut out = String::new();
    let mut previous: Option<char> = None;
    for c in name.chars() {
        if matches!(c, ' ' | '-' | '_') {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
        } else {
            // CamelCase word boundaries become underscores too.
            if c.is_ascii_uppercase()
                && previous.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit())
                && !out.ends_with('_')
            {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        }
        previous = Some(c);
    }
    let out = out.trim_end_matches('_').to_owned();
    if out.is_empty() {
        return Err(anyhow!("the migration name is empty: {allowed}"));
    }
    if out.len() > MAX_NAME_LENGTH {
        return Err(anyhow!("the migration name is {} characters long; keep it under {MAX_NAME_LENGTH}", out.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_lower_snake_case() {
        assert_eq!(snake_case("Add users Email-index").expect("valid"), "add_users_email_index");
        assert_eq!(snake_case("AddUsersEmail").expect("valid"), "add_users_email");
        assert_eq!(snake_case("  create__jobs  ").expect("valid"), "create_jobs");
        for bad in ["../etc", "a/b", "", "  ", "é", "x.sql"] {
            assert!(snake_case(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(snake_case(&"a".repeat(101)).is_err());
    }

    #[test]
    fn versions_always_grow() {
        let now = 20261125120000;
        assert_eq!(next_version(None, None, now), Some(now));
        assert_eq!(next_version(Some(20261125110000), None, now), Some(now));
        assert_eq!(next_version(Some(now), None, now), Some(now + 1), "same second");
        assert_eq!(next_version(Some(20301231235959), None, now), Some(20301231235960), "clock behind the newest file");
        assert_eq!(next_version(Some(7), None, now), Some(8), "sequential folders stay sequential");
        assert_eq!(next_version(None, Some(true), now), Some(1));
        assert_eq!(next_version(Some(i64::MAX), None, now), None, "nothing follows the largest version");
        assert_eq!(next_version(Some(i64::MAX), Some(true), now), None);
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), 19700101000000);
        assert_eq!(utc_timestamp(UNIX_EPOCH + std::time::Duration::from_secs(1_795_614_245)), 20261125134405);
        assert_eq!(utc_timestamp(UNIX_EPOCH + std::time::Duration::from_secs(951_782_400)), 20000229000000);
    }

    proptest::proptest! {
        /// Any name is refused with a reason or becomes a safe file name part.
        #[test]
        fn arbitrary_names_are_refused_or_made_safe(name in "\\PC{0,120}") {
            if let Ok(snake) = snake_case(&name) {
                proptest::prop_assert!(!snake.is_empty() && snake.len() <= MAX_NAME_LENGTH);
                proptest::prop_assert!(snake.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
            }
        }
    }
}
