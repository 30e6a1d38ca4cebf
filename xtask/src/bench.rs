//! `cargo xtask bench`: repeatable measurements of the pipeline, run in a scratch clone.

mod vs_docker;

use std::{path::Path, time::Instant};

use anyhow::Context;
use serde_json::Value;
use xshell::{Shell, cmd};

use crate::{
    flags,
    harness::{
        lab::{Compose, Lab, changed_backend},
        registry::{Auth, TestRegistry},
    },
    image, project,
    project::cargo,
    push::{CredentialSource, PushOptions, push_built},
};

impl flags::Bench {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        match self.what {
            flags::BenchWhat::Build => bench_build(sh, self.runs),
            flags::BenchWhat::Push => bench_push(sh, self.runs),
            flags::BenchWhat::Deploy => bench_deploy(sh, self.runs),
            flags::BenchWhat::Xtask => bench_xtask(sh, self.runs, self.rev.as_deref()),
            flags::BenchWhat::VsDocker => vs_docker::run(sh, self.runs, self.no_change_only),
        }
    }
}

/// One `build --json` run: wall time, compile and assembly split, sizes.
struct Sample {
    wall: f64,
    /// CPU seconds (user + system) of the build's processes: steadier than wall time on a
    /// machine shared with other builds.
    cpu: f64,
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
    let mut edits = Vec::new();
    for change in ONE_LINE_CHANGES {
        let file = clone.join(change.file);
        let original = std::fs::read_to_string(&file)
            .with_context(|| format!("reading `{}`", file.display()))?;
        let mut samples = Vec::new();
        for idx in 0..runs {
            eprintln!("{} {}/{runs}...", change.scenario, idx + 1);
            std::fs::write(&file, (change.edit)(&original, idx)?)?;
            samples.push(build_once(sh, &clone, &target)?);
        }
        std::fs::write(&file, original)?;
        edits.push((change.scenario, samples));
    }

    println!(
        "machine: {}; load average (1, 5, 15 min) at the end: {}",
        machine(sh),
        vs_docker::load_average()
    );
    println!("| scenario | wall | CPU (user+sys) | cargo | npm | image assembly (both) |");
    println!("|---|---|---|---|---|---|");
    print_row("cold build", std::slice::from_ref(&cold));
    print_row(&format!("no-change rebuild (median of {runs})"), &no_change);
    for (scenario, samples) in &edits {
        print_row(&format!("{scenario} (median of {runs})"), samples);
    }
    println!();
    for (name, size) in &cold.sizes {
        println!("{name}: {:.2} MB compressed", *size as f64 / 1e6);
    }
    Ok(())
}

/// A one-line edit of one backend file, different in every run so every run compiles.
struct OneLineChange {
    scenario: &'static str,
    file: &'static str,
    edit: fn(&str, usize) -> anyhow::Result<String>,
}

const ONE_LINE_CHANGES: &[OneLineChange] = &[
    // The scenario of every earlier figure: a `#[used]` static survives optimisation, so the
    // binary really changes, but no function does.
    OneLineChange {
        scenario: "one-line backend change",
        file: "backend/src/lib.rs",
        edit: |original, idx| {
            Ok(format!(
                "{original}\n#[used]\nstatic BENCH_EDIT: [u8; 8] = *b\"bench-{idx:02}\";\n"
            ))
        },
    },
    // What developers change all day: code inside a request handler (an error message).
    OneLineChange {
        scenario: "one-line handler change",
        file: "backend/src/clock.rs",
        edit: |original, idx| {
            let message = "is not clocked in\"";
            anyhow::ensure!(
                original.contains(message),
                "`backend/src/clock.rs` no longer says `{message}`: give `bench build` another line to edit"
            );
            Ok(original.replacen(message, &format!("is not clocked in ({idx})\""), 1))
        },
    },
];

fn print_row(name: &str, samples: &[Sample]) {
    let median = |f: fn(&Sample) -> f64| {
        let mut values: Vec<f64> = samples.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!(
        "| {name} | {:.2} s | {:.1} s | {:.2} s | {:.2} s | {:.3} s |",
        median(|s| s.wall),
        median(|s| s.cpu),
        median(|s| s.cargo),
        median(|s| s.npm),
        median(|s| s.assembly)
    );
}

fn build_once(sh: &Shell, clone: &Path, target: &Path) -> anyhow::Result<Sample> {
    let _dir = sh.push_dir(clone);
    let cargo = cargo(sh);
    let cpu_before = children_cpu_seconds()?;
    let start = Instant::now();
    let json = cmd!(sh, "{cargo} run --quiet --package xtask -- build --json")
        .env("CARGO_TARGET_DIR", target)
        .read()?;
    let wall = start.elapsed().as_secs_f64();
    let cpu = children_cpu_seconds()? - cpu_before;
    let report: Value = serde_json::from_str(&json).context("parsing `build --json` output")?;
    let images = report["images"].as_array().context("no images")?;
    Ok(Sample {
        wall,
        cpu,
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

/// CPU time of this process's waited-for children and their descendants (`cutime` and
/// `cstime` of `/proc/self/stat`, in clock ticks of 1/100 s on Linux).
fn children_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `cutime` and `cstime` are fields 16 and 17 of the line; `rest` starts at field 3.
    let ticks = |idx: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(idx - 3)
            .context("short /proc/self/stat")?
            .parse::<f64>()?)
    };
    Ok((ticks(16)? + ticks(17)?) / 100.0)
}

/// How long `cargo xtask` takes to compile before any command runs: a cold `cargo build -p
/// xtask` in a scratch clone with an empty target directory, then a one-line edit of one
/// module (the rebuild every change to the xtask pays). `rev` measures an older commit the
/// same way, for before/after tables.
fn bench_xtask(sh: &Shell, runs: usize, rev: Option<&str>) -> anyhow::Result<()> {
    let dir = project::target_dir().join("bench-xtask");
    let clone = dir.join("clone");
    let target = dir.join("target");
    for path in [&clone, &target] {
        let _ = std::fs::remove_dir_all(path);
    }
    project::clone_working_tree(sh, &clone)?;
    if let Some(rev) = rev {
        let _dir = sh.push_dir(&clone);
        cmd!(sh, "git checkout --quiet --force {rev}").run()?;
        cmd!(sh, "git clean --quiet -fdx").run()?;
    }
    let cargo = cargo(sh);
    let compile = |what: &str| -> anyhow::Result<f64> {
        eprintln!("{what}...");
        let _dir = sh.push_dir(&clone);
        let start = Instant::now();
        cmd!(sh, "{cargo} build --quiet --package xtask")
            .env("CARGO_TARGET_DIR", &target)
            .run()?;
        Ok(start.elapsed().as_secs_f64())
    };
    let cold = compile("cold build of the xtask (empty target directory)")?;
    let edited = clone.join("xtask/src/steps.rs");
    let original = std::fs::read_to_string(&edited)
        .with_context(|| format!("reading `{}`", edited.display()))?;
    let mut one_line = Vec::new();
    for idx in 0..runs {
        std::fs::write(&edited, format!("{original}\n// bench edit {idx}\n"))?;
        one_line.push(compile(&format!("one-line edit {}/{runs}", idx + 1))?);
    }
    one_line.sort_by(f64::total_cmp);
    let crates = {
        let _dir = sh.push_dir(&clone);
        cmd!(
            sh,
            "{cargo} tree --quiet --package xtask --edges normal,build --prefix none --no-dedupe"
        )
        .read()?
        .lines()
        .map(|line| line.split(" (").next().unwrap_or(line).to_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
    };
    let revision = cmd!(sh, "git -C {clone} rev-parse --short HEAD")
        .quiet()
        .read()?;
    println!("machine: {}", machine(sh));
    println!(
        "| commit | crates | cold `cargo build -p xtask` | one-line edit (median of {runs}) |"
    );
    println!("|---|---|---|---|");
    println!(
        "| {revision} | {crates} | {cold:.1} s | {:.2} s |",
        one_line[one_line.len() / 2]
    );
    Ok(())
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

/// Cold push (empty registry), no-change push and one-line-change push of both images to
/// a local distribution registry with token auth (the GHCR flow: ping, token, HEADs).
/// The one-line change is simulated (see `harness::lab::changed_backend`): a rebuild of
/// the backend is what `bench build` measures.
fn bench_push(sh: &Shell, runs: usize) -> anyhow::Result<()> {
    let runs = runs.max(1);
    eprintln!("building the images (a no-op when they are up to date)...");
    image::build(sh, &[])?;
    let mut build_noop = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        image::build(sh, &[])?;
        build_noop.push(start.elapsed().as_secs_f64());
    }
    let report = image::build(sh, &[])?;
    let dir = image::images_dir().join(".bench/push");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let start_registry = |sh: &Shell| {
        TestRegistry::start(
            sh,
            Auth::Token {
                user: "bench".to_owned(),
                password: "bench-password".to_owned(),
            },
        )
    };
    let options = |registry: &TestRegistry, cache: &Path| PushOptions {
        registry: registry.host(),
        namespace: Some("bench/tm".to_owned()),
        credentials: registry
            .credentials
            .clone()
            .map_or(CredentialSource::Anonymous, CredentialSource::Given),
        mount_cache: Some(cache.to_path_buf()),
        progress: false,
        ..PushOptions::default()
    };
    let sample = |opts: &PushOptions, images: &[image::BuiltImage]| -> anyhow::Result<PushSample> {
        let start = Instant::now();
        let pushed = push_built(sh, opts, images)?;
        Ok(PushSample {
            wall: start.elapsed().as_secs_f64(),
            uploaded: pushed.iter().map(|p| p.blobs_uploaded).sum(),
            mounted: pushed.iter().map(|p| p.blobs_mounted).sum(),
            bytes: pushed.iter().map(|p| p.bytes_uploaded).sum(),
        })
    };

    let mut cold = Vec::new();
    for idx in 0..runs {
        eprintln!("cold push {}/{runs} (new registry)...", idx + 1);
        let registry = start_registry(sh)?;
        let cache = dir.join(format!("cold-{idx}.json"));
        cold.push(sample(&options(&registry, &cache), &report.images)?);
    }
    let registry = start_registry(sh)?;
    let cache = dir.join("warm.json");
    let opts = options(&registry, &cache);
    sample(&opts, &report.images)?;
    let mut no_change = Vec::new();
    for idx in 0..runs {
        eprintln!("no-change push {}/{runs}...", idx + 1);
        no_change.push(sample(&opts, &report.images)?);
    }
    // The command as a user runs it: process start, the build's no-op check, the push.
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let host = registry.host();
    let creds = registry.credentials.clone().context("no credentials")?;
    let mut end_to_end = Vec::new();
    for idx in 0..runs {
        eprintln!("no-change `cargo xtask push` {}/{runs}...", idx + 1);
        let start = Instant::now();
        cmd!(sh, "{exe} push --registry {host} --namespace bench/tm")
            .env("REGISTRY_USERNAME", &creds.username)
            .env("REGISTRY_PASSWORD", creds.secret.expose())
            .secret()
            .quiet()
            .ignore_stderr()
            .run()?;
        end_to_end.push(start.elapsed().as_secs_f64());
    }
    let mut one_line = Vec::new();
    for idx in 0..runs {
        eprintln!("one-line backend change push {}/{runs}...", idx + 1);
        let changed = changed_backend(
            &report.images,
            report.revision.epoch,
            &dir.join(format!("changed-{idx}")),
            u32::try_from(idx).unwrap_or(u32::MAX),
        )?;
        let images: Vec<image::BuiltImage> = report
            .images
            .iter()
            .map(|i| {
                if i.name == "backend" {
                    changed.clone()
                } else {
                    i.clone()
                }
            })
            .collect();
        one_line.push(sample(&opts, &images)?);
    }

    println!("machine: {}", machine(sh));
    println!(
        "| scenario (both images, token auth, loopback) | wall | blobs uploaded | mounted | bytes uploaded |"
    );
    println!("|---|---|---|---|---|");
    bench_push_row(&format!("cold push (median of {runs})"), &cold);
    bench_push_row(&format!("no-change push (median of {runs})"), &no_change);
    bench_push_row(
        &format!("one-line backend change (median of {runs})"),
        &one_line,
    );
    println!(
        "| `image::build` no-op check that `cargo xtask push` runs first (median of {runs}) | {:.3} s | | | |",
        bench_push_median(&build_noop)
    );
    println!(
        "| no-change `xtask push` end to end: process, build check, push (median of {runs}) | {:.3} s | 0 | 0 | 0.00 MB |",
        bench_push_median(&end_to_end)
    );
    Ok(())
}

/// One push of both images.
struct PushSample {
    wall: f64,
    uploaded: usize,
    mounted: usize,
    bytes: u64,
}

fn bench_push_median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn bench_push_row(name: &str, samples: &[PushSample]) {
    let walls: Vec<f64> = samples.iter().map(|s| s.wall).collect();
    let mid = &samples[samples.len() / 2];
    println!(
        "| {name} | {:.3} s | {} | {} | {:.2} MB |",
        bench_push_median(&walls),
        mid.uploaded,
        mid.mounted,
        mid.bytes as f64 / 1e6
    );
}

/// A no-change deploy over ssh on loopback to the e2e lab's production stack (the unchanged
/// `docker-compose.prod.yml` behind Traefik, under compose v2): wall time, its split by step,
/// and the TCP connections sshd accepted.
fn bench_deploy(sh: &Shell, runs: usize) -> anyhow::Result<()> {
    let machine = machine(sh);
    let lab = Lab::start(sh)?;
    let server = lab.server("timemanager", Compose::V2, false);
    lab.prepare_clone(sh)?;
    let a = lab.build(sh, "A")?;
    eprintln!("first deploy of {} (not measured)...", a.tag);
    lab.deploy(sh, &server, &a, &[])?
        .expect_ok("the first deploy")?;
    let mut samples = Vec::new();
    for run in 0..runs.max(1) {
        eprintln!("no-change deploy {}/{runs}...", run + 1);
        let out = lab
            .deploy(sh, &server, &a, &[])?
            .expect_ok("a no-change deploy")?;
        let record = server.last_record()?;
        samples.push((out.elapsed, out.connections, record["steps"].clone()));
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let step = |steps: &Value, names: &[&str]| -> f64 {
        names
            .iter()
            .filter_map(|name| steps[*name].as_f64())
            .fold(0.0, |acc, x| acc + x)
    };
    let groups: &[(&str, &[&str])] = &[
        ("build + push (no-op)", &["build and push images"]),
        (
            "ssh: connect, server preflight, lock",
            &["connect", "preflight: server", "lock"],
        ),
        (
            "upload: files, .env",
            &["upload release files", "write .env"],
        ),
        ("pull (login, pull, digests)", &["registry login and pull"]),
        ("up: switch, compose up", &["switch current", "start"]),
        ("health gate", &["health gate"]),
        ("cleanup", &["cleanup"]),
    ];
    println!(
        "machine: {machine}; the production stack (Traefik, PostgreSQL, backend, frontend) under {} on the local engine",
        server.compose.name()
    );
    println!(
        "| no-change deploy (median of {}) | seconds |",
        samples.len()
    );
    println!("|---|---|");
    let wall = median(samples.iter().map(|s| s.0.as_secs_f64()).collect());
    println!("| wall (process start to exit) | {wall:.2} |");
    let mut accounted = 0.0;
    for (label, names) in groups {
        let value = median(samples.iter().map(|s| step(&s.2, names)).collect());
        accounted += value;
        println!("| {label} | {value:.2} |");
    }
    let pull = median(
        samples
            .iter()
            .map(|s| step(&s.2, &["registry login and pull"]))
            .collect(),
    );
    let up = median(samples.iter().map(|s| step(&s.2, &["start"])).collect());
    let build = median(
        samples
            .iter()
            .map(|s| step(&s.2, &["build and push images"]))
            .collect(),
    );
    println!(
        "| other (process start, settings, the record, summary) | {:.2} |",
        (wall - accounted).max(0.0)
    );
    println!(
        "\noverhead beyond build+push, pull and container start: {:.2} s (target <= 3 s)",
        wall - pull - up - build
    );
    let connections: Vec<usize> = samples.iter().map(|s| s.1).collect();
    println!("TCP connections to sshd per deploy: {connections:?} (target: 1)");
    Ok(())
}
