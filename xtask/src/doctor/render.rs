//! The report: grouped by area with ✓ ! ✗ marks, or one JSON document.

use std::fmt::Write as _;
use std::io::IsTerminal;

use super::{Area, Doctor, Status};
use crate::settings::place::RuntimeContext;

/// The `schema_version` of `--json`; bumped only when a field changes meaning or disappears.
const JSON_SCHEMA_VERSION: u32 = 1;

pub fn use_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub fn human(doctor: &Doctor, color: bool) -> String {
    let paint = |code: &str, text: &str| if color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() };
    let mut out = String::new();
    let mut area: Option<Area> = None;
    let findings = doctor.findings();
    let mut index = 0;
    while index < findings.len() {
        let finding = &findings[index];
        // One cause that decides several checks of an area is said once, with the checks it holds.
        let held: Vec<&str> = findings[index..]
            .iter()
            .take_while(|f| {
                (f.area, f.status, &f.message, &f.hint)
                    == (finding.area, finding.status, &finding.message, &finding.hint)
            })
            .map(|f| f.id)
            .collect();
        index += held.len();
        if area != Some(finding.area) {
            area = Some(finding.area);
            let _ = writeln!(out, "{}", paint("1", finding.area.title()));
        }
        let mark = match finding.status {
            Status::Ok => paint("32", "✓"),
            Status::Warn => paint("33", "!"),
            Status::Fail => paint("31", "✗"),
            Status::Skipped => paint("2", "-"),
        };
        let message = match held.as_slice() {
            [_, _, ..] => format!("{} ({} checks: {})", finding.message, held.len(), held.join(", ")),
            _ => finding.message.clone(),
        };
        let message =
            if finding.status == Status::Skipped { paint("2", &format!("skipped: {message}")) } else { message };
        let _ = writeln!(out, "  {mark} {message}");
        if let Some(hint) = &finding.hint {
            let _ = writeln!(out, "      {} {hint}", paint("2", "fix:"));
        }
    }
    let count = |status| doctor.findings().iter().filter(|f| f.status == status).count();
    let (problems, warnings) = (count(Status::Fail), count(Status::Warn));
    let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let summary = match (problems, warnings) {
        (0, 0) => "no problems".to_owned(),
        (0, w) => plural(w, "warning", "warnings"),
        (p, 0) => plural(p, "problem", "problems"),
        (p, w) => format!("{}, {}", plural(p, "problem", "problems"), plural(w, "warning", "warnings")),
    };
    let _ = writeln!(out, "\n{summary} ({} checks, {} skipped)", doctor.findings().len(), count(Status::Skipped));
    out
}

pub fn json(doctor: &Doctor, context: RuntimeContext) -> String {
    let count = |status| doctor.findings().iter().filter(|f| f.status == status).count();
    let document = serde_json::json!({
        "schema_version": JSON_SCHEMA_VERSION,
        "context": match context {
            RuntimeContext::Host => "host",
            RuntimeContext::Container => "container",
            RuntimeContext::Kubernetes => "kubernetes",
        },
        "summary": {
            "ok": count(Status::Ok),
            "warn": count(Status::Warn),
            "fail": count(Status::Fail),
            "skipped": count(Status::Skipped),
        },
        "checks": doctor.findings(),
    });
    serde_json::to_string_pretty(&document).unwrap_or_default()
}
