//! What prestart tells the person (or the log collector) watching it: one announced step at a
//! time on stderr, then how long it took. Readable where the seed's `set -x` was not.

use std::time::Duration;

/// Announces a step.
pub fn step(what: impl AsRef<str>) {
    eprintln!("==> {}", what.as_ref());
}

/// A line inside the current step.
pub fn line(what: impl AsRef<str>) {
    eprintln!("    {}", what.as_ref());
}

/// Something the user should look at, though the run goes on.
pub fn warn(what: impl AsRef<str>) {
    eprintln!("    warning: {}", what.as_ref());
}

/// `1.23 s` or `45 ms`.
pub fn duration(elapsed: Duration) -> String {
    if elapsed < Duration::from_secs(1) {
        format!("{} ms", elapsed.as_millis())
    } else {
        format!("{:.2} s", elapsed.as_secs_f64())
    }
}
