//! What a migration does to a previous release's queries: their descriptions on the schema before
//! it and after it, compared. Only a query that described before counts (one that fails already
//! is not this migration's doing), and only what the old release relies on: that it prepares,
//! that each column it reads keeps its type, that its INSERTs still give every required column.
//! A column that only turns nullable is reported, not refused.

use super::describe::{Described, ResultColumn, Shape};
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
                        Some(now) if !decodes_alike(column, now) => changes.push(Change::ColumnType {
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

/// Whether the old code reads a column of type `now` as it read one of type `before`: the same
/// type, one made again under its name (an enum dropped and created), or types sqlx decodes into
/// one Rust type without a check of its own, as its macros decode (`String` from text, varchar,
/// bpchar and name; `serde_json::Value` from json and jsonb).
fn decodes_alike(before: &ResultColumn, now: &ResultColumn) -> bool {
    const ALIKE: [&[&str]; 2] = [&["text", "varchar", "char", "bpchar", "name"], &["json", "jsonb"]];
    before.type_oid == now.type_oid
        || before.type_name == now.type_name
        || ALIKE
            .iter()
            .any(|class| class.contains(&before.type_name.as_str()) && class.contains(&now.type_name.as_str()))
}

/// How many of `queries` did not describe on the schema before (they fail already: not counted).
pub fn failing_already(before: &Described) -> usize {
    before.shapes.iter().filter(|s| matches!(s, Shape::Failed { .. })).count()
}

#[cfg(test)]
mod tests {
    use super::{Change, Described, ResultColumn, Shape, compare};
    use crate::machinery::release::queries::{Column, Query};

    fn column(name: &str, type_name: &str, type_oid: u32) -> ResultColumn {
        ResultColumn { name: name.into(), type_oid, type_name: type_name.into(), origin: None, not_null: None }
    }

    fn described(columns: Vec<ResultColumn>) -> Described {
        Described { shapes: vec![Shape::Described(columns)], omitted: vec![Vec::new()] }
    }

    fn query() -> Query {
        let column = |name: &str| Column { name: name.into(), type_name: "text".into(), nullable: Some(false) };
        Query {
            hash: "abc".into(),
            query: "SELECT kind, payload, attempts FROM jobs".into(),
            parameters: vec![],
            columns: vec![column("kind"), column("payload"), column("attempts")],
        }
    }

    #[test]
    fn what_sqlx_decodes_alike_is_no_change_and_a_wider_integer_is() {
        let before =
            described(vec![column("kind", "text", 25), column("payload", "json", 114), column("attempts", "int4", 23)]);
        let alike = described(vec![
            column("kind", "varchar", 1043),
            column("payload", "jsonb", 3802),
            column("attempts", "int4", 23),
        ]);
        assert_eq!(compare("release v1", &[query()], &before, &alike), vec![]);
        let wider =
            described(vec![column("kind", "text", 25), column("payload", "json", 114), column("attempts", "int8", 20)]);
        let found = compare("release v1", &[query()], &before, &wider);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].change,
            Change::ColumnType { column: "attempts".into(), before: "int4".into(), after: "int8".into() }
        );
        let gone = Described {
            shapes: vec![Shape::Failed { code: "42703".into(), message: "no".into() }],
            omitted: vec![vec![]],
        };
        assert!(matches!(compare("release v1", &[query()], &before, &gone)[0].change, Change::Fails { .. }));
        // A query that failed before is not this migration's doing.
        assert_eq!(compare("release v1", &[query()], &gone, &wider), vec![]);
    }
}
