//! `cargo xtask bench`: repeatable measurements of the pipeline, run in a scratch clone.

use std::{path::Path, time::Instant};

use anyhow::Context;
use serde_json::Value;
use xshell::{Shell, cmd};

use crate::{ci::cargo, flags, image, project};

impl flags::Bench {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        match self.what {
            flags::BenchWhat::Build => bench_build(sh, self.runs),
        }
    }
}

/// One `build --json` run: wall time, compile and assembly split, sizes.
struct Sample {
    wall: f64,
    cargo: f64,
    npm: f64,
    assembly: f64,
    sizes: Vec<(String, u64)>,
}

fn bench_build(sh: &Shell, runs: usize) -> anyhow::Result<()> {
    let dir = image::images_dir().join(".bench");
    let clone = dir.join("clone");
    let target = dir.join("target");
    for path in [&clone, &target] {
        let _ = std::fs::remove_dir_all(path);
    }
    project::clone_working_tree(sh, &clone)?;

    eprintln!("cold build (empty target directory)...");
    let cold = build_once(sh, &clone, &target)?;
    let mut no_change = Vec::new();
    for idx in 0..runs {
        eprintln!("no-change rebuild {}/{runs}...", idx + 1);
        no_change.push(build_once(sh, &clone, &target)?);
    }
    let mut one_line = Vec::new();
    let lib = clone.join("backend/src/lib.rs");
    let original =
        std::fs::read_to_string(&lib).with_context(|| format!("reading `{}`", lib.display()))?;
    for idx in 0..runs {
        eprintln!("one-line backend change {}/{runs}...", idx + 1);
        // A `#[used]` static survives optimisation, so the binary really changes.
        let edit =
            format!("{original}\n#[used]\nstatic BENCH_EDIT: [u8; 8] = *b\"bench-{idx:02}\";\n");
        std::fs::write(&lib, edit)?;
        one_line.push(build_once(sh, &clone, &target)?);
    }
    std::fs::write(&lib, original)?;

    println!("machine: {}", machine(sh));
    println!("| scenario | wall | cargo | npm | image assembly (both) |");
    println!("|---|---|---|---|---|");
    print_row("cold build", std::slice::from_ref(&cold));
    print_row(&format!("no-change rebuild (median of {runs})"), &no_change);
    print_row(
        &format!("one-line backend change (median of {runs})"),
        &one_line,
    );
    println!();
    for (name, size) in &cold.sizes {
        println!("{name}: {:.2} MB compressed", *size as f64 / 1e6);
    }
    Ok(())
}

fn print_row(name: &str, samples: &[Sample]) {
    let median = |f: fn(&Sample) -> f64| {
        let mut values: Vec<f64> = samples.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!(
        "| {name} | {:.2} s | {:.2} s | {:.2} s | {:.3} s |",
        median(|s| s.wall),
        median(|s| s.cargo),
        median(|s| s.npm),
        median(|s| s.assembly)
    );
}

fn build_once(sh: &Shell, clone: &Path, target: &Path) -> anyhow::Result<Sample> {
    let _dir = sh.push_dir(clone);
    let cargo = cargo(sh);
    let start = Instant::now();
    let json = cmd!(sh, "{cargo} run --quiet --package xtask -- build --json")
        .env("CARGO_TARGET_DIR", target)
        .read()?;
    let wall = start.elapsed().as_secs_f64();
    let report: Value = serde_json::from_str(&json).context("parsing `build --json` output")?;
    let images = report["images"].as_array().context("no images")?;
    Ok(Sample {
        wall,
        cargo: report["compile_seconds"]["cargo"]
            .as_f64()
            .unwrap_or_default(),
        npm: report["compile_seconds"]["npm"]
            .as_f64()
            .unwrap_or_default(),
        // Images assemble concurrently: the slower one is what a user waits for.
        assembly: images
            .iter()
            .filter_map(|i| i["assembly_seconds"].as_f64())
            .fold(0.0, f64::max),
        sizes: images
            .iter()
            .filter_map(|i| {
                Some((
                    i["name"].as_str()?.to_owned(),
                    i["compressed_size"].as_u64()?,
                ))
            })
            .collect(),
    })
}

fn machine(sh: &Shell) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = cmd!(sh, "nproc").quiet().read().unwrap_or_default();
    format!("{cpu}, {cores} cores")
}
