//! What a migration does to a previous release's queries: their descriptions on the schema before
//! it and after it, compared. Only a query that described before counts (one that fails already
//! is not this migration's doing), and only what the old release relies on: that it prepares,
//! that each column it reads keeps its type, that its INSERTs still give every required column.
//! A column that only turns nullable is reported, not refused.

use super::describe::{Described, Shape};
use super::queries::Query;

/// One thing a migration does to one query of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub release: String,
    pub hash: String,
    pub first_line: String,
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// It no longer prepares: the server's SQLSTATE and message.
    Fails { code: String, message: String },
    /// A column it reads has another type.
    ColumnType { column: String, before: String, after: String },
    /// A column it reads is gone from its result.
    ColumnGone { column: String },
    /// Its INSERT leaves out a column that is now NOT NULL without a default.
    OmitsRequired { column: String },
    /// A column it reads as NOT NULL may now be NULL (reported only).
    BecomesNullable { column: String },
}

impl Change {
    /// Whether the old release's query breaks (refused), or only may meet a NULL (reported).
    pub fn breaks(&self) -> bool {
        !matches!(self, Change::BecomesNullable { .. })
    }

    pub fn describe(&self) -> String {
        match self {
            Change::Fails { code, message } => format!("no longer prepares: {message} (SQLSTATE {code})"),
            Change::ColumnType { column, before, after } => {
                format!("its result column `{column}` changes type from {before} to {after}")
            }
            Change::ColumnGone { column } => format!("its result column `{column}` is gone"),
            Change::OmitsRequired { column } => {
                format!("it leaves out `{column}`, which becomes NOT NULL without a default: every such INSERT fails")
            }
            Change::BecomesNullable { column } => {
                format!("its result column `{column}`, read as NOT NULL, may now be NULL")
            }
        }
    }
}

/// The findings for `queries` of `release`, described `before` and `after` a migration.
pub fn compare(release: &str, queries: &[Query], before: &Described, after: &Described) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (index, query) in queries.iter().enumerate() {
        let (Some(Shape::Described(old)), Some(new)) = (before.shapes.get(index), after.shapes.get(index)) else {
            continue;
        };
        let mut changes = Vec::new();
        match new {
            Shape::Failed { code, message } => {
                changes.push(Change::Fails { code: code.clone(), message: message.clone() })
            }
            Shape::Described(new) => {
                for (position, column) in old.iter().enumerate() {
                    match new.get(position) {
                        None => changes.push(Change::ColumnGone { column: column.name.clone() }),
                        Some(now) if now.type_oid != column.type_oid => changes.push(Change::ColumnType {
                            column: column.name.clone(),
                            before: column.type_name.clone(),
                            after: now.type_name.clone(),
                        }),
                        Some(now) => {
                            let read_as_not_null = query.columns.get(position).and_then(|c| c.nullable) == Some(false);
                            if read_as_not_null && column.not_null == Some(true) && now.not_null == Some(false) {
                                changes.push(Change::BecomesNullable { column: column.name.clone() });
                            }
                        }
                    }
                }
                let was_omitted = before.omitted.get(index).cloned().unwrap_or_default();
                for column in after.omitted.get(index).into_iter().flatten() {
                    if !was_omitted.contains(column) {
                        changes.push(Change::OmitsRequired { column: column.clone() });
                    }
                }
            }
        }
        findings.extend(changes.into_iter().map(|change| Finding {
            release: release.to_owned(),
            hash: query.short_hash().to_owned(),
            first_line: query.first_line(),
            change,
        }));
    }
    findings
}

/// How many of `queries` did not describe on the schema before (they fail already: not counted).
pub fn failing_already(before: &Described) -> usize {
    before.shapes.iter().filter(|s| matches!(s, Shape::Failed { .. })).count()
}
