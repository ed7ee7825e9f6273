//! How findings are printed: for people, as JSON for tools, or as GitHub annotations. The JSON
//! fields and the annotation layout are stable: CI jobs parse them.

use super::Finding;
use super::rules::Severity;
use crate::base::workspace::display_path;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// `file:line: rule: message`, and the safe way on the next line.
    #[default]
    Text,
    /// One JSON array: file, line, column, rule, severity, message, safe, and table and table_bytes
    /// when known.
    Json,
    /// GitHub Actions workflow commands (`::warning file=...,line=...,title=RULE::message`).
    Github,
}

pub fn render(format: Format, findings: &[Finding]) -> String {
    match format {
        Format::Text => findings.iter().map(text).collect::<Vec<_>>().join("\n"),
        Format::Json => json(findings),
        Format::Github => findings.iter().map(github).collect::<Vec<_>>().join("\n"),
    }
}

/// `file:line: rule: message` and the safe way on the next line.
fn text(finding: &Finding) -> String {
    let note = if finding.severity == Severity::Note { " (note)" } else { "" };
    format!(
        "{}:{}: {}{note}: {}\n  safe: {}",
        display_path(&finding.file),
        finding.line,
        finding.rule,
        finding.message,
        finding.safe
    )
}

fn json(findings: &[Finding]) -> String {
    let items: Vec<serde_json::Value> = findings
        .iter()
        .map(|f| {
            let mut item = serde_json::json!({
                "file": display_path(&f.file),
                "line": f.line,
                "column": f.column,
                "rule": f.rule.to_string(),
                "severity": f.severity,
                "message": f.message,
                "safe": f.safe,
            });
            if let (Some(table), Some(map)) = (&f.table, item.as_object_mut()) {
                map.insert("table".into(), table.clone().into());
                if let Some(bytes) = f.table_bytes {
                    map.insert("table_bytes".into(), bytes.into());
                }
            }
            item
        })
        .collect();
    serde_json::to_string_pretty(&items).unwrap_or_else(|_| "[]".into())
}

fn github(finding: &Finding) -> String {
    let command = match finding.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Note => "notice",
    };
    format!(
        "::{command} file={},line={},col={},title={}::{}",
        property(&display_path(&finding.file)),
        finding.line,
        finding.column,
        property(&finding.rule.to_string()),
        data(&format!("{}\nsafe: {}", finding.message, finding.safe))
    )
}

/// GitHub's escaping of a command's message.
fn data(text: &str) -> String {
    text.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// GitHub's escaping of a command's property value.
fn property(text: &str) -> String {
    data(text).replace(':', "%3A").replace(',', "%2C")
}
