//! Settings: read once from `.env` and the process environment, validated, and passed down.
//!
//! Nothing else in the workspace reads the environment. Connect options are built with sqlx's
//! builder from explicit values, never by gluing a URL, so any password works.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// Variables that libpq defines and that `PgConnectOptions` silently reads for every field we do
/// not set (and for some we cannot unset, such as a client certificate or server options).
pub const LIBPQ_VARIABLES: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGDATABASE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGAPPNAME",
    "PGOPTIONS",
];

/// Every variable the project reads; `doctor` uses it to spot typos.
pub const KNOWN_VARIABLES: &[&str] = &[
    "DATABASE_URL",
    "POSTGRES_SERVER",
    "POSTGRES_PORT",
    "POSTGRES_DB",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_SSLMODE",
    "POSTGRES_SSLROOTCERT",
    "MIGRATION_DATABASE_URL",
    "POSTGRES_MIGRATION_SERVER",
    "POSTGRES_MIGRATION_PORT",
    "POSTGRES_MIGRATION_USER",
    "POSTGRES_MIGRATION_PASSWORD",
    "COMPOSE_SUBNET",
    "FIRST_SUPERUSER",
    "FIRST_SUPERUSER_PASSWORD",
    "ENVIRONMENT",
    "BACKEND_BIND",
    "PRESTART_WAIT_TIMEOUT",
    "APP_IMAGE",
    "BACKEND_PORT",
    "KUBERNETES_SERVICE_HOST",
];

/// The known variable within two edits of `key`, if any.
pub fn closest_known(key: &str) -> Option<&'static str> {
    KNOWN_VARIABLES
        .iter()
        .copied()
        .map(|known| (edit_distance(key, known), known))
        .filter(|(distance, _)| *distance > 0 && *distance <= 2)
        .min()
        .map(|(_, known)| known)
}

/// Levenshtein distance over characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// A configuration mistake the user can fix by editing `.env` or the environment.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError(message.into())
    }
}

fn config_error(message: impl Into<String>) -> ConfigError {
    ConfigError::new(message)
}

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
    vars: BTreeMap<String, String>,
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

    fn require(&self, key: &str) -> Result<&str, ConfigError> {
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
fn io_reason(error: &std::io::Error) -> String {
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

/// The environment the stack runs in; `local` relaxes some checks.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What backend and worker use, and what prestart waits for.
    pub database: DatabaseSettings,
    /// A direct connection for the migrate and seed steps (`MIGRATION_DATABASE_URL` or
    /// `POSTGRES_MIGRATION_*`), when `database` goes through a transaction pooler or the schema
    /// belongs to another role.
    pub migration_database: Option<DatabaseSettings>,
    pub first_superuser: Option<FirstSuperuser>,
    /// `ENVIRONMENT`; `None` when it is not set, which is not `local`: only `ENVIRONMENT=local`,
    /// said explicitly, relaxes anything (the one rule is xtask's `environment::is_local`; the
    /// backend itself judges no environment).
    pub environment: Option<String>,
    /// `BACKEND_BIND`: where the API listens.
    pub backend_bind: String,
    /// `KUBERNETES_SERVICE_HOST` is set: we run in a pod.
    pub in_kubernetes: bool,
    /// `PRESTART_RELEASE`: the name prestart records the deployed release under (the image tag);
    /// `None` names it by the build's commit or its queries.
    pub release: Option<String>,
}

impl Settings {
    /// The same settings, connecting to another database on the same server.
    pub fn with_database(&self, database: &str) -> Settings {
        Settings {
            database: self.database.with_database(database),
            migration_database: self.migration_database.as_ref().map(|direct| direct.with_database(database)),
            ..self.clone()
        }
    }

    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Settings {
            database: DatabaseSettings::from_env(env)?,
            migration_database: DatabaseSettings::for_migrations(env)?,
            first_superuser: FirstSuperuser::from_env(env)?,
            environment: env.get("ENVIRONMENT").map(str::to_owned),
            backend_bind: env.get("BACKEND_BIND").unwrap_or("0.0.0.0:8000").to_owned(),
            in_kubernetes: env.get("KUBERNETES_SERVICE_HOST").is_some(),
            release: env.get("PRESTART_RELEASE").map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned),
        })
    }
}

/// The account `init_db` creates on first run.
#[derive(Clone)]
pub struct FirstSuperuser {
    pub email: String,
    pub password: Secret,
}

impl fmt::Debug for FirstSuperuser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FirstSuperuser").field("email", &self.email).field("password", &self.password).finish()
    }
}

impl FirstSuperuser {
    fn from_env(env: &Env) -> Result<Option<Self>, ConfigError> {
        match (env.get("FIRST_SUPERUSER"), env.get("FIRST_SUPERUSER_PASSWORD")) {
            (None, None) => Ok(None),
            (Some(email), Some(password)) => {
                if !email.contains('@') {
                    return Err(config_error("FIRST_SUPERUSER must be an email address (admin@example.com)"));
                }
                Ok(Some(FirstSuperuser { email: email.trim().to_owned(), password: Secret(password.to_owned()) }))
            }
            (Some(_), None) => Err(config_error("FIRST_SUPERUSER_PASSWORD is not set: set it next to FIRST_SUPERUSER")),
            (None, Some(_)) => Err(config_error("FIRST_SUPERUSER is not set: set it next to FIRST_SUPERUSER_PASSWORD")),
        }
    }
}

/// A value that never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"********\"")
    }
}

/// The variables one set of connection settings was read from: messages and hints name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variables {
    /// How the set is called in messages: the URL variable, `POSTGRES_*` or `POSTGRES_MIGRATION_*`.
    pub origin: &'static str,
    /// Set when the settings came from a URL: the variable holding it.
    url: Option<&'static str>,
    server: &'static str,
    port: &'static str,
    user: &'static str,
    password: &'static str,
    database: &'static str,
    ssl_mode: &'static str,
    ssl_root_cert: &'static str,
}

impl Variables {
    const APP: Variables = Variables {
        origin: "POSTGRES_*",
        url: None,
        server: "POSTGRES_SERVER",
        port: "POSTGRES_PORT",
        user: "POSTGRES_USER",
        password: "POSTGRES_PASSWORD",
        database: "POSTGRES_DB",
        ssl_mode: "POSTGRES_SSLMODE",
        ssl_root_cert: "POSTGRES_SSLROOTCERT",
    };

    fn url(variable: &'static str) -> Variables {
        Variables { origin: variable, url: Some(variable), ..Variables::APP }
    }
}

/// `POSTGRES_MIGRATION_*` variables and the `POSTGRES_*` ones each stands in for.
const MIGRATION_OVERRIDES: [(&str, &str); 4] = [
    ("POSTGRES_MIGRATION_SERVER", "POSTGRES_SERVER"),
    ("POSTGRES_MIGRATION_PORT", "POSTGRES_PORT"),
    ("POSTGRES_MIGRATION_USER", "POSTGRES_USER"),
    ("POSTGRES_MIGRATION_PASSWORD", "POSTGRES_PASSWORD"),
];

/// Where and how to connect. `Debug` and `Display` never show the password.
#[derive(Clone)]
pub struct DatabaseSettings {
    options: PgConnectOptions,
    /// Kept beside the options, which cannot give it back, for `dev-db` to create a matching role.
    password: Option<Secret>,
    /// Kept beside the options too, for sqlx-cli's URL.
    ssl_root_cert: Option<String>,
    pub variables: Variables,
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("host", &self.host())
            .field("port", &self.port())
            .field("user", &self.user())
            .field("database", &self.database())
            .field("ssl_mode", &self.options.get_ssl_mode())
            .field("from", &self.variables.origin)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for DatabaseSettings {
    /// `user@host:port/database`, for log lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}:{}/{}", self.user(), self.host(), self.port(), self.database())
    }
}

impl DatabaseSettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        match env.get("DATABASE_URL") {
            Some(url) => Self::from_url(url, "DATABASE_URL"),
            None => Self::from_variables(env, Variables::APP),
        }
    }

    /// The direct connection for migrations: `MIGRATION_DATABASE_URL`, or the `POSTGRES_*` values
    /// with the `POSTGRES_MIGRATION_*` ones that are set in their place; `None` when neither is set.
    pub fn for_migrations(env: &Env) -> Result<Option<Self>, ConfigError> {
        if let Some(url) = env.get("MIGRATION_DATABASE_URL") {
            return Self::from_url(url, "MIGRATION_DATABASE_URL").map(Some);
        }
        // Empty counts as unset, as everywhere (compose and Helm render unset values as empty).
        if MIGRATION_OVERRIDES.iter().all(|(key, _)| env.get(key).is_none()) {
            return Ok(None);
        }
        // The overrides stand in for POSTGRES_* values; with DATABASE_URL they would silently
        // build the migration target (and the target of `database drop`) from POSTGRES_* that
        // the app does not use.
        if env.get("DATABASE_URL").is_some() {
            let set: Vec<&str> =
                MIGRATION_OVERRIDES.iter().map(|(key, _)| *key).filter(|key| env.get(key).is_some()).collect();
            return Err(config_error(format!(
                "DATABASE_URL is set together with {}, which stand in for POSTGRES_* values DATABASE_URL replaces: \
                 give the direct connection for migrations as MIGRATION_DATABASE_URL instead, or use POSTGRES_* \
                 without DATABASE_URL",
                set.join(", ")
            )));
        }
        let pick = |over: &'static str, base: &'static str| if env.get(over).is_some() { over } else { base };
        let [server, port, user, password] = MIGRATION_OVERRIDES.map(|(over, base)| pick(over, base));
        let variables = Variables { origin: "POSTGRES_MIGRATION_*", server, port, user, password, ..Variables::APP };
        Self::from_variables(env, variables).map(Some)
    }

    fn from_variables(env: &Env, variables: Variables) -> Result<Self, ConfigError> {
        let host = env.require(variables.server)?.trim();
        let port = match env.get(variables.port) {
            Some(port) => parse_port(variables.port, port)?,
            None => 5432,
        };
        let user = env.require(variables.user)?;
        let database = env.require(variables.database)?;
        let ssl_mode = match env.get(variables.ssl_mode) {
            Some(mode) => parse_ssl_mode(mode)?,
            None => PgSslMode::Prefer,
        };
        // Every field is set explicitly so nothing is filled in from PG* variables; the ones the
        // builder cannot clear are removed from the process by `isolate_from_libpq_environment`.
        let options = PgConnectOptions::new_without_pgpass();
        // libpq's convention: a host that is a path is the folder of a Unix socket.
        let options = if host.starts_with('/') { options.socket(host) } else { options.host(host) };
        let mut options = options.port(port).username(user).database(database).ssl_mode(ssl_mode);
        let password = env.vars.get(variables.password).map(|p| Secret(p.clone()));
        if let Some(password) = &password {
            options = options.password(password.expose());
        }
        let ssl_root_cert = env.get(variables.ssl_root_cert).map(str::to_owned);
        if let Some(cert) = &ssl_root_cert {
            check_readable_file(variables.ssl_root_cert, cert)?;
            options = options.ssl_root_cert(cert);
        }
        Ok(DatabaseSettings { options, password, ssl_root_cert, variables })
    }

    fn from_url(url: &str, variable: &'static str) -> Result<Self, ConfigError> {
        let url = url.trim();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(config_error(format!("{variable} must start with postgres:// or postgresql://")));
        }
        // The url crate's errors name the part that is wrong and never quote the input; sqlx's
        // may quote a value, so they are described by the parameter names alone.
        let parsed = url::Url::parse(url).map_err(|e| match (e, typed_port(url)) {
            // The port as typed is only shown when it is surely not part of the password.
            (url::ParseError::InvalidPort, Some(port)) => port_error(variable, port),
            _ => config_error(format!(
                "{variable} is not a valid URL ({e}): percent-encode special characters in the password \
                 (postgres://user:p%40ss@host:5432/app for p@ss)"
            )),
        })?;
        if parsed.port() == Some(0) {
            return Err(port_error(variable, "0"));
        }
        // A `/`, `?`, `#` or `@` left unencoded ends the password early, and the rest of it would be
        // read as host, port or database name and shown as such.
        let decoded = |text: &str| percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned();
        if crate::redact::url_password_span(url).map(decoded) != parsed.password().map(decoded) {
            return Err(config_error(format!(
                "{variable}: its password holds a character that ends it early (`/`, `?`, `#` or `@`): \
                 percent-encode them (%2F, %3F, %23, %40)"
            )));
        }
        let mut options = PgConnectOptions::from_str(url).map_err(|_| {
            let parameters: Vec<String> = parsed.query_pairs().map(|(key, _)| key.into_owned()).collect();
            config_error(format!(
                "{variable} cannot be used: check its percent-encoding{}",
                if parameters.is_empty() {
                    String::new()
                } else {
                    format!(" and the values of its parameters ({})", parameters.join(", "))
                }
            ))
        })?;
        if options.get_database().is_none() {
            return Err(config_error(format!(
                "{variable} names no database: add it after the host (postgres://user:password@host:5432/app)"
            )));
        }
        let password = parsed
            .password()
            .map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned())
            .map(Secret);
        if password.is_none() {
            // sqlx fills a missing password from ~/.pgpass; libpq's files are not ours to read.
            options = options.password("");
        }
        let mut ssl_root_cert = None;
        for (key, value) in parsed.query_pairs() {
            if matches!(&*key, "sslrootcert" | "ssl-root-cert" | "ssl-ca") {
                check_readable_file(&format!("the sslrootcert parameter of {variable}"), &value)?;
                ssl_root_cert = Some(value.into_owned());
            }
        }
        Ok(DatabaseSettings { options, password, ssl_root_cert, variables: Variables::url(variable) })
    }

    /// Connect options for one connection, tagged so `pg_stat_activity` shows who we are.
    ///
    /// No `extra_float_digits` at startup: poolers refuse startup parameters they do not track
    /// (PgBouncer with its defaults answers 08P01). Its only effect is on floats sent as text,
    /// by servers before PostgreSQL 12; sqlx reads query results in binary, so nothing of ours
    /// changes.
    pub fn connect_options(&self, application_name: &str) -> PgConnectOptions {
        self.options.clone().application_name(application_name).extra_float_digits(None)
    }

    /// The `options` startup parameter the settings carry (`options` of DATABASE_URL).
    pub fn startup_options(&self) -> Option<&str> {
        self.options.get_options()
    }

    /// [`DatabaseSettings::connect_options`] without the `options` startup parameter, to tell
    /// whether a pooler refuses it.
    pub fn connect_options_without_startup_options(&self, application_name: &str) -> PgConnectOptions {
        let mut bare = PgConnectOptions::new_without_pgpass()
            .host(self.host())
            .port(self.port())
            .username(self.user())
            .database(self.database())
            .ssl_mode(self.ssl_mode());
        if let Some(socket) = self.socket() {
            bare = bare.socket(socket);
        }
        if let Some(password) = self.password() {
            bare = bare.password(password.expose());
        }
        if let Some(root) = self.ssl_root_cert() {
            bare = bare.ssl_root_cert(root);
        }
        bare.application_name(application_name).extra_float_digits(None)
    }

    pub fn host(&self) -> &str {
        self.options.get_host()
    }

    pub fn port(&self) -> u16 {
        self.options.get_port()
    }

    pub fn user(&self) -> &str {
        self.options.get_username()
    }

    pub fn database(&self) -> &str {
        self.options.get_database().unwrap_or_default()
    }

    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    pub fn ssl_mode(&self) -> PgSslMode {
        self.options.get_ssl_mode()
    }

    /// The sslmode as libpq spells it.
    pub fn ssl_mode_name(&self) -> &'static str {
        match self.ssl_mode() {
            PgSslMode::Disable => "disable",
            PgSslMode::Allow => "allow",
            PgSslMode::Prefer => "prefer",
            PgSslMode::Require => "require",
            PgSslMode::VerifyCa => "verify-ca",
            PgSslMode::VerifyFull => "verify-full",
        }
    }

    /// `POSTGRES_SSLROOTCERT`, or the `sslrootcert` of `DATABASE_URL`.
    pub fn ssl_root_cert(&self) -> Option<&str> {
        self.ssl_root_cert.as_deref()
    }

    /// The folder of the Unix socket, when the settings name one instead of a TCP host.
    pub fn socket(&self) -> Option<&Path> {
        self.options.get_socket().map(PathBuf::as_path)
    }

    /// The variable a user edits to change the host, for hints.
    pub fn host_variable(&self) -> &'static str {
        self.variables.url.unwrap_or(self.variables.server)
    }

    /// The variable a user edits to change the password, for hints.
    pub fn password_variable(&self) -> &'static str {
        self.variables.url.unwrap_or(self.variables.password)
    }

    /// The variable a user edits to change the role, for hints.
    pub fn user_variable(&self) -> &'static str {
        self.variables.url.unwrap_or(self.variables.user)
    }

    /// A copy that connects to another database on the same server, for maintenance commands.
    pub fn with_database(&self, database: &str) -> Self {
        DatabaseSettings { options: self.options.clone().database(database), ..self.clone() }
    }

    /// A copy that connects to another host, for `cargo xtask dev` falling back to a local cluster.
    pub fn with_host(&self, host: &str) -> Self {
        DatabaseSettings { options: self.options.clone().host(host), ..self.clone() }
    }
}

/// A file that the settings name must be there when they load: a missing certificate would
/// otherwise look like a server that never answers.
fn check_readable_file(what: &str, path: &str) -> Result<(), ConfigError> {
    // An inline PEM certificate is a value, not a path.
    if path.contains("-----BEGIN") {
        return Ok(());
    }
    let is_file = std::fs::metadata(path).map(|m| m.is_file());
    let opened = match is_file {
        Ok(false) => Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file")),
        _ => std::fs::File::open(path).map(drop),
    };
    opened.map_err(|e| {
        config_error(format!(
            "{what} names {path}, which cannot be read ({}): fix the path, or leave it empty to use the system's \
             trusted certificates",
            io_reason(&e)
        ))
    })
}

/// The port of `url` as typed, when the authority a URL reader finds is the one the user wrote:
/// `None` when a `/`, `?` or `#` in the password ends the authority early (what the reader takes
/// for a port is then part of the password), or when the port is not all digits.
fn typed_port(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if rest.rfind('@') != authority.rfind('@') {
        return None;
    }
    let host_and_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let (_, port) = host_and_port.rsplit_once(':')?;
    (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())).then_some(port)
}

/// A URL's port that is no TCP port; `port` is shown, so it must not come from the password.
fn port_error(variable: &str, port: &str) -> ConfigError {
    config_error(format!(
        "{variable}: its port {port} is out of range: use a port from 1 to 65535 after the host \
         (postgres://user:password@host:5432/app; PostgreSQL's default is 5432)"
    ))
}

fn parse_port(variable: &str, value: &str) -> Result<u16, ConfigError> {
    match value.trim().parse::<u32>() {
        Ok(port) if (1..=65535).contains(&port) => Ok(port as u16),
        Ok(_) => Err(config_error(format!(
            "{variable} is out of range: use a port from 1 to 65535 (PostgreSQL's default is 5432)"
        ))),
        Err(_) => Err(config_error(format!(
            "{variable} is not a number: use a port from 1 to 65535 (PostgreSQL's default is 5432)"
        ))),
    }
}

fn parse_ssl_mode(value: &str) -> Result<PgSslMode, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "disable" => Ok(PgSslMode::Disable),
        "allow" => Ok(PgSslMode::Allow),
        "prefer" => Ok(PgSslMode::Prefer),
        "require" => Ok(PgSslMode::Require),
        "verify-ca" => Ok(PgSslMode::VerifyCa),
        "verify-full" => Ok(PgSslMode::VerifyFull),
        _ => Err(config_error(
            "POSTGRES_SSLMODE is not a known mode: use disable, prefer, require, verify-ca or verify-full",
        )),
    }
}

/// Removes the libpq variables from this process so sqlx cannot pick them up behind our back.
///
/// Call it first thing in `main`, while the process has a single thread: changing the environment
/// is only sound then.
#[allow(unsafe_code)]
pub fn isolate_from_libpq_environment() {
    for name in LIBPQ_VARIABLES {
        // SAFETY: called at the start of `main`, before any other thread exists.
        unsafe { std::env::remove_var(name) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_characters_in_the_password_survive() {
        let env = Env::from_pairs([
            ("POSTGRES_SERVER", "db"),
            ("POSTGRES_USER", "app"),
            ("POSTGRES_DB", "app"),
            ("POSTGRES_PASSWORD", "p@ss:w/rd%#é x"),
        ]);
        let settings = DatabaseSettings::from_env(&env).expect("valid settings");
        assert_eq!(settings.to_string(), "app@db:5432/app");
        assert!(!format!("{settings:?}").contains("p@ss"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (key, value) in [("POSTGRES_PORT", "abc"), ("POSTGRES_PORT", "70000"), ("POSTGRES_SSLMODE", "sometimes")] {
            let env = Env::from_pairs([
                ("POSTGRES_SERVER", "db"),
                ("POSTGRES_USER", "u"),
                ("POSTGRES_DB", "d"),
                (key, value),
            ]);
            let error = DatabaseSettings::from_env(&env).expect_err("invalid value");
            assert!(error.to_string().starts_with(key), "{error}");
            assert!(!error.to_string().contains(value), "the value was repeated: {error}");
        }
        let env = Env::from_pairs([("POSTGRES_SERVER", " "), ("POSTGRES_USER", "u"), ("POSTGRES_DB", "d")]);
        let error = DatabaseSettings::from_env(&env).expect_err("empty server");
        assert!(error.to_string().starts_with("POSTGRES_SERVER is not set"), "{error}");
    }

    #[test]
    fn database_url_wins_and_its_errors_do_not_repeat_it() {
        let env = Env::from_pairs([("DATABASE_URL", "postgres://u:secret@other:6543/x"), ("POSTGRES_SERVER", "db")]);
        let settings = DatabaseSettings::from_env(&env).expect("valid url");
        assert_eq!(settings.to_string(), "u@other:6543/x");
        let env = Env::from_pairs([("DATABASE_URL", "postgres://u:secret@other:notaport/x")]);
        let error = DatabaseSettings::from_env(&env).expect_err("bad url");
        assert!(!error.to_string().contains("secret"), "{error}");
        // An unencoded `/` would end the password early and show the rest as the database name.
        let env = Env::from_pairs([("DATABASE_URL", "postgres://u:/secret#x@other:6543/x")]);
        let error = DatabaseSettings::from_env(&env).expect_err("password cut short");
        assert!(error.to_string().contains("percent-encode") && !error.to_string().contains("secret"), "{error}");
    }

    #[test]
    fn a_url_port_out_of_range_is_named_unless_it_may_be_the_password() {
        for url in ["postgres://u:secret@localhost:99999/app", "postgres://u:secret@[::1]:70000/app?sslmode=disable"] {
            let error = DatabaseSettings::from_env(&Env::from_pairs([("DATABASE_URL", url)])).expect_err("bad port");
            let text = error.to_string();
            assert!(text.contains("out of range") && text.contains("1 to 65535"), "{text}");
            assert!(!text.contains("secret") && !text.contains("percent-encode"), "{text}");
        }
        let error = DatabaseSettings::from_env(&Env::from_pairs([("DATABASE_URL", "postgres://u:p@h:0/app")]))
            .expect_err("port 0");
        assert!(error.to_string().contains("port 0 is out of range"), "{error}");
        // `u:12345678` is what a URL reader takes for host and port: the password is cut short.
        let url = "postgres://u:12345678/9@localhost:5432/app";
        let error = DatabaseSettings::from_env(&Env::from_pairs([("DATABASE_URL", url)])).expect_err("cut short");
        assert!(error.to_string().contains("percent-encode") && !error.to_string().contains("1234"), "{error}");
    }

    proptest::proptest! {
        /// Any value of any variable gives settings or a clear error naming a variable, never a
        /// panic, and never an error that repeats a password.
        #[test]
        fn arbitrary_values_never_panic(
            server in ".{0,40}", port in ".{0,12}", mode in ".{0,12}", url in ".{0,80}", password in "[^\\x00]{1,30}"
        ) {
            let mut pairs = vec![
                ("POSTGRES_SERVER", server.as_str()),
                ("POSTGRES_PORT", port.as_str()),
                ("POSTGRES_SSLMODE", mode.as_str()),
                ("POSTGRES_USER", "u"),
                ("POSTGRES_DB", "d"),
                ("POSTGRES_PASSWORD", password.as_str()),
            ];
            if let Err(error) = DatabaseSettings::from_env(&Env::from_pairs(pairs.clone())) {
                proptest::prop_assert!(error.to_string().contains("POSTGRES_"), "{}", error);
            }
            pairs.push(("DATABASE_URL", url.as_str()));
            let _ = DatabaseSettings::from_env(&Env::from_pairs(pairs));
        }
    }

    /// A line that does not parse was never read as a setting, and another reader may quote it:
    /// its value, and those of the lines after it, are blanked from output all the same.
    #[test]
    fn values_on_lines_that_do_not_parse_are_blanked() {
        let path = std::env::temp_dir().join(format!("prestart-unparsed-{}.env", std::process::id()));
        std::fs::write(&path, "A=1\nOTHER=se'cret value # note\nB='after failing'\nnot a statement at all\n")
            .expect("write");
        let error = read_env_file(&path).expect_err("does not parse");
        std::fs::remove_file(&path).expect("remove");
        assert!(error.to_string().contains("line 2: cannot parse the value of OTHER"), "{error}");
        let quoted = "unexpected character in \"OTHER=se'cret value # note\"; after failing; not a statement at all";
        let shown = crate::redact::redact(quoted);
        for part in ["se'cret", "after failing", "not a statement"] {
            assert!(!shown.contains(part), "{part:?} in {shown}");
        }
    }
}
