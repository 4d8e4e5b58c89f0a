//! The layers of the control plane point one way, and no file imports in a circle (nor in the agent):
//! read from the source itself (every `crate::…` and `super::…` path outside tests and comments), so a
//! change that breaks either
//! fails here, naming the import. `cargo test -p berth-control-plane --test suite layers:: -- --nocapture`
//! prints the module graph.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The control plane's top-level modules, from the top: each may import only those after it.
const LAYERS: &[&str] = &[
    "daemon",
    "api",
    "mcp",
    "bots",
    "cluster",
    "events",
    "agent_client",
    "store",
    "runtime",
    "network",
    "archive",
    "metrics",
    "listen",
    "auth",
    "sync",
    "time",
    "text",
    "error",
];

/// A source file's module path (`mcp::http`), its text without test code.
fn sources(src: &Path) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "bin") {
                    dirs.push(p);
                }
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel: PathBuf = p.strip_prefix(src).unwrap().with_extension("");
            let mut module: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            if module.last().is_some_and(|l| l == "mod" || l == "lib") {
                module.pop();
            }
            let text = std::fs::read_to_string(&p).unwrap();
            // Test code (a trailing `#[cfg(test)]` module, or a tests.rs file) may reach anywhere.
            if module.last().is_some_and(|l| l == "tests") {
                continue;
            }
            let code = text.split("#[cfg(test)]").next().unwrap();
            // Comments (doc links included) are not imports.
            let text: String =
                code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
            out.push((module, text));
        }
    }
    out
}

/// The module paths a file names: `crate::a::b::Thing` → `a::b` (the longest that is a file), and
/// `super::x` relative to the file's module.
fn imports(module: &[String], text: &str, files: &BTreeSet<Vec<String>>) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("crate::").chain(text.match_indices("super::")) {
        let before = text[..at].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // part of a longer path
        }
        let path: String = text[at..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
        let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
        // `crate::` starts at the root; each `super::` climbs one level from the file's module.
        let mut base: Vec<String> = Vec::new();
        if parts.remove(0) == "super" {
            base = module[..module.len().saturating_sub(1)].to_vec();
            while parts.first() == Some(&"super") {
                parts.remove(0);
                base.pop();
            }
        }
        let mut target = base.clone();
        let mut best = None;
        for p in parts {
            target.push(p.to_string());
            if files.contains(&target) {
                best = Some(target.clone());
            }
        }
        if let Some(t) = best
            && t != module
        {
            out.insert(t);
        }
    }
    out
}

/// The file import graph of a crate's `src/`.
fn graph_of(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files = sources(src);
    let names: BTreeSet<Vec<String>> = files.iter().map(|(m, _)| m.clone()).collect();
    files.iter().map(|(m, text)| (m.clone(), imports(m, text, &names))).collect()
}

fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    graph_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn top_level_modules_import_only_those_below_them() {
    let g = graph();
    let mut wrong = Vec::new();
    let mut summary: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in &g {
        let Some(top) = from.first() else { continue }; // lib.rs
        let rank = LAYERS.iter().position(|l| l == top);
        assert!(rank.is_some(), "module `{top}` is not in LAYERS: give it its place");
        for to in tos {
            let other = &to[0];
            if other == top {
                continue;
            }
            let theirs = LAYERS.iter().position(|l| l == other);
            assert!(theirs.is_some(), "module `{other}` is not in LAYERS: give it its place");
            summary.entry(LAYERS[rank.unwrap()]).or_default().insert(other.clone());
            if theirs <= rank {
                wrong.push(format!("{} imports {} (above it)", from.join("::"), to.join("::")));
            }
        }
    }
    for l in LAYERS {
        println!(
            "{l} -> {}",
            summary.get(l).map(|s| s.iter().cloned().collect::<Vec<_>>().join(", ")).unwrap_or_default()
        );
    }
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    circles_in(&graph(), "the control plane");
}

#[test]
fn no_agent_files_import_each_other_in_a_circle() {
    circles_in(&graph_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/src")), "the agent");
}

fn circles_in(g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>, what: &str) {
    // Sibling files only: a directory's mod.rs declares its children and re-exports from them, so its
    // edges to them are not a design circle.
    let parent = |m: &Vec<String>| m[..m.len().saturating_sub(1)].to_vec();
    let edges: BTreeMap<&Vec<String>, Vec<&Vec<String>>> = g
        .iter()
        .map(|(from, tos)| {
            let tos = tos.iter().filter(|t| !from.starts_with(t) && !t.starts_with(from)).collect();
            (from, tos)
        })
        .collect();
    let mut circles = Vec::new();
    for (a, tos) in &edges {
        for b in tos {
            if parent(a) == parent(b) && a < b && edges.get(b).is_some_and(|bt| bt.contains(a)) {
                circles.push(format!("{} <-> {}", a.join("::"), b.join("::")));
            }
        }
    }
    // Longer circles among siblings: depth-first search.
    fn visit<'a>(
        n: &'a Vec<String>,
        edges: &BTreeMap<&'a Vec<String>, Vec<&'a Vec<String>>>,
        stack: &mut Vec<&'a Vec<String>>,
        done: &mut BTreeSet<&'a Vec<String>>,
        found: &mut Vec<String>,
    ) {
        if let Some(i) = stack.iter().position(|s| *s == n) {
            found.push(stack[i..].iter().map(|m| m.join("::")).collect::<Vec<_>>().join(" -> "));
            return;
        }
        if !done.insert(n) {
            return;
        }
        stack.push(n);
        for t in edges.get(n).into_iter().flatten() {
            visit(t, edges, stack, done, found);
        }
        stack.pop();
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        visit(n, &edges, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(circles.is_empty(), "files of {what} importing each other in a circle:\n{}", circles.join("\n"));
}
