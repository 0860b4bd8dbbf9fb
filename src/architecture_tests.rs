//! The architecture invariants that ARCHITECTURE.md states, checked on the source text.
//!
//! A layering kept by goodwill decays one convenient import at a time; rust-analyzer keeps
//! its invariants with the crate graph. fieldtrack is one crate, so this test derives the
//! module graph itself: it reads every `.rs` file under `src/`, drops comments, literals and
//! test code (`#[cfg(test)]` items and the files they declare, `*_tests.rs`, `fakes.rs`,
//! `simulation.rs`: test code may reach anywhere), and resolves every `crate::`, `super::`
//! and `self::` path, in `use` trees and in code, to the module it names.
//!
//! Parsed by a small hand-written lexer rather than `syn`: paths are all it needs, the
//! lexer is a page, and the checker's own tests below pin its corners (comments, raw
//! strings, lifetimes, nested `use` groups, `super`).
//!
//! Each failure names the file, the line, what it uses and the rule it breaks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

/// A module path below the crate root: `["reconcile", "attempt"]`; the root is `[]`.
type Module = Vec<String>;

/// One source file, named by its path under `src/`.
struct SourceFile {
    rel: String,
    text: String,
}

/// A path a file names outside comments and test code.
#[derive(Debug, Clone)]
struct Reference {
    /// The module whose file holds the reference.
    from: Module,
    file: String,
    line: usize,
    /// The path as written (`crate`, `super`, `self` kept), `use` groups expanded.
    path: Vec<String>,
    /// The crate module the path lands in, for a `crate::`/`super::`/`self::` path.
    target: Option<Module>,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "src/{}:{}: uses {}",
            self.file,
            self.line,
            self.path.join("::")
        )
    }
}

/// The crate as the checker sees it: every path its non-test code names, resolved.
struct Tree {
    references: Vec<Reference>,
}

// --- lexing -------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
    /// A string, char or number literal: its content is not code.
    Literal,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_continue(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Splits Rust source into identifiers, `::` and punctuation; comments (doc comments too)
/// vanish and literals become [`Tok::Literal`], so neither can fake an import.
fn lex(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    // Moves past chars[i..end], counting the newlines crossed.
    let advance = |i: &mut usize, end: usize, line: &mut usize| {
        let end = end.min(chars.len());
        *line += chars[*i..end].iter().filter(|&&c| c == '\n').count();
        *i = end;
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            let end = i + 1;
            advance(&mut i, end, &mut line);
        } else if c == '/' && next == Some('/') {
            let end = (i..chars.len())
                .find(|&j| chars[j] == '\n')
                .unwrap_or(chars.len());
            advance(&mut i, end, &mut line);
        } else if c == '/' && next == Some('*') {
            // Block comments nest in Rust.
            let mut depth = 0;
            let mut j = i;
            while j < chars.len() {
                if chars[j] == '/' && chars.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if chars[j] == '*' && chars.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            advance(&mut i, j, &mut line);
        } else if let Some(end) = raw_string_end(&chars, i) {
            out.push(Token {
                tok: Tok::Literal,
                line,
            });
            advance(&mut i, end, &mut line);
        } else if c == '"' || ((c == 'b' || c == 'c') && next == Some('"')) {
            let mut j = if c == '"' { i + 1 } else { i + 2 };
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            out.push(Token {
                tok: Tok::Literal,
                line,
            });
            let end = j + 1;
            advance(&mut i, end, &mut line);
        } else if c == '\'' || (c == 'b' && next == Some('\'')) {
            let q = if c == '\'' { i } else { i + 1 };
            let after = chars.get(q + 1).copied();
            if after == Some('\\') {
                // An escaped char literal: '\n', '\'', '\u{1F600}'.
                let mut j = q + 3;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                out.push(Token {
                    tok: Tok::Literal,
                    line,
                });
                let end = j + 1;
                advance(&mut i, end, &mut line);
            } else if chars.get(q + 2) == Some(&'\'') {
                out.push(Token {
                    tok: Tok::Literal,
                    line,
                });
                let end = q + 3;
                advance(&mut i, end, &mut line);
            } else {
                // A lifetime or a label: 'a, 'static.
                let mut j = q + 1;
                while j < chars.len() && is_ident_continue(chars[j]) {
                    j += 1;
                }
                advance(&mut i, j, &mut line);
            }
        } else if c.is_ascii_digit() {
            let mut j = i;
            while j < chars.len() && is_ident_continue(chars[j]) {
                j += 1;
            }
            out.push(Token {
                tok: Tok::Literal,
                line,
            });
            advance(&mut i, j, &mut line);
        } else if is_ident_start(c) {
            // r#type is the identifier `type`.
            let start = if c == 'r' && next == Some('#') {
                i + 2
            } else {
                i
            };
            let mut j = start;
            while j < chars.len() && is_ident_continue(chars[j]) {
                j += 1;
            }
            let name: String = chars[start..j].iter().collect();
            out.push(Token {
                tok: Tok::Ident(name),
                line,
            });
            advance(&mut i, j, &mut line);
        } else if c == ':' && next == Some(':') {
            out.push(Token {
                tok: Tok::PathSep,
                line,
            });
            let end = i + 2;
            advance(&mut i, end, &mut line);
        } else {
            out.push(Token {
                tok: Tok::Punct(c),
                line,
            });
            let end = i + 1;
            advance(&mut i, end, &mut line);
        }
    }
    out
}

/// Where a raw string starting at `i` (`r"…"`, `r#"…"#`, `br##"…"##`) ends, if one does.
fn raw_string_end(chars: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if chars.get(j) == Some(&'b') || chars.get(j) == Some(&'c') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while chars.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if chars.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < chars.len() {
        if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(chars.len())
}

// --- test code ----------------------------------------------------------------------------

fn ident(t: &Token) -> Option<&str> {
    match &t.tok {
        Tok::Ident(s) => Some(s),
        _ => None,
    }
}

fn punct(t: &Token, c: char) -> bool {
    t.tok == Tok::Punct(c)
}

/// The index just past the bracketed group opening at `open` (`[`, `(` or `{`).
fn group_end(tokens: &[Token], open: usize) -> usize {
    let mut depth = 0usize;
    for (j, t) in tokens.iter().enumerate().skip(open) {
        match t.tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
    }
    tokens.len()
}

/// Whether an attribute's tokens (between `#[` and `]`) make the item test-only:
/// `cfg(test)`, `cfg(all(test, …))`, but not `cfg(not(test))`.
fn is_cfg_test(attr: &[Token]) -> bool {
    attr.first().and_then(ident) == Some("cfg")
        && attr.iter().any(|t| ident(t) == Some("test"))
        && !attr.iter().any(|t| ident(t) == Some("not"))
}

/// The tokens with every `#[cfg(test)]` item taken out, and the names of the modules such
/// items declare as files (`#[cfg(test)] mod fakes;`), which are test code too. `None` when
/// the file itself is test-only (`#![cfg(test)]`).
fn strip_test_items(tokens: &[Token]) -> Option<(Vec<Token>, Vec<String>)> {
    let mut kept = Vec::new();
    let mut test_modules = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let inner = tokens.get(i + 1).is_some_and(|t| punct(t, '!'));
        let open = if inner { i + 2 } else { i + 1 };
        if !(punct(&tokens[i], '#') && tokens.get(open).is_some_and(|t| punct(t, '['))) {
            kept.push(tokens[i].clone());
            i += 1;
            continue;
        }
        let end = group_end(tokens, open);
        let attr = &tokens[open + 1..end.saturating_sub(1).max(open + 1)];
        if !is_cfg_test(attr) {
            kept.extend_from_slice(&tokens[i..end]);
            i = end;
            continue;
        }
        if inner {
            return None;
        }
        // Skip the item: its further attributes, then up to a `;` or the end of its first
        // top-level `{…}` block.
        let mut j = end;
        while j < tokens.len() && punct(&tokens[j], '#') {
            j = tokens
                .get(j + 1)
                .filter(|t| punct(t, '['))
                .map_or(j + 1, |_| group_end(tokens, j + 1));
        }
        let item_start = j;
        while j < tokens.len() {
            match tokens[j].tok {
                Tok::Punct(';') => {
                    j += 1;
                    break;
                }
                Tok::Punct('{') => {
                    j = group_end(tokens, j);
                    break;
                }
                // The end of what holds the item (a field, an arm): not ours to take.
                Tok::Punct('}' | ')' | ']') => break,
                Tok::Punct('(' | '[') => j = group_end(tokens, j),
                _ => j += 1,
            }
        }
        let item = &tokens[item_start..j];
        if let Some(k) = item.iter().position(|t| ident(t) == Some("mod")) {
            if item.last().is_some_and(|t| punct(t, ';')) {
                if let Some(name) = item.get(k + 1).and_then(ident) {
                    test_modules.push(name.to_string());
                }
            }
        }
        i = j;
    }
    Some((kept, test_modules))
}

// --- paths --------------------------------------------------------------------------------

/// Every path the tokens name: the leaves of each `use` tree, and each `a::b…` in code.
/// A lone identifier is not a path (it names a local item, a field, a variable).
fn paths(tokens: &[Token]) -> Vec<(Vec<String>, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if ident(&tokens[i]) == Some("use") {
            i = use_tree(tokens, i + 1, &[], &mut out);
            continue;
        }
        // `a::b` continues a path; a leading `::std::fs` starts one.
        let preceded_by_sep = i > 1
            && tokens[i - 1].tok == Tok::PathSep
            && !matches!(tokens[i - 2].tok, Tok::Punct(_));
        if ident(&tokens[i]).is_some() && !preceded_by_sep {
            let line = tokens[i].line;
            let mut segs = vec![ident(&tokens[i]).unwrap_or_default().to_string()];
            let mut j = i + 1;
            while j + 1 < tokens.len() && tokens[j].tok == Tok::PathSep {
                match ident(&tokens[j + 1]) {
                    Some(s) => segs.push(s.to_string()),
                    None => break, // a turbofish: `collect::<Vec<_>>`
                }
                j += 2;
            }
            if segs.len() > 1 {
                out.push((segs, line));
            }
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

/// Parses one `use` tree from `i` under `prefix`, pushing its leaves; returns the index just
/// past it (past the `;` at the top level).
fn use_tree(
    tokens: &[Token],
    mut i: usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, usize)>,
) -> usize {
    let mut segs = prefix.to_vec();
    let mut itself = false;
    let line = tokens.get(i).map_or(0, |t| t.line);
    loop {
        let Some(t) = tokens.get(i) else { return i };
        match &t.tok {
            Tok::PathSep => i += 1,
            Tok::Ident(s) if s == "as" => {
                // `as name`: the alias is not part of the path.
                i += 2;
            }
            Tok::Ident(s) => {
                if s == "self" && !segs.is_empty() {
                    // `a::{self, B}`: the `self` leaf is `a` itself.
                    itself = true;
                } else {
                    segs.push(s.clone());
                }
                i += 1;
            }
            Tok::Punct('*') => {
                i += 1;
            }
            Tok::Punct('{') => {
                i += 1;
                loop {
                    match tokens.get(i) {
                        None => return i,
                        Some(t) if punct(t, '}') => {
                            i += 1;
                            break;
                        }
                        Some(t) if punct(t, ',') => i += 1,
                        Some(_) => i = use_tree(tokens, i, &segs, out),
                    }
                }
                // A group is a tree's last part: its prefix is a leaf only through its
                // members (`self` among them).
                return skip_to_tree_end(tokens, i);
            }
            _ => {
                if segs.len() > prefix.len() || itself {
                    out.push((segs, line));
                }
                return skip_to_tree_end(tokens, i);
            }
        }
    }
}

/// A tree ends at `,` or `}` (inside a group: left for the group) or `;` (consumed).
fn skip_to_tree_end(tokens: &[Token], i: usize) -> usize {
    match tokens.get(i) {
        Some(t) if punct(t, ';') => i + 1,
        _ => i,
    }
}

/// The module a file under `src/` is: `reconcile/attempt.rs` is `reconcile::attempt`,
/// `plan/mod.rs` is `plan`, `lib.rs` and `main.rs` are the root.
fn module_of(rel: &str) -> Module {
    let stem = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut parts: Vec<String> = stem.split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts
}

/// Test code by its file name, whatever declares it.
fn is_test_file(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    name.ends_with("_tests.rs") || name == "fakes.rs" || name == "simulation.rs"
}

fn starts_with(module: &[String], prefix: &[&str]) -> bool {
    module.len() >= prefix.len() && module.iter().zip(prefix).all(|(a, b)| a == b)
}

impl Tree {
    fn new(files: &[SourceFile]) -> Tree {
        let mut modules: BTreeSet<Module> = BTreeSet::new();
        let mut test_modules: BTreeSet<Module> = BTreeSet::new();
        let mut code: Vec<(&SourceFile, Module, Vec<Token>)> = Vec::new();
        for file in files {
            let module = module_of(&file.rel);
            // A folder is a module even in a tree that lacks its mod.rs (a fake one).
            for k in 0..=module.len() {
                modules.insert(module[..k].to_vec());
            }
            if is_test_file(&file.rel) {
                test_modules.insert(module);
                continue;
            }
            match strip_test_items(&lex(&file.text)) {
                None => {
                    test_modules.insert(module);
                }
                Some((tokens, declared)) => {
                    for name in declared {
                        let mut m = module.clone();
                        m.push(name);
                        test_modules.insert(m);
                    }
                    code.push((file, module, tokens));
                }
            }
        }
        let mut references = Vec::new();
        for (file, module, tokens) in code {
            if test_modules
                .iter()
                .any(|t| starts_with(&module, &as_strs(t)))
            {
                continue;
            }
            for (path, line) in paths(&tokens) {
                let target = resolve(&module, &path, &modules);
                references.push(Reference {
                    from: module.clone(),
                    file: file.rel.clone(),
                    line,
                    path,
                    target,
                });
            }
        }
        Tree { references }
    }

    /// The crate's own `src/`, as it is on disk.
    fn of_this_crate() -> Tree {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        read_dir(&root, &root, &mut files);
        assert!(
            files.len() > 20,
            "found only {} files under {}",
            files.len(),
            root.display()
        );
        Tree::new(&files)
    }

    /// References that land in another module of the crate.
    fn imports(&self) -> impl Iterator<Item = (&Reference, &Module)> {
        self.references
            .iter()
            .filter_map(|r| r.target.as_ref().map(|t| (r, t)))
            .filter(|(r, t)| &r.from != *t)
    }

    /// Every import from a module under `from` into a module under one of `to`, each as a
    /// line naming the file, the line, the path and `rule`.
    fn forbidden(&self, from: &[&str], to: &[&[&str]], rule: &str) -> Vec<String> {
        self.imports()
            .filter(|(r, t)| starts_with(&r.from, from) && to.iter().any(|p| starts_with(t, p)))
            .map(|(r, _)| format!("{r}: {rule}"))
            .collect()
    }

    /// The cycles between sibling modules: each import `a::x -> a::y::z` counts as
    /// `x -> y` under their lowest common parent `a`; imports between a module and its own
    /// parent or child are not edges (a parent re-exporting its child's items is layout).
    fn cycles(&self) -> Vec<String> {
        // parent -> (sibling from -> sibling to -> the first reference that made the edge)
        let mut lifted: BTreeMap<Module, BTreeMap<String, BTreeMap<String, &Reference>>> =
            BTreeMap::new();
        for (r, t) in self.imports() {
            let a = &r.from;
            let k = a.iter().zip(t.iter()).take_while(|(x, y)| x == y).count();
            if k == a.len() || k == t.len() {
                continue;
            }
            lifted
                .entry(a[..k].to_vec())
                .or_default()
                .entry(a[k].clone())
                .or_default()
                .entry(t[k].clone())
                .or_insert(r);
        }
        let mut found = Vec::new();
        for (parent, graph) in &lifted {
            let parent_name = if parent.is_empty() {
                "crate".to_string()
            } else {
                parent.join("::")
            };
            for component in strongly_connected(graph) {
                let cycle = cycle_in(graph, &component);
                let mut text = format!(
                    "cycle under {parent_name}: {} ({NO_CYCLE})",
                    cycle.join(" -> ")
                );
                if component.len() + 1 > cycle.len() {
                    // One cycle shown; the others run through these modules too.
                    text.push_str(&format!(
                        "\n    (modules caught in cycles together: {})",
                        component.join(", ")
                    ));
                }
                for pair in cycle.windows(2) {
                    let r = graph[&pair[0]][&pair[1]];
                    text.push_str(&format!("\n    {} -> {}: {r}", pair[0], pair[1]));
                }
                found.push(text);
            }
        }
        found
    }
}

fn as_strs(m: &[String]) -> Vec<&str> {
    m.iter().map(String::as_str).collect()
}

/// The crate module a path lands in: the longest prefix of it that is a module. Paths that
/// start elsewhere (`std::`, another crate, a local item) are `None`.
fn resolve(from: &[String], path: &[String], modules: &BTreeSet<Module>) -> Option<Module> {
    let (mut base, rest): (Module, &[String]) = match path.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &path[1..]),
        Some("self") => (from.to_vec(), &path[1..]),
        Some("super") => {
            let mut base = from.to_vec();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            (base, rest)
        }
        _ => return None,
    };
    for seg in rest {
        let mut next = base.clone();
        next.push(seg.clone());
        if !modules.contains(&next) {
            break;
        }
        base = next;
    }
    Some(base)
}

fn read_dir(root: &Path, dir: &Path, out: &mut Vec<SourceFile>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            read_dir(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .expect("under src/")
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push(SourceFile { rel, text });
        }
    }
}

/// Tarjan's strongly connected components with more than one member (a module cannot
/// import itself: such references are dropped before).
fn strongly_connected<V>(graph: &BTreeMap<String, BTreeMap<String, V>>) -> Vec<Vec<String>> {
    struct Search<'g, V> {
        graph: &'g BTreeMap<String, BTreeMap<String, V>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g, V> Search<'g, V> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flat_map(|m| m.keys()) {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut search = Search {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !search.index.contains_key(v.as_str()) {
            search.visit(v);
        }
    }
    search.found
}

/// One cycle through the component's first member, as `[a, b, …, a]` (a shortest one, by
/// a breadth-first search inside the component).
fn cycle_in<V>(graph: &BTreeMap<String, BTreeMap<String, V>>, component: &[String]) -> Vec<String> {
    let start = &component[0];
    let inside: BTreeSet<&String> = component.iter().collect();
    let mut came_from: BTreeMap<&String, &String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in graph.get(v).into_iter().flat_map(|m| m.keys()) {
            if w == start {
                let mut cycle = vec![start.clone(), v.clone()];
                let mut at = v;
                while at != start {
                    at = came_from[at];
                    cycle.push(at.clone());
                }
                cycle.reverse();
                // [start, …, v, start] after the reversal of [start, v, …, start].
                return cycle;
            }
            if inside.contains(w) && !came_from.contains_key(w) && w != start {
                came_from.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    component.to_vec()
}

// --- the rules ----------------------------------------------------------------------------

const NO_CYCLE: &str = "no cycle between sibling modules";
const MODEL_RULE: &str = "model imports nothing of the crate (it is the ground floor)";
const OBSERVE_RULE: &str = "observe imports no adapter (apply), nor reconcile, daemon, cli";
const PLAN_RULE: &str = "plan does no I/O: no apply, reconcile, daemon, cli, state writers, \
                         std::fs/process/net, tokio, reqwest, bollard, notify";
const ADAPTERS_RULE: &str =
    "only reconcile, daemon and cli::check (and main/lib) import the adapters (apply)";
const CONFIG_RULE: &str =
    "config imports nothing above it (observe, plan, apply, reconcile, daemon, cli)";

/// The modules of `state` whose whole job is writing or opening files.
const STATE_WRITER_MODULES: &[&[&str]] = &[
    &["state", "atomic"],
    &["state", "writer"],
    &["state", "lock"],
    &["state", "file"],
    &["state", "by_hand"],
    &["state", "public"],
];

/// The functions of the other `state` modules that write (their types plan may name).
const STATE_WRITER_ITEMS: &[&str] = &[
    "append",
    "record",
    "prepend_list",
    "save",
    "mark_invalid",
    "write_atomic",
    "write_atomic_with",
    "fsync_dir",
    "StatusWriter",
];

/// The crates and std modules that do I/O.
const IO_PATHS: &[&[&str]] = &[
    &["std", "fs"],
    &["std", "process"],
    &["std", "net"],
    &["tokio"],
    &["reqwest"],
    &["bollard"],
    &["notify"],
];

fn model_violations(tree: &Tree) -> Vec<String> {
    tree.imports()
        .filter(|(r, t)| starts_with(&r.from, &["model"]) && !starts_with(t, &["model"]))
        .map(|(r, _)| format!("{r}: {MODEL_RULE}"))
        .collect()
}

fn observe_violations(tree: &Tree) -> Vec<String> {
    tree.forbidden(
        &["observe"],
        &[&["apply"], &["reconcile"], &["daemon"], &["cli"]],
        OBSERVE_RULE,
    )
}

fn plan_violations(tree: &Tree) -> Vec<String> {
    let mut found = tree.forbidden(
        &["plan"],
        &[&["apply"], &["reconcile"], &["daemon"], &["cli"]],
        PLAN_RULE,
    );
    found.extend(tree.forbidden(&["plan"], STATE_WRITER_MODULES, PLAN_RULE));
    for r in &tree.references {
        if !starts_with(&r.from, &["plan"]) {
            continue;
        }
        let writes_state = r
            .target
            .as_ref()
            .is_some_and(|t| starts_with(t, &["state"]))
            && r.path
                .iter()
                .any(|s| STATE_WRITER_ITEMS.contains(&s.as_str()));
        let path = as_strs(&r.path);
        let io = IO_PATHS.iter().any(|p| starts_with_strs(&path, p));
        if writes_state || io {
            found.push(format!("{r}: {PLAN_RULE}"));
        }
    }
    found.sort();
    found.dedup();
    found
}

fn starts_with_strs(path: &[&str], prefix: &[&str]) -> bool {
    path.len() >= prefix.len() && path.iter().zip(prefix).all(|(a, b)| a == b)
}

fn adapter_violations(tree: &Tree) -> Vec<String> {
    let allowed: &[&[&str]] = &[&["apply"], &["reconcile"], &["daemon"], &["cli", "check"]];
    tree.imports()
        .filter(|(r, t)| {
            starts_with(t, &["apply"])
                && !r.from.is_empty()
                && !allowed.iter().any(|p| starts_with(&r.from, p))
        })
        .map(|(r, _)| format!("{r}: {ADAPTERS_RULE}"))
        .collect()
}

fn config_violations(tree: &Tree) -> Vec<String> {
    tree.forbidden(
        &["config"],
        &[
            &["observe"],
            &["plan"],
            &["apply"],
            &["reconcile"],
            &["daemon"],
            &["cli"],
        ],
        CONFIG_RULE,
    )
}

fn assert_none(rule: &str, violations: Vec<String>) {
    assert!(
        violations.is_empty(),
        "architecture invariant broken ({rule}):\n{}",
        violations.join("\n")
    );
}

// --- the invariants of this crate -----------------------------------------------------------

#[test]
fn no_cycle_between_sibling_modules_anywhere_in_src() {
    assert_none(NO_CYCLE, Tree::of_this_crate().cycles());
}

#[test]
fn model_imports_nothing_of_the_crate() {
    assert_none(MODEL_RULE, model_violations(&Tree::of_this_crate()));
}

#[test]
fn observe_imports_no_adapter_nor_reconcile_daemon_cli() {
    assert_none(OBSERVE_RULE, observe_violations(&Tree::of_this_crate()));
}

#[test]
fn plan_does_no_io() {
    assert_none(PLAN_RULE, plan_violations(&Tree::of_this_crate()));
}

#[test]
fn only_reconcile_daemon_and_cli_check_import_the_adapters() {
    assert_none(ADAPTERS_RULE, adapter_violations(&Tree::of_this_crate()));
}

#[test]
fn config_imports_nothing_above_it() {
    assert_none(CONFIG_RULE, config_violations(&Tree::of_this_crate()));
}

// --- the checker itself, on fake trees --------------------------------------------------------

fn fake(files: &[(&str, &str)]) -> Tree {
    let files: Vec<SourceFile> = files
        .iter()
        .map(|(rel, text)| SourceFile {
            rel: rel.to_string(),
            text: text.to_string(),
        })
        .collect();
    Tree::new(&files)
}

fn targets(tree: &Tree) -> Vec<String> {
    tree.imports()
        .map(|(r, t)| format!("{} -> {}", r.from.join("::"), t.join("::")))
        .collect()
}

#[test]
fn a_two_module_cycle_is_found_with_its_files_and_lines() {
    let tree = fake(&[
        ("lib.rs", "pub mod a;\npub mod b;\n"),
        ("a.rs", "use crate::b::B;\npub struct A;\n"),
        (
            "b.rs",
            "pub struct B;\n\nfn f() -> crate::a::A { crate::a::A }\n",
        ),
    ]);
    let cycles = tree.cycles();
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert!(
        cycles[0].starts_with("cycle under crate: a -> b -> a"),
        "{}",
        cycles[0]
    );
    assert!(
        cycles[0].contains("src/a.rs:1: uses crate::b::B"),
        "{}",
        cycles[0]
    );
    assert!(
        cycles[0].contains("src/b.rs:3: uses crate::a::A"),
        "{}",
        cycles[0]
    );
}

#[test]
fn a_cycle_between_children_is_lifted_to_their_parents() {
    let tree = fake(&[
        ("apply/mod.rs", "pub mod runtime;"),
        ("apply/runtime/docker.rs", "use crate::observe::Container;"),
        ("observe/mod.rs", "use crate::apply::runtime::Runtime;"),
    ]);
    let cycles = tree.cycles();
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert!(
        cycles[0].contains("apply -> observe -> apply"),
        "{}",
        cycles[0]
    );
}

#[test]
fn a_parent_and_its_child_importing_each_other_is_no_cycle() {
    let tree = fake(&[
        (
            "state/mod.rs",
            "pub use self::status::Status;\nfn f() { crate::state::x::y(); }",
        ),
        ("state/status.rs", "use super::now;"),
        ("state/x.rs", "pub fn y() {}"),
    ]);
    assert_eq!(tree.cycles(), Vec::<String>::new());
}

#[test]
fn a_three_module_cycle_is_printed_in_order() {
    let tree = fake(&[
        ("a.rs", "use crate::b::X;"),
        ("b.rs", "use crate::c::X;"),
        ("c.rs", "use crate::a::X;"),
        ("d.rs", "use crate::a::X;"),
    ]);
    let cycles = tree.cycles();
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert!(cycles[0].contains("a -> b -> c -> a"), "{}", cycles[0]);
}

#[test]
fn comments_doc_comments_and_literals_are_not_imports() {
    let tree = fake(&[
        (
            "model/mod.rs",
            "//! lives in [`crate::apply::runtime`]\n\
             /// see crate::config::Color\n\
             // use crate::plan::Plan;\n\
             /* use crate::cli::X; /* nested */ use crate::daemon::Y; */\n\
             const URL: &str = \"http://crate::state::x /*\";\n\
             const RAW: &str = r#\"use crate::reconcile::Z;\"#;\n\
             const C: char = '\"'; const D: char = '\\'';\n\
             fn f<'a>(x: &'a str) -> &'a str { x }\n\
             pub struct Color;\n",
        ),
        ("apply/mod.rs", ""),
        ("config/mod.rs", ""),
        ("state/mod.rs", ""),
    ]);
    assert_eq!(targets(&tree), Vec::<String>::new());
    assert_eq!(model_violations(&tree), Vec::<String>::new());
}

#[test]
fn code_after_a_tricky_literal_is_still_read() {
    let tree = fake(&[
        (
            "model/mod.rs",
            "const S: &str = r\"/*\"; const C: char = '{';\nuse crate::config::Color;\n",
        ),
        ("config/mod.rs", ""),
    ]);
    let found = model_violations(&tree);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("src/model/mod.rs:2: uses crate::config::Color"),
        "{}",
        found[0]
    );
}

#[test]
fn test_code_is_not_an_import() {
    let tree = fake(&[
        (
            "observe/mod.rs",
            "#[cfg(test)]\nmod tests {\n    use crate::apply::Thing;\n}\n\
             #[cfg(test)]\n#[allow(dead_code)]\nfn helper() { crate::cli::x(); }\n\
             #[cfg(all(test, unix))]\nuse crate::daemon::D;\n\
             #[cfg(test)]\nmod fixtures;\n",
        ),
        ("observe/fixtures.rs", "use crate::apply::Fake;"),
        ("observe/observe_tests.rs", "use crate::reconcile::R;"),
        (
            "reconcile/fakes.rs",
            "use crate::observe::X; use crate::cli::Y;",
        ),
        ("apply/mod.rs", ""),
        ("cli/mod.rs", ""),
        ("daemon/mod.rs", ""),
    ]);
    assert_eq!(targets(&tree), Vec::<String>::new());
}

#[test]
fn cfg_not_test_is_real_code() {
    let tree = fake(&[
        (
            "observe/mod.rs",
            "#[cfg(not(test))]\nuse crate::apply::Thing;",
        ),
        ("apply/mod.rs", ""),
    ]);
    assert_eq!(observe_violations(&tree).len(), 1);
}

#[test]
fn use_groups_and_super_are_resolved() {
    let tree = fake(&[
        ("lib.rs", "pub mod reconcile;"),
        (
            "reconcile/attempt.rs",
            "use super::{error::Kind, backoff::{self, Backoff}};\n\
             use crate::{config::{Color, Config as C}, state::{audit, history::*}};\n\
             use super::super::image::Reference;\n",
        ),
        ("reconcile/error.rs", ""),
        ("reconcile/backoff.rs", ""),
        ("config/mod.rs", ""),
        ("state/audit.rs", ""),
        ("state/history.rs", ""),
        ("image.rs", ""),
    ]);
    assert_eq!(
        targets(&tree),
        vec![
            "reconcile::attempt -> reconcile::error",
            "reconcile::attempt -> reconcile::backoff",
            "reconcile::attempt -> reconcile::backoff",
            "reconcile::attempt -> config",
            "reconcile::attempt -> config",
            "reconcile::attempt -> state::audit",
            "reconcile::attempt -> state::history",
            "reconcile::attempt -> image",
        ]
    );
}

#[test]
fn a_mod_rs_file_is_its_folder_module() {
    assert_eq!(module_of("plan/mod.rs"), vec!["plan"]);
    assert_eq!(
        module_of("reconcile/attempt/canary.rs"),
        vec!["reconcile", "attempt", "canary"]
    );
    assert_eq!(module_of("lib.rs"), Vec::<String>::new());
    assert_eq!(module_of("main.rs"), Vec::<String>::new());
    // super in plan/mod.rs is the crate; in plan/canary.rs it is plan.
    let tree = fake(&[
        ("plan/mod.rs", "use super::image::R;"),
        ("plan/canary.rs", "use super::Plan;"),
        ("image.rs", ""),
    ]);
    assert_eq!(
        targets(&tree),
        vec!["plan -> image", "plan::canary -> plan"]
    );
}

#[test]
fn each_rule_fails_on_a_tree_that_breaks_it() {
    let floors = [
        ("apply/mod.rs", ""),
        ("apply/health.rs", ""),
        ("cli/mod.rs", ""),
        ("cli/check.rs", "use crate::apply::health::HttpProber;"),
        ("reconcile/mod.rs", "use crate::apply::health::HttpProber;"),
        ("daemon/mod.rs", "use crate::apply::health;"),
        ("state/mod.rs", ""),
        ("state/status.rs", ""),
        ("state/atomic.rs", ""),
        ("main.rs", "use fieldtrack::apply::health;"),
        ("lib.rs", "fn f() { crate::apply::health::x(); }"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut files = floors.to_vec();
        files.extend_from_slice(extra);
        fake(&files)
    };
    let clean = with(&[
        ("model/mod.rs", "use std::fmt;"),
        (
            "observe/mod.rs",
            "use crate::model::Color; use crate::state::status::Status;",
        ),
        (
            "plan/mod.rs",
            "use crate::state::status::{SwitchMark, Warm};\nuse std::fmt;",
        ),
        ("config/mod.rs", "use crate::model::Color;"),
    ]);
    assert_eq!(model_violations(&clean), Vec::<String>::new());
    assert_eq!(observe_violations(&clean), Vec::<String>::new());
    assert_eq!(plan_violations(&clean), Vec::<String>::new());
    assert_eq!(adapter_violations(&clean), Vec::<String>::new());
    assert_eq!(config_violations(&clean), Vec::<String>::new());

    let broken = with(&[
        ("model/mod.rs", "use crate::state::status::Status;"),
        (
            "observe/mod.rs",
            "fn f() { let _ = crate::apply::health::probe(); }",
        ),
        (
            "plan/mod.rs",
            "use crate::state::atomic::write_atomic;\n\
             use std::{fs, fmt};\n\
             fn f() { tokio::spawn(async {}); crate::state::status::Status::save(); }\n\
             use crate::reconcile::Pass;",
        ),
        ("cli/deploy.rs", "use crate::apply::health::HttpProber;"),
        ("config/mod.rs", "use crate::plan::Plan;"),
    ]);
    let model = model_violations(&broken);
    assert_eq!(model.len(), 1, "{model:?}");
    assert!(model[0].contains("src/model/mod.rs:1: uses crate::state::status::Status"));
    assert!(model[0].contains(MODEL_RULE));
    assert_eq!(observe_violations(&broken).len(), 1);
    assert!(observe_violations(&broken)[0].contains("src/observe/mod.rs:1"));
    let plan = plan_violations(&broken);
    assert_eq!(plan.len(), 5, "{plan:#?}");
    for expected in [
        "src/plan/mod.rs:1: uses crate::state::atomic::write_atomic",
        "src/plan/mod.rs:2: uses std::fs",
        "src/plan/mod.rs:3: uses tokio::spawn",
        "src/plan/mod.rs:3: uses crate::state::status::Status::save",
        "src/plan/mod.rs:4: uses crate::reconcile::Pass",
    ] {
        assert!(
            plan.iter().any(|v| v.starts_with(expected)),
            "{expected} in {plan:#?}"
        );
    }
    let adapters = adapter_violations(&broken);
    assert_eq!(adapters.len(), 2, "{adapters:#?}");
    assert!(adapters
        .iter()
        .any(|v| v.starts_with("src/cli/deploy.rs:1")));
    assert!(adapters
        .iter()
        .any(|v| v.starts_with("src/observe/mod.rs:1")));
    assert_eq!(config_violations(&broken).len(), 1);
    assert!(config_violations(&broken)[0].contains("src/config/mod.rs:1: uses crate::plan::Plan"));
}
