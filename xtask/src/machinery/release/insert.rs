//! Which table an INSERT writes and which columns it names, by squawk's parser: a column that
//! turns NOT NULL without a default fails every old INSERT that leaves it out, which Describe
//! alone does not show (the statement still prepares).

use squawk_syntax::SourceFile;
use squawk_syntax::ast::{self, AstNode as _};

/// The table of an INSERT (as written: `to_regclass` reads it as the server would) and the
/// columns it names; `None` for an INSERT without a column list, which names every column the
/// table had when it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub table: String,
    pub columns: Option<Vec<String>>,
}

impl Target {
    /// Whether the INSERT gives `column` a value (without a list: every column but one added
    /// since; the caller compares with the schema before).
    pub fn names(&self, column: &str) -> bool {
        match &self.columns {
            Some(columns) => columns.iter().any(|c| c == column),
            None => false,
        }
    }
}

/// The INSERT of `query` (one at the top, or in a WITH), if it has one.
pub fn target(query: &str) -> Option<Target> {
    let parse = SourceFile::parse(query);
    let insert = parse.tree().syntax().descendants().find_map(ast::Insert::cast)?;
    let table = insert.relation_name_ref()?.syntax().text().to_string().trim().to_owned();
    let columns = insert.column_target_list().map(|list| {
        list.column_targets()
            .filter_map(|target| target.name())
            .map(|name| identifier(&name.syntax().text().to_string()))
            .collect()
    });
    Some(Target { table, columns })
}

/// An identifier as the server folds it: quoted as written, unquoted in lower case.
fn identifier(written: &str) -> String {
    let written = written.trim();
    match written.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => written.to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::{Target, target};

    #[test]
    fn the_table_and_the_columns_an_insert_names() {
        assert_eq!(
            target("INSERT INTO jobs (kind, \"Payload\") VALUES ($1, $2) RETURNING id"),
            Some(Target { table: "jobs".into(), columns: Some(vec!["kind".into(), "Payload".into()]) })
        );
        assert_eq!(
            target("WITH x AS (INSERT INTO app.t VALUES (1) RETURNING *) SELECT * FROM x"),
            Some(Target { table: "app.t".into(), columns: None })
        );
        assert_eq!(target("SELECT 1"), None);
    }
}
