//! What prestart tells the person (or the log collector) watching it: one announced step at a
//! time on stderr, then how long it took. Readable where the seed's `set -x` was not.
//!
//! With `PRESTART_LOG_FORMAT=json` (or `--log-format json`) every line is one JSON object for a
//! log collector (Loki, CloudWatch, Datadog): `time` (UTC), `level` (info, warn, error), `step`
//! (the step it belongs to), `message`, and the figures a line carries (`attempts`,
//! `duration_ms`, `version`, ...); the last line of a run has `exit_code` and `class`. Secrets are
//! blanked in JSON as in text.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backend::redact::redact;
use serde_json::{Map, Value};

/// How lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// For people: `==> step`, then indented lines
    #[default]
    Text,
    /// One JSON object a line, for log collectors
    Json,
}

static JSON: AtomicBool = AtomicBool::new(false);
/// The step the lines that follow belong to (JSON's `step`).
static STEP: Mutex<String> = Mutex::new(String::new());

/// Sets how lines are written from now on.
pub fn set_format(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
}

/// The format `PRESTART_LOG_FORMAT` asks for (the process environment: a log format is the
/// collector's, set where the container is defined), `text` when unset or unknown.
pub fn format_from_environment() -> LogFormat {
    match std::env::var_os("PRESTART_LOG_FORMAT").as_deref().and_then(|v| v.to_str()) {
        Some(value) if value.eq_ignore_ascii_case("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Announces a step.
pub fn step(what: impl AsRef<str>) {
    step_with(what, &[]);
}

/// Announces a step with figures (the last step of a run, with the run's duration).
pub fn step_with(what: impl AsRef<str>, figures: &[(&str, Value)]) {
    if let Ok(mut step) = STEP.lock() {
        *step = redact(what.as_ref()).into_owned();
    }
    emit(("==> ", "info"), what.as_ref(), figures);
}

/// A line inside the current step.
pub fn line(what: impl AsRef<str>) {
    emit(("    ", "info"), what.as_ref(), &[]);
}

/// A line with figures, which JSON carries as fields of their own.
pub fn line_with(what: impl AsRef<str>, figures: &[(&str, Value)]) {
    emit(("    ", "info"), what.as_ref(), figures);
}

/// Something the user should look at, though the run goes on.
pub fn warn(what: impl AsRef<str>) {
    emit(("    warning: ", "warn"), what.as_ref(), &[]);
}

/// The run's end: the error (if any), with its exit code and class in JSON. In text, a success
/// says nothing more.
pub fn finish(error: Option<&str>, exit_code: u8, class: &str) {
    let figures = [("exit_code", Value::from(exit_code)), ("class", Value::from(class))];
    match (error, json()) {
        (Some(error), _) => emit(("error: ", "error"), error, &figures),
        (None, true) => emit(("", "info"), "done", &figures),
        (None, false) => {}
    }
}

/// One write a line: stderr is unbuffered, so `eprintln!` costs a system call for each piece of
/// a line, and lets another process's output in between them. A stderr that is gone (a closed
/// pipe) loses the line, not the run.
fn emit((prefix, level): (&str, &str), what: &str, figures: &[(&str, Value)]) {
    let line = if json() { json_line(level, what, figures) } else { format!("{prefix}{}\n", redact(what)) };
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
}

fn json_line(level: &str, what: &str, figures: &[(&str, Value)]) -> String {
    let mut object = Map::new();
    object.insert("time".into(), Value::from(utc_now()));
    object.insert("level".into(), Value::from(level));
    let step = STEP.lock().map(|s| s.clone()).unwrap_or_default();
    if !step.is_empty() {
        object.insert("step".into(), Value::from(step));
    }
    object.insert("message".into(), Value::from(redact(what).into_owned()));
    for (key, value) in figures {
        let value = match value {
            Value::String(text) => Value::from(redact(text).into_owned()),
            other => other.clone(),
        };
        object.insert((*key).to_owned(), value);
    }
    format!("{}\n", Value::Object(object))
}

/// Now, as RFC 3339 UTC to the millisecond.
fn utc_now() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seconds = i64::try_from(now.as_secs()).unwrap_or_default();
    let (year, month, day) = backend::calendar::civil_from_days(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        now.subsec_millis()
    )
}

/// A command's result on stdout (a report, a JSON document), with secrets blanked like the rest.
pub fn print(what: impl AsRef<str>) {
    print!("{}", redact(what.as_ref()));
}

/// `1.23 s` or `45 ms`.
pub fn duration(elapsed: Duration) -> String {
    if elapsed < Duration::from_secs(1) {
        format!("{} ms", elapsed.as_millis())
    } else {
        format!("{:.2} s", elapsed.as_secs_f64())
    }
}

/// A duration as a JSON figure, in milliseconds.
pub fn ms(elapsed: Duration) -> Value {
    Value::from(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}
