//! One set of connection settings (the app's, or the direct one for migrations): from a URL or
//! the `POSTGRES_*` variables, validated, shown without the password.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use super::env::io_reason;
use super::*;

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
