//! Checks that keep the repository honest, run as ordinary tests.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use xshell::{Shell, cmd};

use crate::project;

/// Every Rust source file opens with a `//!` line saying what it is for.
#[test]
fn every_rust_file_has_a_module_doc() {
    let mut offenders = Vec::new();
    for file in rust_files(&project::root()) {
        let text = fs::read_to_string(&file).unwrap();
        if !text.trim_start().starts_with("//!") {
            offenders.push(file.display().to_string());
        }
    }
    assert!(
        offenders.is_empty(),
        "add a `//!` module doc to:\n{}",
        offenders.join("\n")
    );
}

/// The backend's binary crate only calls the library: a `block_on`, an `async` block or any
/// generic call there compiles the server's futures a second time on every library change
/// (14.7 s of each one-line change before `cli.rs`).
#[test]
fn backend_binary_only_calls_the_library() {
    let main = fs::read_to_string(project::root().join("backend/src/main.rs")).unwrap();
    let code: Vec<&str> = main
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("//"))
        .collect();
    assert_eq!(
        code,
        [
            "fn main() -> std::process::ExitCode {",
            "timemanager_backend::cli::main()",
            "}"
        ],
        "keep `backend/src/main.rs` one call into the library; put the rest in `backend/src/cli.rs`"
    );
}

/// No tracked text file carries the absolute path of the machine it was written on:
/// the checkout's parent directory or the user's home.
#[test]
fn no_machine_paths_in_tracked_files() {
    let root = project::root();
    let sh = Shell::new().unwrap();
    sh.change_dir(&root);
    let mut machine_paths = vec![root.parent().unwrap().display().to_string() + "/"];
    if let Ok(home) = std::env::var("HOME")
        && home.len() > 1
    {
        machine_paths.push(home.trim_end_matches('/').to_owned() + "/");
    }
    let mut offenders = Vec::new();
    for file in tracked_files(&sh) {
        // Binary files (images, lockfiles of other formats) are not text: skip them.
        let Ok(text) = fs::read_to_string(root.join(&file)) else {
            continue;
        };
        for path in &machine_paths {
            if let Some(line) = text.lines().position(|line| line.contains(path.as_str())) {
                offenders.push(format!("{file}:{}: contains `{path}`", line + 1));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "machine paths in tracked files (use paths relative to the repository):\n{}",
        offenders.join("\n")
    );
}

/// The `use crate::` edges between the xtask's top-level modules follow the layering
/// written in ARCHITECTURE.md ("Layers"), and that layering has no cycle.
#[test]
fn module_edges_follow_the_documented_layers() {
    let root = project::root();
    let architecture = fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let layers = documented_layers(&architecture);
    let src = root.join("xtask/src");
    let mut offenders = Vec::new();
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).unwrap();
        let module = top_module(relative);
        if COMMAND_LAYER.contains(&module.as_str()) {
            continue;
        }
        let Some(allowed) = layers.get(&module) else {
            offenders.push(format!(
                "{}: module `{module}` is missing from ARCHITECTURE.md's layers",
                relative.display()
            ));
            continue;
        };
        let is_test_file = file.file_name().is_some_and(|name| name == "tests.rs");
        let text = fs::read_to_string(&file).unwrap();
        for target in crate_paths(&text) {
            let allowed_edge = target == module
                || COMMAND_LAYER.contains(&target.as_str())
                || allowed.contains(&target)
                || (is_test_file && target == "harness");
            if !allowed_edge {
                offenders.push(format!(
                    "{}: `{module}` uses `{target}`, which ARCHITECTURE.md's layers do not allow",
                    relative.display()
                ));
            }
        }
    }
    assert!(offenders.is_empty(), "{}", offenders.join("\n"));
    if let Some(cycle) = find_cycle(&layers) {
        panic!(
            "ARCHITECTURE.md's layers have a cycle: {}",
            cycle.join(" -> ")
        );
    }
}

/// `main` declares every module and `flags` holds the plain data every handler reads:
/// neither is a layer.
const COMMAND_LAYER: &[&str] = &["main", "flags"];

/// Reads the fenced block after the `## Layers` heading: `module -> dep dep …` per line.
fn documented_layers(architecture: &str) -> BTreeMap<String, BTreeSet<String>> {
    let section = architecture
        .split_once("\n## Layers")
        .expect("ARCHITECTURE.md has a `## Layers` section")
        .1;
    let block = section
        .split("```")
        .nth(1)
        .expect("the Layers section holds a fenced block");
    let mut layers = BTreeMap::new();
    for line in block.lines().skip(1) {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let (modules, deps) = line.split_once("->").unwrap_or((line, ""));
        let deps: BTreeSet<String> = deps.split_whitespace().map(str::to_owned).collect();
        for module in modules.split_whitespace() {
            layers.insert(module.to_owned(), deps.clone());
        }
    }
    layers
}

fn top_module(relative: &Path) -> String {
    let first = relative.components().next().unwrap();
    let name = first.as_os_str().to_string_lossy();
    name.strip_suffix(".rs").unwrap_or(&name).to_owned()
}

/// The top-level modules a source file names through `crate::` paths, including
/// grouped imports such as `use crate::{image, registry::Client};`.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let text = code.as_str();
    let mut acc = BTreeSet::new();
    for (start, _) in text.match_indices("crate::") {
        let rest = &text[start + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut at_item_start = true;
            let mut ident = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        if at_item_start && !ident.is_empty() {
                            acc.insert(std::mem::take(&mut ident));
                        }
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => at_item_start = true,
                    c if at_item_start && (c.is_alphanumeric() || c == '_') => ident.push(c),
                    _ if at_item_start && !ident.is_empty() => {
                        acc.insert(std::mem::take(&mut ident));
                        at_item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                acc.insert(ident);
            }
        }
    }
    acc
}

fn find_cycle(layers: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        layers: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for dep in layers.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(dep, layers, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    layers
        .keys()
        .find_map(|module| visit(module, layers, &mut Vec::new(), &mut done))
}

#[test]
fn crate_paths_reads_grouped_and_nested_imports() {
    // Built with concat! so this file's own source holds no such path.
    let text = concat!(
        "use cra",
        "te::{image::{self, Image}, registry::Client, project};\n",
        "// cra",
        "te::ci in a comment\n",
        "let x = cra",
        "te::push::push(y);"
    );
    let found: Vec<String> = crate_paths(text).into_iter().collect();
    assert_eq!(found, ["image", "project", "push", "registry"]);
}

fn tracked_files(sh: &Shell) -> Vec<String> {
    cmd!(sh, "git ls-files")
        .quiet()
        .read()
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn rust_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut acc = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | "node_modules" | ".git" | "dist") {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") {
                acc.push(path);
            }
        }
    }
    acc.sort();
    acc
}
