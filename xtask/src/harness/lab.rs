//! The deploy lab that `cargo xtask e2e` and `cargo xtask bench deploy` share: sshd as the
//! server, an htpasswd registry, the Docker engine and PostgreSQL, all on loopback, and a
//! scratch clone of this checkout whose own xtask builds and deploys releases. Also
//! [`changed_backend`], the backend image after a one-line change without recompiling, for
//! the push checks and `cargo xtask bench push`.

use std::{
    fs,
    io::Read,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use xshell::{Shell, cmd};

use crate::{
    harness::{
        docker::{self, Engine},
        http,
        postgres::{Postgres, free_port},
        registry::{Auth, TestRegistry},
        sshd::Sshd,
    },
    image::{
        AssemblyTimes, BuiltImage,
        layer::{self, Entry, EntryKind, Source},
        oci::Blob,
        store::{ImageBlobs, Store},
    },
    project::{self, cargo},
    provision,
};

/// The compose file shipped as each release's `docker-compose.prod.yml`.
pub(crate) const COMPOSE_TEMPLATE: &str = include_str!("../../e2e/docker-compose.e2e.yml");

/// Everything a deploy on loopback runs against; dropping it removes the containers, images and
/// files it made and stops what it started.
pub(crate) struct Lab {
    root: PathBuf,
    /// The server's `/opt/timemanager`, under `root`.
    pub(crate) base: PathBuf,
    project: String,
    pub(crate) backend_port: u16,
    frontend_port: u16,
    static_port: u16,
    secrets: Vec<(&'static str, String)>,
    /// The scratch clone releases are built from, and its own target directory.
    pub(crate) clone: PathBuf,
    pub(crate) target: PathBuf,
    /// `SOURCE_DATE_EPOCH` of every build: see [`Lab::build`].
    epoch: String,
    /// Set while a deploy or rollback runs: the argv scanner looks only then.
    pub(crate) running: Arc<AtomicBool>,
    /// Leave the server directory on drop, for inspection.
    pub(crate) keep: bool,
    pub(crate) sshd: Sshd,
    registry: TestRegistry,
    pg: Postgres,
    _engine: Engine,
}

/// A built release of the scratch clone.
#[derive(Debug, Clone)]
pub(crate) struct Release {
    pub(crate) label: &'static str,
    pub(crate) tag: String,
    pub(crate) commit: String,
}

impl Release {
    /// What the release's `infrastructure/e2e/marker.txt` holds.
    pub(crate) fn marker(&self) -> String {
        format!("release {} ({})\n", self.label, self.tag)
    }
}

/// One run of the clone's xtask.
pub(crate) struct XtaskRun {
    pub(crate) ok: bool,
    /// stdout then stderr.
    pub(crate) output: String,
    pub(crate) elapsed: Duration,
    /// TCP connections sshd accepted while it ran.
    pub(crate) connections: usize,
}

impl XtaskRun {
    /// The run itself, if it exited 0; else an error with its output.
    pub(crate) fn expect_ok(self, what: &str) -> anyhow::Result<XtaskRun> {
        ensure!(self.ok, "{what} failed:\n{}", self.output);
        Ok(self)
    }
}

impl Lab {
    pub(crate) fn start(sh: &Shell) -> anyhow::Result<Lab> {
        if !provision::is_root() {
            bail!(
                "`cargo xtask e2e` runs sshd, dockerd and PostgreSQL as a server would: run it as root (CI does)"
            );
        }
        let root = std::env::temp_dir().join(format!("timemanager-e2e-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root)?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))?;
        // The server's /opt: `/opt/timemanager` itself is made by the first deploy.
        fs::create_dir_all(root.join("opt"))?;
        let engine = docker::engine(sh, &root.join("dockerd"))?;
        let secret = |what: &str| format!("e2e-{what}-{}", random_hex());
        let registry_password = secret("registry");
        let registry = TestRegistry::start(
            sh,
            Auth::Htpasswd {
                user: "e2e".to_owned(),
                password: registry_password.clone(),
            },
        )?;
        let sshd = Sshd::start(sh)?;
        let pg = Postgres::start(sh)?;
        let target_root = project::target_dir().join("e2e");
        Ok(Lab {
            base: root.join("opt/timemanager"),
            root,
            project: format!("tm-e2e-{}", std::process::id()),
            backend_port: free_port()?,
            frontend_port: free_port()?,
            static_port: free_port()?,
            secrets: vec![
                ("POSTGRES_PASSWORD", secret("postgres")),
                ("GRAFANA_PASSWORD", secret("grafana")),
                ("SMTP_PASSWORD", secret("smtp")),
                ("REGISTRY_PASSWORD", registry_password),
            ],
            clone: target_root.join("clone"),
            target: target_root.join("target"),
            epoch: cmd!(sh, "git log -1 --format=%ct").quiet().read()?,
            running: Arc::new(AtomicBool::new(false)),
            keep: false,
            sshd,
            registry,
            pg,
            _engine: engine,
        })
    }

    pub(crate) fn secret_values(&self) -> Vec<String> {
        let mut values: Vec<String> = self.secrets.iter().map(|(_, v)| v.clone()).collect();
        // The private key's body lines are secrets too.
        if let Ok(key) = fs::read_to_string(&self.sshd.client_key) {
            values.extend(
                key.lines()
                    .filter(|line| line.len() > 20 && !line.starts_with("-----"))
                    .map(str::to_owned),
            );
        }
        values
    }

    /// Strings in the command line of every process this lab starts.
    pub(crate) fn process_markers(&self) -> Vec<String> {
        vec![
            self.project.clone(),
            self.root.display().to_string(),
            format!("-p {}", self.sshd.port),
            format!("timemanager-sshd-{}-{}", std::process::id(), self.sshd.port),
            format!(
                "timemanager-registry-{}-{}",
                std::process::id(),
                self.registry.addr.port()
            ),
        ]
    }

    pub(crate) fn health_url(&self) -> String {
        format!("http://127.0.0.1:{}/health", self.backend_port)
    }

    pub(crate) fn frontend_origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.frontend_port)
    }

    /// Clones the working tree and commits it as release A.
    pub(crate) fn prepare_clone(&self, sh: &Shell) -> anyhow::Result<()> {
        let _ = fs::remove_dir_all(&self.clone);
        fs::create_dir_all(self.clone.parent().context("clone without parent")?)?;
        project::clone_working_tree(sh, &self.clone)?;
        let _dir = sh.push_dir(&self.clone);
        cmd!(sh, "git add -A").quiet().run()?;
        commit(sh, "e2e: release A (the working tree)")?;
        // The clone's own xtask deploys, as CI runs the checkout's.
        let cargo = cargo(sh);
        cmd!(sh, "{cargo} build --quiet --package xtask")
            .env("CARGO_TARGET_DIR", &self.target)
            .run()
            .context("building the clone's xtask")?;
        Ok(())
    }

    fn xtask(&self) -> PathBuf {
        self.target.join("debug/xtask")
    }

    /// Builds the clone's HEAD (both images) and writes its release files.
    pub(crate) fn build(
        &self,
        sh: &Shell,
        label: &'static str,
        static_tag: Option<&str>,
    ) -> anyhow::Result<Release> {
        let _dir = sh.push_dir(&self.clone);
        let xtask = self.xtask();
        cmd!(sh, "{xtask} build")
            .env("CARGO_TARGET_DIR", &self.target)
            // One epoch for all three releases (the checkout's commit time): ring's build
            // script tracks SOURCE_DATE_EPOCH, so a new epoch per commit would rebuild ring,
            // rustls and sqlx each time. The releases still differ in code and revision.
            .env("SOURCE_DATE_EPOCH", &self.epoch)
            .run()
            .with_context(|| format!("building release {label} in `{}`", self.clone.display()))?;
        let commit = cmd!(sh, "git rev-parse HEAD").quiet().read()?;
        let tag = commit.get(..7).context("short commit")?.to_owned();
        let release = Release { label, tag, commit };
        self.write_files(&release, static_tag.unwrap_or(&release.tag))?;
        Ok(release)
    }

    fn files_dir(&self, release: &Release) -> PathBuf {
        self.root.join("files").join(&release.tag)
    }

    fn write_files(&self, release: &Release, static_tag: &str) -> anyhow::Result<()> {
        let dir = self.files_dir(release);
        let compose = COMPOSE_TEMPLATE
            .replace("@PROJECT@", &self.project)
            .replace("@BACKEND_PORT@", &self.backend_port.to_string())
            .replace("@FRONTEND_PORT@", &self.frontend_port.to_string())
            .replace("@STATIC_PORT@", &self.static_port.to_string())
            .replace("@PG_PORT@", &self.pg.port.to_string())
            .replace("@STATIC_TAG@", static_tag);
        let unfilled = compose.split('@').skip(1).step_by(2).find(|word| {
            !word.is_empty() && word.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        });
        ensure!(
            unfilled.is_none(),
            "unfilled placeholder @{}@ in the e2e compose file",
            unfilled.unwrap_or_default()
        );
        fs::create_dir_all(dir.join("infrastructure/e2e"))?;
        fs::write(dir.join("docker-compose.yml"), compose)?;
        fs::write(dir.join("infrastructure/e2e/marker.txt"), release.marker())?;
        Ok(())
    }

    /// `cargo xtask deploy` of the clone, as CI would run it on that commit.
    pub(crate) fn deploy(
        &self,
        sh: &Shell,
        release: &Release,
        extra: &[&str],
    ) -> anyhow::Result<XtaskRun> {
        let files = self.files_dir(release);
        let compose = files.join("docker-compose.yml");
        let infrastructure = files.join("infrastructure");
        let tag = &release.tag;
        let mut args: Vec<String> = vec!["deploy".to_owned()];
        args.extend(self.server_args());
        args.extend(
            [
                "--compose-file",
                &compose.display().to_string(),
                "--infrastructure",
                &infrastructure.display().to_string(),
                "--health-url",
                &self.health_url(),
                "--health-timeout",
                "90",
                "--tag",
                tag,
            ]
            .map(str::to_owned),
        );
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        self.run_xtask(sh, &args)
    }

    pub(crate) fn rollback(&self, sh: &Shell) -> anyhow::Result<XtaskRun> {
        let mut args = vec!["rollback".to_owned()];
        args.extend(self.server_args());
        args.extend(["--health-url".to_owned(), self.health_url()]);
        self.run_xtask(sh, &args)
    }

    fn server_args(&self) -> Vec<String> {
        vec![
            "--port".to_owned(),
            self.sshd.port.to_string(),
            "--remote-dir".to_owned(),
            self.base.display().to_string(),
            "--compose-project".to_owned(),
            self.project.clone(),
        ]
    }

    fn run_xtask(&self, sh: &Shell, args: &[String]) -> anyhow::Result<XtaskRun> {
        let _dir = sh.push_dir(&self.clone);
        let xtask = self.xtask();
        let key = fs::read_to_string(&self.sshd.client_key)?;
        let before = self.sshd.connections();
        let start = Instant::now();
        let mut command = cmd!(sh, "{xtask} {args...}")
            .quiet()
            .ignore_status()
            .env("CARGO_TARGET_DIR", &self.target)
            .env("HETZNER_HOST", "127.0.0.1")
            .env("HETZNER_SSH_KEY", key)
            .env("HETZNER_KNOWN_HOSTS", &self.sshd.known_hosts)
            .env("DOMAIN", "127.0.0.1")
            .env("ACME_EMAIL", "e2e@example.invalid")
            // Upper case on purpose: image paths must be lower-cased by the deploy.
            .env("GITHUB_REPOSITORY", "E2E/TimeManager")
            .env("REGISTRY", self.registry.host())
            .env("REGISTRY_USERNAME", "e2e")
            .env("SOURCE_DATE_EPOCH", &self.epoch);
        for name in [
            "GITHUB_ACTOR",
            "GHCR_TOKEN",
            "GITHUB_TOKEN",
            "GITHUB_RUN_ID",
            "HETZNER_KNOWN_HOSTS_FILE",
        ] {
            command = command.env_remove(name);
        }
        for (name, value) in &self.secrets {
            command = command.env(name, value);
        }
        self.running.store(true, Ordering::Relaxed);
        let output = command.output();
        self.running.store(false, Ordering::Relaxed);
        let output = output?;
        let elapsed = start.elapsed();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(XtaskRun {
            ok: output.status.success(),
            output: text,
            elapsed,
            connections: self.sshd.connections() - before,
        })
    }

    pub(crate) fn revision(&self) -> anyhow::Result<String> {
        let res = http::request("GET", &self.health_url(), &[], None)?;
        ensure!(
            res.status == 200,
            "/health answered {}: {}",
            res.status,
            res.text()
        );
        let body: Value = serde_json::from_str(&res.text()).context("/health is not JSON")?;
        Ok(body["revision"].as_str().unwrap_or_default().to_owned())
    }

    pub(crate) fn served_marker(&self) -> anyhow::Result<String> {
        let url = format!("http://127.0.0.1:{}/marker.txt", self.static_port);
        let res = http::request("GET", &url, &[], None)?;
        ensure!(res.status == 200, "{url} answered {}", res.status);
        Ok(res.text().trim().to_owned())
    }

    /// The last line of the server's `releases.jsonl`.
    pub(crate) fn last_record(&self) -> anyhow::Result<Value> {
        let text = fs::read_to_string(self.base.join("releases.jsonl"))?;
        let line = text.lines().last().context("releases.jsonl is empty")?;
        Ok(serde_json::from_str(line)?)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let Ok(sh) = Shell::new() else { return };
        let label = format!("label=com.docker.compose.project={}", self.project);
        let ids = cmd!(sh, "docker ps -aq --filter {label}")
            .quiet()
            .read()
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = cmd!(sh, "docker rm --force {ids...}")
                .quiet()
                .ignore_stdout()
                .run();
        }
        let prefix = format!("{}/", self.registry.host());
        let format = "{{.Repository}}:{{.Tag}}";
        let refs: Vec<String> = cmd!(sh, "docker images --format {format}")
            .quiet()
            .read()
            .unwrap_or_default()
            .lines()
            .filter(|r| r.starts_with(&prefix))
            .map(str::to_owned)
            .collect();
        if !refs.is_empty() {
            let _ = cmd!(sh, "docker rmi --force {refs...}")
                .quiet()
                .ignore_stdout()
                .ignore_stderr()
                .run();
        }
        if self.keep {
            eprintln!("kept the server directory: {}", self.base.display());
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

/// Commits everything in the clone the shell is in.
pub(crate) fn commit(sh: &Shell, message: &str) -> anyhow::Result<()> {
    cmd!(
        sh,
        "git -c user.name=e2e -c user.email=e2e@localhost -c commit.gpgsign=false commit --quiet --allow-empty -a -m {message}"
    )
    .quiet()
    .run()
    .context("committing in the scratch clone")
}

fn random_hex() -> String {
    fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect()
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
    let mut entries = read_layer(&backend.layout.join(binary.digest.blob_path()))?;
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

    // A store of its own in `dir`, so the result is an OCI layout as `build` writes one,
    // named after the image: push reads nothing else.
    let _ = fs::remove_dir_all(dir);
    let store = Store::new(dir.to_path_buf())?;
    let (layer, _) = store.layer(&entries, epoch)?;
    for other in &backend.blobs.layers[..idx] {
        let from = backend.layout.join(other.digest.blob_path());
        store.put_file(&other.digest, |out| {
            std::io::copy(&mut fs::File::open(&from)?, out)?;
            Ok(())
        })?;
    }
    let mut config: Value = serde_json::from_slice(&backend.blobs.config.bytes)?;
    config["rootfs"]["diff_ids"][idx] = layer.diff_id.to_string().into();
    let config = Blob::from_json(&config);
    let mut manifest: Value = serde_json::from_slice(&backend.blobs.manifest.bytes)?;
    manifest["config"]["digest"] = config.digest.to_string().into();
    manifest["config"]["size"] = config.size().into();
    manifest["layers"][idx]["digest"] = layer.digest.to_string().into();
    manifest["layers"][idx]["size"] = layer.size.into();
    let manifest = Blob::from_json(&manifest);
    store.put(&config)?;
    store.put(&manifest)?;
    let mut layers = backend.blobs.layers.clone();
    layers[idx] = layer;
    let blobs = ImageBlobs {
        manifest,
        config,
        layers,
    };
    let tag = format!("changed-{n}");
    let reference = format!("timemanager/{}:{tag}", backend.name);
    let layout = store.write_layout(backend.name, &blobs, &reference, &tag)?;
    Ok(BuiltImage {
        name: backend.name,
        blobs,
        layout,
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
