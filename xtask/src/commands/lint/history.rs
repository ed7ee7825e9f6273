//! What earlier statements did, which squawk, reading one file, cannot know: tables and indexes
//! made by migrations of this deploy that nobody uses yet, and NOT NULL checks validated by an
//! earlier migration (a later `SET NOT NULL` uses them and skips its scan).

use std::collections::{HashMap, HashSet};

use squawk_linter::Rule as Squawk;
use squawk_syntax::ast::{self, AlterColumnOption, AlterTableAction, NameLike};

/// A table and one of its columns.
type Column = (String, String);

#[derive(Default, Clone)]
pub struct History {
    /// Tables and indexes created by the deploy's earlier migrations, or earlier in this file: no
    /// running code reads or writes them yet, so their locks block nobody and changing them breaks
    /// nothing.
    pub new_relations: HashSet<String>,
    /// `CHECK (column IS NOT NULL) NOT VALID` constraints by name.
    not_null_checks: HashMap<String, Column>,
    /// Columns whose NOT NULL check has been validated.
    validated: HashSet<Column>,
    /// Columns made NOT NULL.
    not_null: HashSet<Column>,
    /// Tables that exist before the statement at hand: made by any earlier migration (applied or
    /// not), or found in the database. A `CREATE TABLE IF NOT EXISTS` of one makes nothing new.
    pub existing: HashSet<String>,
}

impl History {
    /// Learns from a statement that ran (after its findings were decided).
    pub fn learn(&mut self, statement: &ast::Stmt) {
        match statement {
            ast::Stmt::CreateTable(create) => {
                if let Some(name) = create.table_name().and_then(|t| t.path()).and_then(|p| p.segment()) {
                    let name = name.text();
                    if create.if_not_exists().is_none() || !self.existing.contains(&name) {
                        self.new_relations.insert(name.clone());
                    }
                    self.existing.insert(name);
                }
            }
            ast::Stmt::CreateIndex(index) => {
                let table = index.table_relation_name().and_then(|r| relation(&r));
                let name = index.index().and_then(|i| i.path()).and_then(|p| p.segment()).map(|s| s.text());
                if let (Some(table), Some(name)) = (table, name)
                    && self.new_relations.contains(&table)
                {
                    self.new_relations.insert(name);
                }
            }
            ast::Stmt::AlterTable(alter) => {
                let Some(table) = target(statement) else { return };
                for action in alter.actions() {
                    match action {
                        AlterTableAction::AddConstraint(add) => {
                            if let Some(ast::Constraint::CheckConstraint(check)) = add.constraint()
                                && ast::Constraint::CheckConstraint(check.clone()).is_not_valid()
                                && let Some(name) = check.constraint_name_clause().and_then(|c| c.constraint_name())
                                && let Some(column) = check.expr().and_then(|e| is_not_null_check(&e))
                            {
                                self.not_null_checks.insert(name.text(), (table.clone(), column));
                            }
                        }
                        AlterTableAction::ValidateConstraint(validate) => {
                            if let Some(name) =
                                validate.constraint_name_ref().and_then(|n| n.path_ref()).and_then(|p| p.segment())
                                && let Some(column) = self.not_null_checks.get(&name.text())
                                && column.0 == table
                            {
                                self.validated.insert(column.clone());
                            }
                        }
                        AlterTableAction::AlterColumn(alter_column) => {
                            if let Some(AlterColumnOption::SetNotNull(_)) = alter_column.option()
                                && let Some(column) = alter_column.column_name_ref()
                            {
                                self.not_null.insert((table.clone(), column.text()));
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }

    /// A finding of squawk's `rule` on `statement` is wrong here: we know better.
    pub fn knows_better(&self, rule: Squawk, statement: &ast::Stmt) -> bool {
        let ast::Stmt::AlterTable(alter) = statement else { return false };
        let Some(table) = target(statement) else { return false };
        let columns = |pick: fn(&AlterTableAction) -> Option<String>| -> Vec<String> {
            alter.actions().filter_map(|a| pick(&a)).collect()
        };
        match rule {
            // A validated CHECK (... IS NOT NULL) lets SET NOT NULL skip its scan; squawk sees one only
            // when the VALIDATE is in the same file.
            Squawk::AddingNotNullableField => {
                let set = columns(|action| match action {
                    AlterTableAction::AlterColumn(c)
                        if matches!(c.option(), Some(AlterColumnOption::SetNotNull(_))) =>
                    {
                        c.column_name_ref().map(|c| c.text())
                    }
                    _ => None,
                });
                !set.is_empty() && set.iter().all(|c| self.validated.contains(&(table.clone(), c.clone())))
            }
            // Dropping the check a SET NOT NULL made redundant: the column's NOT NULL guarantees
            // what it did.
            Squawk::BanDropConstraint => {
                let dropped = columns(|action| match action {
                    AlterTableAction::DropConstraint(d) => {
                        d.constraint_name_ref().and_then(|n| n.path_ref()).and_then(|p| p.segment()).map(|s| s.text())
                    }
                    _ => None,
                });
                !dropped.is_empty()
                    && dropped.iter().all(|name| {
                        self.not_null_checks
                            .get(name)
                            .is_some_and(|column| column.0 == table && self.not_null.contains(column))
                    })
            }
            // NOT VALID is refused for UNIQUE, PRIMARY KEY and EXCLUDE: the advice cannot be taken
            // (disallowed-unique-constraint and adding-serial-primary-key-field give the one that can).
            Squawk::ConstraintMissingNotValid => alter.actions().all(|action| match action {
                AlterTableAction::AddConstraint(add) => matches!(
                    add.constraint(),
                    Some(
                        ast::Constraint::UniqueConstraint(_)
                            | ast::Constraint::PrimaryKeyConstraint(_)
                            | ast::Constraint::ExcludeConstraint(_)
                    )
                ),
                _ => true,
            }),
            _ => false,
        }
    }
}

/// `column IS NOT NULL`: the column.
fn is_not_null_check(expr: &ast::Expr) -> Option<String> {
    let ast::Expr::BinExpr(bin) = expr else { return None };
    let ast::BinOp::IsNot(_) = bin.op()? else { return None };
    let ast::Expr::Literal(literal) = bin.rhs()? else { return None };
    if !matches!(literal.kind(), Some(ast::LitKind::Null(_))) {
        return None;
    }
    match bin.lhs()? {
        ast::Expr::NameRef(name) => Some(name.text()),
        _ => None,
    }
}

fn relation(name: &ast::TableRelationName) -> Option<String> {
    Some(name.table_name_ref()?.path_ref()?.segment()?.text())
}

/// Every table (or index) a statement changes: `DROP TABLE fresh, users` changes both, and is
/// harmless only when both are new.
pub fn targets(statement: &ast::Stmt) -> Vec<String> {
    let name = |path: Option<ast::PathRef>| path.and_then(|p| p.segment()).map(|s| s.text());
    match statement {
        ast::Stmt::DropTable(drop) => drop.table_name_refs().filter_map(|t| name(t.path_ref())).collect(),
        ast::Stmt::DropIndex(drop) => drop.index_refs().filter_map(|i| name(i.path_ref())).collect(),
        _ => target(statement).into_iter().collect(),
    }
}

/// The table (or index) a statement changes, when it changes one: what a table's facts and its
/// being new apply to (the first, for a statement that changes several).
pub fn target(statement: &ast::Stmt) -> Option<String> {
    match statement {
        ast::Stmt::AlterTable(alter) => relation(&alter.table_relation_name()?),
        ast::Stmt::CreateIndex(index) => relation(&index.table_relation_name()?),
        ast::Stmt::DropTable(drop) => Some(drop.table_name_refs().next()?.path_ref()?.segment()?.text()),
        ast::Stmt::DropIndex(drop) => Some(drop.index_refs().next()?.path_ref()?.segment()?.text()),
        _ => None,
    }
}

/// `sql` with every `CREATE TABLE IF NOT EXISTS` of a table in `existing` blanked (spaces, its
/// line breaks kept, so positions stay), when there is one: what the file does to the database.
pub fn without_creates_of_existing<'s>(
    sql: &str,
    statements: impl Iterator<Item = (usize, usize, &'s ast::Stmt)>,
    existing: &HashSet<String>,
) -> Option<String> {
    let mut masked: Option<String> = None;
    for (start, end, statement) in statements {
        let ast::Stmt::CreateTable(create) = statement else { continue };
        let name = create.table_name().and_then(|t| t.path()).and_then(|p| p.segment()).map(|s| s.text());
        if create.if_not_exists().is_none() || !name.is_some_and(|n| existing.contains(&n)) {
            continue;
        }
        let text = masked.get_or_insert_with(|| sql.to_owned());
        // A space for each byte, so every offset after it stays.
        let blank: String = text[start..end]
            .chars()
            .map(|c| if c == '\n' { "\n".to_owned() } else { " ".repeat(c.len_utf8()) })
            .collect();
        text.replace_range(start..end, &blank);
    }
    masked
}
