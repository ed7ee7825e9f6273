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
mod breaks_previous_release;
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
            let at = At { statement, index, no_transaction, table: history::target(&statement.node) };
            let tables = history::targets(&statement.node);
            // Nobody uses a table the deploy made yet: its locks block no one, and old code does
            // not know it to break.
            let new = !tables.is_empty() && tables.iter().all(|t| history.new_relations.contains(t));
            drafts.extend(self.own_drafts(&at, new));
            while let Some(v) = violations.next_if(|v| offset(v.text_range.start()) < statement.end) {
                drafts.extend(squawk_draft(v, &at, new, history, &mut moot));
            }
            history.learn(&statement.node);
        }
        drafts.extend(violations.map(|v| Draft::of(v, None)));
        if self.on(Own::UnparsedStatement) {
            drafts.extend(unparsed_drafts(parse, statements));
        }
        let lines = Lines::new(sql);
        let findings: Vec<Finding> = drafts.into_iter().map(|draft| self.finish(file, &lines, draft)).collect();
        (without_exempted(findings, parse, &lines, statements), moot)
    }

    fn on(&self, rule: Own) -> bool {
        self.config.enabled.contains(&RuleId::Own(rule))
    }

    /// The findings of our own rules on one statement.
    fn own_drafts(&self, at: &At<'_>, new: bool) -> Vec<Draft> {
        let (statement, table) = (at.statement, &at.table);
        let mut drafts = Vec::new();
        let refused = needs_no_transaction::refused_in_transaction(&statement.node);
        if let Some(what) = refused.filter(|_| !at.no_transaction && self.on(Own::NeedsNoTransaction)) {
            let why = needs_no_transaction::why(what);
            drafts.push(Draft::own(Own::NeedsNoTransaction, statement, (&why, needs_no_transaction::SAFE), table));
        }
        if at.no_transaction && at.index == 1 && self.on(Own::NoTransactionSingleStatement) {
            let said = (no_transaction_single_statement::WHY, no_transaction_single_statement::SAFE);
            drafts.push(Draft::own(Own::NoTransactionSingleStatement, statement, said, table));
        }
        if !new && self.on(Own::AddingExcludeConstraint) && adding_exclude_constraint::adds_exclude(&statement.node) {
            let said = (adding_exclude_constraint::WHY, adding_exclude_constraint::SAFE);
            drafts.push(Draft::own(Own::AddingExcludeConstraint, statement, said, table));
        }
        drafts
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
    /// A finding of one of our rules on `statement`: why, and the safe way.
    fn own(rule: Own, statement: &Statement, (why, safe): (&str, &str), table: &Option<String>) -> Draft {
        Draft {
            at: statement.start,
            rule: RuleId::Own(rule),
            message: why.to_owned(),
            help: Some(safe.to_owned()),
            table: table.clone(),
        }
    }

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

/// One statement of a file, as the rules see it.
struct At<'a> {
    statement: &'a Statement,
    /// Its place in the file, from 0.
    index: usize,
    /// The file runs without a transaction (`-- no-transaction`).
    no_transaction: bool,
    /// The table it acts on, when it names one.
    table: Option<String>,
}

/// squawk's finding `v` on a statement, unless prestart makes it moot (`moot` is then set) or it
/// does not apply here.
fn squawk_draft(
    v: squawk_linter::Violation,
    at: &At<'_>,
    new: bool,
    history: &History,
    moot: &mut bool,
) -> Option<Draft> {
    let refused = needs_no_transaction::refused_in_transaction(&at.statement.node);
    match v.code {
        // prestart sends `SET LOCAL lock_timeout` with each transactional migration.
        squawk_linter::Rule::RequireLockTimeout if !at.no_transaction => {
            *moot = true;
            return None;
        }
        // The statement runs alone, and a timeout would cancel a CONCURRENTLY build halfway,
        // leaving an INVALID index: prestart sets none for these files on purpose.
        squawk_linter::Rule::RequireLockTimeout | squawk_linter::Rule::RequireStatementTimeout if refused.is_some() => {
            return None;
        }
        _ => {}
    }
    if new && matches!(RuleId::Squawk(v.code).kind(), Kind::Locking | Kind::Breaking) {
        return None;
    }
    if history.knows_better(v.code, &at.statement.node) {
        return None;
    }
    let mut draft = Draft::of(v, at.table.clone());
    if draft.rule == RuleId::Squawk(squawk_linter::Rule::RequireLockTimeout) {
        // squawk's `SET lock_timeout` would be a second statement, which a `-- no-transaction`
        // file cannot have; this statement needs no such file.
        draft.help = Some(
            "this statement can run in a transaction: drop the `-- no-transaction` line, and prestart sets \
             lock_timeout for it"
                .into(),
        );
    }
    Some(draft)
}

/// A finding on each statement the parser could not read.
fn unparsed_drafts(parse: &Parse<SourceFile>, statements: &[Statement]) -> Vec<Draft> {
    let drafts = unread(parse, statements).into_iter().map(|(at, error)| Draft {
        at,
        rule: RuleId::Own(Own::UnparsedStatement),
        message: format!("the linter cannot parse this statement ({error}), so no rule checked it"),
        help: Some(format!(
            "check it by hand; if it is fine, put `-- lint: allow {}` above it",
            Own::UnparsedStatement.name()
        )),
        table: None,
    });
    drafts.collect()
}

/// `findings` without those a `-- lint: allow` comment exempts: one after the previous
/// statement, up to the end of the finding's own.
fn without_exempted(
    mut findings: Vec<Finding>,
    parse: &Parse<SourceFile>,
    lines: &Lines,
    statements: &[Statement],
) -> Vec<Finding> {
    let allowed = exemptions(parse, lines);
    let ends: Vec<usize> = statements.iter().map(|s| lines.line(s.end.saturating_sub(1))).collect();
    findings.retain(|f| {
        if ignores_ours(f) {
            return false;
        }
        let previous_end = ends.iter().copied().filter(|end| *end < f.line).max().unwrap_or(0);
        let last = ends.iter().copied().filter(|end| *end >= f.line).min().unwrap_or(f.line);
        !allowed.iter().any(|(line, rule)| *line > previous_end && *line <= last && *rule == f.rule)
    });
    findings
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
mod tests;
