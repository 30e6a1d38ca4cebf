//! `cargo xtask push`: sends the images `build` wrote to a registry (GHCR in production).
//!
//! Push reads only OCI layouts (`target/images/<name>/`, see `layout.rs`): after a build
//! by default, or exactly the layouts on disk with `--no-build`. Per image: HEAD each tag
//! and stop if all already point at the manifest; else HEAD the manifest by digest and only
//! PUT the missing tags if the registry has it; else HEAD each blob, mount the missing ones
//! from another repository where they were seen before (`mount_cache.rs`), upload the rest
//! in parallel (bounded, with `progress.rs`), and PUT the manifest once per tag, last.

mod layout;
mod mount_cache;
mod progress;

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use xshell::{Shell, cmd};

pub(crate) use crate::push::layout::{BlobInMemory, Layout};
use crate::steps::human_bytes;
use crate::{
    digest::Digest,
    flags,
    image::{self, BuiltImage, definitions},
    project,
    push::{mount_cache::MountCache, progress::Progress},
    registry::{
        BlobSource, BlobUpload, Client, ClientOptions, Credentials, Mount, Registry, credentials,
        reference::{validate_repository, validate_tag},
    },
};

impl flags::Push {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let opts = PushOptions {
            images: self.images,
            registry: self.registry,
            namespace: self.namespace,
            tags: self.tags,
            insecure_registries: self.insecure_registries,
            build: !self.no_build,
            ..PushOptions::default()
        };
        let pushed = push(sh, &opts)?;
        if self.json {
            println!("{}", report_json(&pushed));
        }
        Ok(())
    }
}

/// Everything `push` needs to know; [`PushOptions::default`] is `cargo xtask push` with no flags.
#[derive(Debug, Clone)]
pub(crate) struct PushOptions {
    /// Images to push: `backend`, `frontend` (empty: all); with `build: false`, the layouts
    /// `target/images/<name>/` that an earlier `cargo xtask build` wrote.
    pub(crate) images: Vec<String>,
    /// Registry host: `ghcr.io`, `127.0.0.1:5000`.
    pub(crate) registry: String,
    /// `OWNER/REPO`, lower-cased before use; `None`: `GITHUB_REPOSITORY`, else the `origin` remote.
    pub(crate) namespace: Option<String>,
    /// Tags to set; empty: the build's version (short commit) and `latest`.
    pub(crate) tags: Vec<String>,
    /// Hosts reached over plain HTTP although not loopback (`--insecure-registry`).
    pub(crate) insecure_registries: Vec<String>,
    pub(crate) credentials: CredentialSource,
    /// Timeout, retry bounds, read-only or not.
    pub(crate) client: ClientOptions,
    /// Blobs of one image uploaded at once.
    pub(crate) parallel_uploads: usize,
    /// Where pushed blobs are remembered, for cross-repository mounts; `None`: no mounts.
    pub(crate) mount_cache: Option<PathBuf>,
    /// Progress and a summary line per image on stderr.
    pub(crate) progress: bool,
    /// Build first (a no-op when nothing changed); `false`: push the layouts already on disk.
    pub(crate) build: bool,
}

impl Default for PushOptions {
    fn default() -> PushOptions {
        PushOptions {
            images: Vec::new(),
            registry: "ghcr.io".to_owned(),
            namespace: None,
            tags: Vec::new(),
            insecure_registries: Vec::new(),
            credentials: CredentialSource::Lookup,
            client: ClientOptions::default(),
            parallel_uploads: 4,
            mount_cache: Some(image::images_dir().join(".cache/registry-blobs.json")),
            progress: true,
            build: true,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum CredentialSource {
    /// Environment, then docker config and credential helpers (see `registry::credentials`).
    Lookup,
    Given(Credentials),
    Anonymous,
}

/// What one image's push did.
#[derive(Debug, Clone)]
pub(crate) struct PushedImage {
    pub(crate) name: String,
    /// `ghcr.io/owner/repo/backend`.
    pub(crate) repository: String,
    pub(crate) digest: Digest,
    pub(crate) tags: Vec<String>,
    /// The tags this push wrote; the others already pointed at `digest`.
    pub(crate) tags_written: Vec<String>,
    pub(crate) blobs_uploaded: usize,
    pub(crate) blobs_mounted: usize,
    pub(crate) blobs_skipped: usize,
    pub(crate) bytes_uploaded: u64,
    pub(crate) retries: u64,
    /// Digests of the uploaded blobs.
    pub(crate) uploaded: Vec<Digest>,
    pub(crate) elapsed: Duration,
}

impl PushedImage {
    /// `ghcr.io/owner/repo/backend@sha256:...`: what deploy refers to.
    pub(crate) fn reference(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "reference": self.reference(),
            "digest": self.digest,
            "tags": self.tags,
            "blobs_uploaded": self.blobs_uploaded,
            "blobs_mounted": self.blobs_mounted,
            "blobs_skipped": self.blobs_skipped,
            "bytes_uploaded": self.bytes_uploaded,
            "retries": self.retries,
        })
    }
}

/// The `push --json` document, shaped like `build --json`: `{"images": [...]}`.
pub(crate) fn report_json(pushed: &[PushedImage]) -> Value {
    json!({ "images": pushed.iter().map(PushedImage::to_json).collect::<Vec<_>>() })
}

/// Builds (a no-op when nothing changed: the layer cache answers) unless `opts.build` is
/// off, then pushes the layouts: push reads only what build wrote.
pub(crate) fn push(sh: &Shell, opts: &PushOptions) -> anyhow::Result<Vec<PushedImage>> {
    let dirs = if opts.build {
        let report = image::build(sh, &opts.images)?;
        report.images.into_iter().map(|i| i.layout).collect()
    } else {
        layout_dirs(&opts.images)?
    };
    push_layouts(sh, opts, &dirs)
}

/// `target/images/<name>/` of each named image (all when empty).
pub(crate) fn layout_dirs(names: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let names: Vec<&str> = if names.is_empty() {
        definitions::IMAGES.iter().map(|def| def.name).collect()
    } else {
        names
            .iter()
            .map(|name| definitions::find(name).map(|def| def.name))
            .collect::<anyhow::Result<_>>()?
    };
    Ok(names
        .into_iter()
        .map(|name| image::images_dir().join(name))
        .collect())
}

/// Pushes images that are already built, from the layouts their build wrote.
pub(crate) fn push_built(
    sh: &Shell,
    opts: &PushOptions,
    images: &[BuiltImage],
) -> anyhow::Result<Vec<PushedImage>> {
    let dirs: Vec<PathBuf> = images.iter().map(|i| i.layout.clone()).collect();
    push_layouts(sh, opts, &dirs)
}

/// Pushes the OCI layouts in `dirs`, each image named after its directory; the default
/// tags are the version `build` recorded in each layout's `index.json`, and `latest`.
/// Everything is read and checked before the first request.
pub(crate) fn push_layouts(
    sh: &Shell,
    opts: &PushOptions,
    dirs: &[PathBuf],
) -> anyhow::Result<Vec<PushedImage>> {
    let images = dirs
        .iter()
        .map(|dir| Layout::read(dir))
        .collect::<anyhow::Result<Vec<_>>>()?;
    push_read(sh, opts, &images)
}

/// Pushes layouts already read and checked by [`Layout::read`].
pub(crate) fn push_read(
    sh: &Shell,
    opts: &PushOptions,
    images: &[Layout],
) -> anyhow::Result<Vec<PushedImage>> {
    let registry = Registry::parse(&opts.registry, &opts.insecure_registries)?;
    let namespace = match &opts.namespace {
        Some(namespace) => namespace.trim().trim_matches('/').to_ascii_lowercase(),
        None => default_namespace(sh)?,
    };
    let mut tags_per_image = Vec::new();
    for image in images {
        validate_repository(&format!("{namespace}/{}", image.name))
            .context("check `--namespace` (or GITHUB_REPOSITORY)")?;
        let tags = tags(opts, image)?;
        for tag in &tags {
            validate_tag(tag)?;
        }
        tags_per_image.push(tags);
    }
    let credentials = match &opts.credentials {
        CredentialSource::Lookup => credentials::lookup(sh, &registry.host)?,
        CredentialSource::Given(credentials) => Some(credentials.clone()),
        CredentialSource::Anonymous => None,
    };
    let client = Client::new(registry.clone(), credentials, opts.client);
    let mut cache = MountCache::load(opts.mount_cache.as_deref(), &registry.host);
    let mut pushed = Vec::new();
    for (image, tags) in images.iter().zip(&tags_per_image) {
        let repository = format!("{namespace}/{}", image.name);
        let result = push_image(&client, &repository, image, tags, &cache, opts)
            .with_context(|| format!("pushing image `{}` to {registry}/{repository}", image.name));
        let result = match result {
            Ok(result) => result,
            Err(err) => {
                cache.save();
                return Err(err);
            }
        };
        for digest in image.blob_digests() {
            cache.record(digest, &repository);
        }
        pushed.push(result);
    }
    cache.save();
    Ok(pushed)
}

/// `--tag`s, else the layout's version and `latest`; duplicates dropped, order kept.
fn tags(opts: &PushOptions, image: &Layout) -> anyhow::Result<Vec<String>> {
    let mut tags = if opts.tags.is_empty() {
        let Some(version) = &image.tag else {
            bail!(
                "`{}` records no version (`org.opencontainers.image.ref.name`): pass `--tag`, or run `cargo xtask build`",
                image.dir.join("index.json").display()
            );
        };
        vec![version.clone(), "latest".to_owned()]
    } else {
        opts.tags.clone()
    };
    let mut seen = BTreeSet::new();
    tags.retain(|tag| seen.insert(tag.clone()));
    Ok(tags)
}

/// A blob of the image: the config from memory, layers streamed from the OCI layout.
pub(crate) struct PendingBlob<'a> {
    pub(crate) what: String,
    pub(crate) digest: &'a Digest,
    pub(crate) size: u64,
    on_disk: Option<&'a layout::BlobOnDisk>,
    bytes: &'a [u8],
}

impl PendingBlob<'_> {
    fn source(&self) -> BlobSource<'_> {
        match self.on_disk {
            Some(blob) => BlobSource::File(&blob.path),
            None => BlobSource::Bytes(self.bytes),
        }
    }
}

fn pending_blobs(image: &Layout) -> Vec<PendingBlob<'_>> {
    let n_layers = image.layers.len();
    let mut blobs: Vec<PendingBlob<'_>> = image
        .layers
        .iter()
        .enumerate()
        .map(|(idx, layer)| PendingBlob {
            what: format!("layer {}/{n_layers}", idx + 1),
            digest: &layer.digest,
            size: layer.size,
            on_disk: Some(layer),
            bytes: &[],
        })
        .collect();
    blobs.push(PendingBlob {
        what: "config".to_owned(),
        digest: &image.config.digest,
        size: image.config.bytes.len() as u64,
        on_disk: None,
        bytes: &image.config.bytes,
    });
    blobs
}

fn push_image(
    client: &Client,
    repository: &str,
    image: &Layout,
    tags: &[String],
    cache: &MountCache,
    opts: &PushOptions,
) -> anyhow::Result<PushedImage> {
    let start = Instant::now();
    let retries_before = client.retries();
    let manifest = &image.manifest;
    let blobs = pending_blobs(image);
    let mut pushed = PushedImage {
        name: image.name.clone(),
        repository: format!("{}/{repository}", client.registry()),
        digest: manifest.digest.clone(),
        tags: tags.to_vec(),
        tags_written: Vec::new(),
        blobs_uploaded: 0,
        blobs_mounted: 0,
        blobs_skipped: 0,
        bytes_uploaded: 0,
        retries: 0,
        uploaded: Vec::new(),
        elapsed: Duration::ZERO,
    };

    // Nothing-changed fast path: one HEAD per tag.
    let mut missing_tags = Vec::new();
    for tag in tags {
        if client.manifest_digest(repository, tag)?.as_ref() != Some(&manifest.digest) {
            missing_tags.push(tag.clone());
        }
    }
    // A manifest the registry holds implies its blobs: only tags are missing then.
    // A tag already pointing at it proves it is there; else ask by digest.
    let manifest_present = missing_tags.len() < tags.len()
        || client
            .manifest_digest(repository, manifest.digest.as_str())?
            .is_some();
    if manifest_present {
        pushed.blobs_skipped = blobs.len();
    } else {
        upload_blobs(
            client,
            repository,
            &image.name,
            &blobs,
            cache,
            opts,
            &mut pushed,
        )?;
    }

    // Manifests last, once every blob is there: a failure leaves no tag behind.
    for tag in &missing_tags {
        client.put_manifest(repository, tag, &image.media_type, &manifest.bytes)?;
        pushed.tags_written.push(tag.clone());
    }
    pushed.retries = client.retries() - retries_before;
    pushed.elapsed = start.elapsed();
    if opts.progress {
        eprintln!("{}", summary(&pushed));
    }
    Ok(pushed)
}

fn summary(p: &PushedImage) -> String {
    let tags = if p.tags_written.is_empty() {
        format!("tags {} already there", p.tags.join(", "))
    } else {
        format!("tagged {}", p.tags_written.join(", "))
    };
    format!(
        "{}: {} ({tags}): {} uploaded ({}), {} mounted, {} present, {} retries, {:.2} s",
        p.name,
        p.reference(),
        p.blobs_uploaded,
        human_bytes(p.bytes_uploaded),
        p.blobs_mounted,
        p.blobs_skipped,
        p.retries,
        p.elapsed.as_secs_f64()
    )
}

pub(crate) enum Outcome {
    Skipped,
    Mounted,
    Uploaded,
}

fn upload_blobs(
    client: &Client,
    repository: &str,
    name: &str,
    blobs: &[PendingBlob<'_>],
    cache: &MountCache,
    opts: &PushOptions,
    pushed: &mut PushedImage,
) -> anyhow::Result<()> {
    let progress = Progress::new(name, blobs, opts.progress);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let outcomes: Mutex<Vec<(usize, Outcome)>> = Mutex::new(Vec::new());
    let n_workers = opts.parallel_uploads.clamp(1, blobs.len().max(1));
    let worker = || -> anyhow::Result<()> {
        loop {
            let idx = next.fetch_add(1, Ordering::Relaxed);
            if idx >= blobs.len() || failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let blob = &blobs[idx];
            let candidates = cache.candidates(blob.digest, repository);
            let outcome = push_blob(client, repository, blob, &candidates, &progress)
                .with_context(|| blob.what.clone());
            match outcome {
                Ok(outcome) => {
                    progress.finished(blob, &outcome);
                    outcomes
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((idx, outcome));
                }
                Err(err) => {
                    failed.store(true, Ordering::Relaxed);
                    return Err(err);
                }
            }
        }
    };
    let results: Vec<anyhow::Result<()>> = std::thread::scope(|scope| {
        let ticker = progress
            .tty
            .then(|| scope.spawn(|| progress.tick_until_done()));
        let handles: Vec<_> = (0..n_workers).map(|_| scope.spawn(worker)).collect();
        let results = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::format_err!("upload thread panicked")))
            })
            .collect();
        progress.done.store(true, Ordering::Relaxed);
        if let Some(ticker) = ticker {
            let _ = ticker.join();
        }
        results
    });
    for result in results {
        result?;
    }
    let outcomes = outcomes
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (idx, outcome) in outcomes {
        let blob = &blobs[idx];
        match outcome {
            Outcome::Skipped => pushed.blobs_skipped += 1,
            Outcome::Mounted => pushed.blobs_mounted += 1,
            Outcome::Uploaded => {
                pushed.blobs_uploaded += 1;
                pushed.bytes_uploaded += blob.size;
                pushed.uploaded.push(blob.digest.clone());
            }
        }
    }
    Ok(())
}

fn push_blob(
    client: &Client,
    repository: &str,
    blob: &PendingBlob<'_>,
    candidates: &[String],
    progress: &Progress,
) -> anyhow::Result<Outcome> {
    if client.blob_exists(repository, blob.digest)? {
        return Ok(Outcome::Skipped);
    }
    let mut session = None;
    for from in candidates.iter().take(2) {
        match client.mount_blob(repository, blob.digest, from) {
            Ok(Mount::Mounted) => return Ok(Outcome::Mounted),
            // Not mounted (the source lost it): upload into the session this opened.
            Ok(Mount::Session(location)) => {
                session = Some(location);
                break;
            }
            // A missing source repository or no pull access to it: just upload.
            Err(_) => continue,
        }
    }
    // Only what is sent is hashed again: a no-change push reads no layer.
    if let Some(on_disk) = blob.on_disk {
        layout::verify(on_disk)?;
    }
    let upload = BlobUpload {
        digest: blob.digest,
        size: blob.size,
        source: blob.source(),
    };
    client.upload_blob(repository, upload, session, &progress.sent)?;
    Ok(Outcome::Uploaded)
}

/// `GITHUB_REPOSITORY`, else `OWNER/REPO` from the `origin` remote; lower-cased (GHCR
/// refuses upper case, and GitHub's names keep theirs).
fn default_namespace(sh: &Shell) -> anyhow::Result<String> {
    if let Ok(repository) = sh.var("GITHUB_REPOSITORY")
        && !repository.is_empty()
    {
        return Ok(repository.to_ascii_lowercase());
    }
    let remote = cmd!(sh, "git remote get-url origin")
        .quiet()
        .ignore_stderr()
        .read()
        .unwrap_or_default();
    match project::namespace_from_remote(&remote) {
        Some(namespace) => Ok(namespace),
        None => bail!(
            "no namespace to push to: pass `--namespace OWNER/REPO` or set GITHUB_REPOSITORY (the `origin` remote `{remote}` names no OWNER/REPO)"
        ),
    }
}

#[cfg(test)]
mod tests;
