//! `cargo xtask ci` step "push: real registry": push the built images to distribution 2.8
//! with no auth, htpasswd and token auth, read them back with skopeo and a real Docker
//! engine, and check the no-change, one-line-change, mount, fault and error paths.
//!
//! Each check is a named unit of the `push` suite (`cargo xtask ci --only push/NAME`); the
//! registries and the fault proxy start when a selected check first needs them. The fault
//! checks are in `push_checks/faults.rs`, the permanent errors in `push_checks/errors.rs`.

mod errors;
mod faults;

use std::{
    cell::OnceCell,
    collections::BTreeSet,
    fs,
    hash::{BuildHasher, Hasher},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use xshell::{Shell, cmd};

use crate::{
    ci::{
        images::{self, SKOPEO},
        suite::{self, Check},
    },
    digest::Digest,
    harness::{
        docker,
        fault_proxy::FaultProxy,
        lab::changed_backend,
        registry::{Auth, DOCKER_REGISTRY, HTPASSWD, OPENSSL, TestRegistry},
    },
    image::{BuildReport, BuiltImage},
    project::Revision,
    provision,
    push::{CredentialSource, PushOptions, PushedImage, push_built},
    registry::{self, Client, ClientOptions, Credentials, RetryPolicy},
    steps::human_bytes,
};

/// Runs the push checks `only` names (all when `None`) against the built images.
pub(crate) fn check(
    sh: &Shell,
    report: &BuildReport,
    scratch: &Path,
    only: Option<&[String]>,
) -> anyhow::Result<()> {
    provision::ensure(sh, &[DOCKER_REGISTRY, HTPASSWD, OPENSSL, SKOPEO])?;
    let dir = scratch.join("push");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let lab = PushLab {
        sh,
        revision: &report.revision,
        images: &report.images,
        dir,
        proxy: OnceCell::new(),
        registries: Default::default(),
    };
    suite::run("push", &checks(), only, &lab)
}

/// The names `--only push/NAME` takes, in the order the checks run.
pub(crate) fn names() -> Vec<String> {
    checks().into_iter().map(|check| check.name).collect()
}

/// The registry's auth mode; each mode gets its own registry.
#[derive(Debug, Clone, Copy)]
enum Mode {
    NoAuth,
    Htpasswd,
    Token,
}

const MODES: [Mode; 3] = [Mode::NoAuth, Mode::Htpasswd, Mode::Token];

impl Mode {
    /// As printed in check titles.
    fn label(self) -> &'static str {
        match self {
            Mode::NoAuth => "no auth",
            Mode::Htpasswd => "htpasswd",
            Mode::Token => "token",
        }
    }

    /// As used in check names.
    fn slug(self) -> &'static str {
        match self {
            Mode::NoAuth => "no-auth",
            Mode::Htpasswd => "htpasswd",
            Mode::Token => "token",
        }
    }
}

fn cold_push_name(mode: Mode) -> String {
    format!("cold-push-{}", mode.slug())
}

/// Every push check, in the order they run.
fn checks<'a>() -> Vec<Check<PushLab<'a>>> {
    let mut checks = Vec::new();
    for mode in MODES {
        let label = mode.label();
        checks.push(Check::new(
            cold_push_name(mode),
            format!("push both images ({label})"),
            move |lab: &PushLab<'a>| {
                let registry = lab.registry(mode)?;
                lab.cold_push(registry, &lab.mount_cache(registry))
                    .with_context(|| format!("registry log ends:\n{}", registry.log_tail()))
            },
        ));
        checks.push(
            Check::new(
                format!("skopeo-{}", mode.slug()),
                format!("skopeo inspect ({label})"),
                move |lab: &PushLab<'a>| lab.skopeo_inspect(lab.registry(mode)?, label),
            )
            .needs(cold_push_name(mode)),
        );
        checks.push(
            Check::new(
                format!("unchanged-push-{}", mode.slug()),
                format!("unchanged push uploads nothing ({label})"),
                move |lab: &PushLab<'a>| {
                    let registry = lab.registry(mode)?;
                    lab.unchanged_push(registry, &lab.mount_cache(registry))
                },
            )
            .needs(cold_push_name(mode)),
        );
    }
    checks.extend([
        Check::new(
            "docker-pull",
            "docker pull and run the backend (htpasswd)",
            |lab: &PushLab<'a>| lab.docker_pull_and_run(lab.registry(Mode::Htpasswd)?),
        )
        .needs(cold_push_name(Mode::Htpasswd)),
        Check::new(
            "one-line-change",
            "one-line backend change uploads only the binary layer",
            |lab: &PushLab<'a>| lab.one_line_change(lab.registry(Mode::Htpasswd)?),
        )
        .needs(cold_push_name(Mode::Htpasswd)),
        Check::new(
            "second-repository",
            "push to a second repository mounts (token)",
            |lab: &PushLab<'a>| lab.second_repository(lab.registry(Mode::Token)?),
        )
        .needs(cold_push_name(Mode::Token)),
        Check::new(
            "cli",
            "cargo xtask push: CLI, env credentials, --json",
            |lab: &PushLab<'a>| lab.cli(lab.registry(Mode::Htpasswd)?),
        )
        .needs(cold_push_name(Mode::Htpasswd)),
    ]);
    checks.extend(faults::checks());
    checks.extend(errors::checks());
    checks
}

/// What the push checks share: the images, a scratch directory, and the registries and
/// fault proxy, each started when a check first asks for it and stopped on drop.
struct PushLab<'a> {
    sh: &'a Shell,
    revision: &'a Revision,
    images: &'a [BuiltImage],
    dir: PathBuf,
    /// Declared before the registries, so it stops before its upstream.
    proxy: OnceCell<FaultProxy>,
    /// By [`Mode`].
    registries: [OnceCell<TestRegistry>; 3],
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

impl PushLab<'_> {
    /// The registry of `mode`, started on first use.
    fn registry(&self, mode: Mode) -> anyhow::Result<&TestRegistry> {
        let cell = &self.registries[mode as usize];
        if let Some(registry) = cell.get() {
            return Ok(registry);
        }
        let user = "ci".to_owned();
        let auth = match mode {
            Mode::NoAuth => Auth::None,
            Mode::Htpasswd => Auth::Htpasswd {
                user,
                password: random_hex(),
            },
            Mode::Token => Auth::Token {
                user,
                password: random_hex(),
            },
        };
        let started = TestRegistry::start(self.sh, auth)
            .with_context(|| format!("starting the {} registry", mode.label()))?;
        Ok(cell.get_or_init(|| started))
    }

    /// The fault proxy in front of the no-auth registry, started on first use.
    fn proxy(&self) -> anyhow::Result<&FaultProxy> {
        if let Some(proxy) = self.proxy.get() {
            return Ok(proxy);
        }
        let started = FaultProxy::start(self.registry(Mode::NoAuth)?.addr, Vec::new())?;
        Ok(self.proxy.get_or_init(|| started))
    }

    /// The mount cache of pushes to `registry`: later checks find the cold push's blobs.
    fn mount_cache(&self, registry: &TestRegistry) -> PathBuf {
        self.dir
            .join(format!("mounts-{}.json", registry.addr.port()))
    }

    fn push(&self, opts: &PushOptions, images: &[BuiltImage]) -> anyhow::Result<Vec<PushedImage>> {
        push_built(self.sh, opts, images)
    }

    fn tags(&self) -> [String; 2] {
        [self.revision.version.clone(), "latest".to_owned()]
    }

    /// Both images into an empty registry: every blob uploaded once; the runtime layer the
    /// two images share is mounted into the second repository instead.
    fn cold_push(&self, registry: &TestRegistry, cache: &Path) -> anyhow::Result<String> {
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
        registry: &TestRegistry,
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
    fn skopeo_inspect(&self, registry: &TestRegistry, mode: &str) -> anyhow::Result<String> {
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

    fn unchanged_push(&self, registry: &TestRegistry, cache: &Path) -> anyhow::Result<String> {
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
    fn docker_pull_and_run(&self, registry: &TestRegistry) -> anyhow::Result<String> {
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

    fn one_line_change(&self, registry: &TestRegistry) -> anyhow::Result<String> {
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
    fn second_repository(&self, registry: &TestRegistry) -> anyhow::Result<String> {
        let mut opts = options(&registry.host(), registry.credentials.as_ref(), "ci/second");
        opts.mount_cache = Some(self.mount_cache(registry));
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
    fn cli(&self, registry: &TestRegistry) -> anyhow::Result<String> {
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
fn read_client(registry: &TestRegistry) -> anyhow::Result<Client> {
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
