//! What prestart tells the person (or the log collector) watching it: one announced step at a
//! time on stderr, then how long it took. Readable where the seed's `set -x` was not.

use std::time::Duration;

use backend::redact::redact;

/// Announces a step.
pub fn step(what: impl AsRef<str>) {
    eprintln!("==> {}", redact(what.as_ref()));
}

/// A line inside the current step.
pub fn line(what: impl AsRef<str>) {
    eprintln!("    {}", redact(what.as_ref()));
}

/// Something the user should look at, though the run goes on.
pub fn warn(what: impl AsRef<str>) {
    eprintln!("    warning: {}", redact(what.as_ref()));
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
