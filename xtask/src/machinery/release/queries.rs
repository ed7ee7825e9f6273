//! A release's queries: those of sqlx's `.sqlx/query-*.json` (each compile-time checked query with
//! its parameter types and its result columns' types and nullability), built into the binary for
//! the release being deployed, or read from a folder for another build's.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// One query as the release record keeps it (the format `docs/releases.md` documents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// sqlx's hash of the text (the name of its `.sqlx` file).
    pub hash: String,
    pub query: String,
    /// PostgreSQL's names of the parameter types the code binds (`int8`, `text[]`, `job_status`).
    pub parameters: Vec<String>,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    /// What sqlx inferred: `Some(false)` where the code decodes the column without an Option.
    pub nullable: Option<bool>,
}

impl Query {
    /// The query's first line that says something, for messages.
    pub fn first_line(&self) -> String {
        let line = self.query.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with("--")).unwrap_or("");
        let mut short: String = line.chars().take(80).collect();
        if short.len() < line.len() {
            short.push_str("...");
        }
        short
    }

    /// The short form of the hash messages name it by.
    pub fn short_hash(&self) -> &str {
        // A record may be written by hand: cut at a character, never inside one.
        let end = self.hash.char_indices().nth(12).map_or(self.hash.len(), |(at, _)| at);
        &self.hash[..end]
    }
}

/// The queries of this binary's build, in a stable order.
pub fn built_in() -> anyhow::Result<Vec<Query>> {
    let mut queries = generated::BUILT_IN.iter().map(|json| parse(json)).collect::<anyhow::Result<Vec<Query>>>()?;
    queries.sort_by(|a, b| a.hash.cmp(&b.hash));
    Ok(queries)
}

/// The commit this binary was built from, when it was built in a git checkout.
pub fn build_commit() -> Option<&'static str> {
    generated::BUILD_COMMIT
}

mod generated {
    include!(concat!(env!("OUT_DIR"), "/built_in_queries.rs"));
}

/// The queries of a `.sqlx` folder (another build's, for `lint-migrations --previous-queries`).
pub fn from_dir(dir: &Path) -> anyhow::Result<Vec<Query>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))?;
    let mut queries = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("read {}", dir.display()))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("query-") && name.ends_with(".json") {
            let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
            queries.push(parse(&text).with_context(|| format!("{}: not a sqlx query file", path.display()))?);
        }
    }
    queries.sort_by(|a, b| a.hash.cmp(&b.hash));
    Ok(queries)
}

/// A hash of the queries themselves: the release's name where nothing else names it.
pub fn fingerprint(queries: &[Query]) -> String {
    let mut digest = sha2::Sha256::new();
    for query in queries {
        digest.update(query.hash.as_bytes());
        digest.update(b"\n");
    }
    let hex: String = digest.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("queries-{hex}")
}

/// sqlx's query file: `{"query": ..., "describe": {"columns": [{"name", "type_info"}],
/// "parameters": {"Left": [...]}, "nullable": [...]}, "hash": ...}`.
#[derive(Deserialize)]
struct SqlxFile {
    query: String,
    describe: SqlxDescribe,
    hash: String,
}

#[derive(Deserialize)]
struct SqlxDescribe {
    columns: Vec<SqlxColumn>,
    parameters: Option<serde_json::Value>,
    nullable: Vec<Option<bool>>,
}

#[derive(Deserialize)]
struct SqlxColumn {
    name: String,
    type_info: serde_json::Value,
}

pub fn parse(json: &str) -> anyhow::Result<Query> {
    let file: SqlxFile = serde_json::from_str(json)?;
    let parameters = match &file.describe.parameters {
        Some(serde_json::Value::Object(either)) => match either.get("Left") {
            Some(serde_json::Value::Array(types)) => types.iter().map(type_name).collect::<anyhow::Result<_>>()?,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let columns = file
        .describe
        .columns
        .iter()
        .enumerate()
        .map(|(i, column)| {
            Ok(Column {
                name: column.name.clone(),
                type_name: type_name(&column.type_info)?,
                nullable: file.describe.nullable.get(i).copied().flatten(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Query { hash: file.hash, query: file.query, parameters, columns })
}

/// PostgreSQL's name of a type as sqlx writes it: a variant of its `PgType` (`"Int8"`,
/// `"TextArray"`), or a custom type by name (`{"Custom": {"name": "job_status", ...}}`).
fn type_name(value: &serde_json::Value) -> anyhow::Result<String> {
    match value {
        serde_json::Value::String(variant) => Ok(match variant.strip_suffix("Array") {
            Some(element) => format!("{}[]", element.to_ascii_lowercase()),
            None => variant.to_ascii_lowercase(),
        }),
        serde_json::Value::Object(map) => {
            let (kind, inner) = map.iter().next().ok_or_else(|| anyhow!("an empty type"))?;
            match (kind.as_str(), inner) {
                ("Custom", serde_json::Value::Object(custom)) => custom
                    .get("name")
                    .and_then(|n| n.as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("a custom type without a name")),
                ("DeclareWithName", serde_json::Value::String(name)) => Ok(name.clone()),
                ("DeclareArrayOf", serde_json::Value::Object(array)) => array
                    .get("elem_name")
                    .and_then(|n| n.as_str())
                    .map(|n| format!("{n}[]"))
                    .ok_or_else(|| anyhow!("an array type without its element's name")),
                ("DeclareWithOid", oid) => Ok(format!("oid {oid}")),
                _ => Err(anyhow!("a type sqlx writes as {value}, which this version does not know")),
            }
        }
        _ => Err(anyhow!("a type sqlx writes as {value}, which this version does not know")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_query_reads() {
        let queries = built_in().expect("the workspace's .sqlx files read");
        assert!(queries.len() >= 5, "{queries:?}");
        assert!(queries.iter().any(|q| q.query.starts_with("INSERT INTO jobs")));
    }

    #[test]
    fn sqlx_type_names_become_postgres_names() {
        for (json, name) in [
            (r#""Int8""#, "int8"),
            (r#""TextArray""#, "text[]"),
            (r#""Timestamptz""#, "timestamptz"),
            (r#"{"Custom": {"name": "job_status", "kind": {"Enum": ["queued"]}}}"#, "job_status"),
        ] {
            assert_eq!(type_name(&serde_json::from_str(json).expect("json")).expect("a name"), name);
        }
    }
}
