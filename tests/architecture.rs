//! Tidy checks of the server's structure, in the spirit of rust-analyzer's
//! tidy tests: they read the source as text.
//!
//! * The layer rule: ARCHITECTURE.md lists the layers of `src/` in order
//!   (the block after "Layers, lowest first"); a module may import (`use
//!   crate::...`, `crate::...` paths, `super::...` paths) only from its own
//!   layer or a lower one.
//! * No import circle between the files of `src/` (a re-export such as
//!   `pub use pipeline::Pipeline` in `ingest/mod.rs` counts as the file
//!   that defines the item, so using it is not an edge to `mod.rs`).
//! * No function in `src/` longer than 100 lines (test code aside).
//!
//! Test code (everything after a `#[cfg(test)]` line, and `tests.rs`
//! files) is not checked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, with its module path (`ingest::policy`;
/// the crate root is `""`).
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src(), &mut files);
    let mut m = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src()).unwrap().with_extension("");
        let mut parts: Vec<String> =
            rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        if parts.last().is_some_and(|l| l == "tests") {
            continue;
        }
        if parts.last().is_some_and(|l| l == "mod" || l == "lib" || l == "main") {
            parts.pop();
        }
        m.insert(parts.join("::"), f);
    }
    m
}

/// The source without comments, string and char literals (replaced by
/// blanks, keeping line breaks), cut at the first `#[cfg(test)]`.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut String, s: &[u8]| {
        for &c in s {
            out.push(if c == b'\n' { '\n' } else { ' ' });
        }
    };
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"/*") {
            let end = text[i + 2..].find("*/").map_or(rest.len(), |e| e + 4);
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"r#\"") || rest.starts_with(b"r\"") {
            let hashes = rest[1..].iter().take_while(|&&c| c == b'#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let start = 2 + hashes;
            let end =
                text[i + start..].find(&close).map_or(rest.len(), |e| start + e + close.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'\'' && rest.len() >= 3 && (rest[2] == b'\'' || rest[1] == b'\\') {
            // A char literal ('x', '\n', '\''), not a lifetime.
            let end = if rest[1] == b'\\' {
                rest[2..].iter().position(|&c| c == b'\'').map_or(rest.len(), |e| e + 3)
            } else {
                3
            };
            blank(&mut out, &rest[..end]);
            i += end;
        } else {
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Expands a path starting at `s` (after `crate::`, `super::`): plain
/// segments, possibly ending in a `{...}` group. Returns the paths.
fn expand(s: &str) -> Vec<Vec<String>> {
    let s = s.trim_start();
    let mut segs = Vec::new();
    let mut rest = s;
    loop {
        let ident: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if ident.is_empty() {
            break;
        }
        segs.push(ident.clone());
        rest = rest[ident.len()..].trim_start();
        if let Some(r) = rest.strip_prefix("::") {
            rest = r.trim_start();
        } else {
            return vec![segs];
        }
    }
    if let Some(r) = rest.strip_prefix('{') {
        // Split the group at top-level commas.
        let mut depth = 0;
        let mut items = Vec::new();
        let mut cur = String::new();
        for c in r.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            }
            cur.push(c);
        }
        items.push(cur);
        let mut out = Vec::new();
        for item in items {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            if item == "self" {
                out.push(segs.clone());
                continue;
            }
            for tail in expand(item) {
                let mut p = segs.clone();
                p.extend(tail);
                out.push(p);
            }
        }
        return out;
    }
    vec![segs]
}

/// The absolute paths (from the crate root) a module refers to.
fn references(module: &str, code: &str) -> Vec<Vec<String>> {
    let here: Vec<String> =
        if module.is_empty() { vec![] } else { module.split("::").map(String::from).collect() };
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for (kw, base) in
        [("crate::", Some(Vec::new())), ("super::", here.split_last().map(|(_, p)| p.to_vec()))]
    {
        let mut from = 0;
        while let Some(i) = code[from..].find(kw) {
            let at = from + i;
            from = at + kw.len();
            let prev = at.checked_sub(1).map(|j| bytes[j]);
            if prev.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':') {
                continue;
            }
            let Some(base) = base.clone() else { continue };
            for p in expand(&code[from..]) {
                let mut full = base.clone();
                full.extend(p);
                out.push(full);
            }
        }
    }
    out
}

/// `use` statements' re-exported names of a module: name → the absolute
/// path it stands for (`use child::X` inside a module is relative to it).
fn aliases(
    module: &str,
    code: &str,
    modules: &BTreeMap<String, PathBuf>,
) -> HashMap<String, Vec<String>> {
    let here: Vec<String> =
        if module.is_empty() { vec![] } else { module.split("::").map(String::from).collect() };
    let mut out = HashMap::new();
    for stmt in code.split(';') {
        let t = stmt.trim();
        let Some(rest) = t
            .strip_prefix("pub use ")
            .or_else(|| t.strip_prefix("pub(crate) use "))
            .or_else(|| t.strip_prefix("pub(super) use "))
        else {
            continue;
        };
        let (base, rest) = if let Some(r) = rest.strip_prefix("crate::") {
            (vec![], r)
        } else if let Some(r) = rest.strip_prefix("super::") {
            (here[..here.len().saturating_sub(1)].to_vec(), r)
        } else {
            (here.clone(), rest)
        };
        for p in expand(rest) {
            let mut full = base.clone();
            full.extend(p.iter().cloned());
            // `X as Y` is not parsed by `expand`; such a name stays unresolved.
            if let Some(name) = full.last().cloned() {
                if !modules.contains_key(&full.join("::")) || full.len() > here.len() {
                    out.insert(name, full);
                }
            }
        }
    }
    out
}

/// The file (module) a path leads to: the longest prefix that is a module,
/// following re-exports to where the item is defined.
fn resolve(
    path: &[String],
    modules: &BTreeMap<String, PathBuf>,
    aliases: &HashMap<String, HashMap<String, Vec<String>>>,
    depth: usize,
) -> Option<String> {
    let mut best = None;
    for n in (0..=path.len()).rev() {
        let m = path[..n].join("::");
        if modules.contains_key(&m) {
            best = Some((n, m));
            break;
        }
    }
    let (n, m) = best?;
    if n < path.len() && depth < 8 {
        if let Some(target) = aliases.get(&m).and_then(|a| a.get(&path[n])) {
            let mut t = target.clone();
            t.extend(path[n + 1..].iter().cloned());
            if t != path {
                return resolve(&t, modules, aliases, depth + 1).or(Some(m));
            }
        }
    }
    Some(m)
}

/// The layers stated in ARCHITECTURE.md, lowest first: top-level module
/// names per layer.
fn layers() -> Vec<Vec<String>> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .unwrap();
    let start = doc.find("Layers, lowest first").expect("ARCHITECTURE.md states the layers");
    let block = &doc[start..];
    let open = block.find("```").unwrap() + 3;
    let body = &block[open..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let body = &body[..body.find("```").unwrap()];
    body.lines()
        .filter_map(|l| l.split_once(':').map(|(_, mods)| mods))
        .map(|mods| {
            mods.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter(|l: &Vec<String>| !l.is_empty())
        .collect()
}

struct Graph {
    modules: BTreeMap<String, PathBuf>,
    /// file → files it imports from (with one path that shows it).
    edges: BTreeMap<String, BTreeMap<String, String>>,
}

fn graph() -> Graph {
    let modules = modules();
    let codes: BTreeMap<String, String> =
        modules.iter().map(|(m, p)| (m.clone(), code(p))).collect();
    let aliases: HashMap<String, HashMap<String, Vec<String>>> =
        codes.iter().map(|(m, c)| (m.clone(), aliases(m, c, &modules))).collect();
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (m, c) in &codes {
        let e = edges.entry(m.clone()).or_default();
        for p in references(m, c) {
            if let Some(target) = resolve(&p, &modules, &aliases, 0) {
                if &target != m && !target.is_empty() && !m.starts_with(&format!("{target}::")) {
                    e.entry(target).or_insert_with(|| p.join("::"));
                }
            }
        }
    }
    Graph { modules, edges }
}

fn top(m: &str) -> &str {
    m.split("::").next().unwrap_or("")
}

#[test]
fn no_module_imports_from_a_higher_layer() {
    let layers = layers();
    assert!(layers.len() >= 5, "ARCHITECTURE.md's layer list looks empty: {layers:?}");
    let rank: HashMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.iter().map(move |m| (m.as_str(), i)))
        .collect();
    let g = graph();
    let mut unplaced = BTreeSet::new();
    let mut wrong = Vec::new();
    for (from, targets) in &g.edges {
        let Some(&rf) = rank.get(top(from)) else {
            if !from.is_empty() {
                unplaced.insert(top(from).to_string());
            }
            continue;
        };
        for (to, via) in targets {
            match rank.get(top(to)) {
                Some(&rt) if rt > rf => wrong.push(format!(
                    "{from} (layer {}) imports {to} (layer {}) via crate::{via}",
                    rf + 1,
                    rt + 1
                )),
                Some(_) => {}
                None => {
                    unplaced.insert(top(to).to_string());
                }
            }
        }
    }
    assert!(unplaced.is_empty(), "modules missing from ARCHITECTURE.md's layers: {unplaced:?}");
    assert!(wrong.is_empty(), "imports that run up a layer:\n{}", wrong.join("\n"));
    // The check sees the imports at all.
    let ingest = &g.edges["ingest::pipeline"];
    assert!(ingest.contains_key("engine"), "{ingest:?}");
    assert!(g.edges["server"].len() > 5, "{:?}", g.edges["server"]);
}

#[test]
fn no_import_circles() {
    let g = graph();
    // Depth-first search for a back edge; report the circle.
    fn visit(
        m: &str,
        g: &Graph,
        state: &mut HashMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for to in g.edges.get(m).into_iter().flat_map(|e| e.keys()) {
            match state.get(to.as_str()) {
                Some(1) => {
                    let i = stack.iter().position(|s| s == to).unwrap_or(0);
                    let mut c = stack[i..].to_vec();
                    c.push(to.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(to, g, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = HashMap::new();
    for m in g.modules.keys() {
        if !state.contains_key(m.as_str()) {
            if let Some(c) = visit(m, &g, &mut state, &mut Vec::new()) {
                let shown: Vec<String> = c
                    .windows(2)
                    .map(|w| format!("{} -> {} (crate::{})", w[0], w[1], g.edges[&w[0]][&w[1]]))
                    .collect();
                panic!("import circle:\n{}", shown.join("\n"));
            }
        }
    }
}

#[test]
fn no_function_is_longer_than_100_lines() {
    let mut long = Vec::new();
    for (m, p) in modules() {
        let c = code(&p);
        let lines: Vec<&str> = c.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let is_fn = t.starts_with("fn ")
                || t.contains(" fn ") && !t.contains("=>") && !t.trim_end().ends_with(';');
            if !is_fn || t.contains("fn(") {
                continue;
            }
            // Find the body's opening brace, then its match.
            let mut depth = 0i32;
            let mut opened = false;
            let mut end = None;
            'outer: for (j, l2) in lines.iter().enumerate().skip(i) {
                for ch in l2.chars() {
                    match ch {
                        ';' if !opened && depth == 0 => break 'outer,
                        '{' => {
                            depth += 1;
                            opened = true;
                        }
                        '}' => {
                            depth -= 1;
                            if opened && depth == 0 {
                                end = Some(j);
                                break 'outer;
                            }
                        }
                        _ => {}
                    }
                }
            }
            if let Some(e) = end {
                let n = e - i + 1;
                if n > 100 {
                    long.push(format!("{m} ({}), line {}: {n} lines: {}", p.display(), i + 1, t));
                }
            }
        }
    }
    assert!(long.is_empty(), "functions longer than 100 lines:\n{}", long.join("\n"));
}
