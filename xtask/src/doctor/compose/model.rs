//! The compose file as compose reads it: found, resolved by `docker compose config` where a tool
//! is installed, else read as written, and its services.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;
use xshell::{Shell, cmd};

use super::super::Inputs;

const FILE_NAMES: &[&str] = &["compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml"];
pub const DOCKER_HOST_NAME: &str = "host.docker.internal";

/// One service, as far as the checks need it.
#[derive(Debug, Default, Clone)]
pub struct Service {
    pub image: Option<String>,
    /// The build context, when the service builds its image.
    pub build: Option<String>,
    /// Entrypoint and command, joined.
    pub command: String,
    /// `env_file` entries, resolved against the project folder (from the file as written: the
    /// resolved model folds them into `environment`).
    pub env_files: Vec<PathBuf>,
    /// The environment the container gets.
    pub environment: BTreeMap<String, String>,
    /// Service name to condition.
    pub depends_on: BTreeMap<String, String>,
    pub extra_hosts: Vec<String>,
    pub healthcheck: Option<String>,
    pub restart: Option<String>,
}

impl Service {
    pub fn maps_docker_host(&self) -> bool {
        self.extra_hosts.iter().any(|entry| {
            let entry = entry.replace('=', ":");
            entry.starts_with(&format!("{DOCKER_HOST_NAME}:")) && entry.ends_with("host-gateway")
        })
    }

    /// The database host this container will use.
    pub fn database_host(&self) -> Option<String> {
        if let Some(url) = self.environment.get("DATABASE_URL").filter(|u| !u.is_empty()) {
            return url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned));
        }
        self.environment.get("POSTGRES_SERVER").filter(|h| !h.is_empty()).cloned()
    }
}

#[derive(Debug)]
pub struct Model {
    pub file: PathBuf,
    /// The tool that resolved the model, or `None` when the YAML was read as written.
    pub resolved_by: Option<&'static str>,
    /// The compose tool rejected the file; the model is then the YAML as written.
    pub rejected: Option<String>,
    pub services: BTreeMap<String, Service>,
}

impl Model {
    /// `Ok(None)` when the project has no compose file.
    pub fn load(inputs: &Inputs) -> Result<Option<Model>, String> {
        let Some(file) = FILE_NAMES.iter().map(|name| inputs.root.join(name)).find(|path| path.is_file()) else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let mut written: Value =
            serde_yaml_ng::from_str(&text).map_err(|e| format!("{} does not parse: {e}", file.display()))?;
        // `<<: *anchor` merge keys, as compose applies them.
        written.apply_merge().map_err(|e| format!("{}: {e}", file.display()))?;
        let project = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        // Read before the tool runs, so every value in the files it reads is known to the
        // redaction filter (a line that does not parse too) when its message quotes one.
        let env_files = parse_services(&written, &project).into_values().flat_map(|s| s.env_files);
        for env_file in std::iter::once(project.join(".env")).chain(env_files) {
            let _ = backend::config::read_env_file(&env_file);
        }
        // COMPOSE_FILE (from .env or the environment) adds files, as compose itself reads them.
        let files: Vec<PathBuf> = match inputs.env.get("COMPOSE_FILE").filter(|v| !v.trim().is_empty()) {
            Some(list) => list.split(':').map(|name| project.join(name.trim())).collect(),
            None => vec![file.clone()],
        };
        let (resolved_by, resolved, rejected) = match resolve_with_tool(&files, &project, &text) {
            Ok(Some((tool, resolved))) => (Some(tool), resolved, None),
            Ok(None) => (None, written.clone(), None),
            Err(rejected) => (None, written.clone(), Some(rejected)),
        };
        let mut services = parse_services(&resolved, &project);
        // env_file as written; without a tool, also fold the files into the environment.
        for (name, written_service) in parse_services(&written, &project) {
            if let Some(service) = services.get_mut(&name) {
                if resolved_by.is_none() {
                    for env_file in &written_service.env_files {
                        if let Ok(Some(vars)) = backend::config::read_env_file(env_file) {
                            for (key, value) in vars {
                                service.environment.entry(key).or_insert(value);
                            }
                        }
                    }
                }
                service.env_files = written_service.env_files;
            }
        }
        Ok(Some(Model { file, resolved_by, rejected, services }))
    }

    /// The service feeds `env_file` (our `.env`) to its container.
    pub fn feeds_env_file(&self, service: &str, env_file: &Path) -> bool {
        let wanted = env_file.canonicalize().unwrap_or_else(|_| env_file.to_path_buf());
        self.services
            .get(service)
            .is_some_and(|s| s.env_files.iter().any(|f| f.canonicalize().unwrap_or_else(|_| f.clone()) == wanted))
    }
}

/// `docker compose config` (the plugin) or Debian's `docker-compose config`, whichever is
/// installed; `None` when neither is.
fn resolve_with_tool(
    files: &[PathBuf],
    project: &Path,
    compose_text: &str,
) -> Result<Option<(&'static str, Value)>, String> {
    let sh = Shell::new().map_err(|e| e.to_string())?;
    let plugin = cmd!(sh, "docker compose version").quiet().ignore_stdout().ignore_stderr().run().is_ok();
    let file_args: Vec<String> = files.iter().flat_map(|f| ["-f".to_owned(), f.display().to_string()]).collect();
    let output = if plugin {
        // Services under a profile are part of the project too.
        cmd!(sh, "docker compose {file_args...} --project-directory {project} --profile * config")
            .quiet()
            .ignore_status()
            .output()
    } else if cmd!(sh, "docker-compose version").quiet().ignore_stdout().ignore_stderr().run().is_ok() {
        cmd!(sh, "docker-compose {file_args...} --project-directory {project} config").quiet().ignore_status().output()
    } else {
        return Ok(None);
    };
    let file = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
    let output = output.map_err(|e| e.to_string())?;
    let tool = if plugin { "docker compose" } else { "docker-compose" };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Redacted first: blanking a quoted passage may cut a known secret, and leave part of it.
        let first = stderr
            .lines()
            .find(|l| !l.trim().is_empty())
            .map_or("no message".into(), |line| without_quoted(&backend::redact::redact(line), compose_text));
        return Err(format!("`{tool} config` rejects {file}: {first}"));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let value = serde_yaml_ng::from_str(&text).map_err(|e| format!("cannot read `{tool} config` output: {e}"))?;
    Ok(Some((tool, value)))
}

/// `line` with its quoted passages (`"..."` or `'...'`, backslash escapes included) blanked, to the
/// end of the line when a quote is not closed, but for the names the compose file itself holds
/// (`"prestart"`, `"environment"`). Compose's parsers quote what they reject: a line of an env file,
/// or a value interpolated from one, which may hold a password in a form the redaction filter does
/// not know (another reader's idea of where a value ends, its escapes).
fn without_quoted(line: &str, compose_text: &str) -> String {
    let is_name = |text: &str| {
        (1..=64).contains(&text.len())
            && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            && compose_text.contains(text)
    };
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(quote) = chars.next() {
        out.push(quote);
        if quote != '"' && quote != '\'' {
            continue;
        }
        let (mut inner, mut escaped, mut closed) = (String::new(), false, false);
        for c in chars.by_ref() {
            if !escaped && c == quote {
                closed = true;
                break;
            }
            escaped = !escaped && c == '\\';
            inner.push(c);
        }
        out.push_str(if closed && is_name(&inner) { &inner } else { "..." });
        if closed {
            out.push(quote);
        }
    }
    out
}

fn parse_services(document: &Value, project: &Path) -> BTreeMap<String, Service> {
    let Some(services) = document.get("services").and_then(Value::as_mapping) else {
        return BTreeMap::new();
    };
    services
        .iter()
        .filter_map(|(name, service)| Some((name.as_str()?.to_owned(), parse_service(service, project))))
        .collect()
}

fn parse_service(service: &Value, project: &Path) -> Service {
    let text = |key: &str| service.get(key).map(words).filter(|s| !s.is_empty());
    Service {
        image: service.get("image").and_then(Value::as_str).map(str::to_owned),
        build: service.get("build").map(|b| b.get("context").map_or_else(|| words(b), words)),
        command: [text("entrypoint"), text("command")].into_iter().flatten().collect::<Vec<_>>().join(" "),
        env_files: list(service.get("env_file")).into_iter().map(|f| project.join(f)).collect(),
        environment: key_values(service.get("environment")),
        depends_on: depends_on(service.get("depends_on")),
        extra_hosts: match service.get("extra_hosts") {
            Some(Value::Mapping(map)) => {
                map.iter().filter_map(|(k, v)| Some(format!("{}:{}", k.as_str()?, scalar(v)?))).collect()
            }
            other => list(other),
        },
        healthcheck: service.get("healthcheck").and_then(|h| h.get("test")).map(words),
        restart: service.get("restart").and_then(Value::as_str).map(str::to_owned),
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A string, or a list of strings (of an `env_file` entry: its `path`).
fn list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Sequence(items)) => {
            items.iter().filter_map(|item| scalar(item).or_else(|| item.get("path").and_then(scalar))).collect()
        }
        _ => Vec::new(),
    }
}

/// A command in either form, as one line.
fn words(value: &Value) -> String {
    match value {
        Value::Sequence(items) => items.iter().filter_map(scalar).collect::<Vec<_>>().join(" "),
        other => scalar(other).unwrap_or_default(),
    }
}

fn key_values(value: Option<&Value>) -> BTreeMap<String, String> {
    match value {
        Some(Value::Mapping(map)) => {
            map.iter().filter_map(|(k, v)| Some((k.as_str()?.to_owned(), scalar(v).unwrap_or_default()))).collect()
        }
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(|item| {
                let (k, v) = item.as_str()?.split_once('=')?;
                Some((k.to_owned(), v.to_owned()))
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn depends_on(value: Option<&Value>) -> BTreeMap<String, String> {
    match value {
        Some(Value::Mapping(map)) => map
            .iter()
            .filter_map(|(k, v)| {
                let condition = v.get("condition").and_then(Value::as_str).unwrap_or("service_started");
                Some((k.as_str()?.to_owned(), condition.to_owned()))
            })
            .collect(),
        Some(Value::Sequence(items)) => {
            items.iter().filter_map(|i| Some((i.as_str()?.to_owned(), "service_started".to_owned()))).collect()
        }
        _ => BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::without_quoted;

    #[test]
    fn quoted_passages_are_blanked_but_the_compose_files_names() {
        let compose = "services:\n  prestart:\n    environment: {}\n";
        assert_eq!(
            without_quoted(r#"service "prestart" in "environment": bad "se'c\"ret" and 'p\'w' then "open"#, compose),
            r#"service "prestart" in "environment": bad "..." and '...' then "..."#
        );
        assert_eq!(without_quoted("line 2: near \"POSTGRES_PASSWORD=x\"", compose), "line 2: near \"...\"");
    }
}
