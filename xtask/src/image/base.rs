//! Registry base images: resolved to one platform's manifest, pinned by digest in
//! `images.lock.json`, and pulled once into the local blob store so later builds need
//! no network. Pull shares the push client, so both have one auth and retry path.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Read,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail, format_err};
use oci_spec::image::ImageManifest;
use serde_json::Value;

use crate::{
    digest::Digest,
    image::{layer::LayerBlob, store::Store},
    project,
    registry::{self, Client, ClientOptions, ImageReference, Registry},
};

/// The platform every image of this project is built for.
pub(crate) const PLATFORM: &str = "linux/amd64";

/// Committed lock of base digests: `{"bases": {"<reference>": {"linux/amd64": "sha256:…"}}}`.
pub(crate) fn default_lock_path() -> PathBuf {
    project::root().join("images.lock.json")
}

/// A base image as the build uses it: its layers and config, all in the local store.
#[derive(Debug, Clone)]
pub(crate) struct BaseImage {
    pub(crate) digest: Digest,
    pub(crate) config: Value,
    pub(crate) layers: Vec<LayerBlob>,
}

fn client(host: &str, sh: &xshell::Shell) -> anyhow::Result<Client> {
    let registry = Registry::parse(host, &[])?;
    let credentials = registry::credentials::lookup(sh, host)?;
    Ok(Client::new(
        registry,
        credentials,
        ClientOptions {
            write: false,
            ..ClientOptions::default()
        },
    ))
}

/// `cargo xtask base update`: resolves each reference's tag to the platform manifest
/// digest now published, and records it in the lock.
pub(crate) fn update(
    sh: &xshell::Shell,
    references: &[String],
    lock_path: &Path,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut lock = read_lock(lock_path)?;
    let mut acc = Vec::new();
    for reference in references {
        let image = ImageReference::parse(reference)?;
        let client = client(&image.host, sh)?;
        let manifest = client
            .get_manifest(&image.repository, &image.tag)?
            .with_context(|| format!("base image `{reference}` not found"))?;
        let digest = platform_manifest(&client, &image, manifest)?.digest;
        lock.entry(reference.clone())
            .or_default()
            .insert(PLATFORM.to_owned(), digest.to_string());
        acc.push((reference.clone(), digest.to_string()));
    }
    write_lock(lock_path, &lock)?;
    Ok(acc)
}

/// The base for a build: from the store when all its blobs are there, else pulled by the
/// digest the lock pins (never by tag, so a moved tag cannot change a build).
pub(crate) fn load(
    sh: &xshell::Shell,
    reference: &str,
    lock_path: &Path,
    store: &Store,
) -> anyhow::Result<BaseImage> {
    let lock = read_lock(lock_path)?;
    let digest = lock
        .get(reference)
        .and_then(|platforms| platforms.get(PLATFORM))
        .ok_or_else(|| {
            format_err!(
                "base image `{reference}` is not pinned in `{}`: run `cargo xtask base update`",
                lock_path.display()
            )
        })?;
    let digest = Digest::parse(digest)
        .with_context(|| format!("`{}`: pin of `{reference}`", lock_path.display()))?;
    let digest = &digest;
    let image = ImageReference::parse(reference)?;
    let mut client: Option<Client> = None;
    let mut fetch = |digest: &Digest, size: u64| -> anyhow::Result<PathBuf> {
        let path = store.blob_path(digest);
        if path.is_file() {
            return Ok(path);
        }
        if client.is_none() {
            client = Some(self::client(&image.host, sh)?);
        }
        let client = client.as_ref().context("registry client")?;
        let bytes = client.get_blob(&image.repository, digest, size)?;
        store
            .put_file(digest, |out| Ok(out.write_all(&bytes)?))
            .with_context(|| format!("pulling blob {digest} of base `{reference}`"))?;
        Ok(path)
    };
    // The manifest is fetched by digest: the client checks the bytes against it.
    let manifest_path = store.blob_path(digest);
    if !manifest_path.is_file() {
        let client = self::client(&image.host, sh)?;
        let manifest = client
            .get_manifest(&image.repository, digest.as_str())?
            .with_context(|| {
                format!("base `{reference}`: manifest {digest} is gone from the registry")
            })?;
        store.put_file(digest, |out| Ok(out.write_all(&manifest.bytes)?))?;
    }
    // OCI and Docker v2 manifests share this shape; oci-spec keeps unknown media types.
    let manifest: ImageManifest =
        serde_json::from_slice(&fs::read(&manifest_path)?).with_context(|| {
            format!("base `{reference}`: manifest {digest} is not an image manifest")
        })?;
    let config_digest = Digest::parse(manifest.config().digest().as_ref())?;
    let config_size = manifest.config().size();
    let config: Value = serde_json::from_slice(&fs::read(fetch(&config_digest, config_size)?)?)
        .with_context(|| format!("base `{reference}`: config {config_digest} is not JSON"))?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let descriptors = manifest.layers();
    if diff_ids.len() != descriptors.len() {
        bail!(
            "base `{reference}`: {} layers but {} diff_ids in its config",
            descriptors.len(),
            diff_ids.len()
        );
    }
    let mut layers = Vec::new();
    for (descriptor, diff_id) in descriptors.iter().zip(&diff_ids) {
        let digest = Digest::parse(descriptor.digest().as_ref())?;
        let media_type = descriptor.media_type().to_string();
        if !media_type.ends_with("gzip") {
            bail!(
                "base `{reference}`: layer {digest} has media type `{media_type}`; only gzip layers are supported"
            );
        }
        let size = descriptor.size();
        fetch(&digest, size)?;
        layers.push(LayerBlob {
            digest,
            diff_id: Digest::parse(diff_id.as_str().context("diff_id is not a string")?)?,
            size,
        });
    }
    Ok(BaseImage {
        digest: digest.clone(),
        config,
        layers,
    })
}

/// Picks the platform's manifest out of an index (skipping attestation entries).
fn platform_manifest(
    client: &Client,
    image: &ImageReference,
    manifest: registry::Manifest,
) -> anyhow::Result<registry::Manifest> {
    let is_index =
        manifest.media_type.contains("index") || manifest.media_type.contains("manifest.list");
    if !is_index {
        return Ok(manifest);
    }
    let index: Value = serde_json::from_slice(&manifest.bytes).context("base index is not JSON")?;
    let digest = pick_platform(&index).with_context(|| {
        format!(
            "`{}/{}:{}` has no {PLATFORM} image",
            image.host, image.repository, image.tag
        )
    })?;
    client
        .get_manifest(&image.repository, &digest)?
        .with_context(|| format!("manifest {digest} listed in the index is missing"))
}

fn pick_platform(index: &Value) -> Option<String> {
    index["manifests"].as_array()?.iter().find_map(|entry| {
        let platform = &entry["platform"];
        let attestation =
            entry["annotations"]["vnd.docker.reference.type"] == "attestation-manifest";
        let matches = platform["os"] == "linux" && platform["architecture"] == "amd64";
        (matches && !attestation)
            .then(|| entry["digest"].as_str().map(str::to_owned))
            .flatten()
    })
}

type Lock = BTreeMap<String, BTreeMap<String, String>>;

fn read_lock(path: &Path) -> anyhow::Result<Lock> {
    if !path.exists() {
        return Ok(Lock::new());
    }
    let text = fs::read_to_string(path).with_context(|| format!("reading `{}`", path.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing `{}`", path.display()))?;
    let mut lock = Lock::new();
    for (reference, platforms) in value["bases"].as_object().into_iter().flatten() {
        for (platform, digest) in platforms.as_object().into_iter().flatten() {
            let digest = digest.as_str().with_context(|| {
                format!(
                    "`{}`: digest of `{reference}` is not a string",
                    path.display()
                )
            })?;
            lock.entry(reference.clone())
                .or_default()
                .insert(platform.clone(), digest.to_owned());
        }
    }
    Ok(lock)
}

fn write_lock(path: &Path, lock: &Lock) -> anyhow::Result<()> {
    let value = serde_json::json!({ "bases": lock });
    let text = serde_json::to_string_pretty(&value)? + "\n";
    fs::write(path, text).with_context(|| format!("writing `{}`", path.display()))
}

/// Every path in the base's layers (for the shared-library check), and `libc.so.6` copied
/// out to `scratch` if the base has one.
pub(crate) fn inspect(
    base: &BaseImage,
    store: &Store,
    scratch: &Path,
) -> anyhow::Result<(BTreeSet<String>, Option<PathBuf>)> {
    let mut files = BTreeSet::new();
    let mut libc = None;
    for layer in &base.layers {
        let file = fs::File::open(store.blob_path(&layer.digest))?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for entry in archive
            .entries()
            .with_context(|| format!("reading base layer {}", layer.digest))?
        {
            let mut entry = entry?;
            let path = entry
                .path()?
                .to_string_lossy()
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_owned();
            if path.ends_with("/libc.so.6") && entry.header().entry_type().is_file() {
                fs::create_dir_all(scratch)?;
                let out = scratch.join("libc.so.6");
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes)?;
                fs::write(&out, bytes)?;
                libc = Some(out);
            }
            files.insert(path);
        }
    }
    Ok((files, libc))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Docker v2 manifests (what Docker Hub serves) parse as OCI ones, layer types kept.
    #[test]
    fn docker_v2_manifests_parse_with_their_layer_media_types() {
        let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7, "digest": digest('a')},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 9, "digest": digest('b')}],
        });
        let parsed: ImageManifest = serde_json::from_value(manifest).unwrap();
        assert_eq!(parsed.config().size(), 7);
        let layer = &parsed.layers()[0];
        assert_eq!(Digest::parse(layer.digest().as_ref()).unwrap(), digest('b'));
        assert_eq!(
            layer.media_type().to_string(),
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }

    #[test]
    fn index_resolution_skips_attestations_and_other_platforms() {
        let index = serde_json::json!({"manifests": [
            {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": "sha256:att", "platform": {"os": "linux", "architecture": "amd64"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
            {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
        ]});
        assert_eq!(pick_platform(&index).as_deref(), Some("sha256:amd"));
    }

    #[test]
    fn lock_round_trips_and_unpinned_bases_say_what_to_run() {
        let dir = std::env::temp_dir().join(format!("xtask-lock-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("images.lock.json");
        let lock = Lock::from([(
            "a/b:1".to_owned(),
            BTreeMap::from([(PLATFORM.to_owned(), "sha256:x".to_owned())]),
        )]);
        write_lock(&path, &lock).unwrap();
        assert_eq!(read_lock(&path).unwrap(), lock);
        let sh = xshell::Shell::new().unwrap();
        let store = Store::new(dir.join("store")).unwrap();
        let err = load(&sh, "c/d:2", &path, &store).unwrap_err().to_string();
        assert!(err.contains("cargo xtask base update"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }
}
