//! `cargo xtask bench vs-docker`: `cargo xtask push` side by side with `docker build` +
//! `docker push` (BuildKit) and `buildah bud --layers` + `buildah push`, same scenarios,
//! same image contents, same loopback registry, run alternately; medians and ratios.
//!
//! The peers build from Dockerfiles `FROM scratch` that copy the project's built files:
//! every layer of our image but the binary, extracted once, and the release binary that
//! `cargo build` left in the target directory, copied into the context on every run (what a
//! Dockerfile copying `target/` makes Docker hash). In the one-line scenario every tool pays
//! the same compile: the peers run the exact `cargo build --release` that `build` runs,
//! with the same flags into the same target directory, so no tool compiles for another.
//!
//! A multi-stage Dockerfile compiling inside the build is not measured: its first stage
//! needs a Rust toolchain image (`rust:1.95`), and nothing here may be pulled.

use std::{path::Path, time::Instant};

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::{
    harness::registry::{Auth, TestRegistry},
    image::{
        self,
        compile::{self, TARGET},
        definitions::{self, Contents, Link},
    },
    project::{self, cargo},
    provision::{self, Need},
};

const BUILDAH: Need = Need {
    program: "buildah",
    package: "buildah",
};

/// Debian's docker CLI (20.10) carries BuildKit; a newer CLI without the buildx plugin
/// would fall back to the legacy builder.
const DOCKER: &str = "/usr/bin/docker";

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Xtask,
    Docker,
    Buildah,
}

impl Tool {
    const ALL: [Tool; 3] = [Tool::Xtask, Tool::Docker, Tool::Buildah];

    fn name(self) -> &'static str {
        match self {
            Tool::Xtask => "`cargo xtask push`",
            Tool::Docker => "`docker build` + `docker push`",
            Tool::Buildah => "`buildah bud --layers` + `buildah push`",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Tool::Xtask => "xtask",
            Tool::Docker => "docker",
            Tool::Buildah => "buildah",
        }
    }
}

struct Bench<'a> {
    sh: &'a Shell,
    clone: &'a Path,
    target: &'a Path,
    contexts: &'a Path,
    host: String,
    commit: String,
}

pub(crate) fn run(sh: &Shell, runs: usize, no_change_only: bool) -> anyhow::Result<()> {
    let runs = runs.max(1);
    provision::ensure(sh, &[BUILDAH])?;
    anyhow::ensure!(
        Path::new(DOCKER).is_file(),
        "`{DOCKER}` (Debian's docker.io, with BuildKit) is needed"
    );
    // The clone and target directory of `bench build`: the same clone path gives the same
    // remapping flags, so the compiled dependencies are reused; only the clone is new.
    let dir = image::images_dir().join(".bench");
    let clone = dir.join("clone");
    let target = dir.join("target");
    let contexts = dir.join("vs-docker-contexts");
    for path in [&clone, &contexts] {
        let _ = std::fs::remove_dir_all(path);
    }
    project::clone_working_tree(sh, &clone)?;
    let commit = cmd!(sh, "git -C {clone} rev-parse HEAD").quiet().read()?;
    let load_before = load_average();
    let registry = TestRegistry::start(sh, Auth::None)?;
    let bench = Bench {
        sh,
        clone: &clone,
        target: &target,
        contexts: &contexts,
        host: registry.host(),
        commit,
    };

    eprintln!("first build and push of both images with each tool (not measured)...");
    bench.push(Tool::Xtask, false)?;
    bench.prepare_contexts()?;
    bench.push(Tool::Docker, false)?;
    bench.push(Tool::Buildah, false)?;

    let mut no_change: [Vec<f64>; 3] = Default::default();
    for idx in 0..runs {
        for (slot, tool) in Tool::ALL.into_iter().enumerate() {
            eprintln!("no-change push {}/{runs}: {}...", idx + 1, tool.slug());
            no_change[slot].push(bench.push(tool, false)?);
        }
    }
    let floor = bench.floor(runs)?;

    let lib = clone.join("backend/src/lib.rs");
    let original =
        std::fs::read_to_string(&lib).with_context(|| format!("reading `{}`", lib.display()))?;
    let mut one_line: [Vec<f64>; 3] = Default::default();
    for idx in 0..if no_change_only { 0 } else { runs } {
        for (slot, tool) in Tool::ALL.into_iter().enumerate() {
            eprintln!(
                "one-line backend change {}/{runs}: {}...",
                idx + 1,
                tool.slug()
            );
            // A `#[used]` static survives optimisation: every tool really gets a new binary.
            let edit = format!(
                "{original}\n#[used]\nstatic BENCH_EDIT: [u8; 12] = *b\"{:<12}\";\n",
                format!("{}-{idx:02}", tool.slug())
            );
            std::fs::write(&lib, edit)?;
            one_line[slot].push(bench.push(tool, true)?);
        }
    }
    std::fs::write(&lib, original)?;

    println!(
        "machine: {}; load average (1, 5, 15 min) at start: {load_before}, at end: {}",
        super::machine(sh),
        load_average()
    );
    println!(
        "| scenario (both images, loopback registry, median of {runs}) | {} | {} | {} |",
        Tool::Xtask.name(),
        Tool::Docker.name(),
        Tool::Buildah.name()
    );
    println!("|---|---|---|---|");
    for (label, samples) in [
        ("no change", &no_change),
        ("one-line backend change (compile included)", &one_line),
    ] {
        if samples[0].is_empty() {
            continue;
        }
        let [xtask, docker, buildah] = samples.clone().map(|s| median(&s));
        println!(
            "| {label} | {xtask:.2} s | {docker:.2} s ({:.2}×) | {buildah:.2} s ({:.2}×) |",
            xtask / docker,
            xtask / buildah
        );
    }
    println!("\n(×: `cargo xtask push` time divided by the peer's; below 1 is faster)\n");
    println!("no-change `cargo xtask push`, where the time goes (median of {runs}):\n");
    println!("| part | seconds |");
    println!("|---|---|");
    for (label, value) in floor {
        println!("| {label} | {value:.3} |");
    }
    Ok(())
}

impl Bench<'_> {
    /// One push of both images with `tool`; `compile`: run cargo first (the peers' half of
    /// a one-line change; `cargo xtask push` compiles by itself).
    fn push(&self, tool: Tool, compile: bool) -> anyhow::Result<f64> {
        let sh = self.sh;
        let start = Instant::now();
        match tool {
            Tool::Xtask => {
                let cargo = cargo(sh);
                let host = &self.host;
                let _dir = sh.push_dir(self.clone);
                run_quiet(
                    cmd!(
                        sh,
                        "{cargo} run --quiet --package xtask -- push --registry {host} --namespace bench/xtask"
                    )
                    .env("CARGO_TARGET_DIR", self.target),
                )?;
            }
            Tool::Docker | Tool::Buildah => {
                if compile {
                    self.cargo_build()?;
                }
                for def in definitions::IMAGES {
                    let context = self.contexts.join(def.name);
                    self.copy_binaries(def, &context)?;
                    let reference =
                        format!("{}/bench/{}/{}:latest", self.host, tool.slug(), def.name);
                    if tool == Tool::Docker {
                        run_quiet(
                            cmd!(sh, "{DOCKER} build --quiet --tag {reference} {context}")
                                .env("DOCKER_BUILDKIT", "1"),
                        )?;
                        run_quiet(cmd!(sh, "{DOCKER} push --quiet {reference}"))?;
                    } else {
                        run_quiet(cmd!(
                            sh,
                            "buildah bud --quiet --layers --tag {reference} {context}"
                        ))?;
                        run_quiet(cmd!(
                            sh,
                            "buildah push --quiet --tls-verify=false {reference} docker://{reference}"
                        ))?;
                    }
                }
            }
        }
        Ok(start.elapsed().as_secs_f64())
    }

    /// The release build `cargo xtask build` runs, in the clone, into the same target.
    fn cargo_build(&self) -> anyhow::Result<()> {
        let packages: Vec<&str> = binaries().collect();
        let _dir = self.sh.push_dir(self.clone);
        run_quiet(compile::release_build(
            self.sh,
            &packages,
            Link::Static,
            self.target,
            &self.commit,
        ))
    }

    /// A context per image: its layers other than binaries, extracted from the layout the
    /// first `cargo xtask push` built, and a Dockerfile with our image's configuration.
    fn prepare_contexts(&self) -> anyhow::Result<()> {
        let sh = self.sh;
        let images = self.target.join("images");
        for def in definitions::IMAGES {
            let context = self.contexts.join(def.name);
            std::fs::create_dir_all(&context)?;
            let layout = push_layout(&images, def.name)?;
            let mut dockerfile = String::from("FROM scratch\n");
            for (idx, (layer_def, digest)) in def.layers.iter().zip(&layout).enumerate() {
                if let Contents::CargoBinary { package, dest, .. } = layer_def.contents {
                    dockerfile.push_str(&format!("COPY {package} /{dest}\n"));
                    continue;
                }
                let dir = context.join(format!("layer{idx}"));
                std::fs::create_dir_all(&dir)?;
                let blob = images.join(def.name).join(digest.blob_path());
                run_quiet(cmd!(sh, "tar -xzf {blob} -C {dir}"))?;
                dockerfile.push_str(&format!("COPY layer{idx}/ /\n"));
            }
            let env: Vec<String> = def.env.iter().map(|e| format!("ENV {e}\n")).collect();
            dockerfile.push_str(&env.concat());
            dockerfile.push_str(&format!(
                "USER {}\nWORKDIR {}\nEXPOSE {}\nENTRYPOINT {}\n",
                def.user,
                def.working_dir,
                def.port,
                serde_json::to_string(def.entrypoint)?
            ));
            std::fs::write(context.join("Dockerfile"), dockerfile)?;
        }
        Ok(())
    }

    /// What `COPY target/.../<binary>` makes a peer read: the binary as cargo left it.
    fn copy_binaries(&self, def: &definitions::ImageDef, context: &Path) -> anyhow::Result<()> {
        for layer_def in def.layers {
            if let Contents::CargoBinary { package, .. } = layer_def.contents {
                let built = self.target.join(TARGET).join("release").join(package);
                std::fs::copy(&built, context.join(package))
                    .with_context(|| format!("copying `{}`", built.display()))?;
            }
        }
        Ok(())
    }

    /// The floor of a no-change `cargo xtask push`: cargo's start and freshness check of
    /// the xtask, the xtask's own start, the git calls and key, and the registry.
    fn floor(&self, runs: usize) -> anyhow::Result<Vec<(&'static str, f64)>> {
        let sh = self.sh;
        let cargo = cargo(sh);
        let host = &self.host;
        let exe = self.target.join("debug/xtask");
        let target = self.target;
        let _dir = sh.push_dir(self.clone);
        let time = |what: &str, run: &dyn Fn() -> anyhow::Result<()>| -> anyhow::Result<f64> {
            // One run first, not measured: every sample is then a no-change run, whatever
            // ran before (a binary started from another shell has another environment).
            run().with_context(|| what.to_owned())?;
            let mut samples = Vec::new();
            for _ in 0..runs {
                let start = Instant::now();
                run().with_context(|| what.to_owned())?;
                samples.push(start.elapsed().as_secs_f64());
            }
            Ok(median(&samples))
        };
        let cargo_run = time("cargo run of `xtask help`", &|| {
            run_quiet(
                cmd!(sh, "{cargo} run --quiet --package xtask -- help")
                    .env("CARGO_TARGET_DIR", target),
            )
        })?;
        let exe_help = time("`xtask help`", &|| run_quiet(cmd!(sh, "{exe} help")))?;
        let git = time("the git calls", &|| {
            run_quiet(cmd!(sh, "git rev-parse HEAD"))?;
            run_quiet(cmd!(sh, "git status --porcelain"))?;
            run_quiet(cmd!(sh, "git log -1 --format=%ct"))?;
            run_quiet(cmd!(
                sh,
                "git status --porcelain=v1 -z --untracked-files=all --no-renames"
            ))
        })?;
        let exe_push = time("`xtask push`", &|| {
            run_quiet(
                cmd!(sh, "{exe} push --registry {host} --namespace bench/xtask")
                    .env("CARGO_TARGET_DIR", target),
            )
        })?;
        let whole = time("`cargo xtask push`", &|| {
            run_quiet(
                cmd!(
                    sh,
                    "{cargo} run --quiet --package xtask -- push --registry {host} --namespace bench/xtask"
                )
                .env("CARGO_TARGET_DIR", target),
            )
        })?;
        Ok(vec![
            ("`cargo xtask push`, whole", whole),
            (
                "cargo: start, workspace load, freshness check of the xtask (`cargo run -- help` minus `xtask help`)",
                cargo_run - exe_help,
            ),
            ("the xtask binary run directly: `xtask push`", exe_push),
            ("  of which process start and exit (`xtask help`)", exe_help),
            (
                "  of which the 4 git calls (rev-parse, status, log, status -z)",
                git,
            ),
            (
                "  of which the rest: key, layout check, registry ping and one HEAD per tag",
                exe_push - exe_help - git,
            ),
        ])
    }
}

/// The manifest's layer digests of `images/<name>/`, bottom first.
fn push_layout(images: &Path, name: &str) -> anyhow::Result<Vec<crate::digest::Digest>> {
    let layout = crate::push::Layout::read(&images.join(name))?;
    Ok(layout.layers.into_iter().map(|l| l.digest).collect())
}

/// The packages of the binaries the images hold (all linked statically).
fn binaries() -> impl Iterator<Item = &'static str> {
    definitions::IMAGES
        .iter()
        .flat_map(|def| def.layers)
        .filter_map(|layer| match layer.contents {
            Contents::CargoBinary { package, .. } => Some(package),
            _ => None,
        })
}

/// Runs a command, its output shown only when it fails.
fn run_quiet(cmd: xshell::Cmd<'_>) -> anyhow::Result<()> {
    let shown = cmd.to_string();
    let output = cmd.quiet().ignore_status().output()?;
    if !output.status.success() {
        bail!(
            "`{shown}` failed with {}:\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

pub(super) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}
