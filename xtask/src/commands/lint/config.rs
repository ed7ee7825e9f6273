//! Which rules run, and for which PostgreSQL: our defaults, changed by a `.squawk.toml` beside the
//! migrations folder or at the workspace root (squawk's own file, so a team coming from squawk
//! keeps its settings).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use squawk_linter::Version;

use super::rules::{Own, RuleId};

pub const FILE_NAME: &str = ".squawk.toml";

/// squawk's keys. `assume_in_transaction` is read and overruled: sqlx's `-- no-transaction` header
/// says, per file, whether it runs in a transaction. `upload_to_github` is squawk's CLI's business.
#[derive(serde::Deserialize, Default)]
struct SquawkToml {
    #[serde(default)]
    excluded_rules: Vec<String>,
    #[serde(default)]
    included_rules: Vec<String>,
    #[serde(default)]
    excluded_paths: Vec<String>,
    pg_version: Option<String>,
}

#[derive(Clone)]
pub struct Config {
    pub enabled: HashSet<RuleId>,
    /// From `.squawk.toml`; the server's own version wins when the database answers.
    pub pg_version: Option<Version>,
    /// File names (or `*` patterns) the linter skips.
    excluded_paths: Vec<String>,
    /// Where the settings came from, for the report.
    pub source: Option<PathBuf>,
}

impl Config {
    /// Our defaults, changed by the first `.squawk.toml` found: in the migrations folder's parent,
    /// in the folder itself, then at the workspace root.
    pub fn load(migrations: &Path, root: &Path) -> anyhow::Result<Config> {
        let candidates = [
            migrations.parent().map(|p| p.join(FILE_NAME)),
            Some(migrations.join(FILE_NAME)),
            Some(root.join(FILE_NAME)),
        ];
        match candidates.into_iter().flatten().find(|p| p.is_file()) {
            Some(path) => {
                let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
                Config::from_toml(&text).map(|c| Config { source: Some(path.clone()), ..c }).map_err(|e| {
                    anyhow!(
                        "{}: {e:#}: fix it (squawk's keys, docs/linting.md), or remove it to lint with the defaults",
                        path.display()
                    )
                })
            }
            None => Ok(Config::defaults()),
        }
    }

    pub fn defaults() -> Config {
        Config {
            enabled: RuleId::all().filter(|r| r.on_by_default()).collect(),
            pg_version: None,
            excluded_paths: Vec::new(),
            source: None,
        }
    }

    /// Only the rules that tell whether each statement can run the way its file runs it (doctor's
    /// transaction check).
    pub fn transactions_only() -> Config {
        Config {
            enabled: [RuleId::Own(Own::NeedsNoTransaction), RuleId::Own(Own::NoTransactionSingleStatement)].into(),
            ..Config::defaults()
        }
    }

    fn from_toml(text: &str) -> anyhow::Result<Config> {
        let file: SquawkToml = toml::from_str(text).map_err(|e| {
            let line =
                e.span().and_then(|span| text.get(..span.start)).map_or(1, |before| before.matches('\n').count() + 1);
            anyhow!("line {line}: {}", e.message())
        })?;
        let mut config = Config::defaults();
        let named = |names: &[String]| -> anyhow::Result<Vec<RuleId>> {
            names
                .iter()
                .map(|name| {
                    let expanded = match name.parse::<squawk_linter::Rule>() {
                        // An alias (require-timeout-settings) stands for the rules it expands to.
                        Ok(rule) if !rule.expands_to().is_empty() => {
                            rule.expands_to().iter().copied().map(RuleId::Squawk).collect()
                        }
                        _ => vec![RuleId::parse(name).ok_or_else(|| anyhow!("unknown rule {name}"))?],
                    };
                    Ok(expanded)
                })
                .collect::<anyhow::Result<Vec<Vec<RuleId>>>>()
                .map(|v| v.into_iter().flatten().collect())
        };
        // As in squawk, an exclusion wins over an inclusion.
        config.enabled.extend(named(&file.included_rules)?);
        for rule in named(&file.excluded_rules)? {
            config.enabled.remove(&rule);
        }
        config.pg_version = match file.pg_version {
            Some(version) => {
                Some(version.parse().map_err(|e| anyhow!("pg_version {version:?} is not a version ({e})"))?)
            }
            None => None,
        };
        config.excluded_paths = file.excluded_paths;
        Ok(config)
    }

    /// The file is one of `excluded_paths` (its name, or a pattern with `*`, as squawk matches).
    pub fn excludes(&self, file: &Path) -> bool {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let full = file.to_str().unwrap_or_default();
        self.excluded_paths.iter().any(|pattern| glob_match(pattern, name) || glob_match(pattern, full))
    }
}

/// `*` matches any run of characters; everything else itself.
fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squawk_keys_turn_rules_on_and_off() {
        let config = Config::from_toml(
            "excluded_rules = [\"ban-drop-column\", \"drop-table\"]\nincluded_rules = [\"prefer-robust-stmts\", \
             \"require-timeout-settings\"]\npg_version = \"13.2\"\nassume_in_transaction = true\nexcluded_paths = \
             [\"*_seed.sql\"]\n[upload_to_github]\nfail_on_violations = true\n",
        )
        .expect("parses");
        let on = |name: &str| config.enabled.contains(&RuleId::parse(name).expect("a rule"));
        assert!(!on("ban-drop-column") && !on("ban-drop-table"));
        assert!(on("prefer-robust-stmts") && on("require-statement-timeout") && on("require-lock-timeout"));
        assert!(on("renaming-column"));
        assert!(config.excludes(Path::new("m/1_seed.sql")) && !config.excludes(Path::new("m/1_users.sql")));
        assert!(Config::from_toml("excluded_rules = [\"no-such-rule\"]").is_err());
    }

    #[test]
    fn style_rules_are_off_and_the_rest_on_by_default() {
        let config = Config::defaults();
        for off in ["prefer-bigint-over-int", "prefer-text-field", "ban-char-field", "require-statement-timeout"] {
            assert!(!config.enabled.contains(&RuleId::parse(off).expect("a rule")), "{off}");
        }
        for on in ["require-concurrent-index-creation", "transaction-nesting", "ban-drop-schema", "prefer-repack"] {
            assert!(config.enabled.contains(&RuleId::parse(on).expect("a rule")), "{on}");
        }
    }
}
