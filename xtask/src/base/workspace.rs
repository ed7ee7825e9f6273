//! The workspace this binary belongs to (where `.env`, `sqlx.toml` and `migrations/` are), how a
//! path is shown, and the one way an external tool (pg_dump, cargo, the server binaries) is run:
//! with none of the settings' secrets in its environment.

use std::path::{Path, PathBuf};

/// The folder holding `.env`, `sqlx.toml` and `migrations/`: beside the binary in the image
/// (`/app/xtask`, `/app/migrations`, or `/app/sqlx.toml`), else the workspace this binary was
/// built from. Found once a run: it takes a dozen system calls.
pub fn root() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(find_root).clone()
}

fn find_root() -> PathBuf {
    let beside_binary = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf));
    if let Some(dir) = beside_binary.filter(|dir| dir.join("migrations").is_dir() || dir.join("sqlx.toml").is_file()) {
        return dir;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if workspace.join("Cargo.toml").is_file() {
        return workspace.canonicalize().unwrap_or(workspace);
    }
    PathBuf::from(".")
}

/// Shows a path relative to the current folder when it is inside it.
pub fn display_path(path: &Path) -> String {
    let cwd = std::env::current_dir().ok();
    let shown = cwd.as_deref().and_then(|cwd| path.strip_prefix(cwd).ok()).unwrap_or(path);
    shown.display().to_string()
}

/// For a tool that is given the one connection it needs explicitly (`pg_dump`, `cargo sqlx`):
/// nothing of this process's environment but what finds programs and files and sets the language,
/// and for cargo what builds (toolchain, compilers and their flags, proxies for an install). No
/// settings variable reaches it: POSTGRES_PASSWORD, DATABASE_URL and the like, the libpq ones.
pub fn only_tool_environment<'a>(command: xshell::Cmd<'a>, tool: Tool) -> xshell::Cmd<'a> {
    let kept = tool_environment(std::env::vars_os(), tool);
    kept.into_iter().fold(command.env_clear(), |command, (name, value)| command.env(name, value))
}

/// Which allow-list [`only_tool_environment`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// A PostgreSQL client program.
    Postgres,
    /// cargo, and the compilers, build scripts and cargo subcommands it starts.
    Cargo,
}

/// The variables of `vars` that `tool` may see.
pub fn tool_environment(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    tool: Tool,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    const ANY: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM"];
    const CARGO: &[&str] = &[
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTDOC",
        "RUST_BACKTRACE",
        "RUST_MIN_STACK",
        "CC",
        "CXX",
        "AR",
        "LD",
        "CFLAGS",
        "CXXFLAGS",
        "LDFLAGS",
        "CPPFLAGS",
        "LD_LIBRARY_PATH",
        "LIBRARY_PATH",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "NO_COLOR",
        "CLICOLOR",
        "CLICOLOR_FORCE",
        "COLORTERM",
        "CI",
        "SQLX_OFFLINE_DIR",
    ];
    const CARGO_PREFIXES: &[&str] = &["CARGO_", "RUSTUP_", "CC_", "CXX_", "AR_", "CFLAGS_", "CXXFLAGS_", "PKG_CONFIG"];
    vars.into_iter()
        .filter(|(name, _)| {
            let Some(name) = name.to_str() else { return false };
            let kept = ANY.contains(&name)
                || name.starts_with("LC_")
                || (tool == Tool::Cargo
                    && (CARGO.contains(&name)
                        || name == "CARGO"
                        || CARGO_PREFIXES.iter().any(|prefix| name.starts_with(prefix))));
            kept && !is_package_variable(name)
        })
        .collect()
}

/// A variable `cargo run` sets for the package it runs.
fn is_package_variable(name: &str) -> bool {
    ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_PRIMARY_"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// `cargo ARGS`, without the package variables `cargo run` gave us (CARGO_PKG_NAME, ...): ring's
/// build script watches them, and would make every build started from xtask begin again at ring.
pub fn cargo<'a>(sh: &'a xshell::Shell, args: &[&str]) -> xshell::Cmd<'a> {
    let mut command = xshell::cmd!(sh, "cargo {args...}");
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_package_variable) {
            command = command.env_remove(name);
        }
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_get_no_settings_variable() {
        let vars = [
            "PATH",
            "HOME",
            "LANG",
            "LC_ALL",
            "TMPDIR",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "RUSTUP_TOOLCHAIN",
            "CARGO_PKG_NAME",
            "CARGO_MANIFEST_DIR",
            "POSTGRES_PASSWORD",
            "POSTGRES_MIGRATION_PASSWORD",
            "FIRST_SUPERUSER_PASSWORD",
            "DATABASE_URL",
            "MIGRATION_DATABASE_URL",
            "PGPASSWORD",
            "PGPASSFILE",
            "PGSERVICEFILE",
            "AWS_SECRET_ACCESS_KEY",
        ]
        .map(|name| (std::ffi::OsString::from(name), std::ffi::OsString::from("value")));
        let names = |tool| -> Vec<String> {
            tool_environment(vars.clone(), tool)
                .into_iter()
                .map(|(name, _)| name.into_string().expect("UTF-8"))
                .collect()
        };
        assert_eq!(names(Tool::Postgres), ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"]);
        assert_eq!(
            names(Tool::Cargo),
            ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "CARGO_HOME", "CARGO_TARGET_DIR", "RUSTUP_TOOLCHAIN"]
        );
    }
}
