//! Settings: the `.env` file and the environment.

use std::os::unix::fs::PermissionsExt;

use backend::config::{DatabaseSettings, Env, KNOWN_VARIABLES, closest_known};

use super::{Area, Doctor, Inputs, Outcome};

/// The placeholder `.env.example` ships for every secret.
const PLACEHOLDER_SECRET: &str = "changethis";
const SECRET_VARIABLES: &[&str] = &["POSTGRES_PASSWORD", "FIRST_SUPERUSER_PASSWORD"];

/// What the checks of the settings look at: the inputs, and the `.env` file as read.
struct EnvFile<'a> {
    inputs: &'a Inputs,
    /// The file's name, as messages show it.
    file: String,
    /// The file's variables, when it exists and parses.
    file_vars: Option<&'a Env>,
    /// A container or pod gets its settings from the environment; no file is then fine.
    environment_only: bool,
}

impl EnvFile<'_> {
    /// Why a check of the file's contents cannot run.
    fn no_file(&self) -> Outcome {
        match &self.inputs.file_vars {
            Err(_) => Outcome::skipped(format!("{} does not parse (see env.parse)", self.file)),
            Ok(_) => Outcome::skipped(format!("no {}", self.file)),
        }
    }
}

type Check = fn(&EnvFile<'_>) -> anyhow::Result<Outcome>;

/// The checks of the settings, in the order of the report.
const CHECKS: &[(&str, Check)] = &[
    ("env.file", file),
    ("env.parse", parse),
    ("env.example_keys", example_keys),
    ("env.typos", typos),
    ("env.settings", settings),
    ("env.dollar", dollar),
    ("env.url_vs_variables", url_vs_variables),
    ("env.default_secrets", default_secrets),
    ("env.permissions", permissions),
];

pub fn run(doctor: &mut Doctor, inputs: &Inputs) {
    let at = EnvFile {
        inputs,
        file: inputs.env_file.display().to_string(),
        file_vars: inputs.file_vars.as_ref().ok().and_then(Option::as_ref),
        environment_only: matches!(inputs.file_vars, Ok(None)) && inputs.settings.is_ok(),
    };
    for (id, check) in CHECKS {
        doctor.check(Area::Env, id, || check(&at));
    }
}

fn file(at: &EnvFile<'_>) -> anyhow::Result<Outcome> {
    let EnvFile { inputs, file, environment_only, .. } = at;
    Ok(match &inputs.file_vars {
        Ok(Some(_)) => Outcome::ok(format!("{file} found")),
        Err(_) => Outcome::ok(format!("{file} found")),
        Ok(None) if *environment_only => Outcome::skipped(format!("no {file}: the settings come from the environment")),
        Ok(None) => Outcome::fail(
            format!("{file} does not exist and the environment does not hold the settings"),
            "copy the example and edit it: cp .env.example .env",
        ),
    })
}

fn parse(at: &EnvFile<'_>) -> anyhow::Result<Outcome> {
    let EnvFile { inputs, file, .. } = at;
    Ok(match &inputs.file_vars {
        Ok(Some(vars)) => Outcome::ok(format!("{file} parses ({} variables)", vars.keys().count())),
        Ok(None) => Outcome::skipped(format!("no {file}")),
        Err(error) => {
            Outcome::fail(error.to_string(), format!("fix that line of {file}: put the value in single quotes"))
        }
    })
}

fn example_keys(at: &EnvFile<'_>) -> anyhow::Result<Outcome> {
    let EnvFile { inputs, file_vars, .. } = at;
    let Some(vars) = file_vars else { return Ok(at.no_file()) };
    let example = inputs.root.join(".env.example");
    let Ok(Some(example_vars)) = backend::config::read_env_file(&example) else {
        return Ok(Outcome::skipped("no .env.example to compare with"));
    };
    let missing: Vec<String> = example_vars
        .into_keys()
        .filter(|key| !vars.keys().any(|k| k == key) && !inputs.env.is_from_process(key))
        .collect();
    Ok(if missing.is_empty() {
        Outcome::ok("every key of .env.example is set")
    } else {
        Outcome::warn(
            format!("keys of .env.example missing from .env: {}", missing.join(", ")),
            "copy them from .env.example",
        )
    })
}

fn typos(at: &EnvFile<'_>) -> anyhow::Result<Outcome> {
    let EnvFile { file_vars, .. } = at;
    let Some(vars) = file_vars else { return Ok(at.no_file()) };
    let typos: Vec<String> = vars
        .keys()
        .filter(|key| !KNOWN_VARIABLES.contains(key))
        .filter_map(|key| closest_known(key).map(|known| format!("{key} (did you mean {known}?)")))
        .collect();
    Ok(if typos.is_empty() {
        Outcome::ok("no misspelt variable names")
    } else {
        Outcome::warn(
            format!("unknown variables that look like typos: {}", typos.join(", ")),
            "rename them; unknown names are ignored",
        )
    })
}

fn settings(at: &EnvFile<'_>) -> anyhow::Result<Outcome> {
    let EnvFile { inputs, .. } = at;
    Ok(match &inputs.settings {
        Ok(settings) => Outcome::ok(format!("database settings are complete: {}", settings.database)),
        Err(error) => {
            Outcome::fail(error.to_string(), "fix the variable in .env or the environment (see .env.example)")
        }
    })
}

fn dollar(at: &EnvFile<'_>) -> anyhow::Result<Outcome> {
    let EnvFile { inputs, file, file_vars, .. } = at;
    if file_vars.is_none() {
        return Ok(at.no_file());
    }
    let text = std::fs::read_to_string(&inputs.env_file)?;
    let expanded: Vec<&str> = text.lines().filter_map(expanded_secret).collect();
    Ok(if expanded.is_empty() {
        Outcome::ok("no password holds a `$` that the reader would expand")
    } else {
        Outcome::warn(
            format!(
                "{} in {file} hold a `$` outside single quotes: it is read as a variable, which changes the value",
                expanded.join(", ")
            ),
            "put the value in single quotes (KEY='pa$word'), where nothing is expanded",
        )
    })
}

fn url_vs_variables(at: &EnvFile<'_>) -> anyhow::Result<Outcome> {
    let EnvFile { inputs, .. } = at;
    if inputs.env.get("DATABASE_URL").is_none() || inputs.env.get("POSTGRES_SERVER").is_none() {
        return Ok(Outcome::skipped("DATABASE_URL and POSTGRES_* are not both set"));
    }
    // Unusable settings are the user's to fix: findings, never a check that failed itself.
    let Ok(url) = DatabaseSettings::from_env(&inputs.env) else {
        return Ok(Outcome::skipped("DATABASE_URL cannot be used (see env.settings)"));
    };
    let variables = match DatabaseSettings::from_env(&inputs.env.without("DATABASE_URL")) {
        Ok(variables) => variables,
        Err(error) => {
            return Ok(Outcome::warn(
                format!("POSTGRES_* cannot be used beside DATABASE_URL, which wins: {error}"),
                "remove the POSTGRES_* variables DATABASE_URL replaces, or fix them",
            ));
        }
    };
    Ok(if url.to_string() == variables.to_string() {
        Outcome::ok(format!("DATABASE_URL and POSTGRES_* agree ({url})"))
    } else {
        Outcome::warn(
            format!("DATABASE_URL ({url}) and POSTGRES_* ({variables}) disagree; DATABASE_URL wins"),
            "remove one of them, so nobody edits the one that is not used",
        )
    })
}

fn default_secrets(at: &EnvFile<'_>) -> anyhow::Result<Outcome> {
    let EnvFile { inputs, .. } = at;
    // The one rule (crate::databases::environment::is_local): only ENVIRONMENT=local, said, is local.
    let environment = inputs.env.get("ENVIRONMENT");
    let defaults: Vec<&str> =
        SECRET_VARIABLES.iter().copied().filter(|key| inputs.env.get(key) == Some(PLACEHOLDER_SECRET)).collect();
    let said = environment.map_or_else(
        || "ENVIRONMENT is not set, which is not local".to_owned(),
        |environment| format!("ENVIRONMENT={environment}"),
    );
    Ok(match (defaults.is_empty(), crate::databases::environment::is_local(environment)) {
        (true, _) => Outcome::ok("no secret is left at the example's placeholder"),
        (false, true) => Outcome::ok(format!(
            "{} keep the example's placeholder, which is fine for ENVIRONMENT=local",
            defaults.join(", ")
        )),
        (false, false) => Outcome::fail(
            format!(
                "{} still hold the placeholder of .env.example while {said} (only ENVIRONMENT=local allows it)",
                defaults.join(", ")
            ),
            "set real secrets (for example: openssl rand -base64 24); a PostgreSQL volume keeps the password it was created with, so change it on the server too (ALTER ROLE ... PASSWORD)",
        ),
    })
}

fn permissions(at: &EnvFile<'_>) -> anyhow::Result<Outcome> {
    let EnvFile { inputs, file, file_vars, .. } = at;
    let Some(vars) = file_vars else { return Ok(at.no_file()) };
    let holds_secret = SECRET_VARIABLES.iter().chain(["DATABASE_URL"].iter()).any(|key| vars.get(key).is_some());
    let mode = std::fs::metadata(&inputs.env_file)?.permissions().mode();
    Ok(if holds_secret && mode & 0o004 != 0 {
        Outcome::warn(
            format!("{file} holds a password and every user of this machine can read it (mode {:o})", mode & 0o777),
            format!("chmod 600 {file}"),
        )
    } else {
        Outcome::ok(format!("{file} is not readable by other users, or holds no password"))
    })
}

/// The key of a `KEY=value` line whose secret value holds a `$` outside single quotes.
fn expanded_secret(line: &str) -> Option<&str> {
    let line = line.trim_start();
    let line = line.strip_prefix("export ").unwrap_or(line);
    let (key, value) = line.split_once('=')?;
    let key = key.trim();
    let is_secret = key.contains("PASSWORD") || key.ends_with("URL");
    let value = value.trim_start();
    (is_secret && !value.starts_with('\'') && value.contains('$')).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_matched_to_the_known_name() {
        assert_eq!(closest_known("POSTGRES_SERVR"), Some("POSTGRES_SERVER"));
        assert_eq!(closest_known("POSTGRES_PORTS"), Some("POSTGRES_PORT"));
        assert_eq!(closest_known("PATH"), None);
        assert_eq!(backend::config::edit_distance("kitten", "sitting"), 3);
    }
}
