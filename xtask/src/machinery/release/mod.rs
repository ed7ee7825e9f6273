//! The running release survives the deploy: each release prestart migrates for is recorded with
//! its queries (`record`), and a pending migration is checked, before it commits, against the
//! queries of the release recorded before this one, which may still be serving (a rolling update)
//! or serve again (a rollback). A migration that breaks one of them is refused and rolled back.
//! See docs/releases.md.

mod compare;
mod describe;
mod insert;
pub mod queries;
pub mod record;
pub mod rehearse;
pub mod statements;

use sqlx::postgres::PgConnection;

pub use compare::Finding;
use describe::Described;
use queries::Query;

/// The release being deployed: its name and its queries.
#[derive(Debug, Clone)]
pub struct Release {
    pub name: String,
    pub queries: Vec<Query>,
}

/// Where the release's name came from, said once in the run's output.
impl Release {
    /// This binary's release: named by `PRESTART_RELEASE` (`given`), else by the commit it was
    /// built from, else by a hash of its queries.
    pub fn this(given: Option<&str>) -> anyhow::Result<Release> {
        Release::check_name(given)?;
        let queries = queries::built_in()?;
        let name = match given.map(str::trim).filter(|n| !n.is_empty()) {
            Some(name) => name.to_owned(),
            None => match queries::build_commit() {
                Some(commit) => commit.get(..12).unwrap_or(commit).to_owned(),
                None => queries::fingerprint(&queries),
            },
        };
        Ok(Release { name, queries })
    }
}

impl Release {
    /// A `PRESTART_RELEASE` (`given`) that may name a release; checked before the connection
    /// (see `crate::commands::prestart`), where [`Release::this`] comes while the login waits.
    pub fn check_name(given: Option<&str>) -> anyhow::Result<()> {
        match given.map(str::trim).filter(|n| !n.is_empty()) {
            Some(name) if !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-:/@+".contains(c)) => {
                Err(crate::base::exit::fail(
                    crate::base::exit::Failure::Config,
                    // The value is not repeated: a settings value never reaches an error.
                    anyhow::anyhow!(
                        "PRESTART_RELEASE holds a character a release's name may not: letters, digits and . _ - : / @ + \
                         only (an image tag, a version, a commit)"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// What prestart's release check needs: this release, and the releases to check against
/// (`--compatible-with`; none: the one recorded before this).
#[derive(Debug, Clone)]
pub struct Options {
    pub this: Release,
    pub compatible_with: Vec<String>,
    /// Refuse a migration that breaks them (every environment but `ENVIRONMENT=local`, where no
    /// earlier release serves anyone), or only say so.
    pub refuse: bool,
}

/// Whether a migration file is the contract step of an expand/contract change: one of its leading
/// comment lines reads `-- prestart: contract`. It is applied without the check (the old release
/// is gone), with a line saying which queries of which release it breaks.
pub fn is_contract(sql: &str) -> bool {
    sql.trim_start_matches('\u{feff}')
        .lines()
        .map(str::trim)
        .take_while(|line| line.is_empty() || line.starts_with("--"))
        .any(|line| {
            let words: Vec<&str> = line.trim_start_matches('-').split_whitespace().collect();
            words == ["prestart:", "contract"] || words == ["prestart:contract"]
        })
}

/// Whether every statement of `sql` only adds what no query can notice (an index, statistics, a
/// comment, an enum value): a `-- no-transaction` file of `CREATE INDEX CONCURRENTLY` needs no
/// rehearsal. SQL
/// the parser cannot read may do anything.
pub fn cannot_break(sql: &str) -> bool {
    use squawk_syntax::ast::Stmt;
    let parse = squawk_syntax::SourceFile::parse(sql);
    parse.errors().is_empty()
        && parse.tree().stmts().all(|statement| match statement {
            Stmt::CreateIndex(_) | Stmt::Analyze(_) | Stmt::Vacuum(_) | Stmt::Reindex(_) | Stmt::CommentOn(_) => true,
            // A new enum value: what PostgreSQL before 12 refuses in a transaction block.
            Stmt::AlterType(alter) => {
                use squawk_syntax::ast::AstNode as _;
                let words: Vec<String> =
                    alter.syntax().text().to_string().split_whitespace().map(str::to_ascii_uppercase).collect();
                words.windows(2).any(|pair| pair == ["ADD", "VALUE"]) && !words.iter().any(|w| w == "RENAME")
            }
            _ => false,
        })
}

/// One release's queries with their description on the schema before the pending migrations.
struct Against {
    release: String,
    queries: Vec<Query>,
    inserts: Vec<Option<insert::Target>>,
    before: Described,
    /// Statements of unknown origin (see [`STATEMENTS`]): any refusal counts as their failure.
    lenient: bool,
}

/// The name the statements of `pg_stat_statements` are checked under, as a release's queries.
pub const STATEMENTS: &str = "pg_stat_statements";

/// The check of a run's pending migrations against the releases that may still be serving.
pub struct Check {
    against: Vec<Against>,
}

impl Check {
    /// Describes the queries of `releases` on the schema `conn` sees now (outside a transaction).
    pub async fn prepare(conn: &mut PgConnection, releases: &[(&str, &[Query])]) -> Result<Check, sqlx::Error> {
        let mut against = Vec::with_capacity(releases.len());
        for (release, queries) in releases {
            let inserts: Vec<Option<insert::Target>> = queries.iter().map(|q| insert::target(&q.query)).collect();
            let lenient = *release == STATEMENTS;
            let before = describe::describe(conn, queries, &inserts, (false, lenient)).await?;
            let release = (*release).to_owned();
            against.push(Against { release, queries: queries.to_vec(), inserts, before, lenient });
        }
        Ok(Check { against })
    }

    /// How many queries it checks, and how many of them fail on the current schema already.
    pub fn counts(&self) -> (usize, usize) {
        let total = self.against.iter().map(|a| a.queries.len()).sum();
        let failing = self.against.iter().map(|a| compare::failing_already(&a.before)).sum();
        (total, failing)
    }

    /// The findings on the schema `conn` sees: inside a migration's open transaction, before its
    /// COMMIT (`in_transaction`), or on a throwaway copy after the migration ran there.
    pub async fn findings(&self, conn: &mut PgConnection, in_transaction: bool) -> Result<Vec<Finding>, sqlx::Error> {
        let mut findings = Vec::new();
        for against in &self.against {
            let modes = (in_transaction, against.lenient);
            let after = describe::describe(conn, &against.queries, &against.inserts, modes).await?;
            findings.extend(compare::compare(&against.release, &against.queries, &against.before, &after));
        }
        Ok(findings)
    }
}

/// The findings as lines: one per query and change.
pub fn lines(findings: &[Finding]) -> Vec<String> {
    findings
        .iter()
        .map(|f| format!("{} query {} `{}`: {}", f.release, f.hash, f.first_line, f.change.describe()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::is_contract;

    #[test]
    fn only_statements_that_add_what_no_query_notices_cannot_break() {
        assert!(super::cannot_break("CREATE INDEX CONCURRENTLY jobs_kind ON jobs (kind);\nANALYZE jobs;"));
        assert!(!super::cannot_break(
            "CREATE INDEX CONCURRENTLY i ON jobs (kind);\nALTER TABLE jobs RENAME kind TO k;"
        ));
        assert!(!super::cannot_break("DROP INDEX CONCURRENTLY users_email_key;"));
        assert!(super::cannot_break("ALTER TYPE job_status ADD VALUE IF NOT EXISTS 'paused';"));
        assert!(!super::cannot_break("ALTER TYPE job_status RENAME VALUE 'queued' TO 'waiting';"));
    }

    #[test]
    fn the_contract_mark_is_read_from_the_leading_comments_only() {
        assert!(is_contract("-- prestart: contract\nALTER TABLE jobs DROP COLUMN legacy;"));
        assert!(is_contract("\u{feff}-- drops what v3 stopped reading\n--   prestart: contract  \nSELECT 1;"));
        assert!(!is_contract("ALTER TABLE jobs DROP COLUMN legacy;\n-- prestart: contract"));
        assert!(!is_contract("-- prestart: contract later\nSELECT 1;"));
    }
}
