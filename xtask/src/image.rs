//! Image building without a Docker daemon: compile, then layers, config and manifest,
//! written as an OCI layout and a `docker load` archive under `target/images/`.

pub(crate) mod base;
pub(crate) mod compile;
pub(crate) mod contents;
pub(crate) mod definitions;
mod elf;
pub(crate) mod inputs;
pub(crate) mod layer;
pub(crate) mod oci;
mod sbom;
pub(crate) mod store;
pub(crate) mod verify;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::{Value, json};
use xshell::Shell;

use crate::{
    image::{
        compile::CompileTimes,
        contents::Artifacts,
        definitions::{Base, Contents, ImageDef, Link},
        layer::LayerBlob,
        store::{ImageBlobs, Store},
    },
    project::{self, Revision},
};

/// One built image, as `build` reports it and `push` reads it back.
#[derive(Debug, Clone)]
pub(crate) struct BuiltImage {
    pub(crate) name: &'static str,
    pub(crate) blobs: ImageBlobs,
    pub(crate) layout: PathBuf,
    pub(crate) archive: PathBuf,
    pub(crate) n_cached_layers: usize,
    pub(crate) times: AssemblyTimes,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct AssemblyTimes {
    pub(crate) layers: Duration,
    pub(crate) layout: Duration,
    pub(crate) archive: Duration,
    pub(crate) sbom: Duration,
}

impl BuiltImage {
    pub(crate) fn compressed_size(&self) -> u64 {
        self.blobs.config.size() + self.blobs.layers.iter().map(|l| l.size).sum::<u64>()
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "digest": self.blobs.manifest.digest,
            "config_digest": self.blobs.config.digest,
            "compressed_size": self.compressed_size(),
            "layers": self.blobs.layers.iter().map(|l| json!({"digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
            "assembly_seconds": self.times.total().as_secs_f64(),
        })
    }
}

impl AssemblyTimes {
    pub(crate) fn total(&self) -> Duration {
        self.layers + self.layout + self.archive + self.sbom
    }
}

impl BuildReport {
    /// The `build --json` document: digests and sizes per image, plus stage times.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "images": self.images.iter().map(BuiltImage::to_json).collect::<Vec<_>>(),
            "compile_seconds": {"cargo": self.compile.cargo.as_secs_f64(), "npm": self.compile.npm.as_secs_f64()},
            "inputs_unchanged": self.inputs_unchanged,
        })
    }
}

pub(crate) struct BuildReport {
    pub(crate) revision: Revision,
    pub(crate) compile: CompileTimes,
    pub(crate) images: Vec<BuiltImage>,
    /// The inputs matched the last build's (`inputs.rs`): nothing was compiled or written.
    pub(crate) inputs_unchanged: bool,
}

pub(crate) fn images_dir() -> PathBuf {
    project::target_dir().join("images")
}

/// Builds the named images (all when empty): compile once, then assemble each concurrently.
pub(crate) fn build(sh: &Shell, names: &[String]) -> anyhow::Result<BuildReport> {
    let defs: Vec<&'static ImageDef> = if names.is_empty() {
        definitions::IMAGES.iter().collect()
    } else {
        names
            .iter()
            .map(|name| definitions::find(name))
            .collect::<anyhow::Result<_>>()?
    };
    build_defs(sh, &defs, &base::default_lock_path())
}

/// Builds these definitions, with registry bases pinned by the lock at `lock_path`.
pub(crate) fn build_defs(
    sh: &Shell,
    defs: &[&'static ImageDef],
    lock_path: &Path,
) -> anyhow::Result<BuildReport> {
    let revision = project::revision(sh)?;
    let store = Store::new(images_dir())?;
    let key = inputs_key(sh, &revision, &store, lock_path)?;
    if let Some(images) = inputs::lookup(&store, &key, defs) {
        return Ok(BuildReport {
            revision,
            compile: CompileTimes::default(),
            images,
            inputs_unchanged: true,
        });
    }
    let report = build_from_scratch(sh, defs, lock_path, revision, &store)?;
    // Recorded only if nothing changed while we built: a file edited mid-build may or may
    // not be in the images, so neither key can vouch for them.
    let revision_after = project::revision(sh)?;
    if inputs_key(sh, &revision_after, &store, lock_path)? == key {
        inputs::record(&store, &key, &report.images)?;
    } else {
        eprintln!("inputs changed during the build: the next build compiles again");
    }
    Ok(report)
}

/// The fast path's key, plus the base-image lock this build reads (a test passes its own).
fn inputs_key(
    sh: &Shell,
    revision: &Revision,
    store: &Store,
    lock_path: &Path,
) -> anyhow::Result<String> {
    let key = inputs::current_key(sh, revision, &store.cache_dir())?;
    let lock = fs::read(lock_path).unwrap_or_default();
    Ok(crate::digest::sha256_hex(
        format!(
            "{key}\nlock {} {}",
            lock_path.display(),
            crate::digest::sha256_hex(&lock)
        )
        .as_bytes(),
    ))
}

/// The full build: bases, compile, linkage checks, then each image assembled concurrently.
fn build_from_scratch(
    sh: &Shell,
    defs: &[&'static ImageDef],
    lock_path: &Path,
    revision: Revision,
    store: &Store,
) -> anyhow::Result<BuildReport> {
    let source_url = project::source_url(sh);
    // Bases first: a missing pin or an unreachable registry fails before any compiling.
    let mut bases = BTreeMap::new();
    for def in defs {
        if let Base::Registry(reference) = def.base
            && !bases.contains_key(reference)
        {
            bases.insert(reference, base::load(sh, reference, lock_path, store)?);
        }
    }
    let (artifacts, compile_times) = compile::compile(defs, &revision, &store.cache_dir())?;
    for def in defs {
        check_linkage(sh, def, &artifacts, &bases, store)
            .with_context(|| format!("building image `{}`", def.name))?;
    }
    let metadata = sbom::cargo_metadata(sh)?;
    let package_lock = read_package_lock()?;
    let ctx = AssemblyContext {
        bases: &bases,
        store,
        artifacts: &artifacts,
        revision: &revision,
        source_url: &source_url,
        metadata: &metadata,
        package_lock: package_lock.as_ref(),
    };
    let images = std::thread::scope(|scope| {
        let handles: Vec<_> = defs
            .iter()
            .map(|def| scope.spawn(|| ctx.assemble(def)))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::format_err!("image assembly panicked")))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    Ok(BuildReport {
        revision,
        compile: compile_times,
        images,
        inputs_unchanged: false,
    })
}

fn read_package_lock() -> anyhow::Result<Option<Value>> {
    let path = project::root().join("frontend/package-lock.json");
    if !path.exists() {
        return Ok(None);
    }
    let text =
        fs::read_to_string(&path).with_context(|| format!("reading `{}`", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| {
        format!("parsing `{}`", path.display())
    })?))
}

/// A dynamically linked binary must find its libraries and glibc versions in the base.
fn check_linkage(
    sh: &Shell,
    def: &ImageDef,
    artifacts: &Artifacts,
    bases: &BTreeMap<&str, base::BaseImage>,
    store: &Store,
) -> anyhow::Result<()> {
    for layer_def in def.layers {
        let Contents::CargoBinary {
            package,
            link: Link::Dynamic,
            ..
        } = layer_def.contents
        else {
            continue;
        };
        let Base::Registry(reference) = def.base else {
            anyhow::bail!(
                "`{package}` is linked dynamically but the image has no base to provide libc: use `Link::Static` or a registry base"
            );
        };
        let base = bases.get(reference).context("base not loaded")?;
        let binary = artifacts
            .binaries
            .get(&(package, Link::Dynamic))
            .context("binary not compiled")?;
        let scratch = store.cache_dir().join(format!("base-{}", def.name));
        let (files, libc) = base::inspect(base, store, &scratch)?;
        let glibc = match libc {
            Some(libc) => elf::glibc_provided(sh, &libc)?,
            None => Default::default(),
        };
        let needs = elf::needs(sh, binary)?;
        elf::check_against_base(
            package,
            &needs,
            &format!("{reference}@{}", base.digest),
            &files,
            &glibc,
        )?;
    }
    Ok(())
}

struct AssemblyContext<'a> {
    bases: &'a BTreeMap<&'a str, base::BaseImage>,
    store: &'a Store,
    artifacts: &'a Artifacts,
    revision: &'a Revision,
    source_url: &'a str,
    metadata: &'a Value,
    package_lock: Option<&'a Value>,
}

impl AssemblyContext<'_> {
    fn assemble(&self, def: &'static ImageDef) -> anyhow::Result<BuiltImage> {
        self.assemble_inner(def)
            .with_context(|| format!("building image `{}`", def.name))
    }

    fn assemble_inner(&self, def: &'static ImageDef) -> anyhow::Result<BuiltImage> {
        let base = match def.base {
            Base::Scratch => None,
            Base::Registry(reference) => {
                Some(self.bases.get(reference).context("base not loaded")?)
            }
        };
        let mut times = AssemblyTimes::default();
        let epoch = self.revision.epoch;
        let start = Instant::now();
        let mut layers: Vec<LayerBlob> = Vec::new();
        let mut n_cached_layers = 0;
        for layer_def in def.layers {
            let entries = layer::normalize(contents::entries(layer_def.contents, self.artifacts)?)?;
            let (blob, cached) = self
                .store
                .layer(&entries, epoch)
                .with_context(|| format!("layer `{}`", layer_def.name))?;
            n_cached_layers += usize::from(cached);
            layers.push(blob);
        }
        times.layers = start.elapsed();

        let start = Instant::now();
        let created = project::rfc3339(epoch);
        let labels = labels(def, self.revision, self.source_url, &created);
        let own_config = serde_json::to_value(oci::config(&oci::ConfigInput {
            def,
            labels: &labels,
            created: &created,
            layers: def
                .layers
                .iter()
                .zip(&layers)
                .map(|(layer_def, blob)| {
                    (blob.diff_id.as_str(), format!("layer: {}", layer_def.name))
                })
                .collect(),
        })?)?;
        let config = match base {
            None => oci::Blob::from_json(&own_config),
            Some(base) => {
                layers.splice(0..0, base.layers.iter().cloned());
                oci::Blob::from_json(&oci::on_base(own_config, &base.config))
            }
        };
        let manifest = oci::to_blob(&oci::manifest(&config, &layers, &labels)?)?;
        self.store.put(&config)?;
        self.store.put(&manifest)?;
        let blobs = ImageBlobs {
            manifest,
            config,
            layers,
        };
        let repository = format!("timemanager/{}", def.name);
        let version_ref = format!("{repository}:{}", self.revision.version);
        let layout =
            self.store
                .write_layout(def.name, &blobs, &version_ref, &self.revision.version)?;
        times.layout = start.elapsed();

        let start = Instant::now();
        let repo_tags = [version_ref, format!("{repository}:latest")];
        let archive = self
            .store
            .write_archive(def.name, &blobs, &repo_tags, epoch)?;
        times.archive = start.elapsed();

        let start = Instant::now();
        let sbom = sbom::document(
            def,
            self.metadata,
            self.package_lock,
            self.revision,
            self.source_url,
        )?;
        let sbom_path = self.store.root.join(format!("{}.sbom.json", def.name));
        fs::write(&sbom_path, oci::canonical_json(&sbom))
            .with_context(|| format!("writing `{}`", sbom_path.display()))?;
        times.sbom = start.elapsed();

        Ok(BuiltImage {
            name: def.name,
            blobs,
            layout,
            archive,
            n_cached_layers,
            times,
        })
    }
}

/// OCI labels, also used as manifest annotations (GHCR reads both).
fn labels(
    def: &ImageDef,
    revision: &Revision,
    source_url: &str,
    created: &str,
) -> BTreeMap<String, String> {
    [
        (
            "org.opencontainers.image.title",
            format!("timemanager-{}", def.name),
        ),
        (
            "org.opencontainers.image.description",
            def.description.to_owned(),
        ),
        ("org.opencontainers.image.source", source_url.to_owned()),
        ("org.opencontainers.image.revision", revision.commit.clone()),
        ("org.opencontainers.image.version", revision.version.clone()),
        ("org.opencontainers.image.created", created.to_owned()),
        ("org.opencontainers.image.licenses", "MIT".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}
