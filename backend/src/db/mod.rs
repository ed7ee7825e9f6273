//! Connecting: one attempt with a bounded time, the classification of what went wrong, and the
//! wait loop that retries only what waiting can fix.
//!
//! Every command uses this one classification, so `wait-for-db`, `migrate`, the backend and
//! `doctor` agree on what a failure means.

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError, PgSslMode};
use sqlx::{ConnectOptions, Connection};

use crate::config::DatabaseSettings;

mod classify;
mod connect;
mod pooler;
mod wait;

pub use classify::*;
pub use connect::*;
use pooler::refused_by_a_pooler;
pub use wait::*;

/// The longest one connection attempt may take, so a host that drops packets costs seconds.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a query of ours may take, outside a migration's own SQL: a connection that went
/// half-open (a paused VM, a NAT that forgot the flow) then ends in seconds, not after the
/// kernel's retransmissions (about 15 minutes), and is replaced like any broken one.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// `query` within [`QUERY_TIMEOUT`]; running out is a timed-out I/O error, which
/// [`Failure::classify`] takes for a connection that waiting (and a new connection) can fix. The
/// connection is then of no further use: the answer may still come.
pub async fn bounded<T>(query: impl std::future::Future<Output = Result<T, sqlx::Error>>) -> Result<T, sqlx::Error> {
    match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(result) => result,
        Err(_) => Err(timed_out(QUERY_TIMEOUT)),
    }
}

/// The error of a query whose answer did not come within `bound`.
pub fn timed_out(bound: Duration) -> sqlx::Error {
    sqlx::Error::Io(io::Error::new(io::ErrorKind::TimedOut, OurBound(bound)))
}

/// The error inside the I/O error of a bound of ours that fired: a slow server, not a lost one
/// (the kernel's own ETIMEDOUT, from the keepalives or TCP_USER_TIMEOUT, is a lost connection).
#[derive(Debug)]
pub struct OurBound(Duration);

impl std::fmt::Display for OurBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the server sent no answer within {} s", self.0.as_secs())
    }
}

impl std::error::Error for OurBound {}

/// `error` is a bound of ours that fired ([`timed_out`]), not the network.
pub fn is_our_bound(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Io(e) if e.get_ref().is_some_and(|inner| inner.is::<OurBound>()))
}

/// What a failover does to a connection in use: it breaks (an I/O error that is not a bound of
/// ours: a reset, an EOF, the kernel's timeout), the server ends the session (57P01 a shutdown,
/// 57P02 a crash elsewhere), or the node is now a standby that refuses writes (25006). A class 08
/// SQLSTATE in a reply is not one: a server that replies is there (dblink reports its own
/// connections' failures so).
pub fn lost_to_failover(error: &sqlx::Error) -> Option<LostHow> {
    match error {
        sqlx::Error::Io(_) if is_our_bound(error) => None,
        sqlx::Error::Io(_) => Some(LostHow::Broken),
        sqlx::Error::Database(e) => match e.code().as_deref() {
            Some("57P01") => Some(LostHow::ShutDown),
            Some("57P02") => Some(LostHow::Broken),
            Some("25006") => Some(LostHow::ReadOnly),
            _ => None,
        },
        _ => None,
    }
}

/// How a connection was lost, which decides what proves a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostHow {
    /// The server ended the session (57P01): a shutdown, a restart, a switchover, or
    /// `pg_terminate_backend`.
    ShutDown,
    /// The node turned into a standby under it (25006).
    ReadOnly,
    /// It broke (an EOF, a reset, the kernel's timeout, 57P02): a failover, a network fault, or a
    /// crash, which the statement running may have caused.
    Broken,
}

/// What went wrong with a query of ours, for a user: the server's message and SQLSTATE, or the
/// network's error; never a driver's decoding message, which would only confuse.
pub fn describe_error(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(e) => format!("{} (SQLSTATE {})", e.message(), e.code().unwrap_or_default()),
        sqlx::Error::Io(e) => e.to_string(),
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => {
            "the server's answer had an unexpected shape (a PostgreSQL version this tool does not know?)".to_owned()
        }
        other => other.to_string(),
    }
}

/// `SET LOCAL statement_timeout` a little under [`QUERY_TIMEOUT`], to put before a query of ours
/// in the same simple-query message (one implicit transaction): when our bound gives up on the
/// answer, the server has already given up the statement, so nothing of ours stays queued there.
pub fn server_side_bound() -> String {
    format!("SET LOCAL statement_timeout = {}; ", QUERY_TIMEOUT.saturating_sub(Duration::from_secs(1)).as_millis())
}

/// A `timestamptz` as the server prints it (`2026-12-04 23:36:31.857694+00`: sqlx sets `DateStyle`
/// to ISO and `TimeZone` to UTC) as `2026-12-04T23:36:31Z`, UTC to the second even where a pooler
/// kept another time zone (`2026-12-05 05:06:31+05:30`). The value is read as the server prints it
/// rather than converted there: `AT TIME ZONE` or `to_char` cost a fresh server process a tenth of
/// a millisecond or more. A value of another shape (`infinity`, a year BC or past 9999, another
/// `DateStyle`, a local mean time's offset in seconds) stays as it is.
pub fn rfc3339_seconds(printed: &str) -> String {
    utc_to_the_second(printed).unwrap_or_else(|| printed.to_owned())
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]+HH[:MM]` in UTC, or `None` for any other shape.
fn utc_to_the_second(printed: &str) -> Option<String> {
    let number = |from: usize, to: usize| -> Option<i64> {
        let digits = printed.get(from..to)?;
        if digits.bytes().all(|b| b.is_ascii_digit()) { digits.parse().ok() } else { None }
    };
    let separators = [(4, '-'), (7, '-'), (10, ' '), (13, ':'), (16, ':')];
    if !separators.iter().all(|&(at, separator)| printed.get(at..).is_some_and(|rest| rest.starts_with(separator))) {
        return None;
    }
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    let rest = printed.get(19..)?;
    let offset =
        rest.strip_prefix('.').map_or(rest, |fraction| fraction.trim_start_matches(|c: char| c.is_ascii_digit()));
    let (sign, offset) = match offset.split_at_checked(1)? {
        ("+", offset) => (1, offset),
        ("-", offset) => (-1, offset),
        _ => return None,
    };
    let offset_minutes = match (offset.len(), offset.get(2..3)) {
        (2, None) => number(printed.len() - 2, printed.len())? * 60,
        (5, Some(":")) => {
            number(printed.len() - 5, printed.len() - 3)? * 60 + number(printed.len() - 2, printed.len())?
        }
        _ => return None,
    };
    let local = crate::calendar::days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let utc = local - sign * offset_minutes * 60;
    let (year, month, day) = crate::calendar::civil_from_days(utc.div_euclid(86_400));
    let seconds = utc.rem_euclid(86_400);
    (0..=9999).contains(&year).then(|| {
        format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", seconds / 3600, seconds % 3600 / 60, seconds % 60)
    })
}

/// `text` as a dollar-quoted literal whose tag it does not contain: no escaping, whatever
/// `standard_conforming_strings` says.
pub fn dollar_quoted(text: &str) -> String {
    let mut tag = "$d$".to_owned();
    // The text holds no `$` and tag name at all, so no part of it (nor its end) closes the quote.
    while text.contains(&tag[..tag.len() - 1]) {
        tag.insert(tag.len() - 1, 'x');
    }
    format!("{tag}{text}{tag}")
}

#[cfg(test)]
mod tests {
    use super::rfc3339_seconds;

    #[test]
    fn a_printed_timestamptz_becomes_rfc3339_utc_to_the_second() {
        assert_eq!(rfc3339_seconds("2026-12-04 23:36:31.857694+00"), "2026-12-04T23:36:31Z");
        assert_eq!(rfc3339_seconds("2026-12-04 23:36:31+00"), "2026-12-04T23:36:31Z");
        // A pooler that kept another time zone: the same instant, in UTC.
        assert_eq!(rfc3339_seconds("2026-12-05 05:06:31.5+05:30"), "2026-12-04T23:36:31Z");
        assert_eq!(rfc3339_seconds("2026-12-04 18:36:31-05"), "2026-12-04T23:36:31Z");
        // Across a month, a year and a leap day.
        assert_eq!(rfc3339_seconds("2027-01-01 01:00:00+02"), "2026-12-31T23:00:00Z");
        assert_eq!(rfc3339_seconds("2024-02-28 20:00:00-04:30"), "2024-02-29T00:30:00Z");
        assert_eq!(rfc3339_seconds("1970-01-01 00:00:00+00"), "1970-01-01T00:00:00Z");
        // No RFC 3339 UTC form, or another DateStyle: as printed.
        for printed in [
            "1850-01-01 00:00:00+00:53:28",
            "0044-03-15 00:00:00+00 BC",
            "12/04/2026 23:36:31+05:30",
            "Fri Dec 04 23:36:31.857694 2026 UTC",
            "2026-12-04 23:36:31",
            "infinity",
            "",
        ] {
            assert_eq!(rfc3339_seconds(printed), printed);
        }
    }
}
