//! The migrations a build knows, the ones a database has applied, and how the two compare.
//!
//! `xtask` reads the folder at run time (as sqlx-cli does); backend and worker embed it at build
//! time. Both compare against the database the same way, with sqlx-cli's table and checksums.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};

use crate::config::ConfigError;

#[cfg(feature = "server")]
pub mod embedded;
mod status;

pub use status::{Entry, State, Status};

/// The migration settings of `sqlx.toml` that sqlx 0.9 reads, with sqlx's defaults.
#[derive(Debug, Clone)]
pub struct MigrationSettings {
    pub table_name: String,
    pub ignored_chars: BTreeSet<char>,
    pub create_schemas: Vec<String>,
    /// `migrations-dir`, relative to the folder holding `sqlx.toml`.
    pub migrations_dir: String,
    /// `defaults.migration-type`: `Some(true)` reversible, `Some(false)` simple, `None` inferred.
    pub reversible_by_default: Option<bool>,
    /// `defaults.migration-versioning`: `Some(true)` sequential, `Some(false)` timestamps, `None`
    /// inferred.
    pub sequential_versions: Option<bool>,
}

impl Default for MigrationSettings {
    fn default() -> Self {
        MigrationSettings {
            table_name: "_sqlx_migrations".into(),
            ignored_chars: BTreeSet::new(),
            create_schemas: Vec::new(),
            migrations_dir: "migrations".into(),
            reversible_by_default: None,
            sequential_versions: None,
        }
    }
}

impl MigrationSettings {
    /// Reads `sqlx.toml` in `root` if it exists.
    pub fn load(root: &Path) -> Result<Self, ConfigError> {
        let path = root.join("sqlx.toml");
        let config = sqlx::_unstable::config::Config::try_from_path_or_default(path.clone())
            .map_err(|e| ConfigError::new(format!("{}: {e}", path.display())))?;
        let migrate = config.migrate;
        use sqlx::_unstable::config::migrate::{DefaultMigrationType, DefaultVersioning};
        let reversible_by_default = match migrate.defaults.migration_type {
            DefaultMigrationType::Inferred => None,
            DefaultMigrationType::Simple => Some(false),
            DefaultMigrationType::Reversible => Some(true),
        };
        let sequential_versions = match migrate.defaults.migration_versioning {
            DefaultVersioning::Inferred => None,
            DefaultVersioning::Timestamp => Some(false),
            DefaultVersioning::Sequential => Some(true),
        };
        Ok(MigrationSettings {
            reversible_by_default,
            sequential_versions,
            table_name: migrate.table_name().to_owned(),
            migrations_dir: migrate.migrations_dir().to_owned(),
            ignored_chars: migrate.ignored_chars,
            create_schemas: migrate.create_schemas.into_iter().map(String::from).collect(),
        })
    }

    /// The checksum sqlx-cli records for `sql` under these settings.
    pub fn checksum(&self, sql: &str) -> Vec<u8> {
        use sha2::{Digest, Sha384};
        // sqlx hashes the text with the ignored characters left out, fragment by fragment.
        let mut digest = Sha384::new();
        for fragment in sql.split(|c| self.ignored_chars.contains(&c)) {
            digest.update(fragment);
        }
        digest.finalize().to_vec()
    }
}

/// One migration to apply, and the file it came from (none when embedded in the binary).
#[derive(Debug, Clone)]
pub struct MigrationFile {
    pub migration: Migration,
    pub path: Option<PathBuf>,
}

impl MigrationFile {
    /// The file name, or `<version>_<description>` for an embedded migration.
    pub fn name(&self) -> String {
        match &self.path {
            Some(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            None => format!("{}_{}", self.migration.version, self.migration.description.replace(' ', "_")),
        }
    }

    /// The name of the file that reverts this migration, beside it: `X.down.sql` for `X.sql`
    /// and `X.up.sql` alike.
    pub fn down_file_name(&self) -> String {
        let name = self.name();
        let stem = name.strip_suffix(".up.sql").or_else(|| name.strip_suffix(".sql")).unwrap_or(&name);
        format!("{stem}.down.sql")
    }
}

/// Two forward migrations of one version.
fn shared_version(version: i64, first: &str, second: &str) -> ConfigError {
    ConfigError::new(format!(
        "two migrations share version {version}: {first} and {second}; rename one with a new version (cargo xtask \
         new-migration)"
    ))
}

/// A file's text in one `open` and as few `read`s as it takes (the last one finding its end), where
/// `fs::read_to_string` asks for its size first. `folder`: the folder opened once, which the file
/// is opened relative to (`openat`: no walk of the whole path per file); `chunk`: the reader's
/// buffer, made once for all the files (16 KiB zeroed per file cost 200 files 40 µs).
fn read_text(folder: &std::os::fd::OwnedFd, name: &std::ffi::OsStr, chunk: &mut [u8]) -> std::io::Result<String> {
    use rustix::fs::{Mode, OFlags, openat};
    use std::io::Read as _;
    let mut file = std::fs::File::from(openat(folder, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?);
    let mut bytes = Vec::new();
    loop {
        match file.read(chunk) {
            Ok(0) => break,
            Ok(read) => bytes.extend_from_slice(&chunk[..read]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("it is not UTF-8 text (byte {at} is not): save it as UTF-8, as sqlx-cli requires"),
        )
    })
}

/// The forward migrations of one source, in version order, and the down files that revert them.
#[derive(Debug, Clone, Default)]
pub struct MigrationSet {
    pub files: Vec<MigrationFile>,
    /// `<version>_<name>.down.sql`, by version.
    pub downs: BTreeMap<i64, MigrationFile>,
}

/// A migrations folder listed, every name checked by sqlx's rules (`VERSION_DESCRIPTION[.up|.down].sql`;
/// anything else is left out), its files then read one at a time, so that a caller can do other
/// work between them: a no-op prestart reads them while the server answers its first query.
/// sqlx's resolver reads the same way, in more system calls: two `stat`s and two path lookups a
/// file, 1.5 ms for 200 files on a 2-core machine; here the kind of entry comes from the
/// listing and a file is read without asking its size first.
pub struct FolderReader {
    dir: PathBuf,
    listed: std::vec::IntoIter<Listed>,
    settings: MigrationSettings,
    files: Vec<MigrationFile>,
    /// The folder, which each file is opened relative to, and what each is read through (see
    /// `read_text`).
    folder: std::os::fd::OwnedFd,
    chunk: Box<[u8]>,
}

/// A file of the folder whose name says it is a migration.
struct Listed {
    path: PathBuf,
    version: i64,
    migration_type: MigrationType,
    description: String,
}

impl FolderReader {
    pub fn open(dir: &Path, settings: &MigrationSettings) -> Result<Self, ConfigError> {
        if !dir.is_dir() {
            return Err(ConfigError::new(format!(
                "migrations folder {} does not exist: pass --source DIR, or run from the workspace",
                dir.display()
            )));
        }
        let cannot =
            |e: &dyn std::fmt::Display| ConfigError::new(format!("cannot read migrations in {}: {e}", dir.display()));
        let dir = dir.canonicalize().map_err(|e| cannot(&e))?;
        let folder = rustix::fs::open(
            &dir,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| cannot(&std::io::Error::from(e)))?;
        let mut listed = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| cannot(&e))? {
            let entry = entry.map_err(|e| cannot(&e))?;
            listed.extend(Self::list(&entry).map_err(|e| cannot(&e))?);
        }
        // sqlx's order: version, then type, then path (which down file of two wins is not up to
        // the file system's listing order).
        listed.sort_by(|a, b| (a.version, a.migration_type, &a.path).cmp(&(b.version, b.migration_type, &b.path)));
        let ups: Vec<&Listed> = listed.iter().filter(|l| !l.migration_type.is_down_migration()).collect();
        if let Some(pair) = ups.windows(2).find(|pair| pair[0].version == pair[1].version) {
            let name = |path: &Path| path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            return Err(shared_version(pair[0].version, &name(&pair[0].path), &name(&pair[1].path)));
        }
        Ok(FolderReader {
            dir,
            listed: listed.into_iter(),
            settings: settings.clone(),
            files: Vec::new(),
            folder,
            chunk: vec![0; 16 * 1024].into_boxed_slice(),
        })
    }

    /// The versions of the forward migrations listed.
    pub fn versions(&self) -> impl Iterator<Item = i64> + '_ {
        self.listed.as_slice().iter().filter(|l| !l.migration_type.is_down_migration()).map(|l| l.version)
    }

    /// One entry of the folder, as sqlx's resolver takes it: a file (a link counts as what it
    /// points to) whose name parses; `None` for anything else.
    fn list(entry: &std::fs::DirEntry) -> Result<Option<Listed>, String> {
        let path = entry.path();
        let metadata_error =
            |e: std::io::Error| format!("error getting metadata of migration path {}: {e}", path.display());
        let kind = entry.file_type().map_err(metadata_error)?;
        let is_file = if kind.is_symlink() {
            std::fs::metadata(&path).map_err(metadata_error)?.is_file()
        } else {
            kind.is_file()
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some((version, rest)) = name.split_once('_').filter(|(_, rest)| is_file && rest.ends_with(".sql")) else {
            return Ok(None);
        };
        let version: i64 = version.parse().map_err(|_| {
            format!("error parsing migration filename {name:?}; expected integer version prefix (e.g. `01_foo.sql`)")
        })?;
        let migration_type = MigrationType::from_filename(rest);
        let description = rest.trim_end_matches(migration_type.suffix()).replace('_', " ");
        Ok(Some(Listed { path, version, migration_type, description }))
    }

    /// Reads the next listed file (its text, `-- no-transaction` on its first line, its checksum
    /// without the ignored characters); `false` once all are read.
    pub fn read_next(&mut self) -> Result<bool, ConfigError> {
        let Some(Listed { path, version, migration_type, description }) = self.listed.next() else { return Ok(false) };
        let sql = read_text(&self.folder, path.file_name().unwrap_or_default(), &mut self.chunk).map_err(|e| {
            ConfigError::new(format!(
                "cannot read migrations in {}: error reading contents of migration {}: {e}",
                self.dir.display(),
                path.display()
            ))
        })?;
        let migration = Migration {
            version,
            description: Cow::Owned(description),
            migration_type,
            no_tx: sql.starts_with("-- no-transaction"),
            checksum: Cow::Owned(self.settings.checksum(&sql)),
            sql: sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(sql)),
        };
        self.files.push(MigrationFile { migration, path: Some(path) });
        Ok(true)
    }

    /// The set, in the listing's order.
    pub fn finish(self) -> Result<MigrationSet, ConfigError> {
        MigrationSet::forward_only(self.files.into_iter())
    }
}

impl MigrationSet {
    /// Reads a migrations folder the way sqlx-cli does.
    pub fn read_dir(dir: &Path, settings: &MigrationSettings) -> Result<Self, ConfigError> {
        let mut reader = FolderReader::open(dir, settings)?;
        while reader.read_next()? {}
        reader.finish()
    }

    /// The migrations a binary embeds, with checksums under the run-time settings (which may
    /// ignore characters that the build did not).
    pub fn from_migrator(migrator: &Migrator, settings: &MigrationSettings) -> Result<Self, ConfigError> {
        let files = migrator.iter().map(|m| {
            let mut migration = m.clone();
            migration.checksum = Cow::Owned(settings.checksum(migration.sql.as_str()));
            MigrationFile { migration, path: None }
        });
        Self::forward_only(files)
    }

    fn forward_only(files: impl Iterator<Item = MigrationFile>) -> Result<Self, ConfigError> {
        let mut by_version: BTreeMap<i64, MigrationFile> = BTreeMap::new();
        let (downs, ups): (Vec<_>, Vec<_>) = files.partition(|f| f.migration.migration_type.is_down_migration());
        for file in ups {
            if let Some(existing) = by_version.get(&file.migration.version) {
                return Err(shared_version(file.migration.version, &existing.name(), &file.name()));
            }
            by_version.insert(file.migration.version, file);
        }
        let downs = downs.into_iter().map(|f| (f.migration.version, f)).collect();
        Ok(MigrationSet { files: by_version.into_values().collect(), downs })
    }

    /// Some migration of the source has this version.
    pub fn has_version(&self, version: i64) -> bool {
        self.files.iter().any(|f| f.migration.version == version) || self.downs.contains_key(&version)
    }

    /// What breaks the one rule of reversible migrations, as sqlx reads them: a migration can be
    /// reverted when `<version>_<name>.down.sql` lies beside its up file, be that named
    /// `.up.sql` or plain `.sql`. (So a down file is added to an applied migration without
    /// touching the applied file: the checksum covers only the up SQL.)
    pub fn pairing(&self) -> Pairing {
        let orphan_downs = self
            .downs
            .iter()
            .filter(|(version, _)| !self.files.iter().any(|f| f.migration.version == **version))
            .map(|(_, down)| down.name())
            .collect();
        let ups_without_down = self
            .files
            .iter()
            .filter(|f| f.migration.migration_type == MigrationType::ReversibleUp)
            .filter(|f| !self.downs.contains_key(&f.migration.version))
            .map(MigrationFile::down_file_name)
            .collect();
        Pairing { orphan_downs, ups_without_down }
    }
}

/// The down files that have no migration, and the ones `.up.sql` files announce but lack.
#[derive(Debug, Default)]
pub struct Pairing {
    pub orphan_downs: Vec<String>,
    pub ups_without_down: Vec<String>,
}

/// A `bytea` as the simple protocol sends it (`\\x` and hex), decoded in one pass: sqlx's
/// decoding grows its vector a byte pair at a time, four allocations for a checksum.
fn bytea_from_text(row: &sqlx::postgres::PgRow, index: usize) -> Result<Vec<u8>, sqlx::Error> {
    let printed: &str = row.try_get_unchecked(index)?;
    let decoded = printed.strip_prefix("\\x").ok_or_else(|| "text does not start with \\x".into()).and_then(|hex| {
        let mut bytes = vec![0; hex.len() / 2];
        hex::decode_to_slice(hex, &mut bytes).map(|()| bytes).map_err(sqlx::error::BoxDynError::from)
    });
    decoded.map_err(|source| sqlx::Error::ColumnDecode { index: index.to_string(), source })
}

/// An applied row, by position, in the order of `applied_rows_sql`, and decoded from the text the
/// simple protocol sends without matching each column's type first: with the checks, two
/// hundred rows cost the no-op 0.3 ms. A column of another type still fails to decode (a
/// `version` that is not a number, a `checksum` that is not hex).
fn applied_row(row: &sqlx::postgres::PgRow) -> Result<AppliedRow, sqlx::Error> {
    Ok(AppliedRow {
        version: row.try_get_unchecked(0)?,
        description: row.try_get_unchecked(1)?,
        installed_on: row.try_get_unchecked(2)?,
        success: row.try_get_unchecked(3)?,
        checksum: bytea_from_text(row, 4)?,
    })
}

/// One row of the migrations table.
#[derive(Debug, Clone)]
pub struct AppliedRow {
    pub version: i64,
    pub description: String,
    /// As the server printed it: turned into RFC 3339 (`db::rfc3339_seconds`) only where it is
    /// shown, which a no-op run never does (two hundred rows cost it a tenth of a millisecond).
    pub installed_on: String,
    pub success: bool,
    pub checksum: Vec<u8>,
}

/// How long a read of the migrations table waits for another session's lock on it before it
/// gives up with 55P03 (and the caller names that session, and tries again while it may).
pub const TABLE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The applied rows of `table_name`, oldest first; none when the table does not exist yet.
pub async fn applied_rows(conn: &mut PgConnection, table_name: &str) -> Result<Vec<AppliedRow>, sqlx::Error> {
    Ok(applied_rows_and(conn, table_name, &[]).await?.0)
}

/// What a read sent after the applied rows, in the same message, found.
#[derive(Debug)]
pub enum Followed {
    /// It did not run: the migrations table itself is missing, or a read before it in the
    /// message failed.
    NotRead,
    /// Its table does not exist (SQLSTATE 42P01).
    Missing,
    Rows(Vec<sqlx::postgres::PgRow>),
}

/// The message of [`applied_rows_and`]. One implicit transaction: the server gives up the read
/// itself before our bound does (so an abandoned read never stays queued on the server), and a
/// table another session holds locked answers 55P03 within a second instead of queueing us
/// behind it. The checksums come as hex whatever `bytea_output` the role or database sets
/// (`escape` would not decode, where sqlx-cli reads them in binary and is not affected).
pub fn applied_rows_sql(table_name: &str, then: &[&str]) -> String {
    format!(
        "{}SET LOCAL lock_timeout = {}; SET LOCAL bytea_output = hex; \
         SELECT version, description, installed_on, success, checksum FROM {table_name}{}",
        crate::db::server_side_bound(),
        TABLE_LOCK_WAIT.as_millis(),
        then.iter().map(|then| format!(";\n{then}")).collect::<String>()
    )
}

/// The applied rows of `table_name`, and the rows of each of `then` (`SELECT`s of the caller's,
/// which must take no input from outside) read in the same message: a no-op run reads everything
/// it needs in one round trip. One whose table is missing ends the message: those after it are
/// not read.
pub async fn applied_rows_and(
    conn: &mut PgConnection,
    table_name: &str,
    then: &[&str],
) -> Result<(Vec<AppliedRow>, Vec<Followed>), sqlx::Error> {
    use futures_util::TryStreamExt as _;
    let sql = applied_rows_sql(table_name, then);
    // The statements answer in order, each ending with its own completion: the three SETs, the
    // applied rows, then each of `then`.
    const APPLIED: usize = 3;
    let mut statement = 0;
    // Each applied row is decoded as it arrives, while the server still reads what `then` asks.
    let mut applied: Result<Vec<AppliedRow>, sqlx::Error> = Ok(Vec::new());
    let mut followed: Vec<Vec<sqlx::postgres::PgRow>> = then.iter().map(|_| Vec::new()).collect();
    let mut stream = sqlx::raw_sql(AssertSqlSafe(sql)).fetch_many(&mut *conn);
    let ended = loop {
        match stream.try_next().await {
            Ok(Some(sqlx::Either::Left(_done))) => statement += 1,
            Ok(Some(sqlx::Either::Right(row))) if statement == APPLIED => {
                if let Ok(rows) = &mut applied {
                    match applied_row(&row) {
                        Ok(decoded) => rows.push(decoded),
                        // Said once the message is read to its end.
                        Err(error) => applied = Err(error),
                    }
                }
            }
            Ok(Some(sqlx::Either::Right(row))) => {
                if let Some(rows) = followed.get_mut(statement.saturating_sub(APPLIED + 1)) {
                    rows.push(row);
                }
            }
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    drop(stream);
    // Each of `then` that answered; the one that failed, `Missing` when its table is, else not read
    // (its caller reads again on its own, with its own handling: a table another session holds
    // locked, a column a pending migration adds, are its matter, not the migrations table's); and
    // none after it, which did not run.
    let (answered, failed) = match ended {
        Ok(()) => (then.len(), Followed::NotRead),
        // The migrations table is missing: nothing was applied yet, and `then` never ran.
        Err(sqlx::Error::Database(e)) if statement <= APPLIED && e.code().as_deref() == Some("42P01") => {
            return Ok((Vec::new(), then.iter().map(|_| Followed::NotRead).collect()));
        }
        Err(sqlx::Error::Database(e)) if statement > APPLIED => {
            let missing = e.code().as_deref() == Some("42P01");
            (statement - APPLIED - 1, if missing { Followed::Missing } else { Followed::NotRead })
        }
        Err(e) => return Err(e),
    };
    let mut failed = Some(failed);
    let followed = followed
        .into_iter()
        .enumerate()
        .map(|(index, rows)| match index.cmp(&answered) {
            std::cmp::Ordering::Less => Followed::Rows(rows),
            std::cmp::Ordering::Equal => failed.take().unwrap_or(Followed::NotRead),
            std::cmp::Ordering::Greater => Followed::NotRead,
        })
        .collect();
    let mut applied = applied?;
    // Sorted here rather than by the server, which would cost a fresh server process more.
    applied.sort_unstable_by_key(|row| row.version);
    Ok((applied, followed))
}
