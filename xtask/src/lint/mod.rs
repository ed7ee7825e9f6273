//! The migration linter: changes that lock or break a live database, found by parsing the SQL
//! with a real PostgreSQL-dialect parser, one statement at a time.
//!
//! A statement the parser cannot read is reported as such, never skipped in silence. A comment
//! `-- lint: allow RULE` above a statement (or on its lines) exempts it from that rule.

mod add_column_not_null;
mod alter_column_type;
mod constraint_not_valid;
mod create_index;
mod drop_column;
mod drop_table;
mod needs_no_transaction;
mod no_transaction_single_statement;
mod rename_column;
mod rename_table;
mod set_not_null;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use sqlparser::ast::{AlterTable, ObjectName, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

pub mod command;

pub use needs_no_transaction::NeedsNoTransaction;
pub use no_transaction_single_statement::NoTransactionSingleStatement;

/// Why a statement hurts a live database, and the safe way to get the same result.
pub struct Violation {
    pub why: String,
    pub safe: String,
}

/// What a rule knows about the file around a statement.
pub struct FileContext<'a> {
    /// The file starts with `-- no-transaction`.
    pub no_transaction: bool,
    /// 0 for the first statement of the file.
    pub statement_index: usize,
    /// Tables created earlier in this file: changing them locks nobody out.
    pub created_here: &'a HashSet<String>,
    /// Tables that got a `CHECK (... IS NOT NULL) NOT VALID` in this or an earlier migration.
    pub not_null_checked: &'a HashSet<String>,
}

impl FileContext<'_> {
    /// The table existed before this migration (so live traffic uses it).
    pub fn is_existing(&self, table: &ObjectName) -> bool {
        !self.created_here.contains(&table_key(table))
    }
}

pub trait Rule: Sync {
    /// The name users write in `-- lint: allow NAME`.
    fn name(&self) -> &'static str;
    fn check(&self, statement: &Statement, file: &FileContext<'_>) -> Option<Violation>;
}

/// Every rule, in the order findings are reported for one statement.
pub static RULES: &[&dyn Rule] = &[
    &needs_no_transaction::NeedsNoTransaction,
    &no_transaction_single_statement::NoTransactionSingleStatement,
    &create_index::CreateIndexNonConcurrently,
    &add_column_not_null::AddColumnNotNull,
    &alter_column_type::AlterColumnType,
    &set_not_null::SetNotNull,
    &constraint_not_valid::ConstraintWithoutNotValid,
    &rename_column::RenameColumn,
    &rename_table::RenameTable,
    &drop_column::DropColumn,
    &drop_table::DropTable,
];

/// The rule name of statements the parser cannot read.
pub const UNPARSED: &str = "unparsed-statement";

/// One thing the linter reports.
#[derive(Debug, Clone)]
pub struct Finding {
    pub file: PathBuf,
    pub line: u64,
    pub rule: &'static str,
    pub why: String,
    pub safe: String,
}

/// Lints files in version order, carrying what earlier files did (a `NOT VALID` check that a
/// later `SET NOT NULL` relies on).
#[derive(Default)]
pub struct Linter {
    not_null_checked: HashSet<String>,
}

struct Parsed {
    statement: Statement,
    first_line: u64,
    last_line: u64,
}

impl Linter {
    /// Lints one migration's SQL; with `report` false, only learns from it. `no_transaction` is
    /// sqlx's own reading of the file (a byte-order mark hides `-- no-transaction` from it).
    pub fn lint(
        &mut self,
        file: &Path,
        sql: &str,
        no_transaction: bool,
        rules: &[&dyn Rule],
        report: bool,
    ) -> Vec<Finding> {
        // A byte-order mark is doctor's to report (it changes the checksum); the SQL after it is ours.
        let sql = sql.strip_prefix('\u{feff}').unwrap_or(sql);
        let (parsed, mut findings) = parse(file, sql);
        let allowed = exemptions(sql);
        let mut created_here = HashSet::new();
        let mut previous_end = 0;
        for (index, item) in parsed.iter().enumerate() {
            let context = FileContext {
                no_transaction,
                statement_index: index,
                created_here: &created_here,
                not_null_checked: &self.not_null_checked,
            };
            let exempt: HashSet<&str> = allowed
                .iter()
                .filter(|(line, _)| *line > previous_end && *line <= item.last_line)
                .map(|(_, rule)| rule.as_str())
                .collect();
            for rule in rules {
                if exempt.contains(rule.name()) {
                    continue;
                }
                if let Some(violation) = rule.check(&item.statement, &context) {
                    findings.push(Finding {
                        file: file.to_path_buf(),
                        line: item.first_line,
                        rule: rule.name(),
                        why: violation.why,
                        safe: violation.safe,
                    });
                }
            }
            previous_end = item.last_line;
            self.learn(&item.statement, &mut created_here);
        }
        // Exemptions apply to unparsed statements too: a comment after the previous statement.
        findings.retain(|f| {
            let previous_end = parsed.iter().map(|p| p.last_line).filter(|end| *end < f.line).max().unwrap_or(0);
            f.rule != UNPARSED
                || !allowed.iter().any(|(line, rule)| *line > previous_end && *line <= f.line && rule == UNPARSED)
        });
        findings.sort_by_key(|f| f.line);
        if report { findings } else { Vec::new() }
    }

    fn learn(&mut self, statement: &Statement, created_here: &mut HashSet<String>) {
        match statement {
            Statement::CreateTable(create) => {
                created_here.insert(table_key(&create.name));
            }
            Statement::AlterTable(alter) => {
                for operation in &alter.operations {
                    if let sqlparser::ast::AlterTableOperation::AddConstraint {
                        constraint: sqlparser::ast::TableConstraint::Check(check),
                        not_valid: true,
                    } = operation
                        && check.expr.to_string().to_uppercase().contains("IS NOT NULL")
                    {
                        self.not_null_checked.insert(table_key(&alter.name));
                    }
                }
            }
            _ => {}
        }
    }
}

/// Parses statement by statement, so one the parser cannot read is reported and the rest still
/// checked.
fn parse(file: &Path, sql: &str) -> (Vec<Parsed>, Vec<Finding>) {
    let dialect = PostgreSqlDialect {};
    let unparsed = |line: u64, error: String| Finding {
        file: file.to_path_buf(),
        line,
        rule: UNPARSED,
        why: format!("the linter cannot parse this statement ({error}), so no rule checked it"),
        safe: format!("check it by hand; if it is fine, put `-- lint: allow {UNPARSED}` above it"),
    };
    let mut parser = match Parser::new(&dialect).try_with_sql(sql) {
        Ok(parser) => parser,
        Err(error) => return (Vec::new(), vec![unparsed(1, error.to_string())]),
    };
    let mut parsed = Vec::new();
    let mut findings = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        let start = parser.peek_token();
        if start.token == Token::EOF {
            break;
        }
        let first_line = start.span.start.line;
        match parser.parse_statement() {
            Ok(statement) => {
                let last_line = parser.peek_token().span.start.line.max(first_line);
                parsed.push(Parsed { statement, first_line, last_line });
            }
            Err(error) => {
                findings.push(unparsed(first_line, error.to_string()));
                // Skip to the end of this statement and go on with the next.
                loop {
                    let token = parser.next_token().token;
                    if token == Token::SemiColon || token == Token::EOF {
                        break;
                    }
                }
            }
        }
    }
    (parsed, findings)
}

/// `(line, rule)` for every `-- lint: allow rule[, rule]` comment.
fn exemptions(sql: &str) -> Vec<(u64, String)> {
    let mut allowed = Vec::new();
    for (index, line) in sql.lines().enumerate() {
        let Some(comment) = line.split_once("--").map(|(_, c)| c.trim()) else { continue };
        let Some(rules) = comment.strip_prefix("lint:").and_then(|r| r.trim_start().strip_prefix("allow")) else {
            continue;
        };
        for rule in rules.split([',', ' ']).map(str::trim).filter(|r| !r.is_empty()) {
            allowed.push((index as u64 + 1, rule.to_owned()));
        }
    }
    allowed
}

/// The `ALTER TABLE` in `statement`, when it alters a table that existed before this migration.
pub fn alter_of_existing<'s>(statement: &'s Statement, file: &FileContext<'_>) -> Option<&'s AlterTable> {
    match statement {
        Statement::AlterTable(alter) if file.is_existing(&alter.name) => Some(alter),
        _ => None,
    }
}

/// A table's name without schema or quotes, lower-cased, to compare names.
pub fn table_key(name: &ObjectName) -> String {
    name.0.last().map(|part| part.to_string().trim_matches('"').to_lowercase()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Arbitrary text is linted without a panic; what does not parse is reported.
        #[test]
        fn arbitrary_input_never_panics(sql in "\\PC{0,200}") {
            let findings = Linter::default().lint(Path::new("x.sql"), &sql, false, RULES, true);
            for finding in findings {
                proptest::prop_assert!(finding.line >= 1);
            }
        }

        /// SQL-shaped input, closer to what the rules look at.
        #[test]
        fn sql_shaped_input_never_panics(
            words in proptest::collection::vec("(ALTER|TABLE|CREATE|INDEX|CONCURRENTLY|ON|ADD|COLUMN|DROP|NOT|NULL|VALID|CONSTRAINT|CHECK|t|x|;|\\(|\\)|,|--|\\n|\\$\\$)", 0..40)
        ) {
            let sql = words.join(" ");
            let _ = Linter::default().lint(Path::new("x.sql"), &sql, false, RULES, true);
        }
    }
}
