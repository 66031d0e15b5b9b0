//! No import circles between the modules of `src/` (issue 13): each layer uses only the
//! layers under it, and inside a layer no two files need each other.
//!
//! The checker reads every `.rs` file of a crate, collects the paths it names
//! (`use crate::a::b::{C, d::E}`, `super::x`, `self::y`, and inline `crate::a::f()`), and
//! resolves each path to the file that defines the item: a path into a directory module
//! (`mod.rs` / `lib.rs`) that only re-exports the item (`pub use child::Item`,
//! `pub use child::*`) resolves to the child that defines it. A module's `mod` declarations
//! and its re-exports of its own children are structure, not dependencies. Any strongly
//! connected component of two or more files is reported with the references that make it.
//!
//! It is a reader of source text, not a compiler: macros are not expanded and a path in a
//! string literal is ignored. That is enough for this crate's style, and the self-test below
//! shows it finds a circle when there is one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One crate to check: the directory its module paths are relative to, and its root file.
struct CrateRoot {
    dir: PathBuf,
    root: PathBuf,
}

/// One file of a crate, seen as a module.
struct ModFile {
    /// Module path segments (`["runtime", "coordinator"]`); empty for the crate root.
    path: Vec<String>,
    /// Source with comments and string literals blanked.
    code: String,
    /// Names re-exported from children: item name -> child module name.
    reexports: BTreeMap<String, String>,
    /// Children re-exported whole (`pub use child::*`).
    globs: Vec<String>,
    /// Items this file defines (struct, enum, fn, const, static, type, trait, union, macro).
    items: BTreeSet<String>,
    /// Child modules it declares.
    children: BTreeSet<String>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Blanks comments, string and char literals (keeping newlines), so that only code is read.
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |out: &mut String, c: u8| out.push(if c == b'\n' { '\n' } else { ' ' });
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
                out.push(' ');
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0usize;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b[i..].starts_with(b"r\"") || b[i..].starts_with(b"r#")) && !ident_before(b, i) {
            // Raw string r"..." / r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while j < b.len() && b[j] == b'#' {
                hashes += 1;
                j += 1;
            }
            if j < b.len() && b[j] == b'"' {
                let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
                let mut k = j + 1;
                while k < b.len() && !b[k..].starts_with(&close) {
                    k += 1;
                }
                let end = (k + close.len()).min(b.len());
                for &c in &b[i..end] {
                    blank(&mut out, c);
                }
                i = end;
            } else {
                out.push(b[i] as char);
                i += 1;
            }
        } else if b[i] == b'"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                blank(&mut out, b[i]);
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('a', '\n', '\''); a lifetime has no closing quote.
            let mut j = i + 1;
            if b[j] == b'\\' {
                j += 2;
            } else {
                j += 1;
            }
            while j < b.len() && b[j] != b'\'' {
                j += 1;
            }
            for &c in &b[i..=j.min(b.len() - 1)] {
                blank(&mut out, c);
            }
            i = j + 1;
        } else {
            // Keep the byte (the source is UTF-8; multi-byte chars only occur in literals and
            // comments, blanked above, or are copied through whole here).
            let ch_len = utf8_len(b[i]);
            out.push_str(&src[i..i + ch_len]);
            i += ch_len;
        }
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

fn ident_before(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The `use` trees of `code`, expanded into paths, with whether the `use` was `pub`.
fn use_paths(code: &str) -> Vec<(bool, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = find_word(rest, "use") {
        let before = rest[..at].trim_end();
        let is_pub = before.ends_with("pub") || before.ends_with(')') && before.contains("pub(");
        let after = &rest[at + 3..];
        let Some(end) = after.find(';') else { break };
        expand(&after[..end], &mut Vec::new(), &mut |p| out.push((is_pub, p)));
        rest = &after[end..];
    }
    out
}

/// Index of the next `word` standing alone (not part of a longer identifier).
fn find_word(s: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find(word) {
        let at = from + i;
        let before_ok = !s[..at].chars().next_back().is_some_and(is_ident);
        let after_ok = !s[at + word.len()..].chars().next().is_some_and(is_ident);
        if before_ok && after_ok {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// Expands a use tree (`a::{b, c::{d, e as f}}`) into its leaf paths.
fn expand(tree: &str, prefix: &mut Vec<String>, emit: &mut dyn FnMut(Vec<String>)) {
    let tree = tree.trim().trim_start_matches("::");
    if tree.is_empty() {
        return;
    }
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = segments(&tree[..open]);
        let close = tree.rfind('}').unwrap_or(tree.len());
        let n = prefix.len();
        prefix.extend(head);
        for part in split_top(&tree[open + 1..close]) {
            expand(part, prefix, emit);
        }
        prefix.truncate(n);
    } else {
        let path = tree.split(" as ").next().unwrap_or(tree);
        let mut full = prefix.clone();
        full.extend(segments(path));
        emit(full);
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split("::").map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// Splits on commas that are not inside braces.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `code` with every `#[cfg(test)] mod name { ... }` blanked: a unit-test module is not
/// shipped, and its `use super::*` names the file's own module, not its parent.
fn without_test_modules(code: &str) -> String {
    let mut out = code.to_string();
    let mut from = 0;
    while let Some(at) = out[from..].find("#[cfg(test)]").map(|i| i + from) {
        let rest = out[at + "#[cfg(test)]".len()..].trim_start();
        let Some(open) = rest.strip_prefix("mod ").and_then(|r| r.find(['{', ';'])) else {
            from = at + 1;
            continue;
        };
        let open = out.len() - rest.len() + 4 + open;
        if out.as_bytes()[open] == b';' {
            from = open;
            continue;
        }
        let mut depth = 0usize;
        let mut end = out.len();
        for (i, c) in out[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        let blank: String = out[at..end].chars().map(|c| if c == '\n' { '\n' } else { ' ' }).collect();
        out.replace_range(at..end, &blank);
        from = end;
    }
    out
}

/// Inline paths outside `use` statements: `crate::a::b`, `super::c`, `self::d::e`.
fn inline_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if code[..at].chars().next_back().is_some_and(|c| is_ident(c) || c == ':') {
                continue;
            }
            let tail: String = code[at..].chars().take_while(|&c| is_ident(c) || c == ':').collect();
            out.push(segments(&tail));
        }
    }
    out
}

fn words_after(code: &str, keyword: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = find_word(&code[from..], keyword) {
        let at = from + i + keyword.len();
        from = at;
        let name: String = code[at..].trim_start().chars().take_while(|&c| is_ident(c)).collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

fn load(krate: &CrateRoot) -> Vec<ModFile> {
    let mut files = Vec::new();
    rust_files(&krate.dir, &mut files);
    let mut mods = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&krate.dir).expect("file under the crate dir");
        let mut path: Vec<String> = rel.with_extension("").iter().map(|s| s.to_string_lossy().into_owned()).collect();
        if file == krate.root || path.last().is_some_and(|l| l == "mod") {
            path.pop();
        }
        if file != krate.root && path.is_empty() || path.first().is_some_and(|f| f == "bin") {
            continue; // another crate's file (src/bin/*), checked as its own crate
        }
        if file == krate.root {
            path.clear();
        }
        let code = without_test_modules(&strip(&std::fs::read_to_string(&file).expect("read source")));
        let children: BTreeSet<String> = words_after(&code, "mod").into_iter().collect();
        let mut items = BTreeSet::new();
        for kw in ["struct", "enum", "fn", "const", "static", "type", "trait", "union"] {
            items.extend(words_after(&code, kw));
        }
        for m in words_after(&code, "macro_rules!") {
            items.insert(m);
        }
        let mut reexports = BTreeMap::new();
        let mut globs = Vec::new();
        for (is_pub, p) in use_paths(&code) {
            let p: Vec<String> = p.into_iter().skip_while(|s| s == "self").collect();
            if !is_pub || p.len() < 2 || !children.contains(&p[0]) {
                continue;
            }
            let leaf = p.last().expect("len >= 2").clone();
            if leaf == "*" {
                globs.push(p[0].clone());
            } else {
                reexports.insert(leaf, p[0].clone());
            }
        }
        mods.push(ModFile { path, code, reexports, globs, items, children });
    }
    mods
}

/// Resolves an absolute path (module segments then items) to the index of the defining file.
fn resolve(mods: &[ModFile], abs: &[String]) -> Option<usize> {
    let index = |p: &[String]| mods.iter().position(|m| m.path == p);
    // Longest prefix that is a file.
    let mut n = abs.len();
    let file = loop {
        if let Some(i) = index(&abs[..n]) {
            break i;
        }
        if n == 0 {
            return None;
        }
        n -= 1;
    };
    let Some(item) = abs.get(n) else { return Some(file) };
    let m = &mods[file];
    let child = m.reexports.get(item).cloned().or_else(|| {
        if m.items.contains(item) {
            return None;
        }
        m.globs
            .iter()
            .find(|g| {
                index(&[&m.path[..], &[(*g).clone()]].concat())
                    .is_some_and(|c| mods[c].items.contains(item) || mods[c].reexports.contains_key(item))
            })
            .cloned()
    });
    match child {
        Some(c) => {
            let mut next = m.path.clone();
            next.push(c);
            next.extend(abs[n..].iter().cloned());
            resolve(mods, &next).or(Some(file))
        }
        None => Some(file),
    }
}

/// Turns a path as written in module `here` into an absolute one, or None for another crate.
fn absolute(here: &ModFile, p: &[String], in_use: bool) -> Option<Vec<String>> {
    let first = p.first()?;
    match first.as_str() {
        "crate" => Some(p[1..].to_vec()),
        "super" | "self" => {
            let mut base = here.path.clone();
            let mut rest = p;
            while let Some(s) = rest.first() {
                match s.as_str() {
                    "super" => {
                        base.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                rest = &rest[1..];
            }
            base.extend(rest.iter().cloned());
            Some(base)
        }
        // A 2018-style relative use of a child module (`use child::Item` in a mod.rs).
        name if in_use && here.children.contains(name) => Some([&here.path[..], p].concat()),
        _ => None,
    }
}

/// Edges between files: (from, to) -> an example path that makes it.
fn edges(mods: &[ModFile]) -> BTreeMap<(usize, usize), String> {
    let mut out = BTreeMap::new();
    for (i, m) in mods.iter().enumerate() {
        let mut paths = use_paths(&m.code);
        let uses: BTreeSet<Vec<String>> = paths.iter().map(|(_, p)| p.clone()).collect();
        paths.extend(inline_paths(&m.code).into_iter().filter(|p| !uses.contains(p)).map(|p| (false, p)));
        for (is_pub, p) in paths {
            let in_use = uses.contains(&p);
            let Some(abs) = absolute(m, &p, in_use) else { continue };
            let Some(j) = resolve(mods, &abs) else { continue };
            let into_own_child = mods[j].path.len() > m.path.len() && mods[j].path.starts_with(&m.path);
            if j == i || is_pub && into_own_child {
                continue; // itself, or a re-export of its own subtree
            }
            out.entry((i, j)).or_insert_with(|| p.join("::"));
        }
    }
    out
}

/// Strongly connected components with two or more files (Tarjan).
fn cycles(n: usize, edges: &BTreeMap<(usize, usize), String>) -> Vec<Vec<usize>> {
    let mut adj = vec![Vec::new(); n];
    for &(a, b) in edges.keys() {
        adj[a].push(b);
    }
    struct St {
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(v: usize, adj: &[Vec<usize>], s: &mut St) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on[v] = true;
        for &w in &adj[v] {
            match s.index[w] {
                None => {
                    visit(w, adj, s);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on[w] => s.low[v] = s.low[v].min(iw),
                _ => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on[w] = false;
                comp.push(w);
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s =
        St { index: vec![None; n], low: vec![0; n], on: vec![false; n], stack: Vec::new(), next: 0, out: Vec::new() };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(v, &adj, &mut s);
        }
    }
    s.out
}

/// The circles of one crate, each as lines "a -> b (via path)".
fn circles(krate: &CrateRoot) -> Vec<String> {
    let mods = load(krate);
    let edges = edges(&mods);
    let name = |i: usize| if mods[i].path.is_empty() { "crate".to_string() } else { mods[i].path.join("::") };
    cycles(mods.len(), &edges)
        .into_iter()
        .map(|comp| {
            let mut lines = Vec::new();
            for (&(a, b), via) in &edges {
                if comp.contains(&a) && comp.contains(&b) {
                    lines.push(format!("  {} -> {} (via {via})", name(a), name(b)));
                }
            }
            format!(
                "circle among {}:\n{}",
                comp.iter().map(|&i| name(i)).collect::<Vec<_>>().join(", "),
                lines.join("\n")
            )
        })
        .collect()
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The crates of this package: the library, and each binary that is a directory of modules.
fn crates() -> Vec<CrateRoot> {
    let src = manifest_dir().join("src");
    let mut out = vec![CrateRoot { dir: src.clone(), root: src.join("lib.rs") }];
    if let Ok(bins) = std::fs::read_dir(src.join("bin")) {
        for b in bins.flatten().map(|e| e.path()).filter(|p| p.join("main.rs").is_file()) {
            out.push(CrateRoot { root: b.join("main.rs"), dir: b });
        }
    }
    out
}

#[test]
fn no_module_of_src_imports_a_module_that_imports_it_back() {
    let mut found = Vec::new();
    for krate in crates() {
        let mods = load(&krate);
        assert!(mods.len() > 1 || krate.dir.ends_with("bin"), "read no modules under {}", krate.dir.display());
        found.extend(circles(&krate));
    }
    assert!(found.is_empty(), "import circles in src/ (issue 13 item 4):\n{}", found.join("\n"));
}

#[test]
fn the_checker_finds_a_circle_through_a_reexport_and_a_grouped_use() {
    let dir = std::env::temp_dir().join(format!("shmflow-cycles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("top")).expect("temp dir");
    let write = |p: &str, s: &str| std::fs::write(dir.join(p), s).expect("write");
    write("lib.rs", "pub mod top;\npub mod other;\n");
    write("top/mod.rs", "mod a;\nmod b;\npub use a::Alpha;\npub use b::*;\n");
    // a reaches b through the parent's glob re-export, b reaches a with a grouped use and a
    // comment that must not count.
    write("top/a.rs", "pub struct Alpha;\nfn f() -> crate::top::Beta { todo!() }\n");
    write(
        "top/b.rs",
        "// use crate::other::Nothing;\nuse crate::{other::Gamma, top::{Alpha as A}};\npub struct Beta;\n",
    );
    write("other.rs", "/* crate::top::Alpha */ pub struct Gamma; const S: &str = \"crate::top::Beta\";\n");
    let found = circles(&CrateRoot { dir: dir.clone(), root: dir.join("lib.rs") });
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("top::a -> top::b") && found[0].contains("top::b -> top::a"), "{}", found[0]);
    assert!(!found[0].contains("other"), "comments and strings are not references: {}", found[0]);
}
