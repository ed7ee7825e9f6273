//! The shape of the code: read from the `use crate::` and `super::` paths of `xtask/src` and
//! `backend/src`, no file imports from a layer above its own, and no files import each other in a
//! circle. docs/development.md draws the same layers; a new module gets a line here.
//!
//! A folder's `mod.rs` may use its own files (it is made of them); its files may use `mod.rs`
//! and each other, but only without a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers of `xtask/src`, lowest first, each a folder: a module may use its own layer and
/// those below.
const XTASK_LAYERS: &[(&str, &[&str])] = &[
    ("base", &["base"]),
    ("settings", &["settings"]),
    ("connection", &["connection"]),
    ("databases", &["databases"]),
    ("migration machinery", &["machinery"]),
    ("commands", &["commands"]),
    ("diagnosis", &["doctor"]),
    ("the project's own tooling", &["tooling", "main"]),
];

/// The layers of `backend/src`: the core both the tool and the services use, then the services.
const BACKEND_LAYERS: &[(&str, &[&str])] = &[
    ("text and time", &["redact", "calendar"]),
    ("settings", &["config", "keepalive"]),
    ("the connection", &["db", "pooler"]),
    ("migrations and seed", &["migrations", "seed"]),
    ("the services", &["jobs", "service", "bin", "lib"]),
];

/// A source file's module path: `migrate/apply.rs` is `["migrate", "apply"]`, `migrate/mod.rs`
/// is `["migrate"]`, `main.rs` and `lib.rs` are `["main"]` and `["lib"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).expect("under src").with_extension("");
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.len() > 1 && parts.last().is_some_and(|last| last == "mod") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source folder") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The paths a `crate::` or `super::` reference names, expanded: `crate::a::{b, c::d}` gives
/// `a::b` and `a::c::d`.
fn expand(text: &str) -> Vec<Vec<String>> {
    fn tree(chars: &[char], at: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        let mut path = prefix;
        let mut word = String::new();
        while *at < chars.len() && chars[*at].is_whitespace() {
            *at += 1;
        }
        while *at < chars.len() {
            let c = chars[*at];
            if c.is_alphanumeric() || c == '_' {
                word.push(c);
                *at += 1;
            } else if c == ':' {
                if !word.is_empty() {
                    path.push(std::mem::take(&mut word));
                }
                *at += 1;
            } else if c == '{' {
                *at += 1;
                loop {
                    tree(chars, at, path.clone(), out);
                    while *at < chars.len() && chars[*at].is_whitespace() {
                        *at += 1;
                    }
                    match chars.get(*at) {
                        Some(',') => *at += 1,
                        Some('}') => {
                            *at += 1;
                            return;
                        }
                        _ => return,
                    }
                    while *at < chars.len() && chars[*at].is_whitespace() {
                        *at += 1;
                    }
                    if chars.get(*at) == Some(&'}') {
                        *at += 1;
                        return;
                    }
                }
            } else {
                break;
            }
        }
        if !word.is_empty() {
            path.push(word);
        }
        out.push(path);
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    tree(&chars, &mut 0, Vec::new(), &mut out);
    out
}

/// The modules `file` uses, as module paths of files that exist, resolved to the longest match.
fn imports(src: &Path, file: &Path, modules: &BTreeSet<Vec<String>>) -> BTreeSet<Vec<String>> {
    let here = module_of(src, file);
    let text = std::fs::read_to_string(file).expect("a source file");
    // The code without its comment lines, as one line: a `use` group that rustfmt spreads over
    // several lines reads as one path tree.
    let code: String =
        text.lines().map(str::trim_start).filter(|line| !line.starts_with("//")).collect::<Vec<_>>().join(" ");
    let mut used = BTreeSet::new();
    {
        let code = code.as_str();
        for (at, _) in code.match_indices("crate::").chain(code.match_indices("super::")) {
            // A whole word only: `backend::` paths of another crate start with a name, not these.
            if at > 0 && code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &code[at..];
            for path in expand(rest) {
                let mut resolved: Vec<String> = Vec::new();
                let mut names = path.into_iter().peekable();
                match names.next().as_deref() {
                    Some("crate") => {}
                    Some("super") => {
                        resolved = here.clone();
                        resolved.pop();
                        while names.peek().is_some_and(|n| n == "super") {
                            names.next();
                            resolved.pop();
                        }
                    }
                    _ => continue,
                }
                resolved.extend(names);
                while !resolved.is_empty() && !modules.contains(&resolved) {
                    resolved.pop();
                }
                if !resolved.is_empty() && resolved != here && !resolved.starts_with(&here) {
                    used.insert(resolved);
                }
            }
        }
    }
    used
}

struct Graph {
    edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn graph_of(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(src, f)).collect();
    let edges = files.iter().map(|f| (module_of(src, f), imports(src, f, &modules))).collect();
    Graph { edges }
}

fn layer_of(layers: &[(&str, &[&str])], module: &[String]) -> Option<usize> {
    let top = module.first().map(String::as_str).unwrap_or("main");
    let top = if module.first().is_some_and(|m| m == "bin") { "bin" } else { top };
    layers.iter().position(|(_, members)| members.contains(&top))
}

/// Each import that points up a layer, as `from -> to (layer -> layer)`; and each module no
/// layer names.
fn upward_imports(graph: &Graph, layers: &[(&str, &[&str])]) -> Vec<String> {
    let mut found = Vec::new();
    for (from, tos) in &graph.edges {
        let Some(from_layer) = layer_of(layers, from) else {
            found.push(format!("{} is in no layer: add it to the table of this test", from.join("::")));
            continue;
        };
        for to in tos {
            let to_layer = layer_of(layers, to).unwrap_or(usize::MAX);
            if to_layer > from_layer {
                found.push(format!(
                    "{} ({}) uses {} ({}), a layer above it",
                    from.join("::"),
                    layers[from_layer].0,
                    to.join("::"),
                    layers.get(to_layer).map_or("no layer", |l| l.0)
                ));
            }
        }
    }
    found
}

/// The circles of the graph: each strongly connected set of more than one module (Tarjan).
fn circles(graph: &Graph) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g [String], usize>,
        low: BTreeMap<&'g [String], usize>,
        stack: Vec<&'g [String]>,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(walk: &mut Walk<'g>, node: &'g [String]) {
        let n = walk.index.len();
        walk.index.insert(node, n);
        walk.low.insert(node, n);
        walk.stack.push(node);
        for next in walk.graph.edges.get(node).into_iter().flatten() {
            let next = next.as_slice();
            if !walk.index.contains_key(next) {
                visit(walk, next);
                let low = walk.low[node].min(walk.low[next]);
                walk.low.insert(node, low);
            } else if walk.stack.contains(&next) {
                let low = walk.low[node].min(walk.index[next]);
                walk.low.insert(node, low);
            }
        }
        if walk.low[node] == walk.index[node] {
            let mut members = Vec::new();
            while let Some(top) = walk.stack.pop() {
                members.push(top.join("::"));
                if top == node {
                    break;
                }
            }
            if members.len() > 1 {
                members.sort();
                walk.found.push(members);
            }
        }
    }
    let mut walk = Walk { graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), found: Vec::new() };
    for node in graph.edges.keys() {
        if !walk.index.contains_key(node.as_slice()) {
            visit(&mut walk, node);
        }
    }
    walk.found
}

fn source(crate_dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(crate_dir).join("src")
}

#[test]
fn no_file_imports_from_a_layer_above_its_own() {
    for (crate_dir, layers) in [("xtask", XTASK_LAYERS), ("backend", BACKEND_LAYERS)] {
        let upward = upward_imports(&graph_of(&source(crate_dir)), layers);
        assert!(upward.is_empty(), "{crate_dir}/src:\n  {}", upward.join("\n  "));
    }
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    for crate_dir in ["xtask", "backend"] {
        let found = circles(&graph_of(&source(crate_dir)));
        let said: Vec<String> = found.iter().map(|c| c.join(" <-> ")).collect();
        assert!(said.is_empty(), "{crate_dir}/src has import circles:\n  {}", said.join("\n  "));
    }
}

/// The reader itself: it must see what it is meant to find, or the tests above prove nothing.
#[test]
fn the_reader_finds_imports_through_groups_and_super() {
    assert_eq!(
        expand("crate::a::{b, c::{d, e}}; x"),
        [vec!["crate", "a", "b"], vec!["crate", "a", "c", "d"], vec!["crate", "a", "c", "e"]]
    );
    assert_eq!(expand("crate::{ a::b,  c }"), [vec!["crate", "a", "b"], vec!["crate", "c"]]);
    let dir = std::env::temp_dir().join(format!("layers-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("m")).expect("a folder");
    std::fs::write(dir.join("main.rs"), "mod m; mod u;\n").expect("write");
    std::fs::write(dir.join("m/mod.rs"), "mod a; mod b;\nuse self::a::f;\n").expect("write");
    std::fs::write(dir.join("m/a.rs"), "use super::b::g;\n").expect("write");
    std::fs::write(dir.join("m/b.rs"), "use crate::{\n    u::{h},\n    m::a,\n};\n// use crate::x\n").expect("write");
    std::fs::write(dir.join("u.rs"), "fn f() { crate::m::f(); }\n").expect("write");
    let graph = graph_of(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let names = |m: &str| graph.edges[&m.split("::").map(String::from).collect::<Vec<_>>()].clone();
    let as_path = |m: &str| m.split("::").map(String::from).collect::<Vec<_>>();
    assert_eq!(names("m::a"), BTreeSet::from([as_path("m::b")]));
    assert_eq!(names("m::b"), BTreeSet::from([as_path("u"), as_path("m::a")]));
    assert_eq!(names("m"), BTreeSet::new(), "a folder's mod.rs may use its own files");
    assert_eq!(circles(&graph), [vec!["m::a".to_owned(), "m::b".to_owned()]]);
    let layers: &[(&str, &[&str])] = &[("low", &["m"]), ("high", &["u", "main"])];
    assert_eq!(upward_imports(&graph, layers), ["m::b (low) uses u (high), a layer above it"]);
}

/// The functions of a file longer than `limit` lines, as `name (lines)`: from a line that starts
/// a `fn` to the line that closes it at the same indent.
fn long_functions(text: &str, limit: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let code = line.trim_start();
        let indent = &line[..line.len() - code.len()];
        let signature = ["pub(crate) ", "pub(super) ", "pub ", "async ", "const ", "unsafe "]
            .iter()
            .fold(code, |rest, word| rest.strip_prefix(word).unwrap_or(rest));
        let Some(name) = signature.strip_prefix("fn ") else { continue };
        let name: String = name.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let closing = format!("{indent}}}");
        let Some(end) = lines[start + 1..].iter().position(|l| *l == closing) else { continue };
        if end + 2 > limit {
            found.push(format!("{name} ({} lines)", end + 2));
        }
    }
    found
}

#[test]
fn no_source_file_over_500_lines_and_no_function_over_80() {
    let mut found = Vec::new();
    for crate_dir in ["xtask", "backend"] {
        let mut files = Vec::new();
        rust_files(&source(crate_dir), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).expect("a source file");
            let shown = file.strip_prefix(source(crate_dir)).expect("under src").display().to_string();
            let count = text.lines().count();
            if count > 500 {
                found.push(format!("{crate_dir}/src/{shown}: {count} lines"));
            }
            for function in long_functions(&text, 80) {
                found.push(format!("{crate_dir}/src/{shown}: fn {function}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "split these (a file fits in a reader's head, a function on a screen):\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn the_length_reader_measures_functions_from_their_first_line_to_their_last() {
    let body = "    let x = 1;\n".repeat(79);
    let text = format!("fn short() {{\n}}\n\nimpl A {{\n    pub async fn long() {{\n{body}    }}\n}}\n");
    assert_eq!(long_functions(&text, 80), ["long (81 lines)"]);
    assert!(long_functions(&text, 81).is_empty());
}
