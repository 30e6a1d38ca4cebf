//! Checks that keep the repository honest, run as ordinary tests.

use std::{fs, path::Path};

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

/// No tracked text file carries the absolute path of the machine it was written on.
#[test]
fn no_machine_paths_in_sources() {
    let root = project::root();
    let parent = root.parent().unwrap().display().to_string() + "/";
    let mut offenders = Vec::new();
    for file in rust_files(&root) {
        let text = fs::read_to_string(&file).unwrap();
        if text.contains(&parent) {
            offenders.push(file.display().to_string());
        }
    }
    assert!(
        offenders.is_empty(),
        "machine paths in:\n{}",
        offenders.join("\n")
    );
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
