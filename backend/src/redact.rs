//! Secrets from the settings, blanked out of everything the programs print.
//!
//! Messages are written never to include a settings value; this is the second line of defence for
//! the paths that show a host, a database name or a server's message, which a malformed
//! `DATABASE_URL` can fill with part of its password.

use std::borrow::Cow;
use std::sync::{Mutex, PoisonError};

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Shorter values are blanked only where they stand as a password (see [`redact`]).
const MIN_LEN: usize = 4;

/// What replaces a secret in output.
pub const MASK: &str = "********";

/// Remembers a value that must never be printed, with its percent-encoded and -decoded forms.
pub fn register(secret: &str) {
    let decoded = percent_encoding::percent_decode_str(secret).decode_utf8_lossy().into_owned();
    let encoded = percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC).to_string();
    let mut forms = vec![secret.to_owned(), secret.trim().to_owned(), decoded, encoded];
    // As tools quote it: Go's %q, Rust's `{:?}` and JSON escape `\` and `"`; Python's repr `\`
    // and `'`.
    for form in forms.clone() {
        let backslashes = form.replace('\\', "\\\\");
        forms.push(backslashes.replace('"', "\\\""));
        forms.push(backslashes.replace('\'', "\\'"));
    }
    let mut secrets = SECRETS.lock().unwrap_or_else(PoisonError::into_inner);
    for form in forms {
        if !form.is_empty() && !secrets.contains(&form) {
            secrets.push(form);
        }
    }
    // Longest first, so a secret that contains another is blanked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// A secret that reads as a word (letters alone: `postgres`, `changethis`, `wrong`) is blanked
/// only where it stands as a password; elsewhere it is the user's name, a check's name or an
/// English word that the password happens to equal. Any other secret of four characters or more
/// (a generated one has digits or signs: `a1b2c3d4`) is blanked wherever it appears.
fn only_as_a_password(secret: &str) -> bool {
    secret.chars().count() < MIN_LEN || secret.chars().all(|c| c.is_ascii_alphabetic())
}

/// Whether `text[start..end]` stands where a password stands: in a URL's userinfo
/// (`user:SECRET@`), or after a word that ends in `password` (`password=SECRET`,
/// `PGPASSWORD=SECRET`, `"password": "SECRET"`, `PASSWORD 'SECRET'`), as a whole word.
fn stands_as_a_password(text: &str, start: usize, end: usize) -> bool {
    let (before, after) = (&text[..start], &text[end..]);
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if before.chars().next_back().is_some_and(is_word) || after.chars().next().is_some_and(is_word) {
        return false;
    }
    if before.ends_with(':') && after.starts_with('@') {
        return true;
    }
    let lead = before.trim_end_matches([' ', '=', ':', '"', '\'', '\t']);
    lead.len() >= 8 && lead.is_char_boundary(lead.len() - 8) && lead[lead.len() - 8..].eq_ignore_ascii_case("password")
}

/// Remembers the secret parts of a settings variable: a password, or the password of a URL,
/// found the way a reader of the URL would find it even when the URL does not parse.
pub fn register_variable(key: &str, value: &str) {
    if key.contains("PASSWORD") {
        register(value);
    } else if key.ends_with("URL") {
        if let Some(password) = url_password_span(value) {
            register(password);
        }
        // sqlx takes a password from the query string too: `?password=...`.
        for parameter in value.split(['?', '&']).skip(1) {
            if let Some(password) = parameter.strip_prefix("password=").filter(|p| !p.is_empty()) {
                register(password);
            }
        }
    }
}

/// Between the first `:` after `scheme://` and the last `@`: the password as typed, well-formed
/// or not.
pub fn url_password_span(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let userinfo = &rest[..rest.rfind('@')?];
    let password = &userinfo[userinfo.find(':')? + 1..];
    (!password.is_empty()).then_some(password)
}

/// `text` with every registered secret replaced by [`MASK`] (a word-like one only where it
/// stands as a password).
pub fn redact(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS.lock().unwrap_or_else(PoisonError::into_inner);
    if !secrets.iter().any(|s| text.contains(s.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_owned();
    for secret in secrets.iter() {
        if !only_as_a_password(secret) {
            out = out.replace(secret.as_str(), MASK);
            continue;
        }
        let mut from = 0;
        while let Some(found) = out[from..].find(secret.as_str()) {
            let (start, end) = (from + found, from + found + secret.len());
            if stands_as_a_password(&out, start, end) {
                out.replace_range(start..end, MASK);
                from = start + MASK.len();
            } else {
                from = end;
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_found_even_when_malformed() {
        assert_eq!(url_password_span("postgres://u:pa ss@h/db"), Some("pa ss"));
        assert_eq!(url_password_span("postgres://u:a/b@c@h:5/db"), Some("a/b@c"));
        assert_eq!(url_password_span("postgres://u@h/db"), None);
        assert_eq!(url_password_span("postgres://h/db"), None);
        register_variable("DATABASE_URL", "postgres://u:12345/xyz@host/db");
        assert_eq!(redact("postgres@u:12345/xyz@host/db"), format!("postgres@u:{MASK}@host/db"));
        register_variable("X_PASSWORD", "p%40ssword");
        assert_eq!(redact("p@ssword and p%40ssword"), format!("{MASK} and {MASK}"));
        // Quoted by a tool that escapes quotes and backslashes.
        register("se'c\"r\\et");
        assert_eq!(redact(&format!("{:?}", "x=se'c\"r\\et")), format!("\"x={MASK}\""));
        assert_eq!(redact("'x=se\\'c\"r\\\\et'"), format!("'x={MASK}'"));
    }

    /// Review 3l: a password that reads as a word is blanked where it stands as a password, and
    /// nowhere else.
    #[test]
    fn a_word_like_password_is_blanked_only_where_it_stands_as_one() {
        register("postgres");
        register("wrong");
        assert_eq!(redact("postgres@127.0.0.1:5432/app"), "postgres@127.0.0.1:5432/app");
        assert_eq!(redact("postgres.writable"), "postgres.writable");
        assert_eq!(redact("the password is wrong"), "the password is wrong");
        assert_eq!(redact("postgres://postgres:postgres@db/app"), format!("postgres://postgres:{MASK}@db/app"));
        assert_eq!(redact("host=db password=wrong user=postgres"), format!("host=db password={MASK} user=postgres"));
        assert_eq!(redact("PGPASSWORD=postgres psql"), format!("PGPASSWORD={MASK} psql"));
        assert_eq!(redact("ALTER ROLE bob PASSWORD 'wrong'"), format!("ALTER ROLE bob PASSWORD '{MASK}'"));
        assert_eq!(redact(r#"{"password": "postgres"}"#), format!(r#"{{"password": "{MASK}"}}"#));
        assert_eq!(redact("?sslmode=disable&password=wrong"), format!("?sslmode=disable&password={MASK}"));
        assert_eq!(redact("password=wrongly"), "password=wrongly");
        // A generated one, with digits, is blanked wherever it appears.
        register("a1b2c3d4e5");
        assert_eq!(redact("DB_PASS=a1b2c3d4e5 and a1b2c3d4e5"), format!("DB_PASS={MASK} and {MASK}"));
    }
}
