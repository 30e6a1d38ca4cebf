//! The input-addressed fast path of `build`: a key over everything the images depend on,
//! mapped to what the last build with that key wrote, so an unchanged checkout runs no
//! cargo and no npm at all (cargo's freshness check of the release build alone took 0.45 s).
//!
//! The key hashes:
//! - the commit (`HEAD`): it fixes every tracked file, and the images' labels carry it;
//! - every path `git status` reports (modified, staged, deleted, untracked and not
//!   ignored), with the content it has on disk: that is the whole difference between the
//!   working tree and the commit, as git itself decides it;
//! - the ignored files the build still reads: Vite's `frontend/.env*`, cargo's
//!   `config.toml` in the checkout's parents and in `CARGO_HOME`;
//! - the environment that reaches cargo, rustc, the C compiler, npm and Vite, and the labels
//!   (`SOURCE_DATE_EPOCH`, `GITHUB_REPOSITORY`): names by prefix, values hashed, nothing
//!   with a secret's name;
//! - the toolchain: `rustc -vV` (cached by the rustc binary's identity, since the run alone
//!   costs 50 ms), and which cargo, node and npm run;
//! - the xtask binary itself (its size and mtime), which decides how layers are written.
//!
//! Not inputs: `frontend/node_modules/` (`npm ci` installs it from the tracked
//! `package-lock.json`; compile.rs's own stamp ignores it too), `frontend/dist/` and the
//! target directory (outputs).
//!
//! The record (`target/images/.cache/build-inputs.json`) maps the key to each image's
//! manifest, config and layer digests and the hashes of the files the build wrote; a hit
//! is taken only when the layout, the archive and the SBOM on disk still match it.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::UNIX_EPOCH,
};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use xshell::{Shell, cmd};

use crate::{
    digest::{self, Digest},
    image::{
        AssemblyTimes, BuiltImage, compile,
        definitions::ImageDef,
        layer::LayerBlob,
        oci::Blob,
        store::{ImageBlobs, Store},
    },
    project::{self, Revision},
    provision,
};

/// Bumped whenever what the key covers changes, so older records never match.
const SCHEMA: &str = "build-inputs v1";

/// Environment that reaches the build, by name prefix: cargo and rustc (`CARGO_*`,
/// `RUSTFLAGS`, `RUSTUP_TOOLCHAIN`), the C compiler ring's build script runs through the
/// `cc` crate, npm, node and Vite.
const ENV_PREFIXES: &[&str] = &[
    "CARGO", "RUST", "CC", "CXX", "CFLAGS", "CXXFLAGS", "AR", "TARGET_", "HOST_", "CRATE_CC",
    "VITE_", "NODE_", "NPM_",
];

/// Exact names that change the images: timestamps, the source label, cargo's home, which
/// programs run, the linker's inputs. Not `LD_LIBRARY_PATH`: `cargo run` sets it for the
/// xtask to its own target directory, and no tool we run reads libraries through it.
const ENV_NAMES: &[&str] = &[
    "SOURCE_DATE_EPOCH",
    "GITHUB_REPOSITORY",
    "HOME",
    "PATH",
    "LD",
    "LDFLAGS",
    "LIBRARY_PATH",
];

/// What `cargo run` sets for the xtask itself; compile.rs removes them before cargo runs.
const ENV_SET_BY_CARGO_RUN: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
];

/// The environment variables among `vars` that the key covers, sorted by name.
pub(crate) fn build_env(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vars
        .filter(|(name, _)| {
            let upper = name.to_ascii_uppercase();
            let secret = ["TOKEN", "PASSWORD", "SECRET", "CREDENTIAL"]
                .iter()
                .any(|word| upper.contains(word));
            let set_by_cargo_run =
                upper.starts_with("CARGO_PKG_") || ENV_SET_BY_CARGO_RUN.contains(&upper.as_str());
            let wanted = ENV_NAMES.contains(&upper.as_str())
                || ENV_PREFIXES.iter().any(|prefix| upper.starts_with(prefix));
            wanted && !secret && !set_by_cargo_run
        })
        .collect();
    env.sort();
    env
}

/// The key of the checkout at `root` as `revision` describes it, with this environment
/// (from [`build_env`]) and toolchain (from [`toolchain`]).
pub(crate) fn key(
    sh: &Shell,
    root: &Path,
    revision: &Revision,
    env: &[(String, String)],
    toolchain: &str,
) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    let mut line = |text: &str| {
        hasher.update(text.as_bytes());
        hasher.update(b"\n");
    };
    line(SCHEMA);
    line(&format!(
        "commit {} version {} epoch {}",
        revision.commit, revision.version, revision.epoch
    ));
    line(&format!(
        "target {} profile release root {}",
        compile::TARGET,
        root.display()
    ));
    let _dir = sh.push_dir(root);
    // `-z`: paths exactly as on disk; `all`: every untracked file, not just its directory.
    let status = cmd!(
        sh,
        "git status --porcelain=v1 -z --untracked-files=all --no-renames"
    )
    .quiet()
    .read()
    .context("listing the changes of the working tree")?;
    for entry in status.split('\0').filter(|e| !e.is_empty()) {
        let (code, rel) = entry.split_at(entry.len().min(3));
        line(&format!(
            "changed {code}{rel} {}",
            file_state(&root.join(rel))?
        ));
    }
    for path in ignored_inputs(root, env) {
        line(&format!(
            "ignored input {} {}",
            path.display(),
            file_state(&path)?
        ));
    }
    for (name, value) in env {
        line(&format!(
            "env {name} {}",
            digest::sha256_hex(value.as_bytes())
        ));
    }
    line(&format!("toolchain {toolchain}"));
    Ok(digest::hex(&hasher.finalize()))
}

/// A file's content hash and executable bit, `absent`, or a symlink's target.
fn file_state(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok("absent".to_owned());
    };
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path)?;
        return Ok(format!("symlink {}", target.display()));
    }
    if meta.is_dir() {
        // A nested repository or an empty directory git lists as one entry.
        return Ok("directory".to_owned());
    }
    Ok(format!(
        "{:o} {}",
        meta.permissions().mode() & 0o111,
        digest::sha256_file(path)?
    ))
}

/// Ignored files the build reads anyway.
fn ignored_inputs(root: &Path, env: &[(String, String)]) -> Vec<PathBuf> {
    let var = |name: &str| {
        env.iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.clone())
    };
    // Vite's `loadEnv` reads these for `vite build` (mode `production`).
    let mut paths: Vec<PathBuf> = [
        ".env",
        ".env.local",
        ".env.production",
        ".env.production.local",
    ]
    .iter()
    .map(|name| root.join("frontend").join(name))
    .collect();
    // Cargo merges `.cargo/config.toml` from the directory it runs in and every parent,
    // then `CARGO_HOME`'s: profiles and linkers set there change the binaries.
    for dir in root.ancestors().skip(1) {
        paths.push(dir.join(".cargo/config.toml"));
        paths.push(dir.join(".cargo/config"));
    }
    let cargo_home = var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| Path::new(&home).join(".cargo")));
    if let Some(home) = cargo_home {
        paths.push(home.join("config.toml"));
        paths.push(home.join("config"));
    }
    paths
}

/// The toolchain's identity: `rustc -vV`, and which cargo, node, npm and xtask run.
///
/// `rustc -vV` is remembered in `cache_dir` against the identity (path, size, mtime) of
/// the rustc binary that answered, so the 50 ms run happens again only when that file
/// changes, as it does when rustup installs another version.
pub(crate) fn toolchain(sh: &Shell, cache_dir: &Path) -> anyhow::Result<String> {
    let cargo = project::cargo(sh);
    // Cargo runs `RUSTC`, else `rustc` from PATH (rustup's proxy, which picks the same
    // toolchain as the cargo that runs us through `RUSTUP_TOOLCHAIN`).
    let rustc = sh.var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let real_rustc = Path::new(&cargo)
        .parent()
        .map(|dir| dir.join("rustc"))
        .filter(|path| path.is_file());
    let fingerprint = format!(
        "{} {} {}",
        identity(provision::find_program(&rustc).as_deref()),
        identity(real_rustc.as_deref()),
        sh.var("RUSTUP_TOOLCHAIN").unwrap_or_default()
    );
    let cache = cache_dir.join("rustc-vv");
    let cached = fs::read_to_string(&cache).ok().and_then(|text| {
        let (first, rest) = text.split_once('\n')?;
        (first == fingerprint).then(|| rest.to_owned())
    });
    let version = match cached {
        Some(version) => version,
        None => {
            let version = cmd!(sh, "{rustc} -vV")
                .quiet()
                .read()
                .with_context(|| format!("running `{rustc} -vV`"))?;
            fs::create_dir_all(cache_dir)?;
            write_atomically(&cache, format!("{fingerprint}\n{version}").as_bytes())?;
            version
        }
    };
    let program = |name: &str| identity(provision::find_program(name).as_deref());
    let cargo_path = provision::find_program(&cargo).or_else(|| Some(PathBuf::from(&cargo)));
    Ok(format!(
        "{version}\ncargo {}\nnode {}\nnpm {}\nxtask {}",
        identity(cargo_path.as_deref()),
        program("node"),
        program("npm"),
        identity(std::env::current_exe().ok().as_deref()),
    ))
}

/// Path, size and mtime of a file, or `none`.
fn identity(path: Option<&Path>) -> String {
    let Some(path) = path else {
        return "none".to_owned();
    };
    let Ok(meta) = fs::metadata(path) else {
        return format!("{} absent", path.display());
    };
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{} {} {mtime}", path.display(), meta.len())
}

/// The key of this checkout, environment and toolchain, as `build` computes it.
pub(crate) fn current_key(
    sh: &Shell,
    revision: &Revision,
    cache_dir: &Path,
) -> anyhow::Result<String> {
    let env = build_env(std::env::vars());
    key(
        sh,
        &project::root(),
        revision,
        &env,
        &toolchain(sh, cache_dir)?,
    )
}

/// What one build with one key wrote.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    key: String,
    images: BTreeMap<String, ImageRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ImageRecord {
    manifest: String,
    config: String,
    layers: Vec<LayerRecord>,
    /// sha256 of `<name>/index.json`, of `<name>.tar` by size only, of `<name>.sbom.json`.
    index: String,
    archive_size: u64,
    sbom: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct LayerRecord {
    digest: String,
    diff_id: String,
    size: u64,
}

fn record_path(store: &Store) -> PathBuf {
    store.cache_dir().join("build-inputs.json")
}

fn sbom_path(store: &Store, name: &str) -> PathBuf {
    store.root.join(format!("{name}.sbom.json"))
}

/// The images a build with `key` wrote, if the record has all of `defs` under that key and
/// what is on disk still matches it; `None` sends the caller to a full build.
pub(crate) fn lookup(
    store: &Store,
    key: &str,
    defs: &[&'static ImageDef],
) -> Option<Vec<BuiltImage>> {
    let text = fs::read(record_path(store)).ok()?;
    let record: Record = serde_json::from_slice(&text).ok()?;
    if record.key != key {
        return None;
    }
    defs.iter()
        .map(|def| check(store, def, record.images.get(def.name)?))
        .collect()
}

/// The image as recorded, if its layout, archive and SBOM are still the ones recorded.
/// Small files are hashed; layers are checked by size, as push's `Layout::read` does (push
/// hashes a layer again before it sends it).
fn check(store: &Store, def: &'static ImageDef, rec: &ImageRecord) -> Option<BuiltImage> {
    let layout = store.root.join(def.name);
    let index = fs::read(layout.join("index.json")).ok()?;
    if digest::sha256_hex(&index) != rec.index || !layout.join("oci-layout").is_file() {
        return None;
    }
    let read_blob = |digest: &str| -> Option<Blob> {
        let digest = Digest::parse(digest).ok()?;
        let bytes = fs::read(layout.join(digest.blob_path())).ok()?;
        (Digest::of(&bytes) == digest).then_some(Blob { bytes, digest })
    };
    let manifest = read_blob(&rec.manifest)?;
    let config = read_blob(&rec.config)?;
    let mut layers = Vec::new();
    for layer in &rec.layers {
        let blob = LayerBlob {
            digest: Digest::parse(&layer.digest).ok()?,
            diff_id: Digest::parse(&layer.diff_id).ok()?,
            size: layer.size,
        };
        let size = fs::metadata(layout.join(blob.digest.blob_path()))
            .ok()?
            .len();
        if size != blob.size {
            return None;
        }
        layers.push(blob);
    }
    let archive = store.root.join(format!("{}.tar", def.name));
    if fs::metadata(&archive).ok()?.len() != rec.archive_size {
        return None;
    }
    let sbom = digest::sha256_file(&sbom_path(store, def.name)).ok()?;
    if sbom != rec.sbom {
        return None;
    }
    let n_cached_layers = layers.len();
    Some(BuiltImage {
        name: def.name,
        blobs: ImageBlobs {
            manifest,
            config,
            layers,
        },
        layout,
        archive,
        n_cached_layers,
        times: AssemblyTimes::default(),
    })
}

/// Remembers that a build with `key` wrote `images`, next to the images of the same key
/// recorded before (a build of one image keeps the other's entry).
pub(crate) fn record(store: &Store, key: &str, images: &[BuiltImage]) -> anyhow::Result<()> {
    let path = record_path(store);
    let mut record = fs::read(&path)
        .ok()
        .and_then(|text| serde_json::from_slice::<Record>(&text).ok())
        .filter(|old| old.key == key)
        .unwrap_or_else(|| Record {
            key: key.to_owned(),
            images: BTreeMap::new(),
        });
    for image in images {
        let index = fs::read(image.layout.join("index.json"))
            .with_context(|| format!("reading `{}`", image.layout.display()))?;
        record.images.insert(
            image.name.to_owned(),
            ImageRecord {
                manifest: image.blobs.manifest.digest.to_string(),
                config: image.blobs.config.digest.to_string(),
                layers: image
                    .blobs
                    .layers
                    .iter()
                    .map(|l| LayerRecord {
                        digest: l.digest.to_string(),
                        diff_id: l.diff_id.to_string(),
                        size: l.size,
                    })
                    .collect(),
                index: digest::sha256_hex(&index),
                archive_size: fs::metadata(&image.archive)
                    .with_context(|| format!("reading `{}`", image.archive.display()))?
                    .len(),
                sbom: digest::sha256_file(&sbom_path(store, image.name))?,
            },
        );
    }
    write_atomically(&path, &serde_json::to_vec_pretty(&record)?)
}

/// Two builds at once must never leave half a file for a third to read.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    fs::write(&temp, bytes).with_context(|| format!("writing `{}`", temp.display()))?;
    fs::rename(&temp, path).with_context(|| format!("writing `{}`", path.display()))
}

#[cfg(test)]
mod tests;
