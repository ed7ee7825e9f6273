//! `breaks-previous-release`: the release check of prestart, offline, for CI and review. The
//! pending migrations are applied one by one to a throwaway copy of the schema the deployed
//! release's migrations build (in a throwaway cluster on this machine), and the deployed release's
//! queries (its `.sqlx`) are described before and after each: a query that no longer prepares,
//! a column it reads that changes type, an INSERT that leaves out a column turned required.
//!
//! `--against REF` takes the deployed release from git: REF's migrations folder and its `.sqlx`,
//! and checks the migrations added since REF. `--previous-queries DIR` takes another build's
//! `.sqlx` folder, and checks the migrations the run selected against the schema the others build.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use backend::migrations::{MigrationFile, MigrationSet, MigrationSettings};
use xshell::{Shell, cmd};

use super::Finding;
use super::rules::{Own, RuleId};
use crate::base::exit::{Failure, fail};
use crate::base::ui;
use crate::machinery::release::queries::{self, Query};
use crate::machinery::release::rehearse::{Rehearsal, on_throwaway};

/// The deployed release to check against: its name, its queries, and the migrations it has.
pub struct Previous {
    pub name: String,
    pub queries: Vec<Query>,
    /// Its migrations (REF's files), or `None`: those of this folder the run did not select.
    pub migrations: Option<MigrationSet>,
    _checkout: Option<tempfile::TempDir>,
}

impl Previous {
    /// REF's migrations folder and `.sqlx` (at `sqlx_dir` within the repository), from git.
    /// REF's migrations folder and `.sqlx` (`sqlx_dir`, default `.sqlx` at the top of the
    /// repository), from the git repository the migrations folder `dir` is in: any sqlx project.
    pub fn from_git(
        reference: &str,
        dir: &Path,
        sqlx_dir: Option<&Path>,
        settings: &MigrationSettings,
    ) -> anyhow::Result<Previous> {
        let sh = Shell::new()?;
        let dir = dir.canonicalize().map_err(|e| fail(Failure::Config, anyhow!("{}: {e}", dir.display())))?;
        let top = cmd!(sh, "git -C {dir} rev-parse --show-toplevel").quiet().ignore_stderr().read().map_err(|_| {
            fail(Failure::Config, anyhow!("--against {reference}: {} is in no git repository", dir.display()))
        })?;
        let root = PathBuf::from(top.trim());
        let _root = sh.push_dir(&root);
        let spec = format!("{reference}^{{commit}}");
        let commit =
            cmd!(sh, "git rev-parse --verify --quiet {spec}").quiet().ignore_stderr().read().map_err(|_| {
                fail(
                    Failure::Config,
                    anyhow!("--against {reference}: not a commit of the git repository at {}", root.display()),
                )
            })?;
        let sqlx_dir = match sqlx_dir {
            Some(given) => given.canonicalize().unwrap_or_else(|_| given.to_path_buf()),
            None => root.join(".sqlx"),
        };
        let relative =
            |path: &Path| path.strip_prefix(&root).map(Path::to_path_buf).unwrap_or_else(|_| path.to_path_buf());
        let (migrations_rel, sqlx_rel) = (relative(&dir), relative(&sqlx_dir));
        let checkout = tempfile::Builder::new().prefix("prestart-against-").tempdir()?;
        let archive = checkout.path().join("ref.tar");
        // One folder at a time: either may be missing at REF (an early release had no queries).
        for path in [&migrations_rel, &sqlx_rel] {
            let listed = cmd!(sh, "git ls-tree -d --name-only {commit} -- {path}").quiet().ignore_stderr().read()?;
            if listed.trim().is_empty() {
                continue;
            }
            cmd!(sh, "git archive --format=tar -o {archive} {commit} -- {path}").quiet().run()?;
            let into = checkout.path();
            cmd!(sh, "tar -xf {archive} -C {into}").quiet().run().context("unpack REF's files")?;
            std::fs::remove_file(&archive)?;
        }
        let their_dir = checkout.path().join(&migrations_rel);
        let migrations = match their_dir.is_dir() {
            true => MigrationSet::read_dir(&their_dir, settings)
                .map_err(|e| fail(Failure::Config, anyhow!("--against {reference}: {e}")))?,
            false => MigrationSet::default(),
        };
        let their_sqlx = checkout.path().join(&sqlx_rel);
        let queries = if their_sqlx.is_dir() { queries::from_dir(&their_sqlx)? } else { Vec::new() };
        let short = commit.get(..12).unwrap_or(&commit);
        Ok(Previous {
            name: format!("{reference} ({short})"),
            queries,
            migrations: Some(migrations),
            _checkout: Some(checkout),
        })
    }

    /// Another build's `.sqlx` folder.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Previous> {
        let queries = queries::from_dir(dir).map_err(|e| fail(Failure::Config, e))?;
        Ok(Previous { name: crate::base::workspace::display_path(dir), queries, migrations: None, _checkout: None })
    }

    /// The versions the previous release has, where it says (with `--against`).
    pub fn versions(&self) -> Option<Vec<i64>> {
        self.migrations.as_ref().map(|set| set.files.iter().map(|f| f.migration.version).collect())
    }
}

/// The findings of `pending` (this folder's files, in order) against `previous`; `applied`:
/// this folder's files the previous release is taken to have, where it has no folder of its own.
pub fn check(
    previous: &Previous,
    applied: &[&MigrationFile],
    pending: &[&MigrationFile],
    settings: &MigrationSettings,
    roles: &[String],
) -> anyhow::Result<Vec<Finding>> {
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    if previous.queries.is_empty() {
        ui::line(format!("{} has no sqlx query files: no query of it to check the migrations against", previous.name));
        return Ok(Vec::new());
    }
    let theirs: Vec<&MigrationFile> = match &previous.migrations {
        Some(set) => set.files.iter().collect(),
        None => applied.to_vec(),
    };
    ui::line(format!(
        "checking {} pending migrations against the {} queries of {}, on a throwaway copy of its schema",
        pending.len(),
        previous.queries.len(),
        previous.name
    ));
    let rehearsal = Rehearsal { applied: &theirs, pending, settings, roles, major: None };
    let releases = [(previous.name.as_str(), previous.queries.as_slice())];
    // A signal stops it: the throwaway cluster is stopped and removed as a cleanup.
    let rehearsed = crate::base::interrupt::unless_signalled(on_throwaway(&rehearsal, &releases));
    let findings = crate::base::interrupt::block_on(rehearsed)?
        .map_err(|why| fail(Failure::Config, anyhow!("the check against {} cannot run: {why}", previous.name)))?;
    Ok(pending
        .iter()
        .zip(findings)
        .flat_map(|(file, found)| {
            let path = file.path.clone().unwrap_or_else(|| PathBuf::from(file.name()));
            found.into_iter().filter(|f| f.change.breaks()).map(move |f| Finding {
                file: path.clone(),
                line: 1,
                column: 1,
                rule: RuleId::Own(Own::BreaksPreviousRelease),
                severity: RuleId::Own(Own::BreaksPreviousRelease).severity(),
                message: format!("{} query {} `{}`: {}", f.release, f.hash, f.first_line, f.change.describe()),
                safe: "expand, then contract, a release apart (docs/releases.md); a file that runs once the old \
                       release is gone says so with `-- prestart: contract`"
                    .into(),
                table: None,
                table_bytes: None,
            })
        })
        .filter(|finding| !is_contract(pending, &finding.file))
        .collect())
}

/// Whether the file at `path` is marked as a contract step.
fn is_contract(pending: &[&MigrationFile], path: &Path) -> bool {
    pending
        .iter()
        .find(|f| f.path.as_deref() == Some(path))
        .is_some_and(|f| crate::machinery::release::is_contract(f.migration.sql.as_str()))
}
