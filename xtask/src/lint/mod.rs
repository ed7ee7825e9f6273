//! The migration linter: squawk's PostgreSQL parser and rules (squawk-syntax, squawk-linter), fed
//! what only this project knows: how sqlx runs each file (`-- no-transaction`), that prestart sets
//! `lock_timeout` itself, which tables the deploy creates (nobody uses them yet), NOT NULL checks
//! validated by earlier migrations, and, when the database answers, its version, unique indexes and
//! table sizes. docs/linting.md lists the rules and what each of these changes.
//!
//! A statement the parser cannot read is reported as such, never skipped in silence. A comment
//! `-- lint: allow RULE` or squawk's own `-- squawk-ignore RULE` above a statement (or on its
//! lines) exempts it from that rule.

mod adding_exclude_constraint;
mod config;
pub mod facts;
mod history;
mod locks;
mod needs_no_transaction;
mod no_transaction_single_statement;
mod report;
pub mod rules;

pub mod command;

use std::path::{Path, PathBuf};

use squawk_syntax::ast::{self, AstNode};
use squawk_syntax::{Parse, SourceFile};

pub use config::Config;
use facts::Facts;
use history::History;
use rules::{Kind, Own, RuleId, Severity};

/// One thing the linter reports.
#[derive(Debug, Clone)]
pub struct Finding {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub rule: RuleId,
    pub severity: Severity,
    pub message: String,
    pub safe: String,
    /// The table (or index) the statement changes, when it changes one.
    pub table: Option<String>,
    /// Its size on the database, when the database answered.
    pub table_bytes: Option<i64>,
}

/// What linting a set of files found.
#[derive(Default)]
pub struct Outcome {
    pub findings: Vec<Finding>,
    /// Transactional files where squawk's require-lock-timeout fired: moot, prestart sets one.
    pub moot_lock_timeout: usize,
}

/// Lints files in version order, carrying what earlier files did.
pub struct Engine<'a> {
    config: &'a Config,
    facts: Option<&'a Facts>,
    history: History,
}

/// A statement and where it is.
struct Statement {
    node: ast::Stmt,
    start: usize,
    end: usize,
}

impl<'a> Engine<'a> {
    pub fn new(config: &'a Config, facts: Option<&'a Facts>) -> Engine<'a> {
        let mut history = History::default();
        history.existing = facts.map(Facts::table_names).unwrap_or_default();
        Engine { config, facts, history }
    }

    /// Lints one migration's SQL, adding what it finds to `outcome` when `report`; otherwise only
    /// learns from it. `no_transaction` is sqlx's own reading of the file (a byte-order mark hides
    /// `-- no-transaction` from it). `in_deploy`: not applied yet, so tables it creates are new to
    /// the files after it.
    pub fn lint(
        &mut self,
        file: &Path,
        sql: &str,
        no_transaction: bool,
        report: bool,
        in_deploy: bool,
        outcome: &mut Outcome,
    ) {
        // A byte-order mark is doctor's to report (it changes the checksum); the SQL after it is ours.
        let sql = sql.strip_prefix('\u{feff}').unwrap_or(sql);
        let report = report && !self.config.excludes(file);
        let parse = SourceFile::parse(sql);
        let statements: Vec<Statement> = parse
            .tree()
            .stmts()
            .map(|node| {
                let range = node.syntax().text_range();
                Statement { start: offset(range.start()), end: offset(range.end()), node }
            })
            .collect();
        let mut history = self.history.clone();
        if report {
            let (findings, moot) = self.check(file, sql, &parse, &statements, no_transaction, &mut history);
            outcome.moot_lock_timeout += usize::from(moot);
            outcome.findings.extend(findings);
        } else {
            for statement in &statements {
                history.learn(&statement.node);
            }
        }
        if !in_deploy {
            history.new_relations = std::mem::take(&mut self.history.new_relations);
        }
        self.history = history;
    }

    /// squawk's findings for the file, with the rules turned on and this file's transaction mode.
    fn squawk(&self, parse: &Parse<SourceFile>, sql: &str, no_transaction: bool) -> Vec<squawk_linter::Violation> {
        let rules = self.config.enabled.iter().filter_map(|r| match r {
            RuleId::Squawk(rule) => Some(*rule),
            RuleId::Own(_) => None,
        });
        let mut linter = squawk_linter::Linter::from(rules);
        linter.settings.assume_in_transaction = !no_transaction;
        if let Some(version) = self.facts.map(|f| f.version).or(self.config.pg_version) {
            linter.settings.pg_version = version;
        }
        linter.lint(parse, sql)
    }

    /// The findings on one file, statement by statement, each decided with what the statements
    /// before it did (`history`, which learns as it goes); and whether require-lock-timeout was moot.
    fn check(
        &self,
        file: &Path,
        sql: &str,
        parse: &Parse<SourceFile>,
        statements: &[Statement],
        no_transaction: bool,
        history: &mut History,
    ) -> (Vec<Finding>, bool) {
        let on = |rule: Own| self.config.enabled.contains(&RuleId::Own(rule));
        let mut drafts = Vec::new();
        let mut moot = false;
        // squawk takes a table made earlier in the file for one nobody uses; a `CREATE TABLE IF
        // NOT EXISTS` of a table that exists makes nothing, so squawk does not see it.
        let violations = match history::without_creates_of_existing(
            sql,
            statements.iter().map(|s| (s.start, s.end, &s.node)),
            &history.existing,
        ) {
            Some(masked) => self.squawk(&SourceFile::parse(&masked), &masked, no_transaction),
            None => self.squawk(parse, sql, no_transaction),
        };
        let mut violations = violations.into_iter().peekable();
        for (index, statement) in statements.iter().enumerate() {
            // Findings outside any statement: squawk's, on an ignore comment.
            while let Some(v) = violations.next_if(|v| offset(v.text_range.start()) < statement.start) {
                drafts.push(Draft::of(v, None));
            }
            let table = history::target(&statement.node);
            let refused = needs_no_transaction::refused_in_transaction(&statement.node);
            if let Some(what) = refused.filter(|_| !no_transaction && on(Own::NeedsNoTransaction)) {
                drafts.push(Draft {
                    at: statement.start,
                    rule: RuleId::Own(Own::NeedsNoTransaction),
                    message: needs_no_transaction::why(what),
                    help: Some(needs_no_transaction::SAFE.to_owned()),
                    table: table.clone(),
                });
            }
            if no_transaction && index == 1 && on(Own::NoTransactionSingleStatement) {
                drafts.push(Draft {
                    at: statement.start,
                    rule: RuleId::Own(Own::NoTransactionSingleStatement),
                    message: no_transaction_single_statement::WHY.to_owned(),
                    help: Some(no_transaction_single_statement::SAFE.to_owned()),
                    table: table.clone(),
                });
            }
            let tables = history::targets(&statement.node);
            // Nobody uses a table the deploy made yet: its locks block no one, and old code does
            // not know it to break.
            let new = !tables.is_empty() && tables.iter().all(|t| history.new_relations.contains(t));
            if !new && on(Own::AddingExcludeConstraint) && adding_exclude_constraint::adds_exclude(&statement.node) {
                drafts.push(Draft {
                    at: statement.start,
                    rule: RuleId::Own(Own::AddingExcludeConstraint),
                    message: adding_exclude_constraint::WHY.to_owned(),
                    help: Some(adding_exclude_constraint::SAFE.to_owned()),
                    table: table.clone(),
                });
            }
            while let Some(v) = violations.next_if(|v| offset(v.text_range.start()) < statement.end) {
                match v.code {
                    // prestart sends `SET LOCAL lock_timeout` with each transactional migration.
                    squawk_linter::Rule::RequireLockTimeout if !no_transaction => {
                        moot = true;
                        continue;
                    }
                    // The statement runs alone, and a timeout would cancel a CONCURRENTLY build
                    // halfway, leaving an INVALID index: prestart sets none for these files on purpose.
                    squawk_linter::Rule::RequireLockTimeout | squawk_linter::Rule::RequireStatementTimeout
                        if refused.is_some() =>
                    {
                        continue;
                    }
                    _ => {}
                }
                if new && matches!(RuleId::Squawk(v.code).kind(), Kind::Locking | Kind::Breaking) {
                    continue;
                }
                if history.knows_better(v.code, &statement.node) {
                    continue;
                }
                let mut draft = Draft::of(v, table.clone());
                if draft.rule == RuleId::Squawk(squawk_linter::Rule::RequireLockTimeout) {
                    // squawk's `SET lock_timeout` would be a second statement, which a
                    // `-- no-transaction` file cannot have; this statement needs no such file.
                    draft.help = Some(
                        "this statement can run in a transaction: drop the `-- no-transaction` line, and prestart \
                         sets lock_timeout for it"
                            .into(),
                    );
                }
                drafts.push(draft);
            }
            history.learn(&statement.node);
        }
        drafts.extend(violations.map(|v| Draft::of(v, None)));
        if on(Own::UnparsedStatement) {
            drafts.extend(unread(parse, statements).into_iter().map(|(at, error)| Draft {
                at,
                rule: RuleId::Own(Own::UnparsedStatement),
                message: format!("the linter cannot parse this statement ({error}), so no rule checked it"),
                help: Some(format!(
                    "check it by hand; if it is fine, put `-- lint: allow {}` above it",
                    Own::UnparsedStatement.name()
                )),
                table: None,
            }));
        }
        let lines = Lines::new(sql);
        let mut findings: Vec<Finding> = drafts.into_iter().map(|draft| self.finish(file, &lines, draft)).collect();
        let allowed = exemptions(parse, &lines);
        let ends: Vec<usize> = statements.iter().map(|s| lines.line(s.end.saturating_sub(1))).collect();
        findings.retain(|f| {
            if ignores_ours(f) {
                return false;
            }
            // A comment after the previous statement, up to the end of this one.
            let previous_end = ends.iter().copied().filter(|end| *end < f.line).max().unwrap_or(0);
            let last = ends.iter().copied().filter(|end| *end >= f.line).min().unwrap_or(f.line);
            !allowed.iter().any(|(line, rule)| *line > previous_end && *line <= last && *rule == f.rule)
        });
        (findings, moot)
    }

    fn finish(&self, file: &Path, lines: &Lines, draft: Draft) -> Finding {
        let (line, column) = lines.position(draft.at);
        let rule = draft.rule;
        let mut finding = Finding {
            file: file.to_path_buf(),
            line,
            column,
            rule,
            severity: rule.severity(),
            message: draft.message,
            safe: draft.help.unwrap_or_else(|| format!("see docs/linting.md#{rule}")),
            table: draft.table,
            table_bytes: None,
        };
        if let Some(facts) = self.facts {
            facts.weigh(&mut finding);
        }
        finding
    }
}

/// A finding before its place in the file is worked out.
struct Draft {
    at: usize,
    rule: RuleId,
    message: String,
    help: Option<String>,
    table: Option<String>,
}

impl Draft {
    fn of(violation: squawk_linter::Violation, table: Option<String>) -> Draft {
        Draft {
            at: offset(violation.text_range.start()),
            rule: RuleId::Squawk(violation.code),
            message: violation.message,
            help: violation.help,
            table,
        }
    }
}

impl Own {
    pub fn name(self) -> String {
        RuleId::Own(self).to_string()
    }
}

impl Outcome {
    /// Errors first, then the findings on the biggest tables, then in file order.
    pub fn rank(&mut self) {
        let key = |f: &Finding| (f.severity, std::cmp::Reverse(f.table_bytes.unwrap_or(0)), f.file.clone(), f.line);
        self.findings.sort_by_cached_key(key);
    }

    /// Findings that fail the check (notes do not).
    pub fn failing(&self) -> usize {
        self.findings.iter().filter(|f| f.severity != Severity::Note).count()
    }
}

fn offset(size: impl Into<u32>) -> usize {
    size.into() as usize
}

/// The statements the parser could not read: where each starts, and the parser's first complaint.
fn unread(parse: &Parse<SourceFile>, statements: &[Statement]) -> Vec<(usize, String)> {
    let mut unread: Vec<(usize, String)> = Vec::new();
    for error in parse.errors() {
        let at = offset(error.range().start());
        // The statement around the error, or, outside any, the error itself.
        let start = statements.iter().find(|s| s.start <= at && at <= s.end).map_or(at, |s| s.start);
        if !unread.iter().any(|(s, _)| *s == start) {
            unread.push((start, error.message().to_owned()));
        }
    }
    unread
}

/// Line starts, to turn byte offsets into lines and columns.
struct Lines<'s> {
    text: &'s str,
    starts: Vec<usize>,
}

impl<'s> Lines<'s> {
    fn new(text: &'s str) -> Lines<'s> {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Lines { text, starts }
    }

    /// The 1-based line of a byte offset.
    fn line(&self, at: usize) -> usize {
        self.starts.partition_point(|start| *start <= at)
    }

    fn position(&self, at: usize) -> (usize, usize) {
        let line = self.line(at);
        let start = self.starts.get(line.saturating_sub(1)).copied().unwrap_or(0);
        let column = self.text.get(start..at.min(self.text.len())).map_or(1, |s| s.chars().count() + 1);
        (line, column)
    }
}

/// `(line, rule)` for every `-- lint: allow rule[, rule]` comment, and every `-- squawk-ignore` of
/// one of our rules (squawk honours its own, and calls ours unknown: see [`ignores_ours`]).
/// The comments are the parser's: a `--` inside a string starts none.
fn exemptions(parse: &Parse<SourceFile>, lines: &Lines) -> Vec<(usize, RuleId)> {
    let mut allowed = Vec::new();
    let comments = parse
        .syntax_node()
        .descendants_with_tokens()
        .filter_map(|element| element.into_token())
        .filter(|token| token.kind() == squawk_syntax::SyntaxKind::COMMENT);
    for token in comments {
        let line = lines.line(offset(token.text_range().start()));
        let Some(comment) = token.text().strip_prefix("--").map(str::trim) else { continue };
        let index = line - 1;
        let (names, ours_only) = match comment.strip_prefix("lint:").and_then(|r| r.trim_start().strip_prefix("allow"))
        {
            Some(names) => (names, false),
            None => match comment.strip_prefix("squawk-ignore ") {
                // Up to a trailing `-- why`, as squawk reads it.
                Some(names) => (names.split("--").next().unwrap_or_default(), true),
                None => continue,
            },
        };
        for name in names.split([',', ' ']).map(str::trim).filter(|r| !r.is_empty()) {
            match RuleId::parse(name) {
                Some(rule @ RuleId::Own(_)) => allowed.push((index + 1, rule)),
                Some(rule) if !ours_only => allowed.push((index + 1, rule)),
                _ => {}
            }
        }
    }
    allowed
}

/// squawk's unused-ignore on `-- squawk-ignore needs-no-transaction`: the name is ours, and known.
fn ignores_ours(finding: &Finding) -> bool {
    finding.rule == RuleId::Squawk(squawk_linter::Rule::UnusedIgnore)
        && finding
            .message
            .strip_prefix("unknown name ")
            .and_then(RuleId::parse)
            .is_some_and(|r| matches!(r, RuleId::Own(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lint(sql: &str) -> Vec<Finding> {
        let config = Config::defaults();
        let mut outcome = Outcome::default();
        Engine::new(&config, None).lint(Path::new("x.sql"), sql, false, true, true, &mut outcome);
        outcome.findings
    }

    #[test]
    fn lines_and_columns_count_from_one() {
        let lines = Lines::new("ab\ncdé\nf");
        assert_eq!(lines.position(0), (1, 1));
        assert_eq!(lines.position(4), (2, 2));
        assert_eq!(lines.position(8), (3, 1));
    }

    #[test]
    fn tables_created_earlier_in_the_deploy_are_new() {
        let config = Config::defaults();
        let mut outcome = Outcome::default();
        let mut engine = Engine::new(&config, None);
        engine.lint(Path::new("1.sql"), "CREATE TABLE old (id bigint);", false, false, false, &mut outcome);
        engine.lint(Path::new("2.sql"), "CREATE TABLE fresh (id bigint);", false, false, true, &mut outcome);
        engine.lint(
            Path::new("3.sql"),
            "CREATE INDEX a ON fresh (id);\nCREATE INDEX b ON old (id);",
            false,
            true,
            true,
            &mut outcome,
        );
        let rules: Vec<(usize, String)> = outcome.findings.iter().map(|f| (f.line, f.rule.to_string())).collect();
        assert_eq!(rules, [(2, "require-concurrent-index-creation".to_owned())]);
    }

    /// Review 3e: what the linter let through.
    #[test]
    fn a_table_that_exists_is_not_new_by_if_not_exists_nor_a_list_by_its_first_name() {
        let config = Config::defaults();
        let mut outcome = Outcome::default();
        let mut engine = Engine::new(&config, None);
        engine.lint(Path::new("1.sql"), "CREATE TABLE users (id bigint);", false, false, false, &mut outcome);
        engine.lint(
            Path::new("2.sql"),
            "CREATE TABLE IF NOT EXISTS users (id bigint);
CREATE INDEX users_id ON users (id);
             CREATE TABLE fresh (id bigint);
DROP TABLE fresh, users;
             ALTER TABLE users ADD CONSTRAINT no_overlap EXCLUDE USING gist (id WITH =);",
            false,
            true,
            true,
            &mut outcome,
        );
        let rules: Vec<(usize, String)> = outcome.findings.iter().map(|f| (f.line, f.rule.to_string())).collect();
        assert!(rules.contains(&(2, "require-concurrent-index-creation".to_owned())), "{rules:?}");
        assert!(rules.contains(&(4, "ban-drop-table".to_owned())), "{rules:?}");
        assert!(rules.contains(&(5, "adding-exclude-constraint".to_owned())), "{rules:?}");
        // On a table the deploy makes, none of it is found.
        let fresh = lint(
            "CREATE TABLE IF NOT EXISTS fresh (id bigint);
CREATE INDEX fresh_id ON fresh (id);
             ALTER TABLE fresh ADD CONSTRAINT no_overlap EXCLUDE USING gist (id WITH =);",
        );
        assert!(fresh.is_empty(), "{:?}", fresh.iter().map(|f| f.rule.to_string()).collect::<Vec<_>>());
    }

    #[test]
    fn an_allow_after_a_string_holding_two_dashes_is_read() {
        let findings = lint(
            "CREATE TABLE t (note text DEFAULT 'a--b');
CREATE INDEX t_note ON t (note); -- lint: allow require-concurrent-index-creation
",
        );
        // `t` is made in this deploy, so the index is fine already; on an old table the allow counts.
        assert!(findings.is_empty(), "{:?}", findings.iter().map(|f| f.rule.to_string()).collect::<Vec<_>>());
        let findings = lint(
            "SELECT 'a--b'; CREATE INDEX i ON old (x); -- lint: allow require-concurrent-index-creation
",
        );
        assert!(findings.is_empty(), "{:?}", findings.iter().map(|f| f.rule.to_string()).collect::<Vec<_>>());
        let findings = lint(
            "SELECT 'a--b'; CREATE INDEX i ON old (x);
",
        );
        assert_eq!(findings.len(), 1);
    }

    #[test]
    fn lock_timeout_is_moot_in_a_transaction_and_outside_one_the_header_is_the_fix() {
        let config = Config::defaults();
        let mut outcome = Outcome::default();
        let mut engine = Engine::new(&config, None);
        let sql = "ALTER TABLE t ADD COLUMN c text;";
        engine.lint(Path::new("1.sql"), sql, false, true, true, &mut outcome);
        assert!(outcome.findings.is_empty() && outcome.moot_lock_timeout == 1);
        engine.lint(Path::new("2.sql"), &format!("-- no-transaction\n{sql}"), true, true, true, &mut outcome);
        assert_eq!(outcome.findings[0].rule.to_string(), "require-lock-timeout");
        assert!(outcome.findings[0].safe.contains("drop the `-- no-transaction` line"));
        engine.lint(
            Path::new("3.sql"),
            "-- no-transaction\nCREATE INDEX CONCURRENTLY i ON t (c);",
            true,
            true,
            true,
            &mut outcome,
        );
        assert_eq!(outcome.findings.len(), 1, "a CONCURRENTLY build is told to take a timeout");
    }

    #[test]
    fn squawk_ignore_comments_work_for_our_rules_too() {
        let sql = "-- squawk-ignore needs-no-transaction -- run by hand\nCREATE INDEX CONCURRENTLY a ON t (b);";
        assert!(lint(sql).is_empty(), "{:?}", lint(sql));
        assert_eq!(lint("-- squawk-ignore no-such-rule\nSELECT 1;")[0].rule.to_string(), "unused-ignore");
    }

    #[test]
    fn not_valid_is_not_offered_where_postgresql_refuses_it() {
        let rules: Vec<String> =
            lint("ALTER TABLE t ADD CONSTRAINT t_key UNIQUE (a);\nALTER TABLE t ADD CONSTRAINT c CHECK (a > 0);")
                .iter()
                .map(|f| format!("{}:{}", f.line, f.rule))
                .collect();
        assert_eq!(rules, ["1:disallowed-unique-constraint", "2:constraint-missing-not-valid"]);
    }

    proptest::proptest! {
        /// Arbitrary text is linted without a panic; what does not parse is reported.
        #[test]
        fn arbitrary_input_never_panics(sql in "\\PC{0,200}") {
            for finding in lint(&sql) {
                proptest::prop_assert!(finding.line >= 1 && finding.column >= 1);
            }
        }

        /// SQL-shaped input, closer to what the rules look at.
        #[test]
        fn sql_shaped_input_never_panics(
            words in proptest::collection::vec("(ALTER|TABLE|CREATE|INDEX|CONCURRENTLY|ON|ADD|COLUMN|DROP|NOT|NULL|VALID|CONSTRAINT|CHECK|t|x|;|\\(|\\)|,|--|\\n|\\$\\$)", 0..40)
        ) {
            let _ = lint(&words.join(" "));
        }
    }
}
