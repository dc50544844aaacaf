//! The code's layout holds: no module imports, directly or around a loop, a module that imports it
//! back; no source file outside the tests is longer than 500 lines; the API and the worker do not
//! depend on each other.
//!
//! The module graph is read from the sources: an edge goes from a module to every module a path in
//! it names (`use` trees, `crate::`/`super::`/`self::` paths, and paths through its own child
//! modules), resolved to the longest module prefix the path names. A module's `mod child;`
//! declaration is not an edge; a parent that uses its child is (so a child using its parent back is
//! a cycle). Inline `#[cfg(test)] mod tests` blocks are left out: they may use their module freely.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The crates' source roots, relative to the workspace root, each with its root file.
const CRATES: &[(&str, &str)] = &[
    ("src", "lib.rs"),
    ("api/src", "lib.rs"),
    ("api/src", "main.rs"),
    ("worker/src", "lib.rs"),
    ("worker/src", "main.rs"),
    ("allinone/src", "main.rs"),
    ("migrations/src", "lib.rs"),
    ("bench/src", "main.rs"),
];

const MAX_LINES: usize = 500;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package sits in the workspace")
        .to_owned()
}

/// Removes comments, string and char literals (keeping line breaks), so braces and paths in them
/// are not read as code.
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else if c == b'r' && matches!(b.get(i + 1), Some(b'#') | Some(b'"')) && {
            let mut j = i + 1;
            while b.get(j) == Some(&b'#') {
                j += 1;
            }
            b.get(j) == Some(&b'"')
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        } {
            let mut hashes = 0;
            i += 1;
            while b[i] == b'#' {
                hashes += 1;
                i += 1;
            }
            i += 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while i < b.len() && !b[i..].starts_with(&close) {
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += close.len();
            out.push_str("\"\"");
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3;
        } else if c == b'\'' && b.get(i + 1) == Some(&b'\\') {
            i += 2;
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(c as char);
            i += 1;
        }
    }
    out
}

/// Drops every `#[cfg(test)]` item (a test module or function) with its braces.
fn without_tests(code: &str) -> String {
    let mut out = code.to_owned();
    while let Some(at) = out.find("#[cfg(test)]") {
        let Some(open) = out[at..].find('{').map(|o| at + o) else {
            break;
        };
        let mut depth = 0;
        let mut end = open;
        for (k, ch) in out[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.replace_range(at..end, "");
    }
    out
}

/// The full paths of a `use` tree (`a::{b, c::{d, self}}` → `a::b`, `a::c::d`, `a::c`).
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    fn go(prefix: &str, t: &str, out: &mut Vec<String>) {
        let t = t.trim();
        if let Some(open) = t.find('{') {
            let head = t[..open].trim().trim_end_matches("::");
            let inner = &t[open + 1..t.rfind('}').unwrap_or(t.len())];
            let base = join(prefix, head);
            let mut depth = 0;
            let mut start = 0;
            for (k, ch) in inner.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        go(&base, &inner[start..k], out);
                        start = k + 1;
                    }
                    _ => {}
                }
            }
            go(&base, &inner[start..], out);
        } else {
            let item = t.split(" as ").next().unwrap_or("").trim();
            if item.is_empty() {
                // The space after a group's trailing comma names nothing.
            } else if item == "*" || item == "self" {
                out.push(prefix.to_owned());
            } else {
                out.push(join(prefix, item));
            }
        }
    }
    fn join(a: &str, b: &str) -> String {
        match (a.is_empty(), b.is_empty()) {
            (true, _) => b.to_owned(),
            (_, true) => a.to_owned(),
            _ => format!("{a}::{b}"),
        }
    }
    let mut out = Vec::new();
    go("", &tree, &mut out);
    out
}

/// Every path the code names: `use` trees expanded, and `a::b` chains elsewhere.
fn paths(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code.to_owned();
    // `use` statements first (their trees have braces), then removed.
    let mut i = 0;
    while let Some(at) = rest[i..].find("use ").map(|k| i + k) {
        let boundary = at == 0
            || !rest.as_bytes()[at - 1].is_ascii_alphanumeric() && rest.as_bytes()[at - 1] != b'_';
        let Some(end) = rest[at..].find(';').map(|k| at + k) else {
            break;
        };
        if boundary {
            found.extend(expand(&rest[at + 4..end]));
            rest.replace_range(at..end, "");
        }
        i = at + 1;
    }
    let bytes = rest.as_bytes();
    let mut k = 0;
    while k < bytes.len() {
        let starts = (bytes[k].is_ascii_alphabetic() || bytes[k] == b'_')
            && (k == 0 || !(bytes[k - 1].is_ascii_alphanumeric() || bytes[k - 1] == b'_'));
        if !starts {
            k += 1;
            continue;
        }
        let mut end = k;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b':')
        {
            end += 1;
        }
        let chain = rest[k..end].trim_end_matches(':');
        if chain.contains("::") {
            found.push(chain.to_owned());
        }
        k = end.max(k + 1);
    }
    found
}

/// A crate's modules, by path (`""` is the root), with their files.
fn modules(dir: &Path, root: &str) -> BTreeMap<String, PathBuf> {
    fn walk(module: &str, file: PathBuf, out: &mut BTreeMap<String, PathBuf>) {
        let code = strip(&std::fs::read_to_string(&file).expect("source"));
        out.insert(module.to_owned(), file.clone());
        // `mod x;` declarations, each a file beside this one's folder.
        let folder = if file
            .file_name()
            .is_some_and(|n| n == "mod.rs" || n == "lib.rs" || n == "main.rs")
        {
            file.parent().unwrap().to_owned()
        } else {
            file.with_extension("")
        };
        for line in code.lines() {
            let line = line.trim();
            let decl = line
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub(super) ")
                .trim_start_matches("pub ");
            if let Some(name) = decl.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
                let child = if module.is_empty() {
                    name.to_owned()
                } else {
                    format!("{module}::{name}")
                };
                let flat = folder.join(format!("{name}.rs"));
                let nested = folder.join(name).join("mod.rs");
                let path = if flat.exists() { flat } else { nested };
                walk(&child, path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", dir.join(root), &mut out);
    out
}

fn parent(m: &str) -> String {
    m.rsplit_once("::")
        .map(|(p, _)| p.to_owned())
        .unwrap_or_default()
}

/// The module a path names from module `from`, if it is one of this crate's.
fn resolve(from: &str, path: &str, mods: &BTreeMap<String, PathBuf>) -> Option<String> {
    let mut segs: Vec<&str> = path.split("::").collect();
    let mut base = match segs[0] {
        "crate" => {
            segs.remove(0);
            String::new()
        }
        "self" => {
            segs.remove(0);
            from.to_owned()
        }
        "super" => {
            let mut b = from.to_owned();
            while segs.first() == Some(&"super") {
                segs.remove(0);
                b = parent(&b);
            }
            b
        }
        first => {
            let child = if from.is_empty() {
                first.to_owned()
            } else {
                format!("{from}::{first}")
            };
            if !mods.contains_key(&child) {
                return None;
            }
            from.to_owned()
        }
    };
    for seg in segs {
        let next = if base.is_empty() {
            seg.to_owned()
        } else {
            format!("{base}::{seg}")
        };
        if mods.contains_key(&next) {
            base = next;
        } else {
            break;
        }
    }
    Some(base)
}

/// Strongly connected groups of more than one module (the import cycles).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Reachability is enough at this size: a and b are in one cycle when each reaches the other.
    let reach = |start: &String| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![start.clone()];
        while let Some(m) = todo.pop() {
            for n in graph.get(&m).into_iter().flatten() {
                if seen.insert(n.clone()) {
                    todo.push(n.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut placed = BTreeSet::new();
    for m in graph.keys() {
        if placed.contains(m) || !reaches[m].contains(m) {
            continue;
        }
        let group: Vec<String> = reaches[m]
            .iter()
            .filter(|n| reaches.get(n).is_some_and(|r| r.contains(m)))
            .cloned()
            .collect();
        placed.extend(group.iter().cloned());
        if group.len() > 1 {
            groups.push(group);
        }
    }
    groups
}

fn module_graph(dir: &Path, root: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(dir, root);
    let mut graph = BTreeMap::new();
    for (module, file) in &mods {
        let code = without_tests(&strip(&std::fs::read_to_string(file).expect("source")));
        let edges: BTreeSet<String> = paths(&code)
            .iter()
            .filter_map(|p| {
                let target = resolve(module, p, &mods)?;
                if std::env::var_os("LAYOUT_DEBUG").is_some() && &target != module {
                    eprintln!("{module:?} {p} → {target:?}");
                }
                Some(target)
            })
            .filter(|target| target != module)
            .collect();
        graph.insert(module.clone(), edges);
    }
    graph
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let root = workspace();
    let mut found = Vec::new();
    for (dir, file) in CRATES {
        let graph = module_graph(&root.join(dir), file);
        assert!(
            graph.len() > 1 || *dir == "allinone/src" || *file == "main.rs",
            "{dir}: no modules found"
        );
        for group in cycles(&graph) {
            let edges: Vec<String> = group
                .iter()
                .flat_map(|m| {
                    graph[m]
                        .iter()
                        .filter(|n| group.contains(n))
                        .map(move |n| format!("{m:?} → {n:?}"))
                })
                .collect();
            found.push(format!("{dir}/{file}: {}", edges.join(", ")));
        }
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

#[test]
fn the_checker_sees_a_cycle_through_a_parent_and_a_reexport() {
    let dir = std::env::temp_dir().join(format!("msgcontact-layout-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::write(
        dir.join("lib.rs"),
        "mod a;\npub mod b;\npub use b::Thing;\n",
    )
    .unwrap();
    std::fs::write(dir.join("a/mod.rs"), "mod c;\nuse c::helper;\n").unwrap();
    std::fs::write(
        dir.join("a/c.rs"),
        "use super::super::Thing; // via the root's re-export\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("b.rs"),
        "pub struct Thing;\nfn f() { crate::a::run(); }\n",
    )
    .unwrap();
    let graph = module_graph(&dir, "lib.rs");
    let found = cycles(&graph);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        found,
        vec![vec!["".to_owned(), "a".into(), "a::c".into(), "b".into()]],
        "{graph:?}"
    );
}

#[test]
fn no_source_file_outside_the_tests_is_longer_than_500_lines() {
    let root = workspace();
    let mut long = Vec::new();
    for (dir, file) in CRATES {
        for path in modules(&root.join(dir), file).values() {
            let lines = std::fs::read_to_string(path).unwrap().lines().count();
            if lines > MAX_LINES {
                long.push(format!(
                    "{} ({lines} lines)",
                    path.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    long.sort();
    long.dedup();
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_api_and_the_worker_do_not_depend_on_each_other() {
    let root = workspace();
    for (krate, other) in [("api", "msgcontact-worker"), ("worker", "msgcontact-api")] {
        let manifest = std::fs::read_to_string(root.join(krate).join("Cargo.toml")).unwrap();
        let deps = manifest
            .split("[dependencies]")
            .nth(1)
            .and_then(|d| d.split("\n[").next())
            .unwrap_or("");
        assert!(
            !deps.lines().any(|l| l.trim_start().starts_with(other)),
            "{krate} depends on {other}"
        );
    }
}
