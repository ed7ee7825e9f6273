//! The checks of the migration files alone, which need no database.

use std::path::{Path, PathBuf};

use backend::migrations::{MigrationSet, MigrationSettings};

use super::super::{Inputs, Outcome};
use crate::base::workspace::display_path;
use crate::commands::lint::Config;
use crate::commands::lint::command::lint_set;

/// What the checks of the files need: the inputs, the folder, and what reading it gave.
pub(super) struct OnDisk<'a> {
    pub inputs: &'a Inputs,
    pub dir: PathBuf,
    pub loaded: &'a anyhow::Result<(MigrationSet, MigrationSettings, PathBuf)>,
}

type Check = fn(&OnDisk<'_>) -> anyhow::Result<Outcome>;

/// The checks of the files, in the order the report lists them.
pub(super) const CHECKS: &[(&str, Check)] = &[
    ("migrations.files", files),
    ("migrations.line_endings", line_endings),
    ("migrations.reversible_pairs", reversible_pairs),
    ("migrations.transactions", transactions),
];

/// The folder reads, its names are sqlx's, and each version is used once.
fn files(on_disk: &OnDisk<'_>) -> anyhow::Result<Outcome> {
    Ok(match on_disk.loaded {
        Ok((set, _, dir)) => {
            let ignored = ignored_files(dir);
            if ignored.is_empty() {
                Outcome::ok(format!("{} migrations in {}/, versions unique", set.files.len(), display_path(dir)))
            } else {
                Outcome::warn(
                    format!(
                        "sqlx ignores these files, whose names lack `<version>_<name>.sql`: {}",
                        ignored.join(", ")
                    ),
                    "rename them (cargo xtask new-migration NAME makes a correct name), or move them out of the folder",
                )
            }
        }
        Err(error) => {
            let message = format!("{error:#}");
            // The hint fits what failed: the settings, the folder, or the files in it.
            let hint = if backend::migrations::MigrationSettings::load(&on_disk.inputs.root).is_err() {
                "fix sqlx.toml: the [migrate] keys sqlx 0.9 reads (table-name, migrations-dir, ignored-chars, ...)"
            } else if !on_disk.dir.is_dir() {
                "pass --source DIR, or create the folder (cargo xtask new-migration NAME creates it with a first file)"
            } else {
                "fix the file names: <version>_<name>.sql, each version once"
            };
            Outcome::fail(message, hint)
        }
    })
}

/// CRLF line endings and byte-order marks change the checksum from one checkout to another.
fn line_endings(on_disk: &OnDisk<'_>) -> anyhow::Result<Outcome> {
    let Ok(entries) = std::fs::read_dir(&on_disk.dir) else { return Ok(Outcome::skipped("no migrations folder")) };
    let mut crlf = Vec::new();
    let mut bom = Vec::new();
    for entry in entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "sql")) {
        let bytes = std::fs::read(entry.path())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if bytes.starts_with(b"\xEF\xBB\xBF") {
            bom.push(name.clone());
        }
        if bytes.windows(2).any(|w| w == b"\r\n") {
            crlf.push(name);
        }
    }
    Ok(if crlf.is_empty() && bom.is_empty() {
        Outcome::ok("no CRLF line endings or byte-order marks")
    } else {
        let mut found = Vec::new();
        if !crlf.is_empty() {
            found.push(format!("CRLF line endings in {}", crlf.join(", ")));
        }
        if !bom.is_empty() {
            found.push(format!("a byte-order mark in {}", bom.join(", ")));
        }
        Outcome::warn(
            format!("{}: the checksum differs from another checkout's", found.join("; ")),
            "store them with LF and no BOM (.gitattributes: `*.sql text eol=lf`), or set ignored-chars in sqlx.toml",
        )
    })
}

/// Each down file has its migration, and a reversible migration its down file.
fn reversible_pairs(on_disk: &OnDisk<'_>) -> anyhow::Result<Outcome> {
    let Ok((set, _, _)) = on_disk.loaded else { return Ok(Outcome::skipped("the migrations cannot be read")) };
    let pairing = set.pairing();
    let mut found = Vec::new();
    if !pairing.ups_without_down.is_empty() {
        found.push(format!(
            "`.up.sql` files without their down file, where revert stops: {} missing",
            pairing.ups_without_down.join(", ")
        ));
    }
    if !pairing.orphan_downs.is_empty() {
        found.push(format!(
            "down files with no migration of their version, which nothing runs: {}",
            pairing.orphan_downs.join(", ")
        ));
    }
    Ok(if found.is_empty() {
        Outcome::ok(match set.downs.len() {
            0 => "no reversible migrations".to_owned(),
            1 => "1 migration has its down file".to_owned(),
            n => format!("{n} migrations have their down files"),
        })
    } else {
        Outcome::warn(
            found.join("; "),
            "a down file is `<version>_<name>.down.sql` beside its migration, named `.up.sql` or `.sql`: add it \
         beside an applied migration without renaming or editing that file",
        )
    })
}

/// Each statement can run the way its file runs it (in a transaction or not).
fn transactions(on_disk: &OnDisk<'_>) -> anyhow::Result<Outcome> {
    let Ok((set, _, _)) = on_disk.loaded else { return Ok(Outcome::skipped("the migrations cannot be read")) };
    // Statements the parser cannot read are the linter's to report, not this check's.
    let findings = lint_set(set, &Config::transactions_only(), None, |_| true, false).findings;
    Ok(if findings.is_empty() {
        Outcome::ok("every statement can run the way its file runs it (in a transaction or not)")
    } else {
        Outcome::fail(
            findings
                .iter()
                .map(|f| format!("{}:{}: {}", display_path(&f.file), f.line, f.message))
                .collect::<Vec<_>>()
                .join("; "),
            findings.first().map(|f| f.safe.clone()).unwrap_or_default(),
        )
    })
}

/// `.sql` files that sqlx skips without a word: no `_` between version and name.
fn ignored_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".sql") && !name.contains('_'))
        .collect()
}
