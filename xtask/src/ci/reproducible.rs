//! Builds the images a second time from another clone, at another path with other file
//! mtimes, and requires identical digests; on a difference, says where it comes from. Then
//! an edit of the backend and its revert, built incrementally in that clone, must give the
//! same digests again.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::{
    image::{BuildReport, verify},
    project::{self, cargo},
};

pub(crate) fn check(sh: &Shell, first: &BuildReport, scratch: &Path) -> anyhow::Result<()> {
    let clone = scratch.join("second-clone");
    let _ = std::fs::remove_dir_all(&clone);
    project::clone_working_tree(sh, &clone)?;
    // Every file gets an mtime no build would use, a day apart from the original checkout.
    touch_all(
        &clone,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000),
    )?;

    // Not the first build's target directory: nothing the first build compiled is reused.
    let clone_target = project::clones_target_dir();
    let second = build(sh, &clone, &clone_target).context("building from the second clone")?;
    compare(first, &second.images, &clone_target)?;
    incremental_round_trip(sh, &clone, &clone_target, &second.images)?;
    std::fs::remove_dir_all(&clone)?;
    Ok(())
}

/// The images' profile compiles the workspace incrementally (`Cargo.toml`): a backend edit
/// and its revert, built in turn in the same target directory, must give back exactly the
/// images the build before the edit wrote, so a developer's incremental image is CI's.
fn incremental_round_trip(
    sh: &Shell,
    clone: &Path,
    target: &Path,
    before: &BTreeMap<String, serde_json::Value>,
) -> anyhow::Result<()> {
    let lib = clone.join("backend/src/lib.rs");
    let original =
        std::fs::read_to_string(&lib).with_context(|| format!("reading `{}`", lib.display()))?;
    std::fs::write(
        &lib,
        format!("{original}\n#[used]\nstatic ROUND_TRIP: [u8; 4] = *b\"edit\";\n"),
    )?;
    let edited = build(sh, clone, target).context("building the edited second clone");
    std::fs::write(&lib, &original)?;
    let edited = edited?;
    if edited.images.get("backend").map(digest_of) == before.get("backend").map(digest_of) {
        bail!(
            "the edit of `backend/src/lib.rs` did not change the backend image: the round trip proves nothing"
        );
    }
    let reverted = build(sh, clone, target).context("building the reverted second clone")?;
    if reverted.inputs_unchanged {
        bail!("the reverted build took the fast path: nothing was compiled incrementally");
    }
    for (name, image) in before {
        let again = digest_of(
            reverted
                .images
                .get(name)
                .with_context(|| format!("no `{name}` after the revert"))?,
        );
        if again != digest_of(image) {
            bail!(
                "{name}: {} before an edit of `backend/src/lib.rs`, {again} after its revert: \
                 the incremental rebuild is not the build from nothing (try `incremental = false` \
                 in `[profile.release]` and tell rustc's developers)",
                digest_of(image)
            );
        }
        eprintln!("  {name}: {again} again after an edit and its revert, built incrementally");
    }
    Ok(())
}

/// The manifest digest of one image of `build --json`.
fn digest_of(image: &serde_json::Value) -> &str {
    image["digest"].as_str().unwrap_or_default()
}

/// What `build --json` in `clone` reported.
struct CloneBuild {
    images: BTreeMap<String, serde_json::Value>,
    inputs_unchanged: bool,
}

fn build(sh: &Shell, clone: &Path, target: &Path) -> anyhow::Result<CloneBuild> {
    let _dir = sh.push_dir(clone);
    let cargo = cargo(sh);
    let json = cmd!(sh, "{cargo} run --quiet --package xtask -- build --json")
        .env("CARGO_TARGET_DIR", target)
        .env_remove("SOURCE_DATE_EPOCH")
        .read()?;
    let report: serde_json::Value =
        serde_json::from_str(&json).context("parsing `build --json` output")?;
    let images = report["images"]
        .as_array()
        .context("no images in `build --json` output")?
        .iter()
        .filter_map(|image| Some((image["name"].as_str()?.to_owned(), image.clone())))
        .collect();
    Ok(CloneBuild {
        images,
        inputs_unchanged: report["inputs_unchanged"].as_bool().unwrap_or(false),
    })
}

/// Requires the second clone's images to be the first build's; otherwise names the layer,
/// path and header field, or the config, that differ.
fn compare(
    first: &BuildReport,
    second: &BTreeMap<String, serde_json::Value>,
    clone_target: &Path,
) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for image in &first.images {
        let other = second
            .get(image.name)
            .with_context(|| format!("second build has no `{}`", image.name))?;
        if other["digest"] == image.blobs.manifest.digest.as_str() {
            eprintln!(
                "  {}: {} reproduced",
                image.name, image.blobs.manifest.digest
            );
            continue;
        }
        problems.push(format!(
            "{}: manifest {} vs {}",
            image.name, image.blobs.manifest.digest, other["digest"]
        ));
        let other_layers = other["layers"].as_array().cloned().unwrap_or_default();
        for (idx, layer) in image.blobs.layers.iter().enumerate() {
            let Some(other_digest) = other_layers.get(idx).and_then(|l| l["digest"].as_str())
            else {
                problems.push(format!("  layer {idx}: missing from the second build"));
                continue;
            };
            if other_digest == layer.digest {
                continue;
            }
            let ours = blob_path(&project::target_dir(), &layer.digest);
            let theirs = blob_path(clone_target, other_digest);
            for difference in verify::diff_layers(&ours, &theirs)? {
                problems.push(format!("  layer {idx} ({}): {difference}", image.name));
            }
        }
        if other["config_digest"] != image.blobs.config.digest.as_str() {
            problems.push(format!(
                "  config differs: compare `{}` with `{}`",
                blob_path(&project::target_dir(), &image.blobs.config.digest).display(),
                blob_path(clone_target, other["config_digest"].as_str().unwrap_or("")).display()
            ));
        }
    }
    if !problems.is_empty() {
        bail!("images are not reproducible:\n{}", problems.join("\n"));
    }
    Ok(())
}

fn blob_path(target_dir: &Path, digest: &str) -> PathBuf {
    target_dir
        .join("images/.blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn touch_all(dir: &Path, mtime: SystemTime) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            if path.file_name().is_some_and(|n| n != ".git") {
                touch_all(&path, mtime)?;
            }
        } else if meta.is_file() {
            std::fs::File::options()
                .write(true)
                .open(&path)?
                .set_modified(mtime)?;
        }
    }
    Ok(())
}
