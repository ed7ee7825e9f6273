//! What prestart tells the person (or the log collector) watching it: one announced step at a
//! time on stderr, then how long it took. Readable where the seed's `set -x` was not.

use std::time::Duration;

use backend::redact::redact;

/// Announces a step.
pub fn step(what: impl AsRef<str>) {
    emit("==> ", what.as_ref());
}

/// A line inside the current step.
pub fn line(what: impl AsRef<str>) {
    emit("    ", what.as_ref());
}

/// Something the user should look at, though the run goes on.
pub fn warn(what: impl AsRef<str>) {
    emit("    warning: ", what.as_ref());
}

/// One write a line: stderr is unbuffered, so `eprintln!` costs a system call for each piece of
/// a line, and lets another process's output in between them. A stderr that is gone (a closed
/// pipe) loses the line, not the run.
fn emit(prefix: &str, what: &str) {
    let line = format!("{prefix}{}\n", redact(what));
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
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
