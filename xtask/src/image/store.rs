//! `target/images/`: the content-addressed blob store, the layer cache, and the outputs.
//!
//! ```text
//! target/images/
//!   .blobs/sha256/<hex>     every blob ever built (layers, configs, manifests)
//!   .cache/layers/<key>     layer input hash -> "digest diff_id size"
//!   <name>/                 OCI image layout of the image (blobs hard-linked from .blobs)
//!   <name>.tar              `docker load`-able archive (OCI layout + manifest.json)
//!   <name>.sbom.json        SPDX bill of materials
//! ```

use std::{
    fs,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context, bail};

use crate::{
    digest::{Digest, HashingWriter},
    image::{
        layer::{self, Entry, LayerBlob, Source},
        oci::{self, Blob},
    },
};

pub(crate) struct Store {
    pub(crate) root: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    pub(crate) fn new(root: PathBuf) -> anyhow::Result<Store> {
        for dir in [".blobs/sha256", ".cache/layers"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).with_context(|| format!("creating `{}`", path.display()))?;
        }
        Ok(Store { root })
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(".blobs/sha256").join(digest.hex())
    }

    pub(crate) fn cache_dir(&self) -> PathBuf {
        self.root.join(".cache")
    }

    /// Returns the layer blob for these entries, from the cache when the inputs are unchanged.
    pub(crate) fn layer(&self, entries: &[Entry], mtime: u64) -> anyhow::Result<(LayerBlob, bool)> {
        let key = layer::input_key(entries, mtime)?;
        let record = self.root.join(".cache/layers").join(&key);
        if let Some(blob) = self.cached_layer(&record) {
            return Ok((blob, true));
        }
        let temp = self.temp_path();
        let file =
            fs::File::create(&temp).with_context(|| format!("creating `{}`", temp.display()))?;
        let blob = layer::write(entries, mtime, BufWriter::new(file))?;
        self.commit(&temp, &blob.digest)?;
        fs::write(
            &record,
            format!("{} {} {}\n", blob.digest, blob.diff_id, blob.size),
        )?;
        Ok((blob, false))
    }

    fn cached_layer(&self, record: &Path) -> Option<LayerBlob> {
        let text = fs::read_to_string(record).ok()?;
        let mut parts = text.split_whitespace();
        let blob = LayerBlob {
            digest: parts.next()?.parse().ok()?,
            diff_id: parts.next()?.parse().ok()?,
            size: parts.next()?.parse().ok()?,
        };
        let on_disk = fs::metadata(self.blob_path(&blob.digest)).ok()?.len();
        (on_disk == blob.size).then_some(blob)
    }

    pub(crate) fn put(&self, blob: &Blob) -> anyhow::Result<()> {
        let path = self.blob_path(&blob.digest);
        if path.exists() {
            return Ok(());
        }
        let temp = self.temp_path();
        fs::write(&temp, &blob.bytes)?;
        self.commit(&temp, &blob.digest)
    }

    /// Stores a blob written by `write`, checking that what arrived has the expected digest.
    pub(crate) fn put_file(
        &self,
        digest: &Digest,
        write: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let temp = self.temp_path();
        let file =
            fs::File::create(&temp).with_context(|| format!("creating `{}`", temp.display()))?;
        let mut out = HashingWriter::new(BufWriter::new(file));
        let res = write(&mut out);
        let (mut inner, got, _) = out.finish();
        inner.flush()?;
        if let Err(err) = res {
            let _ = fs::remove_file(&temp);
            return Err(err);
        }
        if got != *digest {
            let _ = fs::remove_file(&temp);
            bail!("blob {digest} arrived with digest {got}");
        }
        self.commit(&temp, digest)
    }

    fn temp_path(&self) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(format!(".blobs/tmp-{}-{n}", std::process::id()))
    }

    fn commit(&self, temp: &Path, digest: &Digest) -> anyhow::Result<()> {
        let path = self.blob_path(digest);
        fs::rename(temp, &path).with_context(|| format!("storing blob {digest}"))
    }

    /// Writes `<name>/` as an OCI image layout holding exactly this image's blobs.
    pub(crate) fn write_layout(
        &self,
        name: &str,
        image: &ImageBlobs,
        reference: &str,
        tag: &str,
    ) -> anyhow::Result<PathBuf> {
        let dir = self.root.join(name);
        if dir.exists() {
            fs::remove_dir_all(&dir)
                .with_context(|| format!("removing old `{}`", dir.display()))?;
        }
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs)?;
        for digest in image.digests() {
            let from = self.blob_path(digest);
            let to = dir.join(digest.blob_path());
            if fs::hard_link(&from, &to).is_err() {
                fs::copy(&from, &to)
                    .with_context(|| format!("copying blob {digest} into `{}`", dir.display()))?;
            }
        }
        fs::write(dir.join("oci-layout"), OCI_LAYOUT)?;
        fs::write(dir.join("index.json"), &image.index(reference, tag)?.bytes)?;
        Ok(dir)
    }

    /// Writes `<name>.tar`: the OCI layout plus docker's `manifest.json`, so both the classic
    /// and the containerd image stores of `docker load` accept it.
    pub(crate) fn write_archive(
        &self,
        name: &str,
        image: &ImageBlobs,
        repo_tags: &[String],
        mtime: u64,
    ) -> anyhow::Result<PathBuf> {
        let docker_manifest = serde_json::json!([{
            "Config": image.config.digest.blob_path(),
            "RepoTags": repo_tags,
            "Layers": image.layers.iter().map(|l| l.digest.blob_path()).collect::<Vec<_>>(),
        }]);
        let (reference, tag) = match repo_tags.first().and_then(|r| r.rsplit_once(':')) {
            Some((_, tag)) => (repo_tags[0].clone(), tag.to_owned()),
            None => bail!("an archive needs at least one `name:tag`"),
        };
        let mut entries = vec![
            Entry::file(
                "oci-layout",
                0o644,
                Source::Bytes(OCI_LAYOUT.as_bytes().to_vec()),
            ),
            Entry::file(
                "index.json",
                0o644,
                Source::Bytes(image.index(&reference, &tag)?.bytes),
            ),
            Entry::file(
                "manifest.json",
                0o644,
                Source::Bytes(oci::canonical_json(&docker_manifest)),
            ),
        ];
        for digest in image.digests() {
            entries.push(Entry::file(
                &digest.blob_path(),
                0o644,
                Source::Path(self.blob_path(digest)),
            ));
        }
        let entries = layer::normalize(entries)?;
        let path = self.root.join(format!("{name}.tar"));
        let temp = self.temp_path();
        let file = fs::File::create(&temp)?;
        let mut out = BufWriter::new(file);
        layer::write_tar(&entries, mtime, &mut out)?;
        out.flush()?;
        fs::rename(&temp, &path).with_context(|| format!("writing `{}`", path.display()))?;
        Ok(path)
    }
}

const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// The blobs of one image, as they were hashed.
#[derive(Debug, Clone)]
pub(crate) struct ImageBlobs {
    pub(crate) manifest: Blob,
    pub(crate) config: Blob,
    pub(crate) layers: Vec<LayerBlob>,
}

impl ImageBlobs {
    fn digests(&self) -> impl Iterator<Item = &Digest> {
        [&self.manifest.digest, &self.config.digest]
            .into_iter()
            .chain(self.layers.iter().map(|l| &l.digest))
    }

    fn index(&self, reference: &str, tag: &str) -> anyhow::Result<Blob> {
        oci::to_blob(&oci::layout_index(&self.manifest, reference, tag)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_layer_inputs_hit_the_cache_and_a_lost_blob_is_rebuilt() {
        let root = std::env::temp_dir().join(format!("xtask-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let store = Store::new(root.clone()).unwrap();
        let entries =
            layer::normalize(vec![Entry::file("a", 0o644, Source::Bytes(b"1".to_vec()))]).unwrap();
        let (first, cached) = store.layer(&entries, 7).unwrap();
        assert!(!cached);
        let (second, cached) = store.layer(&entries, 7).unwrap();
        assert!(cached);
        assert_eq!(first, second);
        fs::remove_file(store.blob_path(&first.digest)).unwrap();
        let (third, cached) = store.layer(&entries, 7).unwrap();
        assert!(!cached, "a cache record without its blob must not count");
        assert_eq!(third, first);
        assert!(store.blob_path(&first.digest).is_file());
        fs::remove_dir_all(root).unwrap();
    }
}
