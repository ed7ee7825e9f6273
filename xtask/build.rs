//! Builds the queries of the workspace's `.sqlx/` (sqlx's compile-time checked queries, with
//! their parameter and result types) into the binary: prestart records them as this release's,
//! and checks a migration against those a previous release recorded. The commit the binary was
//! built from names the release where `PRESTART_RELEASE` does not.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned();
    let queries = workspace.join(".sqlx");
    println!("cargo::rerun-if-changed={}", queries.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&queries)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with("query-") && name.ends_with(".json")
        })
        .collect();
    files.sort();
    let mut code = String::from(
        "/// The `.sqlx/query-*.json` files this binary was built with.\npub static BUILT_IN: &[&str] = &[\n",
    );
    for file in &files {
        let _ = writeln!(code, "    include_str!({:?}),", file.display().to_string());
    }
    code.push_str("];\n");
    let _ = writeln!(code, "/// The commit of the workspace this binary was built from, when it was a git checkout.");
    let _ = writeln!(code, "pub const BUILD_COMMIT: Option<&str> = {:?};", commit(&workspace));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("built_in_queries.rs"), code).expect("write the generated file");
}

/// HEAD's commit, read from `.git` without running git (a build machine may not have it), and
/// the files that change with it watched.
fn commit(workspace: &Path) -> Option<String> {
    let git = workspace.join(".git");
    let head_file = git.join("HEAD");
    if !head_file.is_file() {
        return None;
    }
    println!("cargo::rerun-if-changed={}", head_file.display());
    let head = std::fs::read_to_string(&head_file).ok()?;
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref: ") else { return Some(head.to_owned()) };
    let loose = git.join(reference);
    // Only files that exist: cargo runs a script again on every build for a watched file that
    // does not (a ref that lives in packed-refs only).
    for watched in [&loose, &git.join("packed-refs")] {
        if watched.is_file() {
            println!("cargo::rerun-if-changed={}", watched.display());
        }
    }
    if let Ok(commit) = std::fs::read_to_string(&loose) {
        return Some(commit.trim().to_owned());
    }
    let packed = std::fs::read_to_string(git.join("packed-refs")).ok()?;
    packed.lines().find_map(|line| {
        let (commit, name) = line.split_once(' ')?;
        (name == reference).then(|| commit.to_owned())
    })
}
