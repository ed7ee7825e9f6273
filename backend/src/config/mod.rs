//! Settings: read once from `.env` and the process environment, validated, and passed down.
//!
//! Nothing else in the workspace reads the environment. Connect options are built with sqlx's
//! builder from explicit values, never by gluing a URL, so any password works.

use std::fmt;

mod database;
mod env;

pub use database::{DatabaseSettings, Variables};
pub use env::{Env, EnvSource, read_env_file};

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
