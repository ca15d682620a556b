//! kilnd's dependencies point one way: the edge (`control`, `server`) →
//! the build (`frontend`, `solver`) → what a build reads from (`source`,
//! `session`) → storage. This test reads every `use crate::…`/`super::…`
//! path and every inline `crate::…` path of `src/`, and fails on an import
//! cycle or an upward dependency among those modules, or on a cycle among
//! their second-level modules (`frontend/dockerfile` ↔ `frontend/llb`, say).
//!
//! `cargo test -p kiln-builder --test module_graph -- --nocapture` prints
//! the graph it checked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module paths (`["session", "group"]`), file by file.
type Module = Vec<String>;
type Graph = BTreeMap<Module, BTreeSet<Module>>;

/// The layers, the edge first. A module may use its own layer's modules
/// (without a cycle) and those of later layers, never those of earlier ones.
const LAYERS: &[&[&str]] = &[&["control", "server"], &["frontend", "solver"], &["source", "session"]];

/// Where a file-level cycle may lie: inside one module of these folders, a
/// parent and its private parts refer to each other (the LLB builder's op
/// types and their closed sum type in `frontend/llb`, say).
const CHECKED: &[&str] = &["control", "server", "frontend", "solver", "source", "session"];

fn modules(src: &Path) -> BTreeMap<Module, String> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut module: Module = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            // main.rs only calls lib.rs's `run`.
            if module == ["main"] {
                continue;
            }
            if module.last().is_some_and(|l| l == "mod" || l == "lib") {
                module.pop();
            }
            found.insert(module, std::fs::read_to_string(&path).unwrap());
        }
    }
    found
}

/// The text with comments, strings and character literals blanked out, so
/// only code is searched for paths.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&chars, i) {
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            let closes = |k: usize| chars[k] == '"' && (1..=hashes).all(|h| chars.get(k + h) == Some(&'#'));
            while j < chars.len() && !closes(j) {
                j += 1;
            }
            i = j + 1 + hashes;
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{1F600}'); otherwise a lifetime.
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// `crate::…`, `super::…`, or a child module's name followed by `::`.
fn is_path_start(rest: &str) -> bool {
    let word: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    !word.is_empty() && rest[word.len()..].starts_with("::")
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// `a::{b, c::{d, e}}` as `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap_or_default().trim().to_owned()];
    };
    let prefix = tree[..open].trim().to_owned();
    let body = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut parts, mut depth, mut current) = (Vec::new(), 0, String::new());
    for ch in body.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(ch);
    }
    parts.push(current);
    parts
        .iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(|p| expand(p.trim()))
        .map(|p| if p == "self" { prefix.trim_end_matches("::").to_owned() } else { format!("{prefix}{p}") })
        .collect()
}

/// The deepest file module `path` names, seen from inline module `scope` of `file`.
fn resolve(files: &BTreeMap<Module, String>, scope: &[String], path: &str) -> Option<Module> {
    let segments: Vec<&str> = path.split("::").map(str::trim).filter(|s| !s.is_empty()).collect();
    let supers = segments.iter().take_while(|s| **s == "super").count();
    let (mut base, rest): (Module, &[&str]) = match segments.first().copied() {
        Some("crate") => (Vec::new(), &segments[1..]),
        Some("self") => (scope.to_vec(), &segments[1..]),
        Some("super") => (scope[..scope.len().saturating_sub(supers)].to_vec(), &segments[supers..]),
        _ => return None,
    };
    // An inline module (`mod tests`) lives in its file.
    while !files.contains_key(&base) {
        base.pop();
    }
    for segment in rest {
        let mut next = base.clone();
        next.push((*segment).to_owned());
        if !files.contains_key(&next) {
            break;
        }
        base = next;
    }
    Some(base)
}

/// What each file's code names. A module re-exporting its own child
/// (`pub use self::group::Group`) is that child's facade, not its user.
fn graph(files: &BTreeMap<Module, String>) -> Graph {
    let mut graph = Graph::new();
    for (module, text) in files {
        let code = code_only(text);
        let mut deps = BTreeSet::new();
        let mut scope = module.clone();
        // Brace depth at which each inline module opened.
        let mut inline: Vec<usize> = Vec::new();
        let mut depth = 0;
        let bytes = code.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let rest = &code[i..];
            let at_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
            if bytes[i] == b'{' {
                depth += 1;
            } else if bytes[i] == b'}' {
                if inline.last() == Some(&depth) {
                    inline.pop();
                    scope.pop();
                }
                depth -= 1;
            } else if at_word && rest.starts_with("mod ") {
                let name: String =
                    rest[4..].trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                let after = rest[4..].trim_start()[name.len()..].trim_start();
                if after.starts_with('{') {
                    scope.push(name);
                    inline.push(depth + 1);
                }
            } else if at_word && rest.starts_with("use ") {
                let end = rest.find(';').unwrap_or(rest.len());
                let before = code[..i].trim_end();
                let facade = ["pub", "pub(crate)", "pub(super)"].iter().any(|p| before.ends_with(p));
                for path in expand(&rest[4..end]) {
                    let Some(dep) = resolve(files, &scope, &path) else { continue };
                    let own_child = dep.len() > module.len() && dep.starts_with(module);
                    if dep != *module && !(facade && own_child) {
                        deps.insert(dep);
                    }
                }
                i += end;
                continue;
            } else if at_word && (i == 0 || bytes[i - 1] != b':') && is_path_start(rest) {
                let end =
                    rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
                let path = &rest[..end];
                let rooted = ["crate::", "super::", "self::"].iter().any(|r| path.starts_with(r));
                let path = if rooted { path.to_owned() } else { format!("self::{path}") };
                if let Some(dep) = resolve(files, &scope, &path)
                    && dep != *module
                {
                    deps.insert(dep);
                }
                i += end;
                continue;
            }
            i += 1;
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

/// The strongly connected components of more than one node (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<Module>> {
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        found: Vec<Vec<Module>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in s.graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[w].min(s.low[v]);
                s.low.insert(v, low);
            } else if s.stack.contains(&w) {
                let low = s.index[w].min(s.low[v]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state =
        State { graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), found: Vec::new() };
    for v in graph.keys() {
        if !state.index.contains_key(v) {
            visit(&mut state, v);
        }
    }
    state.found
}

fn top(module: &Module) -> String {
    module.first().cloned().unwrap_or_else(|| "lib".to_owned())
}

fn shown(module: &Module) -> String {
    if module.is_empty() { "lib".to_owned() } else { module.join("/") }
}

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

#[test]
fn kilnd_modules_depend_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = modules(&src);
    let graph = graph(&files);
    let mut problems = Vec::new();

    // 1. Top-level modules, the whole crate: no cycle.
    let mut tops = Graph::new();
    for (from, deps) in &graph {
        for to in deps {
            if top(from) != top(to) && !from.is_empty() {
                tops.entry(vec![top(from)]).or_default().insert(vec![top(to)]);
            }
        }
    }
    println!("Top-level modules (lib.rs, which wires the daemon, left out):");
    for (from, deps) in &tops {
        println!("  {} -> {}", shown(from), deps.iter().map(shown).collect::<Vec<_>>().join(" "));
    }
    for cycle in cycles(&tops) {
        problems.push(format!(
            "cycle among top-level modules: {}",
            cycle.iter().map(shown).collect::<Vec<_>>().join(", ")
        ));
    }

    // 2. Layers: no upward dependency.
    println!("\nLayers, the edge first: {LAYERS:?}");
    for (from, deps) in &tops {
        for to in deps {
            if let (Some(a), Some(b)) = (layer(&from[0]), layer(&to[0]))
                && b < a
            {
                problems.push(format!("upward dependency: {} -> {}", from[0], to[0]));
            }
        }
    }

    // 3. Files of the checked modules: a cycle stays inside one module below the top level.
    let checked: Graph = graph
        .iter()
        .filter(|(m, _)| CHECKED.contains(&top(m).as_str()))
        .map(|(m, deps)| {
            (m.clone(), deps.iter().filter(|d| CHECKED.contains(&top(d).as_str())).cloned().collect())
        })
        .collect();
    println!("\nFile-level cycles in {CHECKED:?}:");
    let mut any = false;
    for cycle in cycles(&checked) {
        any = true;
        let names = cycle.iter().map(shown).collect::<Vec<_>>().join(", ");
        let home: Module = cycle[0].iter().take(2).cloned().collect();
        let inside = home.len() == 2 && cycle.iter().all(|m| m.len() >= 2 && m[..2] == home[..]);
        if inside {
            println!("  inside {}: {names}", shown(&home));
        } else {
            println!("  ACROSS modules: {names}");
            problems.push(format!("cycle across modules: {names}"));
        }
    }
    if !any {
        println!("  none");
    }
    println!("\nDependencies between second-level modules of the checked folders:");
    let second = |m: &Module| m.iter().take(2).cloned().collect::<Module>();
    let mut seconds = Graph::new();
    for (from, deps) in &checked {
        for to in deps {
            if second(from) != second(to) {
                seconds.entry(second(from)).or_default().insert(second(to));
            }
        }
    }
    for (from, deps) in &seconds {
        println!("  {} -> {}", shown(from), deps.iter().map(shown).collect::<Vec<_>>().join(" "));
    }
    // 4. Those second-level modules (`frontend/dockerfile`, `frontend/llb`, …): no cycle either.
    for cycle in cycles(&seconds) {
        problems
            .push(format!("cycle among modules: {}", cycle.iter().map(shown).collect::<Vec<_>>().join(", ")));
    }

    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn paths_are_read_from_code_only() {
    let code = code_only("use crate::a; // crate::b\nlet s = \"crate::c\"; let c = '{'; fn f<'a>() {}");
    assert!(code.contains("crate::a") && !code.contains("crate::b") && !code.contains("crate::c"));
    assert!(!code.contains("'{'") && code.contains("<'a>"));
    assert_eq!(
        expand("crate::a::{b, c::{d, e as f}, self}"),
        ["crate::a::b", "crate::a::c::d", "crate::a::c::e", "crate::a"]
    );
}
