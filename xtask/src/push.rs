//! `cargo xtask push`: sends the images `build` wrote to a registry (GHCR in production).
//!
//! Per image: HEAD each tag and stop if all already point at the manifest; else HEAD the
//! manifest by digest and only PUT the missing tags if the registry has it; else HEAD each
//! blob, mount the missing ones from another repository where they were seen before, upload
//! the rest in parallel (bounded), and PUT the manifest once per tag, last.

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use xshell::{Shell, cmd};

use crate::{
    flags,
    image::{self, BuiltImage},
    project::Revision,
    registry::{
        self, BlobSource, BlobUpload, Client, ClientOptions, Credentials, Mount, Registry,
        credentials, human_bytes,
        reference::{validate_digest, validate_repository, validate_tag},
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
            ..PushOptions::default()
        };
        let pushed = push(sh, &opts)?;
        if self.json {
            for image in &pushed {
                println!("{}", image.to_json());
            }
        }
        Ok(())
    }
}

/// Everything `push` needs to know; [`PushOptions::default`] is `cargo xtask push` with no flags.
#[derive(Debug, Clone)]
pub(crate) struct PushOptions {
    /// Images to push: `backend`, `frontend` (empty: all).
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
    pub(crate) digest: String,
    pub(crate) tags: Vec<String>,
    /// The tags this push wrote; the others already pointed at `digest`.
    pub(crate) tags_written: Vec<String>,
    pub(crate) blobs_uploaded: usize,
    pub(crate) blobs_mounted: usize,
    pub(crate) blobs_skipped: usize,
    pub(crate) bytes_uploaded: u64,
    pub(crate) retries: u64,
    /// Digests of the uploaded blobs.
    pub(crate) uploaded: Vec<String>,
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

/// Builds (a no-op when nothing changed: the layer cache answers) and pushes.
pub(crate) fn push(sh: &Shell, opts: &PushOptions) -> anyhow::Result<Vec<PushedImage>> {
    let report = image::build(sh, &opts.images)?;
    push_built(sh, opts, &report.revision, &report.images)
}

/// Pushes images that are already built; `revision` gives the default version tag.
pub(crate) fn push_built(
    sh: &Shell,
    opts: &PushOptions,
    revision: &Revision,
    images: &[BuiltImage],
) -> anyhow::Result<Vec<PushedImage>> {
    let registry = Registry::parse(&opts.registry, &opts.insecure_registries)?;
    let namespace = match &opts.namespace {
        Some(namespace) => namespace.trim().trim_matches('/').to_ascii_lowercase(),
        None => default_namespace(sh)?,
    };
    let mut tags = if opts.tags.is_empty() {
        vec![revision.version.clone(), "latest".to_owned()]
    } else {
        opts.tags.clone()
    };
    tags.dedup();
    for tag in &tags {
        validate_tag(tag)?;
    }
    for image in images {
        validate_repository(&format!("{namespace}/{}", image.name))
            .context("check `--namespace` (or GITHUB_REPOSITORY)")?;
        for digest in blob_digests(image).chain([image.blobs.manifest.digest.as_str()]) {
            validate_digest(digest).with_context(|| format!("image `{}`", image.name))?;
        }
    }
    let credentials = match &opts.credentials {
        CredentialSource::Lookup => credentials::lookup(sh, &registry.host)?,
        CredentialSource::Given(credentials) => Some(credentials.clone()),
        CredentialSource::Anonymous => None,
    };
    let client = Client::new(registry.clone(), credentials, opts.client);
    let mut cache = MountCache::load(opts.mount_cache.as_deref(), &registry.host);
    let mut pushed = Vec::new();
    for image in images {
        let repository = format!("{namespace}/{}", image.name);
        let result = push_image(&client, &repository, image, &tags, &cache, opts)
            .with_context(|| format!("pushing image `{}` to {registry}/{repository}", image.name));
        let result = match result {
            Ok(result) => result,
            Err(err) => {
                cache.save();
                return Err(err);
            }
        };
        for digest in blob_digests(image) {
            cache.record(digest, &repository);
        }
        pushed.push(result);
    }
    cache.save();
    Ok(pushed)
}

/// A blob of the image: the config from memory, layers streamed from the OCI layout.
struct PendingBlob<'a> {
    what: String,
    digest: &'a str,
    size: u64,
    file: Option<PathBuf>,
    bytes: &'a [u8],
}

impl PendingBlob<'_> {
    fn source(&self) -> BlobSource<'_> {
        match &self.file {
            Some(path) => BlobSource::File(path),
            None => BlobSource::Bytes(self.bytes),
        }
    }
}

fn pending_blobs(image: &BuiltImage) -> anyhow::Result<Vec<PendingBlob<'_>>> {
    let n_layers = image.blobs.layers.len();
    let mut blobs = Vec::new();
    for (idx, layer) in image.blobs.layers.iter().enumerate() {
        let hex = layer
            .digest
            .strip_prefix("sha256:")
            .unwrap_or(&layer.digest);
        let path = image.layout.join("blobs/sha256").join(hex);
        if !path.is_file() {
            bail!(
                "layer {} is missing from `{}`: run `cargo xtask build`",
                layer.digest,
                image.layout.display()
            );
        }
        blobs.push(PendingBlob {
            what: format!("layer {}/{n_layers}", idx + 1),
            digest: &layer.digest,
            size: layer.size,
            file: Some(path),
            bytes: &[],
        });
    }
    blobs.push(PendingBlob {
        what: "config".to_owned(),
        digest: &image.blobs.config.digest,
        size: image.blobs.config.size(),
        file: None,
        bytes: &image.blobs.config.bytes,
    });
    Ok(blobs)
}

fn blob_digests(image: &BuiltImage) -> impl Iterator<Item = &str> {
    image
        .blobs
        .layers
        .iter()
        .map(|l| l.digest.as_str())
        .chain([image.blobs.config.digest.as_str()])
}

fn push_image(
    client: &Client,
    repository: &str,
    image: &BuiltImage,
    tags: &[String],
    cache: &MountCache,
    opts: &PushOptions,
) -> anyhow::Result<PushedImage> {
    let start = Instant::now();
    let retries_before = client.retries();
    let manifest = &image.blobs.manifest;
    let blobs = pending_blobs(image)?;
    let mut pushed = PushedImage {
        name: image.name.to_owned(),
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
        if client.manifest_digest(repository, tag)?.as_deref() != Some(manifest.digest.as_str()) {
            missing_tags.push(tag.clone());
        }
    }
    // A manifest the registry holds implies its blobs: only tags are missing then.
    // A tag already pointing at it proves it is there; else ask by digest.
    let manifest_present = missing_tags.len() < tags.len()
        || client
            .manifest_digest(repository, &manifest.digest)?
            .is_some();
    if manifest_present {
        pushed.blobs_skipped = blobs.len();
    } else {
        upload_blobs(
            client,
            repository,
            image.name,
            &blobs,
            cache,
            opts,
            &mut pushed,
        )?;
    }

    // Manifests last, once every blob is there: a failure leaves no tag behind.
    let media_type = serde_json::from_slice::<Value>(&manifest.bytes)
        .ok()
        .and_then(|m| m["mediaType"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_owned());
    for tag in &missing_tags {
        client.put_manifest(repository, tag, &media_type, &manifest.bytes)?;
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

enum Outcome {
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
                pushed.uploaded.push(blob.digest.to_owned());
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
) -> Result<Outcome, registry::Error> {
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
    let upload = BlobUpload {
        digest: blob.digest,
        size: blob.size,
        source: blob.source(),
    };
    client.upload_blob(repository, upload, session, &progress.sent)?;
    Ok(Outcome::Uploaded)
}

/// Per-image progress on stderr: a line redrawn in place on a terminal, one line per
/// uploaded or mounted blob otherwise (CI logs keep every line).
struct Progress {
    enabled: bool,
    tty: bool,
    name: String,
    n_blobs: usize,
    total_bytes: u64,
    n_done: AtomicUsize,
    sent: AtomicU64,
    done: AtomicBool,
}

impl Progress {
    fn new(name: &str, blobs: &[PendingBlob<'_>], enabled: bool) -> Progress {
        Progress {
            enabled,
            tty: enabled && std::io::stderr().is_terminal(),
            name: name.to_owned(),
            n_blobs: blobs.len(),
            total_bytes: blobs.iter().map(|b| b.size).sum(),
            n_done: AtomicUsize::new(0),
            sent: AtomicU64::new(0),
            done: AtomicBool::new(false),
        }
    }

    fn finished(&self, blob: &PendingBlob<'_>, outcome: &Outcome) {
        self.n_done.fetch_add(1, Ordering::Relaxed);
        if !self.enabled || self.tty {
            return;
        }
        let verb = match outcome {
            Outcome::Skipped => return,
            Outcome::Mounted => "mounted",
            Outcome::Uploaded => "uploaded",
        };
        eprintln!(
            "{}: {verb} {} {} ({})",
            self.name,
            blob.what,
            short(blob.digest),
            human_bytes(blob.size)
        );
    }

    fn tick_until_done(&self) {
        let mut stderr = std::io::stderr();
        while !self.done.load(Ordering::Relaxed) {
            let _ = write!(
                stderr,
                "\r\x1b[2K{}: {}/{} blobs, {} of at most {} sent",
                self.name,
                self.n_done.load(Ordering::Relaxed),
                self.n_blobs,
                human_bytes(self.sent.load(Ordering::Relaxed)),
                human_bytes(self.total_bytes)
            );
            let _ = stderr.flush();
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = write!(stderr, "\r\x1b[2K");
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

/// Where each blob was pushed before, per registry: the candidates for a mount.
/// Stale entries cost one failed mount request, after which the blob is uploaded.
struct MountCache {
    path: Option<PathBuf>,
    host: String,
    hosts: BTreeMap<String, Value>,
}

const MAX_HOSTS: usize = 16;
const MAX_REPOSITORIES_PER_BLOB: usize = 8;
const MAX_BLOBS_PER_HOST: usize = 4096;

impl MountCache {
    fn load(path: Option<&Path>, host: &str) -> MountCache {
        let hosts = path
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .and_then(|v| v.as_object().cloned())
            .map(|map| map.into_iter().collect())
            .unwrap_or_default();
        MountCache {
            path: path.map(Path::to_path_buf),
            host: host.to_owned(),
            hosts,
        }
    }

    fn candidates(&self, digest: &str, repository: &str) -> Vec<String> {
        if self.path.is_none() {
            return Vec::new();
        }
        self.hosts
            .get(&self.host)
            .and_then(|h| h["blobs"][digest].as_array())
            .map(|repos| {
                repos
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|r| *r != repository)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn record(&mut self, digest: &str, repository: &str) {
        if self.path.is_none() {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let entry = self
            .hosts
            .entry(self.host.clone())
            .or_insert_with(|| json!({"blobs": {}}));
        entry["used"] = json!(now);
        let Some(blobs) = entry["blobs"].as_object_mut() else {
            return;
        };
        let repos = blobs.entry(digest.to_owned()).or_insert_with(|| json!([]));
        let mut list: Vec<Value> = repos.as_array().cloned().unwrap_or_default();
        list.retain(|r| r.as_str() != Some(repository));
        list.insert(0, json!(repository));
        list.truncate(MAX_REPOSITORIES_PER_BLOB);
        *repos = Value::Array(list);
        if blobs.len() > MAX_BLOBS_PER_HOST {
            let extra: Vec<String> = blobs
                .keys()
                .take(blobs.len() - MAX_BLOBS_PER_HOST)
                .cloned()
                .collect();
            for key in extra {
                blobs.remove(&key);
            }
        }
    }

    /// Best effort: a lost cache only costs mounts.
    fn save(&mut self) {
        let Some(path) = &self.path else {
            return;
        };
        while self.hosts.len() > MAX_HOSTS {
            let oldest = self
                .hosts
                .iter()
                .min_by_key(|(_, v)| v["used"].as_u64().unwrap_or(0))
                .map(|(k, _)| k.clone());
            match oldest {
                Some(key) => self.hosts.remove(&key),
                None => break,
            };
        }
        let temp = path.with_extension(format!("tmp-{}", std::process::id()));
        let json = Value::Object(self.hosts.clone().into_iter().collect());
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&temp, json.to_string()))
            .and_then(|()| std::fs::rename(&temp, path));
        if let Err(err) = written {
            eprintln!("warning: could not write `{}`: {err}", path.display());
        }
    }
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
    match namespace_from_remote(&remote) {
        Some(namespace) => Ok(namespace),
        None => bail!(
            "no namespace to push to: pass `--namespace OWNER/REPO` or set GITHUB_REPOSITORY (the `origin` remote `{remote}` names no OWNER/REPO)"
        ),
    }
}

/// `https://github.com/Owner/Repo.git`, `git@github.com:Owner/Repo.git`,
/// `ssh://git@host/owner/repo` give `owner/repo`; local paths give nothing.
fn namespace_from_remote(url: &str) -> Option<String> {
    let url = url.trim();
    let path = if let Some((_, rest)) = url.split_once("://") {
        rest.split_once('/')?.1
    } else if let Some((host, path)) = url.split_once(':') {
        if host.contains('/') || host.is_empty() {
            return None;
        }
        path
    } else {
        return None;
    };
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [.., owner, repo] => Some(format!("{owner}/{repo}").to_ascii_lowercase()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_from_git_remotes() {
        for (remote, expected) in [
            (
                "https://github.com/Yassine-El-Gherrabi/time-manager.git",
                Some("yassine-el-gherrabi/time-manager"),
            ),
            ("https://github.com/owner/repo", Some("owner/repo")),
            ("git@github.com:Owner/Repo.git", Some("owner/repo")),
            ("ssh://git@github.com/owner/repo.git/", Some("owner/repo")),
            (
                "https://gitlab.example/group/sub/repo.git",
                Some("sub/repo"),
            ),
            ("/home/me/time-manager", None),
            ("../time-manager", None),
            ("https://github.com/", None),
            ("", None),
        ] {
            assert_eq!(
                namespace_from_remote(remote).as_deref(),
                expected,
                "{remote}"
            );
        }
    }

    #[test]
    fn push_json_has_exactly_the_documented_fields() {
        let pushed = PushedImage {
            name: "backend".to_owned(),
            repository: "ghcr.io/o/r/backend".to_owned(),
            digest: "sha256:abc".to_owned(),
            tags: vec!["abc1234".to_owned(), "latest".to_owned()],
            tags_written: vec![],
            blobs_uploaded: 1,
            blobs_mounted: 2,
            blobs_skipped: 3,
            bytes_uploaded: 4,
            retries: 5,
            uploaded: vec![],
            elapsed: Duration::ZERO,
        };
        assert_eq!(
            pushed.to_json().to_string(),
            r#"{"blobs_mounted":2,"blobs_skipped":3,"blobs_uploaded":1,"bytes_uploaded":4,"digest":"sha256:abc","name":"backend","reference":"ghcr.io/o/r/backend@sha256:abc","retries":5,"tags":["abc1234","latest"]}"#
        );
    }

    #[test]
    fn mount_cache_remembers_repositories_per_registry() {
        let dir = std::env::temp_dir().join(format!("xtask-mount-cache-{}", std::process::id()));
        let path = dir.join("cache.json");
        let _ = std::fs::remove_dir_all(&dir);
        let mut cache = MountCache::load(Some(&path), "127.0.0.1:5000");
        cache.record("sha256:a", "ns/backend");
        cache.record("sha256:a", "ns/frontend");
        cache.save();
        let cache = MountCache::load(Some(&path), "127.0.0.1:5000");
        assert_eq!(cache.candidates("sha256:a", "ns/frontend"), ["ns/backend"]);
        assert_eq!(
            cache.candidates("sha256:a", "other/x"),
            ["ns/frontend", "ns/backend"]
        );
        assert!(cache.candidates("sha256:b", "other/x").is_empty());
        let elsewhere = MountCache::load(Some(&path), "127.0.0.1:5001");
        assert!(elsewhere.candidates("sha256:a", "other/x").is_empty());
        let disabled = MountCache::load(None, "127.0.0.1:5000");
        assert!(disabled.candidates("sha256:a", "other/x").is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
