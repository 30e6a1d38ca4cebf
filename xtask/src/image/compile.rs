//! The compile stage: release binaries through cargo, the web app through npm, concurrently.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;
use sha2::{Digest as _, Sha256};
use xshell::{Shell, cmd};

use crate::{
    digest,
    image::{
        contents::Artifacts,
        definitions::{Contents, ImageDef, Link},
    },
    project::{self, Revision},
};

/// glibc target with `+crt-static`: a static binary that runs on scratch.
pub(crate) const TARGET: &str = "x86_64-unknown-linux-gnu";

#[derive(Debug, Default)]
pub(crate) struct CompileTimes {
    pub(crate) cargo: Duration,
    pub(crate) npm: Duration,
}

pub(crate) fn compile(
    defs: &[&ImageDef],
    revision: &Revision,
    cache_dir: &Path,
) -> anyhow::Result<(Artifacts, CompileTimes)> {
    let mut packages: Vec<(&'static str, Link)> = Vec::new();
    let mut needs_vite = false;
    for def in defs {
        for layer in def.layers {
            match layer.contents {
                Contents::CargoBinary { package, link, .. } => packages.push((package, link)),
                Contents::ViteDist { .. } => needs_vite = true,
                Contents::Runtime => (),
            }
        }
    }
    packages.sort_unstable();
    packages.dedup();

    // Two shells: xshell's `Shell` is not shared across threads.
    let (cargo_res, npm_res) = std::thread::scope(|scope| {
        let npm = scope.spawn(|| -> anyhow::Result<Option<(PathBuf, Duration)>> {
            if !needs_vite {
                return Ok(None);
            }
            let start = Instant::now();
            let dist = build_frontend(&shell()?, cache_dir)?;
            Ok(Some((dist, start.elapsed())))
        });
        let start = Instant::now();
        let cargo = build_binaries(&packages, revision).map(|bins| (bins, start.elapsed()));
        let npm = npm
            .join()
            .unwrap_or_else(|_| Err(anyhow::format_err!("frontend build panicked")));
        (cargo, npm)
    });
    let (binaries, cargo_time) = cargo_res.context("compiling release binaries")?;
    let npm = npm_res.context("building the frontend")?;
    let mut times = CompileTimes {
        cargo: cargo_time,
        ..CompileTimes::default()
    };
    let mut artifacts = Artifacts {
        binaries,
        vite_dist: None,
    };
    if let Some((dist, elapsed)) = npm {
        artifacts.vite_dist = Some(dist);
        times.npm = elapsed;
    }
    Ok((artifacts, times))
}

fn shell() -> anyhow::Result<Shell> {
    let sh = Shell::new()?;
    sh.change_dir(project::root());
    Ok(sh)
}

/// One cargo invocation per linkage; dynamic builds get their own target directory so
/// switching between the two never invalidates the other's artifacts.
fn build_binaries(
    packages: &[(&'static str, Link)],
    revision: &Revision,
) -> anyhow::Result<BTreeMap<(&'static str, Link), PathBuf>> {
    let sh = &shell()?;
    let mut acc = BTreeMap::new();
    for link in [Link::Static, Link::Dynamic] {
        let names: Vec<&'static str> = packages
            .iter()
            .filter(|(_, l)| *l == link)
            .map(|(p, _)| *p)
            .collect();
        if names.is_empty() {
            continue;
        }
        let target_dir = match link {
            Link::Static => project::target_dir(),
            Link::Dynamic => project::target_dir().join("dynamic"),
        };
        cargo_build(sh, &names, link, &target_dir, revision)?;
        for package in names {
            let path = target_dir.join(TARGET).join("release").join(package);
            anyhow::ensure!(path.is_file(), "cargo did not produce `{}`", path.display());
            acc.insert((package, link), path);
        }
    }
    Ok(acc)
}

fn cargo_build(
    sh: &Shell,
    packages: &[&str],
    link: Link,
    target_dir: &Path,
    revision: &Revision,
) -> anyhow::Result<()> {
    release_build(sh, packages, link, target_dir, &revision.commit).run()?;
    Ok(())
}

/// The `cargo build --release` of the checkout `sh` is in, exactly as `build` runs it (flags,
/// environment); also for `bench vs-docker`'s peers, which copy the binaries it makes.
pub(crate) fn release_build<'a>(
    sh: &'a Shell,
    packages: &[&str],
    link: Link,
    target_dir: &Path,
    commit: &str,
) -> xshell::Cmd<'a> {
    let cargo = project::cargo(sh);
    let cargo_home = sh
        .var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", sh.var("HOME").unwrap_or_default()));
    // Remapping makes the binary independent of where the registry lives (dependencies'
    // panic locations); the encoded form keeps paths with spaces intact. The checkout needs
    // none: cargo runs rustc in the workspace root and names its sources relatively
    // (`backend/src/lib.rs`), so these flags are the same in every clone, and clones at other
    // paths share compiled dependencies in one target directory (`project::clones_target_dir`).
    // `cargo xtask ci --only reproducible` proves it from a clone at another path.
    let mut rustflags = vec![format!("--remap-path-prefix={cargo_home}=/cargo")];
    if link == Link::Static {
        rustflags.insert(0, "-Ctarget-feature=+crt-static".to_owned());
    }
    let package_args: Vec<String> = packages
        .iter()
        .flat_map(|p| ["-p".to_owned(), (*p).to_owned()])
        .collect();
    let mut build = cmd!(
        sh,
        "{cargo} build --release --locked --target {TARGET} {package_args...}"
    );
    // `cargo run` sets these for the xtask itself; inherited, they make build scripts
    // that watch them (ring's) rerun whenever the xtask is started another way.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        let set_by_cargo_run = name.starts_with("CARGO_PKG_")
            || matches!(
                name.as_str(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            );
        if set_by_cargo_run {
            build = build.env_remove(name);
        }
    }
    build
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"))
        .env("CARGO_TARGET_DIR", target_dir)
        .env("TIMEMANAGER_REVISION", commit)
        // No crate we link reads it, but ring's build script watches it: setting it per
        // commit recompiled ring, rustls and sqlx on every commit (2m20s instead of 45 s).
        .env_remove("SOURCE_DATE_EPOCH")
}

/// `npm ci` when `node_modules` is stale, `npm run build` when any input changed.
fn build_frontend(sh: &Shell, cache_dir: &Path) -> anyhow::Result<PathBuf> {
    let frontend = project::root().join("frontend");
    let _dir = sh.push_dir(&frontend);
    let installed = frontend.join("node_modules/.package-lock.json");
    if is_older(&installed, &frontend.join("package-lock.json")) {
        run_to_stderr(cmd!(sh, "npm ci --no-audit --no-fund")).context("npm ci in `frontend/`")?;
    }
    let api_base = sh
        .var("VITE_API_BASE_URL")
        .unwrap_or_else(|_| "/api".to_owned());
    let stamp_path = cache_dir.join("vite-dist.stamp");
    let dist = frontend.join("dist");
    let fresh = dist.join("index.html").is_file()
        && fs::read_to_string(&stamp_path)
            .is_ok_and(|old| vite_stamp(&frontend, &api_base).is_ok_and(|now| now == old));
    if !fresh {
        run_to_stderr(cmd!(sh, "npm run build").env("VITE_API_BASE_URL", &api_base))
            .context("npm run build in `frontend/`")?;
        fs::create_dir_all(cache_dir)?;
        fs::write(&stamp_path, vite_stamp(&frontend, &api_base)?)?;
    }
    Ok(dist)
}

/// Runs a command whose stdout would otherwise mix with `build --json` output.
fn run_to_stderr(cmd: xshell::Cmd<'_>) -> anyhow::Result<()> {
    let shown = cmd.to_string();
    let output = cmd.ignore_status().output()?;
    eprint!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        anyhow::bail!("`{shown}` failed with {}", output.status);
    }
    Ok(())
}

fn is_older(path: &Path, than: &Path) -> bool {
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(path), modified(than)) {
        (Some(a), Some(b)) => a < b,
        _ => true,
    }
}

/// What `dist/` was built from and what it holds: a build is skipped only when both match,
/// so a `dist/` rewritten by a plain `npm run build` (other env) is never taken as ours.
fn vite_stamp(frontend: &Path, api_base: &str) -> anyhow::Result<String> {
    Ok(format!(
        "inputs {}\ndist {}\nVITE_API_BASE_URL={api_base}\n",
        tree_hash(frontend, &["node_modules", "dist", ".vite"])?,
        tree_hash(&frontend.join("dist"), &[])?
    ))
}

/// Hash of the paths and contents of every file under `dir`, minus `skip`ped directories.
fn tree_hash(dir: &Path, skip: &[&str]) -> anyhow::Result<String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let listing =
            fs::read_dir(&current).with_context(|| format!("reading `{}`", current.display()))?;
        for item in listing {
            let path = item?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if !skip.contains(&name) {
                    stack.push(path);
                }
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut hasher = Sha256::new();
    for file in files {
        let rel = file.strip_prefix(dir)?;
        hasher.update(format!(
            "{} {}\n",
            rel.display(),
            digest::sha256_file(&file)?
        ));
    }
    Ok(digest::hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `npm run build` without `VITE_API_BASE_URL` (as `ci` runs it) rewrote
    /// `dist/` after an image build, and the next image build shipped that bundle.
    #[test]
    fn vite_stamp_changes_when_dist_is_rewritten_behind_our_back() {
        let dir = std::env::temp_dir().join(format!("xtask-vite-stamp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("src")).unwrap();
        fs::create_dir_all(dir.join("dist/assets")).unwrap();
        fs::create_dir_all(dir.join("node_modules/x")).unwrap();
        fs::write(dir.join("src/main.ts"), "export {}").unwrap();
        fs::write(dir.join("dist/assets/index-A.js"), "a").unwrap();
        let stamp = vite_stamp(&dir, "/api").unwrap();
        fs::write(dir.join("node_modules/x/ignored.js"), "x").unwrap();
        assert_eq!(
            vite_stamp(&dir, "/api").unwrap(),
            stamp,
            "node_modules must not count"
        );
        assert_ne!(
            vite_stamp(&dir, "https://time-manager.app/api").unwrap(),
            stamp
        );
        fs::rename(
            dir.join("dist/assets/index-A.js"),
            dir.join("dist/assets/index-B.js"),
        )
        .unwrap();
        assert_ne!(vite_stamp(&dir, "/api").unwrap(), stamp);
        fs::remove_dir_all(dir).unwrap();
    }
}
