//! Registry base images end to end: a base the harness makes from this machine's glibc,
//! pushed to a real registry, pinned, pulled, checked against a dynamically linked binary,
//! run on a real engine, and rebuilt with the registry gone.

use std::{path::Path, sync::atomic::AtomicU64};

use anyhow::{Context, ensure};
use serde_json::json;
use xshell::Shell;

use crate::{
    ci::images,
    harness::registry::{Auth, TestRegistry},
    image::{
        self, base, contents,
        definitions::{Base, Contents, ImageDef, LayerDef, Link},
        layer::{self, Entry, Source},
        oci,
    },
    registry::{self as client, BlobSource, BlobUpload, Client, ClientOptions},
};

/// Host libraries a dynamically linked Rust binary needs (`readelf -d`), and where they go.
const GLIBC_FILES: &[(&str, &str)] = &[
    (
        "/lib/x86_64-linux-gnu/libc.so.6",
        "lib/x86_64-linux-gnu/libc.so.6",
    ),
    (
        "/lib/x86_64-linux-gnu/libm.so.6",
        "lib/x86_64-linux-gnu/libm.so.6",
    ),
    ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
];
const LIBGCC: (&str, &str) = (
    "/lib/x86_64-linux-gnu/libgcc_s.so.1",
    "lib/x86_64-linux-gnu/libgcc_s.so.1",
);

pub(crate) fn check(sh: &Shell, scratch: &Path, epoch: u64) -> anyhow::Result<()> {
    let _engine = crate::harness::docker::engine(sh, scratch)?;
    let lock = scratch.join("base-images.lock.json");
    let _ = std::fs::remove_file(&lock);
    let registry = TestRegistry::start(sh, Auth::None)?;
    let host = registry.host();
    let client = Client::new(
        client::Registry::parse(&host, &[])?,
        None,
        ClientOptions::default(),
    );
    let mut with_libgcc: Vec<(&str, &str)> = GLIBC_FILES.to_vec();
    with_libgcc.push(LIBGCC);
    push_base(&client, "test/cc-base", &with_libgcc, epoch)?;
    push_base(&client, "test/c-base", GLIBC_FILES, epoch)?;
    // Definitions are `'static`; a few leaked strings for one check run are fine.
    let good: &'static str = Box::leak(format!("{host}/test/cc-base:1").into_boxed_str());
    let bad: &'static str = Box::leak(format!("{host}/test/c-base:1").into_boxed_str());
    base::update(sh, &[good.to_owned(), bad.to_owned()], &lock)?;

    let def = dynamic_frontend("frontend-on-base", good)?;
    let report = image::build_defs(sh, &[def], &lock)?;
    let built = &report.images[0];
    let pulled = base::load(
        sh,
        good,
        &lock,
        &image::store::Store::new(image::images_dir())?,
    )?;
    ensure!(
        built.blobs.layers.len() == pulled.layers.len() + 2
            && built.blobs.layers[..pulled.layers.len()] == pulled.layers[..],
        "the image does not start with the base's layers"
    );
    images::load(sh, built, &report.revision.version)?;
    images::run_frontend(
        sh,
        &format!("timemanager/{}:{}", def.name, report.revision.version),
        epoch,
    )?;

    // A base missing libgcc_s must be refused before anything ships.
    let refused = image::build_defs(sh, &[dynamic_frontend("frontend-on-bad-base", bad)?], &lock);
    let message = format!(
        "{:#}",
        refused
            .err()
            .context("a base without libgcc_s was accepted")?
    );
    ensure!(
        message.contains("libgcc_s.so.1"),
        "unclear refusal: {message}"
    );

    // Pulled blobs stay in the store: with the registry gone, the build still works.
    drop(registry);
    let again =
        image::build_defs(sh, &[def], &lock).context("second build without the registry")?;
    ensure!(
        again.images[0].blobs.manifest.digest == built.blobs.manifest.digest,
        "offline rebuild changed the digest"
    );
    Ok(())
}

fn dynamic_frontend(name: &'static str, base: &'static str) -> anyhow::Result<&'static ImageDef> {
    let frontend = image::definitions::find("frontend")?;
    Ok(Box::leak(Box::new(ImageDef {
        name,
        description: "frontend server linked against the base's glibc",
        base: Base::Registry(base),
        layers: &[
            LayerDef {
                name: "static server binary, dynamically linked",
                contents: Contents::CargoBinary {
                    package: "timemanager-frontend-server",
                    dest: "app/timemanager-frontend-server",
                    link: Link::Dynamic,
                },
            },
            LayerDef {
                name: "web assets",
                contents: Contents::ViteDist { dest: "app/public" },
            },
        ],
        ..*frontend
    })))
}

/// Builds a one-layer base from host files plus the runtime layer's users, and pushes it
/// as an index (so resolution to linux/amd64 is exercised) tagged `1`.
fn push_base(
    client: &Client,
    repository: &str,
    files: &[(&str, &str)],
    epoch: u64,
) -> anyhow::Result<()> {
    let mut entries = contents::runtime();
    for (host_path, image_path) in files {
        let real = std::fs::canonicalize(host_path)
            .with_context(|| format!("`{host_path}` not on this machine"))?;
        entries.push(Entry::file(image_path, 0o755, Source::Path(real)));
    }
    let mut bytes = Vec::new();
    let layer = layer::write(&layer::normalize(entries)?, epoch, &mut bytes)?;
    let config = oci::Blob::from_json(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin", "BASE=test"], "Labels": {"base": repository}},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created_by": format!("test base {repository}")}],
    }));
    let manifest = oci::Blob::from_json(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": config.size()},
        "layers": [{"mediaType": layer::MEDIA_TYPE, "digest": layer.digest, "size": layer.size}],
    }));
    let index = oci::Blob::from_json(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest.digest, "size": manifest.size(),
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    }));
    let progress = AtomicU64::new(0);
    for (digest, data) in [
        (&layer.digest, bytes.as_slice()),
        (&config.digest, config.bytes.as_slice()),
    ] {
        let blob = BlobUpload {
            digest,
            size: data.len() as u64,
            source: BlobSource::Bytes(data),
        };
        client.upload_blob(repository, blob, None, &progress)?;
    }
    client.put_manifest(
        repository,
        &manifest.digest,
        "application/vnd.oci.image.manifest.v1+json",
        &manifest.bytes,
    )?;
    client.put_manifest(
        repository,
        "1",
        "application/vnd.oci.image.index.v1+json",
        &index.bytes,
    )?;
    Ok(())
}
