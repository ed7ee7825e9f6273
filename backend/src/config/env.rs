//! The variables: `.env` read with dotenvy, the process environment over it, and what could not
//! be parsed kept out of every message.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::*;

/// Where the variables were read from, for messages and for `doctor`.
#[derive(Debug, Clone)]
pub struct EnvSource {
    /// The `.env` file that was read, when it existed.
    pub file: Option<PathBuf>,
    /// The file that was looked for.
    pub looked_for: PathBuf,
}

/// The merged variables: the process environment wins over the file.
#[derive(Clone, Default)]
pub struct Env {
    pub(super) vars: BTreeMap<String, String>,
    /// Names that came from the process environment rather than the file.
    from_process: Vec<String>,
    /// The file read (or looked for), named in hints: `--env-file` may have named another.
    file: Option<PathBuf>,
}

impl Env {
    /// Reads `file` (a missing file is fine) and overlays the process environment.
    pub fn load(
        file: &Path,
        process: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<(Self, EnvSource), ConfigError> {
        let file_vars = read_env_file(file)?;
        Ok(Self::merge(file, file_vars, process))
    }

    /// The process environment alone, when `file` does not parse; hints still name `file`.
    pub fn process_only(file: &Path, process: impl IntoIterator<Item = (OsString, OsString)>) -> Self {
        Self::merge(file, None, process).0
    }

    fn merge(
        file: &Path,
        file_vars: Option<BTreeMap<String, String>>,
        process: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> (Self, EnvSource) {
        let found = file_vars.is_some();
        let mut vars = file_vars.unwrap_or_default();
        let mut from_process = Vec::new();
        for (key, value) in process {
            let (Ok(key), Ok(value)) = (key.into_string(), value.into_string()) else {
                continue;
            };
            crate::redact::register_variable(&key, &value);
            from_process.push(key.clone());
            vars.insert(key, value);
        }
        let source = EnvSource { file: found.then(|| file.to_path_buf()), looked_for: file.to_path_buf() };
        (Env { vars, from_process, file: Some(file.to_path_buf()) }, source)
    }

    pub fn from_map(vars: BTreeMap<String, String>) -> Self {
        Env { vars, from_process: Vec::new(), file: None }
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Env {
            vars: pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            from_process: Vec::new(),
            file: None,
        }
    }

    /// The value, or `None` when unset or empty (compose turns `KEY=` into an empty string).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str).filter(|v| !v.trim().is_empty())
    }

    /// A copy without `key`, to judge the settings the other variables make.
    pub fn without(&self, key: &str) -> Env {
        let mut copy = self.clone();
        copy.vars.remove(key);
        copy
    }

    pub fn is_from_process(&self, key: &str) -> bool {
        self.from_process.iter().any(|k| k == key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    pub(super) fn require(&self, key: &str) -> Result<&str, ConfigError> {
        self.get(key).ok_or_else(|| {
            let file = self.file.as_deref().map_or_else(|| ".env".to_owned(), |f| f.display().to_string());
            // A misspelt name sets nothing: say which one was meant.
            let near = self.vars.keys().find(|set| (1..=2).contains(&edit_distance(set, key)));
            let typo = near.map(|set| format!(" ({set} is set: did you mean {key}?)")).unwrap_or_default();
            config_error(format!("{key} is not set{typo}: set it in {file} or the environment (see .env.example)"))
        })
    }
}

/// Reads a dotenv file without touching the process environment. A parse error names the file,
/// the line number and the key, never any part of the value: it may hold a password.
pub fn read_env_file(path: &Path) -> Result<Option<BTreeMap<String, String>>, ConfigError> {
    let iter = match dotenvy::from_path_iter(path) {
        Ok(iter) => iter,
        Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(env_file_error(path, e, 0)),
    };
    let mut vars = BTreeMap::new();
    for item in iter {
        let (key, value) = item.map_err(|e| env_file_error(path, e, vars.len()))?;
        crate::redact::register_variable(&key, &value);
        vars.insert(key, value);
    }
    Ok(Some(vars))
}

/// dotenvy's parse error carries the text of the statement, or only of its value: it is never
/// shown. The statement is found by counting: `parsed` statements came before it.
fn env_file_error(path: &Path, error: dotenvy::Error, parsed: usize) -> ConfigError {
    let fix = "quote values that contain spaces, quotes, `\\`, `$` or `#` with single quotes (KEY='value')";
    match error {
        dotenvy::Error::LineParse(..) => {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let failing = failing_statement(&text, parsed);
            register_unparsed(&text, failing.as_ref().map_or(1, |(number, _)| *number));
            let at = match failing {
                Some((number, Some(key))) => format!(" line {number}: cannot parse the value of {key}"),
                Some((number, None)) => format!(" line {number}: not a KEY=value line"),
                None => ": a line cannot be parsed".to_owned(),
            };
            config_error(format!("{}{at}: {fix}", path.display()))
        }
        dotenvy::Error::Io(e) => config_error(format!("cannot read {}: {}", path.display(), io_reason(&e))),
        dotenvy::Error::EnvVar(_) => config_error(format!("cannot read {}", path.display())),
        _ => config_error(format!("cannot read {}", path.display())),
    }
}

/// Registers for redaction what may be a value on the lines from `first` (1-based) on, which were
/// never read as settings: the statement that does not parse, and those after it. Another reader
/// of the file (compose's, a shell's) may take them differently and quote them, and nothing tells
/// a password apart there, so every value counts as one (where the file is broken, a setting such
/// as a host may then be blanked too). Values shorter than the redaction's minimum stay visible.
fn register_unparsed(text: &str, first: usize) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for line in text.lines().skip(first.saturating_sub(1)) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let statement = line.strip_prefix("export ").map_or(line, str::trim_start);
        let value = match statement.split_once('=') {
            Some((name, value)) if is_variable_name(name.trim_end()) => value,
            _ => line,
        };
        // As typed, without its quotes, without a trailing comment, and each of those trimmed.
        let mut forms = vec![value.to_owned()];
        if let Some((before, _)) = value.split_once(" #") {
            forms.push(before.to_owned());
        }
        for form in forms.clone() {
            let unquoted = form.trim().trim_start_matches(['\'', '"']).trim_end_matches(['\'', '"']);
            forms.push(unquoted.to_owned());
        }
        for form in &forms {
            crate::redact::register(form);
            // A URL's password alone, as a reader that cuts the line elsewhere may show it.
            if let Some(password) = crate::redact::url_password_span(form) {
                crate::redact::register(password);
            }
        }
    }
}

fn is_variable_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An I/O error's kind, which (unlike some messages) never carries file content.
pub(super) fn io_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::InvalidData => "it is not UTF-8 text".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        std::io::ErrorKind::InvalidInput => "not a file".to_owned(),
        kind => kind.to_string(),
    }
}

/// The line where statement `index` (0-based, as dotenvy splits the file, quoted values running
/// over several lines) starts, and its key when the line has the shape `[export] NAME=`.
///
/// dotenvy splits the first `n` lines into as many statements as start among them, so the line
/// is the first `n` at which statement `index` exists.
fn failing_statement(text: &str, index: usize) -> Option<(usize, Option<String>)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let number = (1..=lines.len()).find(|&n| {
        let head: String = lines[..n].concat();
        dotenvy::from_read_iter(head.as_bytes()).take(index + 1).count() > index
    })?;
    let line = lines[number - 1].trim_start();
    let line = line.strip_prefix("export ").map_or(line, str::trim_start);
    let name_end = line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(line.len());
    let (name, rest) = line.split_at(name_end);
    let is_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
    let key = (is_name && rest.trim_start().starts_with('=')).then(|| name.to_owned());
    Some((number, key))
}
