//! Holds the code to the architecture the README describes.
//!
//! Reads every `src/` file, collects which top-level modules each top-level module names
//! (`use crate::…`, `crate::…` paths, `super::` paths that climb to the crate root), and fails
//! on an arrow the README's "Architecture" table does not allow, on a module the table does not
//! list, and on any import cycle between top-level modules. The table is the single statement of
//! the rule: changing what a module may use means changing the README.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The top-level modules declared in `src/lib.rs`.
fn top_level_modules() -> BTreeSet<String> {
    let lib = fs::read_to_string(root().join("src/lib.rs")).unwrap();
    lib.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').trim().to_owned())
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Source without comments (a comment may name a module without using it).
fn strip_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("/*").into_iter().chain(rest.find("//")).min() {
        out.push_str(&rest[..start]);
        rest = if rest[start..].starts_with("//") {
            match rest[start..].find('\n') {
                Some(end) => &rest[start + end..],
                None => "",
            }
        } else {
            match rest[start..].find("*/") {
                Some(end) => &rest[start + end + 2..],
                None => "",
            }
        };
    }
    out.push_str(rest);
    out
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The identifiers at the start of each path in a `use` tree such as `{a::b, c, d::{e, f}}`:
/// only the first level names modules of the crate root.
fn first_level_names(tree: &str) -> Vec<String> {
    let inner = &tree[1..tree.len().saturating_sub(1).max(1)];
    let mut items = vec![String::new()];
    let mut depth = 0;
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(String::new());
                continue;
            }
            _ => {}
        }
        items.last_mut().unwrap().push(c);
    }
    items
        .iter()
        .map(|item| {
            item.trim()
                .chars()
                .take_while(|c| is_ident_char(*c))
                .collect()
        })
        .filter(|name: &String| !name.is_empty())
        .collect()
}

/// The crate-root modules a piece of source names, given how deep its module sits (`src/a.rs`
/// and `src/a/mod.rs` are 1, `src/a/b.rs` is 2): `super::` climbing that many levels reaches the
/// crate root.
fn named_modules(source: &str, depth: usize) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut roots = vec!["crate::".to_owned()];
    roots.push("super::".repeat(depth));
    for root in roots {
        let mut from = 0;
        while let Some(at) = source[from..].find(&root) {
            let start = from + at;
            from = start + root.len();
            let preceded_by_ident = source[..start].chars().next_back().is_some_and(|c| {
                is_ident_char(c) || c == ':' // `super::super::` inside a longer chain
            });
            if preceded_by_ident && root != "crate::" {
                continue;
            }
            let rest = &source[from..];
            if rest.starts_with('{') {
                let end = matching_brace(rest);
                found.extend(first_level_names(&rest[..end]));
            } else {
                let name: String = rest.chars().take_while(|c| is_ident_char(*c)).collect();
                if !name.is_empty() && name != "super" {
                    found.insert(name);
                }
            }
        }
    }
    found
}

fn matching_brace(text: &str) -> usize {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    text.len()
}

/// The graph of arrows between top-level modules found in `src/`.
fn import_graph(modules: &BTreeSet<String>) -> Graph {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let parts: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
            .collect();
        if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
            continue;
        }
        let owner = parts[0].clone();
        let depth = parts.len() - usize::from(parts.last().is_some_and(|p| p == "mod"));
        let source = strip_comments(&fs::read_to_string(&file).unwrap());
        for name in named_modules(&source, depth) {
            if modules.contains(&name) && name != owner {
                graph.get_mut(&owner).unwrap().insert(name);
            }
        }
    }
    graph
}

/// The README's "Architecture" table: module → the modules it may use.
fn allowed_by_readme() -> Graph {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Architecture")
        .nth(1)
        .expect("README.md has an \"## Architecture\" section");
    let section = section.split("\n## ").next().unwrap();
    let mut allowed = Graph::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let module = cells[0].trim_matches('`').to_owned();
        let may_use = cells
            .get(2)
            .expect("columns: module | what it is | may use | never uses")
            .split(',')
            .map(|m| m.trim().trim_matches('`').to_owned())
            .filter(|m| !m.is_empty() && m != "—" && m != "nothing")
            .collect();
        allowed.insert(module, may_use);
    }
    allowed
}

/// A cycle in `graph`, if there is one, as the list of modules around it.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn top_level_modules_follow_the_readme_and_have_no_cycle() {
    let modules = top_level_modules();
    let graph = import_graph(&modules);
    println!("top-level modules and what each imports:");
    for (module, imports) in &graph {
        let list: Vec<&str> = imports.iter().map(String::as_str).collect();
        println!("  {module} -> {}", list.join(", "));
    }

    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between top-level modules: {}",
            cycle.join(" -> ")
        );
    }
    let allowed = allowed_by_readme();
    let mut problems = Vec::new();
    for module in &modules {
        if !allowed.contains_key(module) {
            problems.push(format!("{module}: not in the README's architecture table"));
        }
    }
    for (module, imports) in &graph {
        let Some(may_use) = allowed.get(module) else {
            continue;
        };
        for import in imports.difference(may_use) {
            problems.push(format!(
                "{module} uses {import}, which the README's architecture table does not allow"
            ));
        }
    }
    for module in allowed.keys() {
        if !modules.contains(module) {
            problems.push(format!(
                "the README lists {module}, which src/lib.rs does not declare"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The rule itself must be acyclic, or a future arrow could close a loop it allows.
    assert_eq!(
        find_cycle(&allowed),
        None,
        "the README's table allows a cycle"
    );
}

#[test]
fn the_scanner_sees_every_form_of_import() {
    let source = strip_comments(
        "use crate::{alpha::X, beta, gamma::{self, Y}};\n\
         // crate::commented\n\
         /* crate::blocked */\n\
         fn f() { crate::delta::g(); super::epsilon::h(); super::super::zeta::i(); }",
    );
    let at_depth_one = named_modules(&source, 1);
    let expected: BTreeSet<String> = ["alpha", "beta", "gamma", "delta", "epsilon"]
        .map(String::from)
        .into();
    assert_eq!(at_depth_one, expected);
    let at_depth_two = named_modules(&source, 2);
    assert!(at_depth_two.contains("zeta") && !at_depth_two.contains("epsilon"));

    let mut cyclic = Graph::new();
    cyclic.insert("a".into(), ["b".to_owned()].into());
    cyclic.insert("b".into(), ["a".to_owned()].into());
    assert_eq!(find_cycle(&cyclic).unwrap(), vec!["a", "b", "a"]);
}
