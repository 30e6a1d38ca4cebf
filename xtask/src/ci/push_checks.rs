//! `cargo xtask ci` step "push: real registry": push the built images to distribution 2.8
//! with no auth, htpasswd and token auth, read them back with skopeo and a real Docker
//! engine, and check the no-change, one-line-change, mount, fault and error paths.

use std::{
    collections::BTreeSet,
    fs,
    hash::{BuildHasher, Hasher},
    io::{BufWriter, Read},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use xshell::{Shell, cmd};

use crate::{
    ci::images::{self, SKOPEO},
    digest::Digest,
    harness::{
        docker,
        registry::{
            Auth, DOCKER_REGISTRY, Fault, FaultKind, FaultProxy, HTPASSWD, OPENSSL, Registry,
        },
    },
    image::{
        AssemblyTimes, BuildReport, BuiltImage,
        layer::{self, Entry, EntryKind, Source},
        oci::Blob,
        store::ImageBlobs,
    },
    project::Revision,
    provision,
    push::{CredentialSource, PushOptions, PushedImage, human_bytes, push_built},
    registry::{self, Client, ClientOptions, Credentials, RetryPolicy},
};

pub(crate) fn check(sh: &Shell, report: &BuildReport, scratch: &Path) -> anyhow::Result<()> {
    check_images(sh, &report.revision, &report.images, scratch)
}

/// [`check`] on images however they were built.
pub(crate) fn check_images(
    sh: &Shell,
    revision: &Revision,
    images: &[BuiltImage],
    scratch: &Path,
) -> anyhow::Result<()> {
    provision::ensure(sh, &[DOCKER_REGISTRY, HTPASSWD, OPENSSL, SKOPEO])?;
    let dir = scratch.join("push");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let ctx = Ctx {
        sh,
        revision,
        images,
        dir,
    };
    let user = "ci".to_owned();
    let plain = Registry::start(sh, Auth::None)?;
    let basic = Registry::start(
        sh,
        Auth::Htpasswd {
            user: user.clone(),
            password: random_hex(),
        },
    )?;
    let token = Registry::start(
        sh,
        Auth::Token {
            user,
            password: random_hex(),
        },
    )?;
    let registries = [("no auth", &plain), ("htpasswd", &basic), ("token", &token)];

    for (mode, registry) in registries {
        let cache = ctx
            .dir
            .join(format!("mounts-{}.json", registry.addr.port()));
        sub(&format!("push both images ({mode})"), || {
            ctx.cold_push(registry, &cache)
                .with_context(|| format!("registry log ends:\n{}", registry.log_tail()))
        })?;
        sub(&format!("skopeo inspect ({mode})"), || {
            ctx.skopeo_inspect(registry, mode)
        })?;
        sub(&format!("unchanged push uploads nothing ({mode})"), || {
            ctx.unchanged_push(registry, &cache)
        })?;
    }
    sub("docker pull and run the backend (htpasswd)", || {
        ctx.docker_pull_and_run(&basic)
    })?;
    sub(
        "one-line backend change uploads only the binary layer",
        || ctx.one_line_change(&basic),
    )?;
    sub("push to a second repository mounts (token)", || {
        ctx.second_repository(&token)
    })?;
    sub("cargo xtask push: CLI, env credentials, --json", || {
        ctx.cli(&basic)
    })?;
    fault_checks(&ctx, &plain)?;
    error_checks(&ctx, &plain, &basic, &token)
}

/// Runs one named check and prints what it showed.
fn sub(name: &str, f: impl FnOnce() -> anyhow::Result<String>) -> anyhow::Result<()> {
    let start = Instant::now();
    let detail = f().with_context(|| format!("check `{name}`"))?;
    eprintln!(
        "  ok  {name} ({:.1} s): {detail}",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

struct Ctx<'a> {
    sh: &'a Shell,
    revision: &'a Revision,
    images: &'a [BuiltImage],
    dir: PathBuf,
}

/// Quick retries for tests; the bounds are what the fault checks assert against.
const TEST_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 5,
    initial_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(2),
    max_elapsed: Duration::from_secs(20),
};

fn options(registry_host: &str, creds: Option<&Credentials>, namespace: &str) -> PushOptions {
    PushOptions {
        registry: registry_host.to_owned(),
        namespace: Some(namespace.to_owned()),
        credentials: creds.map_or(CredentialSource::Anonymous, |c| {
            CredentialSource::Given(c.clone())
        }),
        client: ClientOptions {
            timeout: Duration::from_secs(10),
            retry: TEST_RETRY,
            write: true,
        },
        mount_cache: None,
        progress: false,
        ..PushOptions::default()
    }
}

impl Ctx<'_> {
    fn push(&self, opts: &PushOptions, images: &[BuiltImage]) -> anyhow::Result<Vec<PushedImage>> {
        push_built(self.sh, opts, images)
    }

    fn tags(&self) -> [String; 2] {
        [self.revision.version.clone(), "latest".to_owned()]
    }

    /// Both images into an empty registry: every blob uploaded once; the runtime layer the
    /// two images share is mounted into the second repository instead.
    fn cold_push(&self, registry: &Registry, cache: &Path) -> anyhow::Result<String> {
        let mut opts = options(&registry.host(), registry.credentials.as_ref(), "ci/tm");
        opts.mount_cache = Some(cache.to_path_buf());
        let pushed = self.push(&opts, self.images)?;
        let mut seen = BTreeSet::new();
        for (image, built) in pushed.iter().zip(self.images) {
            ensure!(
                image.digest == built.blobs.manifest.digest,
                "{} pushed as {}, built as {}",
                image.name,
                image.digest,
                built.blobs.manifest.digest
            );
            let digests = blob_digests(built);
            let shared = digests.iter().filter(|d| seen.contains(*d)).count();
            ensure!(
                image.blobs_mounted == shared
                    && image.blobs_uploaded == digests.len() - shared
                    && image.blobs_skipped == 0,
                "{}: expected {} uploaded and {shared} mounted, got {}",
                image.name,
                digests.len() - shared,
                summary(image)
            );
            ensure!(
                image.bytes_uploaded == uploaded_size(built, &image.uploaded),
                "{}: bytes_uploaded {} does not add up",
                image.name,
                image.bytes_uploaded
            );
            seen.extend(digests);
            self.expect_tags(registry, path_of(&image.repository), &image.digest, true)?;
            // The registry stores the exact bytes build hashed, under their media type.
            let stored = read_client(registry)?
                .get_manifest(path_of(&image.repository), &image.digest)?
                .context("the pushed manifest is not there")?;
            ensure!(
                stored.bytes == built.blobs.manifest.bytes
                    && stored.media_type == "application/vnd.oci.image.manifest.v1+json",
                "{}: the registry serves other bytes or type `{}`",
                image.name,
                stored.media_type
            );
        }
        Ok(summaries(&pushed))
    }

    /// Every tag of `path` (`ns/name`) points at `digest`, or none exists.
    fn expect_tags(
        &self,
        registry: &Registry,
        path: &str,
        digest: &str,
        present: bool,
    ) -> anyhow::Result<()> {
        let client = read_client(registry)?;
        for tag in self.tags() {
            let got = client.manifest_digest(path, &tag)?;
            match (present, got) {
                (true, Some(got)) if got == digest => (),
                (false, None) => (),
                (_, got) => bail!(
                    "{path}:{tag} points at {got:?}, expected {}",
                    if present { digest } else { "nothing" }
                ),
            }
        }
        Ok(())
    }

    /// skopeo (containers/image, not our code) reads each pushed manifest back.
    fn skopeo_inspect(&self, registry: &Registry, mode: &str) -> anyhow::Result<String> {
        let authfile = registry
            .write_docker_config(&self.dir.join(format!("auth-{}", mode.replace(' ', "-"))))?;
        let tag = &self.revision.version;
        for image in self.images {
            let reference = format!("docker://{}/ci/tm/{}:{tag}", registry.host(), image.name);
            let raw = cmd!(
                self.sh,
                "skopeo inspect --raw --tls-verify=false --authfile {authfile} {reference}"
            )
            .quiet()
            .read()
            .with_context(|| format!("skopeo inspect {reference}"))?;
            let digest = Digest::of(raw.as_bytes());
            ensure!(
                digest == image.blobs.manifest.digest,
                "skopeo reads {digest} from {reference}, we pushed {}",
                image.blobs.manifest.digest
            );
        }
        Ok(format!("{} manifests match", self.images.len()))
    }

    fn unchanged_push(&self, registry: &Registry, cache: &Path) -> anyhow::Result<String> {
        let mut opts = options(&registry.host(), registry.credentials.as_ref(), "ci/tm");
        opts.mount_cache = Some(cache.to_path_buf());
        let start = Instant::now();
        let pushed = self.push(&opts, self.images)?;
        let elapsed = start.elapsed();
        for image in &pushed {
            ensure!(
                image.blobs_uploaded == 0
                    && image.blobs_mounted == 0
                    && image.bytes_uploaded == 0
                    && image.tags_written.is_empty(),
                "{}: an unchanged push did work: {}",
                image.name,
                summary(image)
            );
        }
        // A new tag on an unchanged image: one PUT of that tag, nothing else.
        opts.tags = vec![self.revision.version.clone(), "extra".to_owned()];
        let tagged = self.push(&opts, &self.images[..1])?;
        let image = &tagged[0];
        ensure!(
            image.tags_written == ["extra"]
                && image.blobs_uploaded == 0
                && image.blobs_mounted == 0,
            "{}: a new tag wrote {:?}: {}",
            image.name,
            image.tags_written,
            summary(image)
        );
        Ok(format!(
            "0 blobs, 0 bytes, no tag written, {:.0} ms; a new tag: only that tag written",
            elapsed.as_secs_f64() * 1e3
        ))
    }

    /// A real engine pulls the pushed backend by digest with credentials (from a docker
    /// config file, not argv), and the pulled image serves `/health` against PostgreSQL.
    fn docker_pull_and_run(&self, registry: &Registry) -> anyhow::Result<String> {
        let sh = self.sh;
        let _engine = docker::engine(sh, &self.dir.join("docker"))?;
        let backend = self.backend()?;
        let config_dir = self.dir.join("docker-config");
        registry.write_docker_config(&config_dir)?;
        let reference = format!(
            "{}/ci/tm/backend@{}",
            registry.host(),
            backend.blobs.manifest.digest
        );
        // Drop the copy `docker load` left, so the layers really come from the registry.
        let id = &backend.blobs.config.digest;
        cmd!(sh, "docker image rm --force {id}")
            .quiet()
            .ignore_status()
            .ignore_stdout()
            .ignore_stderr()
            .run()?;
        let start = Instant::now();
        cmd!(sh, "docker --config {config_dir} pull --quiet {reference}")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("docker pull {reference}"))?;
        let pulled = start.elapsed();
        let format = "{{.Id}}";
        let got = cmd!(sh, "docker image inspect --format {format} {reference}")
            .quiet()
            .read()?;
        ensure!(
            got == *id,
            "docker pulled image {got}, we pushed config {id}"
        );
        let ran = images::run_backend(sh, &reference, &self.revision.commit);
        let _ = cmd!(sh, "docker image rm --force {reference}")
            .quiet()
            .ignore_status()
            .ignore_stdout()
            .ignore_stderr()
            .run();
        ran?;
        Ok(format!(
            "pulled in {:.1} s, /health ok",
            pulled.as_secs_f64()
        ))
    }

    fn backend(&self) -> anyhow::Result<&BuiltImage> {
        self.images
            .iter()
            .find(|i| i.name == "backend")
            .context("the build report has no backend image")
    }

    fn one_line_change(&self, registry: &Registry) -> anyhow::Result<String> {
        let changed = changed_backend(
            self.images,
            self.revision.epoch,
            &self.dir.join("changed"),
            1,
        )?;
        let opts = options(&registry.host(), registry.credentials.as_ref(), "ci/tm");
        let pushed = self.push(&opts, std::slice::from_ref(&changed))?;
        let image = &pushed[0];
        let binary = changed.blobs.layers.last().context("no layers")?;
        let expected: BTreeSet<&str> =
            [binary.digest.as_str(), changed.blobs.config.digest.as_str()].into();
        let got: BTreeSet<&str> = image.uploaded.iter().map(Digest::as_str).collect();
        ensure!(
            got == expected && image.blobs_skipped == changed.blobs.layers.len() - 1,
            "expected only the binary layer and the config to be uploaded: {}",
            summary(image)
        );
        ensure!(image.bytes_uploaded == binary.size + changed.blobs.config.size());
        Ok(format!(
            "uploaded the binary layer ({}) and the config ({}); {} layer present",
            human_bytes(binary.size),
            human_bytes(changed.blobs.config.size()),
            image.blobs_skipped
        ))
    }

    /// The cache from the cold push knows where each blob is: a new repository mounts all.
    fn second_repository(&self, registry: &Registry) -> anyhow::Result<String> {
        let mut opts = options(&registry.host(), registry.credentials.as_ref(), "ci/second");
        opts.mount_cache = Some(
            self.dir
                .join(format!("mounts-{}.json", registry.addr.port())),
        );
        let before = registry.token_server.as_ref().map_or(0, |t| t.requests());
        let pushed = self.push(&opts, self.images)?;
        let tokens = registry.token_server.as_ref().map_or(0, |t| t.requests()) - before;
        for (image, built) in pushed.iter().zip(self.images) {
            ensure!(
                image.blobs_uploaded == 0 && image.blobs_mounted == blob_digests(built).len(),
                "{}: expected every blob mounted: {}",
                image.name,
                summary(image)
            );
            self.expect_tags(registry, path_of(&image.repository), &image.digest, true)?;
        }
        // One token per scope set (push on the target, pull on a source), reused after.
        ensure!(
            tokens <= 6,
            "{tokens} token requests for two images: tokens are not reused"
        );
        Ok(format!("{}; {tokens} token requests", summaries(&pushed)))
    }

    /// The real command line: credentials from REGISTRY_USERNAME/REGISTRY_PASSWORD, one JSON
    /// document `{"images": [...]}` on stdout; a wrong password exits non-zero with one clear line.
    fn cli(&self, registry: &Registry) -> anyhow::Result<String> {
        let sh = self.sh;
        let exe = std::env::current_exe().context("locating the xtask binary")?;
        let host = registry.host();
        let creds = registry.credentials.as_ref().context("no credentials")?;
        let password = creds.secret.expose();
        let output = cmd!(sh, "{exe} push --registry {host} --namespace CI/TM --json")
            .env("REGISTRY_USERNAME", &creds.username)
            .env("REGISTRY_PASSWORD", password)
            .quiet()
            .secret()
            .ignore_stderr()
            .read()
            .context("cargo xtask push")?;
        let document: Value = serde_json::from_str(&output)
            .with_context(|| format!("--json printed something else: {output}"))?;
        let lines = document["images"].as_array().cloned().unwrap_or_default();
        ensure!(
            lines.len() == self.images.len(),
            "one `images` entry per image expected: {output}"
        );
        for (line, built) in lines.iter().zip(self.images) {
            let keys: BTreeSet<&str> = line
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            ensure!(
                keys == BTreeSet::from([
                    "name",
                    "reference",
                    "digest",
                    "tags",
                    "blobs_uploaded",
                    "blobs_mounted",
                    "blobs_skipped",
                    "bytes_uploaded",
                    "retries"
                ]),
                "unexpected --json fields: {line}"
            );
            ensure!(
                line["digest"] == built.blobs.manifest.digest.as_str()
                    && line["reference"]
                        == format!(
                            "{host}/ci/tm/{}@{}",
                            built.name, built.blobs.manifest.digest
                        )
                        .as_str()
                    && line["bytes_uploaded"] == 0,
                "unexpected --json line: {line}"
            );
        }
        let wrong = format!("{password}-wrong");
        let failed = cmd!(sh, "{exe} push backend --registry {host} --namespace ci/tm")
            .env("REGISTRY_USERNAME", &creds.username)
            .env("REGISTRY_PASSWORD", &wrong)
            .quiet()
            .secret()
            .ignore_status()
            .output()?;
        let stderr = String::from_utf8_lossy(&failed.stderr);
        let error = stderr
            .lines()
            .rfind(|l| l.starts_with("error:"))
            .unwrap_or_default();
        ensure!(!failed.status.success(), "a wrong password exited 0");
        ensure!(
            error.contains("401")
                && error.contains("check the password")
                && !stderr.contains(&wrong),
            "unclear error for a wrong password: {stderr}"
        );
        Ok(format!(
            "{} JSON lines; wrong password: exit {:?}",
            lines.len(),
            failed.status.code()
        ))
    }
}

/// A read-only client, as deploy would use to check that a tag exists.
fn read_client(registry: &Registry) -> anyhow::Result<Client> {
    Ok(Client::new(
        registry::Registry::parse(&registry.host(), &[])?,
        registry.credentials.clone(),
        ClientOptions {
            write: false,
            timeout: Duration::from_secs(10),
            retry: TEST_RETRY,
        },
    ))
}

/// `host/ns/name` without the host.
fn path_of(repository: &str) -> &str {
    repository
        .split_once('/')
        .map_or(repository, |(_, path)| path)
}

fn blob_digests(image: &BuiltImage) -> Vec<Digest> {
    image
        .blobs
        .layers
        .iter()
        .map(|l| l.digest.clone())
        .chain([image.blobs.config.digest.clone()])
        .collect()
}

fn uploaded_size(image: &BuiltImage, uploaded: &[Digest]) -> u64 {
    uploaded
        .iter()
        .map(|digest| {
            image
                .blobs
                .layers
                .iter()
                .find(|l| &l.digest == digest)
                .map_or(image.blobs.config.size(), |l| l.size)
        })
        .sum()
}

fn summary(p: &PushedImage) -> String {
    format!(
        "{} uploaded ({}), {} mounted, {} present, {} retries",
        p.blobs_uploaded,
        human_bytes(p.bytes_uploaded),
        p.blobs_mounted,
        p.blobs_skipped,
        p.retries
    )
}

fn summaries(pushed: &[PushedImage]) -> String {
    pushed
        .iter()
        .map(|p| format!("{}: {}", p.name, summary(p)))
        .collect::<Vec<_>>()
        .join("; ")
}

fn random_hex() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:016x}", hasher.finish())
}

/// The backend image after a one-line change, without recompiling: the binary layer
/// rebuilt with a few bytes appended to the executable (ELF loaders ignore trailing
/// bytes, so it still runs), then config and manifest updated. Written as an OCI layout
/// in `dir`; the other layers are hard-linked from the real build.
pub(crate) fn changed_backend(
    images: &[BuiltImage],
    epoch: u64,
    dir: &Path,
    n: u32,
) -> anyhow::Result<BuiltImage> {
    let backend = images
        .iter()
        .find(|i| i.name == "backend")
        .context("the build report has no backend image")?;
    let idx = backend
        .blobs
        .layers
        .len()
        .checked_sub(1)
        .context("no layers")?;
    let binary = &backend.blobs.layers[idx];
    let blob_path = |layout: &Path, digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap_or(digest))
    };
    let mut entries = read_layer(&blob_path(&backend.layout, &binary.digest))?;
    let largest = entries
        .iter_mut()
        .filter_map(|e| match &mut e.kind {
            EntryKind::File(Source::Bytes(bytes)) => Some(bytes),
            _ => None,
        })
        .max_by_key(|bytes| bytes.len())
        .context("the binary layer holds no file")?;
    largest.extend_from_slice(format!("\none-line change {n}\n").as_bytes());
    let entries = layer::normalize(entries)?;

    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir.join("blobs/sha256"))?;
    let temp = dir.join("layer.tmp");
    let layer = layer::write(&entries, epoch, BufWriter::new(fs::File::create(&temp)?))?;
    fs::rename(&temp, blob_path(dir, &layer.digest))?;
    for other in &backend.blobs.layers[..idx] {
        let to = blob_path(dir, &other.digest);
        let from = blob_path(&backend.layout, &other.digest);
        if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to)?;
        }
    }
    let mut config: Value = serde_json::from_slice(&backend.blobs.config.bytes)?;
    config["rootfs"]["diff_ids"][idx] = layer.diff_id.clone().into();
    let config = Blob::from_json(&config);
    let mut manifest: Value = serde_json::from_slice(&backend.blobs.manifest.bytes)?;
    manifest["config"]["digest"] = config.digest.clone().into();
    manifest["config"]["size"] = config.size().into();
    manifest["layers"][idx]["digest"] = layer.digest.clone().into();
    manifest["layers"][idx]["size"] = layer.size.into();
    let manifest = Blob::from_json(&manifest);
    let mut layers = backend.blobs.layers.clone();
    layers[idx] = layer;
    Ok(BuiltImage {
        name: backend.name,
        blobs: ImageBlobs {
            manifest,
            config,
            layers,
        },
        layout: dir.to_path_buf(),
        archive: backend.archive.clone(),
        n_cached_layers: 0,
        times: AssemblyTimes::default(),
    })
}

/// A layer blob's entries, file contents in memory.
fn read_layer(blob: &Path) -> anyhow::Result<Vec<Entry>> {
    let file = fs::File::open(blob).with_context(|| format!("opening `{}`", blob.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut entries = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let header = entry.header().clone();
        let path = entry.path()?.to_string_lossy().into_owned();
        let (mode, uid, gid) = (header.mode()?, header.uid()?, header.gid()?);
        let kind = match header.entry_type() {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink(
                header
                    .link_name()?
                    .context("symlink without target")?
                    .to_string_lossy()
                    .into_owned(),
            ),
            tar::EntryType::Regular => {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes)?;
                EntryKind::File(Source::Bytes(bytes))
            }
            other => bail!(
                "unexpected {other:?} entry `{path}` in `{}`",
                blob.display()
            ),
        };
        entries.push(Entry {
            path,
            kind,
            mode,
            uid,
            gid,
        });
    }
    Ok(entries)
}

/// Faults from a proxy in front of the no-auth registry: each push completes with the
/// right digest and reports its retries; endless faults fail within the bound with no tag.
fn fault_checks(ctx: &Ctx<'_>, registry: &Registry) -> anyhow::Result<()> {
    let proxy = FaultProxy::start(registry.addr, Vec::new())?;
    let backend = ctx.backend()?.clone();
    let blob_put = |kind, times| Fault {
        method: "PUT",
        path: "/blobs/uploads/",
        kind,
        times,
    };
    let slow_timeout = Duration::from_secs(2);
    let scenarios = [
        (
            "500 on blob PUT",
            blob_put(FaultKind::Status(500), Some(2)),
            None,
        ),
        (
            "503 on blob PUT",
            blob_put(FaultKind::Status(503), Some(2)),
            None,
        ),
        (
            "429 with Retry-After on blob PUT",
            blob_put(
                FaultKind::TooManyRequests {
                    retry_after_secs: 1,
                },
                Some(1),
            ),
            None,
        ),
        (
            "connection reset mid-upload",
            blob_put(FaultKind::ResetMidBody, Some(1)),
            None,
        ),
        (
            "slow response past the timeout",
            blob_put(
                FaultKind::Slow(slow_timeout + Duration::from_secs(1)),
                Some(1),
            ),
            Some(slow_timeout),
        ),
    ];
    for (idx, (name, fault, timeout)) in scenarios.into_iter().enumerate() {
        sub(&format!("fault: {name}"), || {
            let times = fault.times.unwrap_or(0);
            proxy.set_schedule(vec![fault]);
            let injected_before = proxy.injected();
            let mut opts = options(&proxy.host(), None, &format!("faults/s{idx}"));
            if let Some(timeout) = timeout {
                opts.client.timeout = timeout;
            }
            let start = Instant::now();
            let pushed = ctx.push(&opts, std::slice::from_ref(&backend))?;
            let image = &pushed[0];
            let injected = proxy.injected() - injected_before;
            ensure!(
                image.digest == backend.blobs.manifest.digest,
                "pushed {} through faults, built {}",
                image.digest,
                backend.blobs.manifest.digest
            );
            ensure!(
                injected == times,
                "{injected} faults injected, {times} scheduled"
            );
            ensure!(
                image.retries >= injected as u64,
                "{injected} faults but {} retries reported",
                image.retries
            );
            ctx.expect_tags(registry, path_of(&image.repository), &image.digest, true)?;
            Ok(format!(
                "{injected} injected, {} retries, same digest, {:.1} s",
                image.retries,
                start.elapsed().as_secs_f64()
            ))
        })?;
    }

    let endless = RetryPolicy {
        max_attempts: 4,
        initial_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
        max_elapsed: Duration::from_secs(5),
    };
    for (name, path, ns) in [
        (
            "endless 503 on blob PUT",
            "/blobs/uploads/",
            "faults/endless-blob",
        ),
        (
            "endless 503 on manifest PUT",
            "/manifests/",
            "faults/endless-manifest",
        ),
    ] {
        sub(&format!("fault: {name}"), || {
            proxy.set_schedule(vec![Fault {
                method: "PUT",
                path,
                kind: FaultKind::Status(503),
                times: None,
            }]);
            let mut opts = options(&proxy.host(), None, ns);
            opts.client.retry = endless;
            let start = Instant::now();
            let err = match ctx.push(&opts, std::slice::from_ref(&backend)) {
                Ok(_) => bail!("a push through endless faults succeeded"),
                Err(err) => err,
            };
            let elapsed = start.elapsed();
            let message = format!("{err:#}");
            let bound = endless.max_elapsed + opts.client.timeout;
            ensure!(
                elapsed < bound,
                "gave up after {elapsed:?}, bound {bound:?}"
            );
            ensure!(
                message.contains("503")
                    && message.contains("gave up after")
                    && message.contains("backend"),
                "unclear error: {message}"
            );
            ensure!(!message.contains('\n'), "error spans lines: {message}");
            ctx.expect_tags(
                registry,
                &format!("{ns}/backend"),
                &backend.blobs.manifest.digest,
                false,
            )?;
            Ok(format!(
                "failed in {:.1} s, no tag: {message}",
                elapsed.as_secs_f64()
            ))
        })?;
    }
    Ok(())
}

/// Permanent failures: each a clear one-line error of the right kind, with no secret in it.
fn error_checks(
    ctx: &Ctx<'_>,
    plain: &Registry,
    basic: &Registry,
    token: &Registry,
) -> anyhow::Result<()> {
    let backend = ctx.backend()?.clone();
    let expect_error = |opts: &PushOptions,
                        image: &BuiltImage,
                        kind: fn(&registry::Error) -> bool,
                        needles: &[&str],
                        secret: Option<&str>|
     -> anyhow::Result<String> {
        let err = match ctx.push(opts, std::slice::from_ref(image)) {
            Ok(_) => bail!("the push succeeded"),
            Err(err) => err,
        };
        let message = format!("{err:#}");
        let typed = err
            .downcast_ref::<registry::Error>()
            .with_context(|| format!("not a registry error: {message}"))?;
        ensure!(kind(typed), "wrong error kind {typed:?}");
        for needle in needles {
            ensure!(
                message.contains(needle),
                "`{needle}` missing from: {message}"
            );
        }
        ensure!(!message.contains('\n'), "error spans lines: {message}");
        if let Some(secret) = secret {
            ensure!(
                !message.contains(secret),
                "the secret leaked into: {message}"
            );
        }
        Ok(message)
    };
    let wrong = |registry: &Registry| {
        let creds = registry
            .credentials
            .clone()
            .unwrap_or_else(|| Credentials::new("ci", "", "test"));
        Credentials::new(
            &creds.username,
            &format!("{}-wrong", creds.secret.expose()),
            "test",
        )
    };

    sub("error: wrong password (htpasswd)", || {
        let creds = wrong(basic);
        let opts = options(&basic.host(), Some(&creds), "ci/tm");
        expect_error(
            &opts,
            &backend,
            |e| matches!(e, registry::Error::Unauthorized(_)),
            &["401", "backend", "user `ci`", "check the password"],
            Some(creds.secret.expose()),
        )
    })?;
    sub("error: wrong password (token)", || {
        let creds = wrong(token);
        let opts = options(&token.host(), Some(&creds), "ci/tm");
        expect_error(
            &opts,
            &backend,
            |e| matches!(e, registry::Error::Unauthorized(_)),
            &[
                "401",
                "fetching a token",
                "token server rejected",
                "user `ci`",
            ],
            Some(creds.secret.expose()),
        )
    })?;
    let token_server = token.token_server.as_ref().context("no token server")?;
    sub("expired token is renewed once", || {
        token_server.issue_expired(1);
        let opts = options(&token.host(), token.credentials.as_ref(), "ci/expired-once");
        let before = token_server.requests();
        let pushed = ctx.push(&opts, std::slice::from_ref(&backend))?;
        let tokens = token_server.requests() - before;
        ensure!(
            tokens >= 2,
            "only {tokens} token requests: the expired token was not renewed"
        );
        Ok(format!(
            "pushed {} with {tokens} token requests",
            pushed[0].digest
        ))
    })?;
    sub("error: expired token (every token)", || {
        token_server.issue_expired(usize::MAX);
        let opts = options(&token.host(), token.credentials.as_ref(), "ci/expired");
        let res = expect_error(
            &opts,
            &backend,
            |e| matches!(e, registry::Error::Unauthorized(_)),
            &["401", "invalid_token", "backend"],
            None,
        );
        token_server.issue_expired(0);
        res
    })?;
    sub(
        "error: unknown repository (token server grants nothing)",
        || {
            let opts = options(&token.host(), token.credentials.as_ref(), "unknown/tm");
            let message = expect_error(
                &opts,
                &backend,
                |e| matches!(e, registry::Error::Denied(_)),
                &["unknown/tm/backend", "may not push"],
                None,
            )?;
            // Read-only clients (deploy) see an unknown repository as an absent manifest.
            let absent = read_client(plain)?.manifest_digest("nobody/nothing", "latest")?;
            ensure!(
                absent.is_none(),
                "HEAD on an unknown repository gave {absent:?}"
            );
            Ok(message)
        },
    )?;
    sub("error: manifest rejected", || {
        let mut broken = backend.clone();
        let mut manifest: Value = serde_json::from_slice(&backend.blobs.manifest.bytes)?;
        manifest["config"] = Value::from(42);
        broken.blobs.manifest = Blob::from_json(&manifest);
        let opts = options(&plain.host(), None, "ci/rejected");
        let message = expect_error(
            &opts,
            &broken,
            |e| matches!(e, registry::Error::Rejected(_)),
            &["400", "MANIFEST_INVALID", "pushing manifest", "backend"],
            None,
        )?;
        ctx.expect_tags(
            plain,
            "ci/rejected/backend",
            &broken.blobs.manifest.digest,
            false,
        )?;
        Ok(message)
    })?;
    Ok(())
}
