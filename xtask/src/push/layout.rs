//! Reading an OCI image layout, the contract between build and push: `index.json` names
//! the manifest, the manifest names the config and layers, and every blob comes from
//! `blobs/sha256/`. The manifest and config are read whole and checked against their
//! digests here; layers are checked for presence and size here, and hashed before upload.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail, format_err};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use crate::digest::{self, Digest};

/// The manifest media type when a manifest does not say (this builder always says).
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// One image as an OCI layout on disk holds it.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The image name: the layout directory's name (`backend`).
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    /// `org.opencontainers.image.ref.name` of the manifest: the version `build` tagged.
    pub(crate) tag: Option<String>,
    pub(crate) manifest: BlobInMemory,
    pub(crate) media_type: String,
    pub(crate) config: BlobInMemory,
    pub(crate) layers: Vec<BlobOnDisk>,
}

/// A small blob (manifest, config), read and verified.
#[derive(Debug, Clone)]
pub(crate) struct BlobInMemory {
    pub(crate) digest: Digest,
    pub(crate) bytes: Vec<u8>,
}

/// A layer, streamed from disk when uploaded.
#[derive(Debug, Clone)]
pub(crate) struct BlobOnDisk {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    pub(crate) path: PathBuf,
}

impl Layout {
    /// Reads the layout in `dir`; the image is named after the directory.
    pub(crate) fn read(dir: &Path) -> anyhow::Result<Layout> {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("`{}` names no image", dir.display()))?
            .to_owned();
        read(dir, name).with_context(|| format!("reading the OCI layout `{}`", dir.display()))
    }

    /// The config, then the layers: everything the manifest references.
    pub(crate) fn blob_digests(&self) -> impl Iterator<Item = &Digest> {
        self.layers
            .iter()
            .map(|l| &l.digest)
            .chain([&self.config.digest])
    }
}

fn read(dir: &Path, name: String) -> anyhow::Result<Layout> {
    let index_path = dir.join("index.json");
    let index_bytes = fs::read(&index_path).map_err(|err| {
        format_err!(
            "reading `{}`: {err}: run `cargo xtask build` first",
            index_path.display()
        )
    })?;
    let index: ImageIndex = serde_json::from_slice(&index_bytes)
        .with_context(|| format!("`{}` is not an OCI image index", index_path.display()))?;
    let [descriptor] = index.manifests().as_slice() else {
        bail!(
            "`{}` lists {} manifests; a layout from `cargo xtask build` lists exactly one",
            index_path.display(),
            index.manifests().len()
        );
    };
    let tag = descriptor
        .annotations()
        .as_ref()
        .and_then(|a| a.get("org.opencontainers.image.ref.name"))
        .cloned();
    let manifest = read_small(dir, descriptor, "manifest")?;
    let parsed: ImageManifest = serde_json::from_slice(&manifest.bytes)
        .with_context(|| format!("manifest {} is not an OCI image manifest", manifest.digest))?;
    let media_type = parsed
        .media_type()
        .as_ref()
        .map_or(OCI_MANIFEST.to_owned(), |m| m.to_string());
    let config = read_small(dir, parsed.config(), "config")?;
    let layers = parsed
        .layers()
        .iter()
        .enumerate()
        .map(|(idx, layer)| {
            let what = format!("layer {}/{}", idx + 1, parsed.layers().len());
            on_disk(dir, layer, &what)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Layout {
        name,
        dir: dir.to_path_buf(),
        tag,
        manifest,
        media_type,
        config,
        layers,
    })
}

fn descriptor_digest(descriptor: &Descriptor) -> anyhow::Result<Digest> {
    Digest::parse(descriptor.digest().as_ref())
}

/// Reads a blob whole and checks its size and digest.
fn read_small(dir: &Path, descriptor: &Descriptor, what: &str) -> anyhow::Result<BlobInMemory> {
    let blob = on_disk(dir, descriptor, what)?;
    let bytes = fs::read(&blob.path)
        .with_context(|| format!("reading {what} {} `{}`", blob.digest, blob.path.display()))?;
    let got = Digest::of(&bytes);
    if got != blob.digest {
        bail!(
            "{what} `{}` has digest {got}, not {}: it changed after it was built; run `cargo xtask build`",
            blob.path.display(),
            blob.digest
        );
    }
    Ok(BlobInMemory {
        digest: blob.digest,
        bytes,
    })
}

/// Where a blob is, after checking it is there with the size the descriptor gives.
fn on_disk(dir: &Path, descriptor: &Descriptor, what: &str) -> anyhow::Result<BlobOnDisk> {
    let digest = descriptor_digest(descriptor)?;
    let path = dir.join(digest.blob_path());
    let size = descriptor.size();
    let on_disk = match fs::metadata(&path) {
        Ok(meta) if meta.is_file() => meta.len(),
        _ => bail!(
            "{what} {digest} is missing: no file `{}`; run `cargo xtask build`",
            path.display()
        ),
    };
    if on_disk != size {
        bail!(
            "{what} `{}` holds {on_disk} bytes, the manifest says {size} for {digest}: run `cargo xtask build`",
            path.display()
        );
    }
    Ok(BlobOnDisk { digest, size, path })
}

/// Hashes a layer file before it is sent: the bytes that were hashed are the bytes sent.
pub(crate) fn verify(blob: &BlobOnDisk) -> anyhow::Result<()> {
    let got = digest::sha256_file(&blob.path)?;
    if got != blob.digest.hex() {
        bail!(
            "`{}` has digest sha256:{got}, not {}: it changed after it was built; run `cargo xtask build`",
            blob.path.display(),
            blob.digest
        );
    }
    Ok(())
}
