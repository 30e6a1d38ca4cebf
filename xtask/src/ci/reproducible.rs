//! Builds the images a second time from another clone, at another path with other file
//! mtimes, and requires identical digests; on a difference, says where it comes from.

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
    let _dir = sh.push_dir(&clone);
    let cargo = cargo(sh);
    let json = cmd!(sh, "{cargo} run --quiet --package xtask -- build --json")
        .env("CARGO_TARGET_DIR", &clone_target)
        .env_remove("SOURCE_DATE_EPOCH")
        .read()
        .context("building the images from the second clone")?;
    drop(_dir);
    let second: serde_json::Value =
        serde_json::from_str(&json).context("parsing `build --json` output")?;
    let second: BTreeMap<String, serde_json::Value> = second["images"]
        .as_array()
        .context("no images in `build --json` output")?
        .iter()
        .filter_map(|image| Some((image["name"].as_str()?.to_owned(), image.clone())))
        .collect();

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
            let theirs = blob_path(&clone_target, other_digest);
            for difference in verify::diff_layers(&ours, &theirs)? {
                problems.push(format!("  layer {idx} ({}): {difference}", image.name));
            }
        }
        if other["config_digest"] != image.blobs.config.digest.as_str() {
            problems.push(format!(
                "  config differs: compare `{}` with `{}`",
                blob_path(&project::target_dir(), &image.blobs.config.digest).display(),
                blob_path(&clone_target, other["config_digest"].as_str().unwrap_or("")).display()
            ));
        }
    }
    if !problems.is_empty() {
        bail!("images are not reproducible:\n{}", problems.join("\n"));
    }
    std::fs::remove_dir_all(&clone)?;
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
