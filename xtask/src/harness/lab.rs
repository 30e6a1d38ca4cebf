//! The deploy lab that `cargo xtask e2e` and `cargo xtask bench deploy` share: the production
//! stack, `docker-compose.prod.yml` byte for byte, deployed over ssh on loopback as CI deploys
//! it. sshd is the server (root), an htpasswd registry holds our images, the Docker engine is
//! the running one (else Debian's `dockerd`, started here), the third-party images are
//! stand-ins under their production references (`lab_images.rs`), compose v2 is installed as a
//! CLI plugin next to Debian's v1, and a scratch clone of this checkout builds and deploys
//! releases with its own xtask. What differs from production is in the override files of
//! `xtask/e2e/` and in ARCHITECTURE.md's "Lab vs production" table.
//!
//! The stack runs under production's names (project `timemanager`, PostgreSQL's and Traefik's
//! container names, the `timemanager` network, ports 80 and 443 on the host), so one lab at a
//! time per engine: the lab refuses to start next to a `timemanager` project it did not
//! create, and removes the project with its volumes when dropped.
//!
//! Also [`changed_backend`], the backend image after a one-line change without recompiling,
//! for the push checks and `cargo xtask bench push`.

use std::{
    fs,
    io::Read,
    net::TcpListener,
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
    deploy::compose::{COMPOSE_FILE, COMPOSE_PROJECT},
    harness::{
        docker::{self, Engine},
        http::{self, Reply},
        lab_images::{self, LabImage, LabImageSet},
        registry::{self, Auth, TestRegistry},
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

/// The lab's override for compose v1 and v2: postgres-backup, pinned by digest, is not run.
pub(crate) const LAB_OVERRIDE: &str = include_str!("../../e2e/docker-compose.lab.yml");

/// The v2-only override of the monitoring scenario: the services without stand-ins are not run.
pub(crate) const LAB_MONITORING_OVERRIDE: &str =
    include_str!("../../e2e/docker-compose.lab-monitoring.yml");

/// `DOMAIN` of every lab deploy. `/etc/hosts` resolves it to loopback, so no request leaves the
/// machine; Let's Encrypt refuses it, so Traefik serves its self-signed default certificate.
pub(crate) const DOMAIN: &str = "localhost";

/// The health URL of every lab deploy: through Traefik, as in production.
pub(crate) const HEALTH_URL: &str = "https://localhost/api/health";

/// Debian's compose v1, for the scenario that keeps the deploy's v1 branch tested.
const COMPOSE_V1: provision::Need = provision::Need {
    program: "docker-compose",
    package: "docker-compose",
};

/// Lower case: compose rejects upper-case image paths.
const REPOSITORY: &str = "e2e/timemanager";

/// Which compose the server's scripts run (`TM_COMPOSE` of the deploy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compose {
    V1,
    V2,
}

impl Compose {
    fn env_value(self) -> &'static str {
        match self {
            Compose::V1 => "v1",
            Compose::V2 => "v2",
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Compose::V1 => "docker-compose v1",
            Compose::V2 => "docker compose v2",
        }
    }
}

/// One server directory of the lab (`--remote-dir`) and how deploys to it run.
#[derive(Clone, Debug)]
pub(crate) struct Server {
    pub(crate) base: PathBuf,
    pub(crate) compose: Compose,
    /// `--profile monitoring` with the v2-only override: Prometheus and node-exporter too.
    pub(crate) monitoring: bool,
    pub(crate) health_timeout: u64,
}

impl Server {
    fn override_name(&self) -> &'static str {
        if self.monitoring {
            "docker-compose.lab-monitoring.yml"
        } else {
            "docker-compose.lab.yml"
        }
    }

    /// The last line of the server's `releases.jsonl`.
    pub(crate) fn last_record(&self) -> anyhow::Result<Value> {
        let text = fs::read_to_string(self.base.join("releases.jsonl"))?;
        let line = text.lines().last().context("releases.jsonl is empty")?;
        Ok(serde_json::from_str(line)?)
    }
}

/// Everything a deploy on loopback runs against; dropping it removes the stack (containers,
/// network, volumes), our images and the files it made, and stops what it started.
pub(crate) struct Lab {
    root: PathBuf,
    secrets: Vec<(&'static str, String)>,
    /// The scratch clone releases are built from, and its own target directory.
    pub(crate) clone: PathBuf,
    pub(crate) target: PathBuf,
    /// `SOURCE_DATE_EPOCH` of every build: see [`Lab::build`].
    epoch: String,
    /// Set while a deploy or rollback runs: the argv scanner looks only then.
    pub(crate) running: Arc<AtomicBool>,
    /// Leave the server directories on drop, for inspection.
    pub(crate) keep: bool,
    /// The stand-ins for the third-party images, as built or found in the cache.
    pub(crate) images: Vec<LabImage>,
    /// How long building or finding them took.
    pub(crate) images_time: Duration,
    pub(crate) sshd: Sshd,
    registry: TestRegistry,
    /// Dropped after the stack is down: node-exporter's `rslave` mount needs `/` shared.
    shared_root: Option<SharedRoot>,
    /// Set by [`Lab::stop`]: the drop has nothing left to do but stop the engine.
    stopped: bool,
    _engine: Engine,
}

/// A built release of the scratch clone.
#[derive(Debug, Clone)]
pub(crate) struct Release {
    pub(crate) label: &'static str,
    pub(crate) tag: String,
    pub(crate) commit: String,
}

/// One run of the clone's xtask.
pub(crate) struct XtaskRun {
    pub(crate) ok: bool,
    /// stdout then stderr.
    pub(crate) output: String,
    pub(crate) elapsed: Duration,
    /// TCP connections the compose lab's sshd accepted while it ran (the swarm lab does not
    /// count them: 0).
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
                "`cargo xtask e2e` runs sshd, Docker and the production stack as a server would: run it as root (`sudo -E cargo xtask e2e`; CI does)"
            );
        }
        let root = std::env::temp_dir().join(format!("timemanager-e2e-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root)?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))?;
        // The server's /opt: each server directory under it is made by its first deploy.
        fs::create_dir_all(root.join("opt"))?;
        let engine = docker::engine(sh, &root.join("dockerd"))?;
        claim_project(sh)?;
        ports_free()?;
        fs::write(owner_file(), std::process::id().to_string())?;
        provision::ensure(sh, &[COMPOSE_V1, registry::OPENSSL, provision::CURL])?;
        lab_images::ensure_compose_v2(sh).context("installing compose v2 for the lab")?;
        let images_start = Instant::now();
        let images = lab_images::ensure_lab_images(sh, LabImageSet::WithMonitoring)
            .context("building the lab's stand-in images")?;
        let images_time = images_start.elapsed();
        fs::create_dir_all(root.join("overrides"))?;
        fs::write(root.join("overrides/docker-compose.lab.yml"), LAB_OVERRIDE)?;
        fs::write(
            root.join("overrides/docker-compose.lab-monitoring.yml"),
            LAB_MONITORING_OVERRIDE,
        )?;
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
        let target_root = project::target_dir().join("e2e");
        Ok(Lab {
            root,
            secrets: vec![
                ("POSTGRES_PASSWORD", secret("postgres")),
                ("GRAFANA_PASSWORD", secret("grafana")),
                ("SMTP_PASSWORD", secret("smtp")),
                ("REGISTRY_PASSWORD", registry_password),
            ],
            clone: target_root.join("clone"),
            target: project::clones_target_dir(),
            epoch: build_epoch(sh)?,
            running: Arc::new(AtomicBool::new(false)),
            keep: false,
            images,
            images_time,
            sshd,
            registry,
            shared_root: None,
            stopped: false,
            _engine: engine,
        })
    }

    /// A server directory of the lab; each scenario deploys to its own.
    pub(crate) fn server(&self, name: &str, compose: Compose, monitoring: bool) -> Server {
        Server {
            base: self.root.join("opt").join(name),
            compose,
            monitoring,
            health_timeout: 150,
        }
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

    /// Strings in the command line of every process this lab starts (the stack's containers
    /// are removed by the drop, checked apart).
    pub(crate) fn process_markers(&self) -> Vec<String> {
        vec![
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

    /// Makes `/` a shared mount for node-exporter's `/:/host:ro,rslave`, as on systemd hosts
    /// (production); made private again when the lab is dropped, if it was. Says what it did.
    pub(crate) fn share_root(&mut self, sh: &Shell) -> anyhow::Result<String> {
        if self.shared_root.is_some() {
            return Ok("`/` already made shared by this lab".to_owned());
        }
        let propagation = cmd!(sh, "findmnt --noheadings --output PROPAGATION /")
            .quiet()
            .read()?;
        if propagation.trim() != "private" {
            return Ok(format!("`/` already {} on this host", propagation.trim()));
        }
        cmd!(sh, "mount --make-shared /")
            .quiet()
            .run()
            .context("making `/` a shared mount for node-exporter")?;
        self.shared_root = Some(SharedRoot);
        Ok("`/` made shared for the run (private again afterwards)".to_owned())
    }

    /// Clones the working tree and commits it as release A.
    pub(crate) fn prepare_clone(&self, sh: &Shell) -> anyhow::Result<()> {
        prepare_clone(sh, &self.clone, &self.target)
    }

    fn xtask(&self) -> PathBuf {
        self.target.join("debug/xtask")
    }

    /// Builds the clone's HEAD (both images) and keeps its release files: the compose file,
    /// checked equal to this checkout's, and `infrastructure/`.
    pub(crate) fn build(&self, sh: &Shell, label: &'static str) -> anyhow::Result<Release> {
        let release = build(sh, &self.clone, &self.target, &self.epoch, label)?;
        let dir = self.files_dir(&release);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let compose = fs::read(self.clone.join(COMPOSE_FILE))?;
        ensure!(
            compose == fs::read(project::root().join(COMPOSE_FILE))?,
            "release {label}'s {COMPOSE_FILE} differs from this checkout's: the lab deploys production's file unchanged"
        );
        fs::write(dir.join(COMPOSE_FILE), compose)?;
        let infrastructure = self.clone.join("infrastructure");
        cmd!(sh, "cp -R {infrastructure} {dir}").quiet().run()?;
        Ok(release)
    }

    fn files_dir(&self, release: &Release) -> PathBuf {
        self.root.join("files").join(&release.tag)
    }

    /// `cargo xtask deploy` of the clone, as CI would run it on that commit, with the lab's
    /// override and a health gate that accepts Traefik's self-signed certificate.
    pub(crate) fn deploy(
        &self,
        sh: &Shell,
        server: &Server,
        release: &Release,
        extra: &[&str],
    ) -> anyhow::Result<XtaskRun> {
        let args = self.deploy_args(server, release, extra);
        self.run_xtask(sh, server, &args)
    }

    /// The same deploy started in the background, in a process group of its own (so a test
    /// can kill it with its ssh children), its output in `log`.
    pub(crate) fn spawn_deploy(
        &self,
        sh: &Shell,
        server: &Server,
        release: &Release,
        extra: &[&str],
        log: &Path,
    ) -> anyhow::Result<std::process::Child> {
        use std::os::unix::process::CommandExt;
        let args = self.deploy_args(server, release, extra);
        let _dir = sh.push_dir(&self.clone);
        let mut command = std::process::Command::from(self.xtask_cmd(sh, server, &args)?);
        let out = fs::File::create(log)?;
        command
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        command.spawn().context("starting the clone's xtask")
    }

    fn deploy_args(&self, server: &Server, release: &Release, extra: &[&str]) -> Vec<String> {
        let files = self.files_dir(release);
        let path = |p: PathBuf| p.display().to_string();
        let mut args: Vec<String> = vec!["deploy".to_owned()];
        args.extend(self.server_args(server));
        args.extend([
            "--compose-file".to_owned(),
            path(files.join(COMPOSE_FILE)),
            "--infrastructure".to_owned(),
            path(files.join("infrastructure")),
            "--compose-override".to_owned(),
            path(self.root.join("overrides").join(server.override_name())),
            "--tag".to_owned(),
            release.tag.clone(),
        ]);
        if server.monitoring {
            args.extend(["--profile".to_owned(), "monitoring".to_owned()]);
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    /// `cargo xtask status` of the server.
    pub(crate) fn status(&self, sh: &Shell, server: &Server) -> anyhow::Result<XtaskRun> {
        let mut args = vec!["status".to_owned()];
        // All but `--health-timeout SECONDS`: status waits for nothing.
        let server_args = self.server_args(server);
        args.extend(server_args.iter().take(server_args.len() - 2).cloned());
        self.run_xtask(sh, server, &args)
    }

    pub(crate) fn rollback(
        &self,
        sh: &Shell,
        server: &Server,
        extra: &[&str],
    ) -> anyhow::Result<XtaskRun> {
        let mut args = vec!["rollback".to_owned()];
        args.extend(self.server_args(server));
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        self.run_xtask(sh, server, &args)
    }

    /// `cargo xtask db SUBCOMMAND` against the server (`restore` also takes the health gate's
    /// flags: pass them with `health`).
    pub(crate) fn db(
        &self,
        sh: &Shell,
        server: &Server,
        subcommand: &[&str],
        health: bool,
    ) -> anyhow::Result<XtaskRun> {
        let mut args = vec!["db".to_owned()];
        args.extend(subcommand.iter().map(|s| (*s).to_owned()));
        let server_args = self.server_args(server);
        // `--port P --remote-dir D` first; the rest are the health gate's.
        let take = if health { server_args.len() } else { 4 };
        args.extend(server_args.into_iter().take(take));
        self.run_xtask(sh, server, &args)
    }

    fn server_args(&self, server: &Server) -> Vec<String> {
        vec![
            "--port".to_owned(),
            self.sshd.port.to_string(),
            "--remote-dir".to_owned(),
            server.base.display().to_string(),
            "--health-url".to_owned(),
            HEALTH_URL.to_owned(),
            "--health-insecure-tls".to_owned(),
            "--health-timeout".to_owned(),
            server.health_timeout.to_string(),
        ]
    }

    fn run_xtask(&self, sh: &Shell, server: &Server, args: &[String]) -> anyhow::Result<XtaskRun> {
        let _dir = sh.push_dir(&self.clone);
        let command = self.xtask_cmd(sh, server, args)?;
        let before = self.sshd.connections();
        let mut run = run_clone_xtask(command, &self.running)?;
        run.connections = self.sshd.connections() - before;
        Ok(run)
    }

    /// The clone's xtask with the lab's settings in its environment, as CI would set them.
    fn xtask_cmd<'a>(
        &self,
        sh: &'a Shell,
        server: &Server,
        args: &[String],
    ) -> anyhow::Result<xshell::Cmd<'a>> {
        let xtask = self.xtask();
        let key = fs::read_to_string(&self.sshd.client_key)?;
        let mut command = cmd!(sh, "{xtask} {args...}")
            .quiet()
            .ignore_status()
            .env("CARGO_TARGET_DIR", &self.target)
            .env("HETZNER_HOST", "127.0.0.1")
            .env("HETZNER_SSH_KEY", key)
            .env("HETZNER_KNOWN_HOSTS", &self.sshd.known_hosts)
            .env("DOMAIN", DOMAIN)
            // A reserved TLD: where Traefik can reach Let's Encrypt (CI), it refuses the account.
            .env("ACME_EMAIL", "e2e@timemanager.test")
            .env("GITHUB_REPOSITORY", REPOSITORY)
            .env("REGISTRY", self.registry.host())
            .env("REGISTRY_USERNAME", "e2e")
            .env("TM_COMPOSE", server.compose.env_value())
            .env("SOURCE_DATE_EPOCH", &self.epoch);
        for name in OUTER_ENV {
            command = command.env_remove(name);
        }
        for (name, value) in &self.secrets {
            command = command.env(name, value);
        }
        Ok(command)
    }

    /// The deployed revision, from the backend's health JSON through Traefik.
    pub(crate) fn revision(&self) -> anyhow::Result<String> {
        let (status, body) = health_at(HEALTH_URL)?;
        ensure!(
            status == 200 && body["status"] == "ok",
            "{HEALTH_URL} answered {status}: {body}"
        );
        Ok(body["revision"].as_str().unwrap_or_default().to_owned())
    }

    /// Stops and removes the stack of `server` with compose v2 (`down`), keeping the volumes
    /// unless `volumes`.
    pub(crate) fn down(&self, sh: &Shell, server: &Server, volumes: bool) -> anyhow::Result<()> {
        let base = &server.base;
        let compose_file = base.join(COMPOSE_FILE);
        if !compose_file.exists() {
            return Ok(());
        }
        let mut files = vec!["-f".to_owned(), compose_file.display().to_string()];
        let override_file = base.join("docker-compose.override.yml");
        if override_file.exists() {
            files.extend(["-f".to_owned(), override_file.display().to_string()]);
        }
        let env_file = base.join(".env");
        let volumes = volumes.then_some("--volumes");
        cmd!(
            sh,
            "docker compose -p {COMPOSE_PROJECT} --project-directory {base} --env-file {env_file} {files...} --profile monitoring down --remove-orphans {volumes...}"
        )
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .with_context(|| format!("`docker compose down` of the stack in `{}`", base.display()))
    }
}

impl Lab {
    /// Takes the stack down and checks, while the engine still runs, that nothing of the
    /// `timemanager` project is left; then stops the engine (the drop). The engine may be the
    /// lab's own, so nothing can ask it afterwards.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        self.stopped = true;
        self.teardown()
    }

    fn teardown(&mut self) -> anyhow::Result<()> {
        let sh = Shell::new()?;
        if let Ok(entries) = fs::read_dir(self.root.join("opt")) {
            for entry in entries.flatten() {
                let server = Server {
                    base: entry.path(),
                    compose: Compose::V2,
                    monitoring: true,
                    health_timeout: 0,
                };
                if let Err(err) = self.down(&sh, &server, true) {
                    eprintln!("warning: {err:#}");
                }
            }
        }
        let removed = remove_project(&sh).context("removing the lab's `timemanager` project");
        if removed.is_ok() {
            let _ = fs::remove_file(owner_file());
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
            eprintln!(
                "kept the server directories: {}",
                self.root.join("opt").display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
        removed
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.stopped
            && let Err(err) = self.teardown()
        {
            eprintln!("warning: {err:#}");
        }
    }
}

/// `/` made shared by the lab: private again on drop.
struct SharedRoot;

impl Drop for SharedRoot {
    fn drop(&mut self) {
        let Ok(sh) = Shell::new() else { return };
        if cmd!(sh, "mount --make-private /").quiet().run().is_err() {
            eprintln!("warning: could not make `/` private again (`mount --make-private /`)");
        }
    }
}

/// Records which lab process owns the engine's `timemanager` project while it runs.
fn owner_file() -> PathBuf {
    std::env::temp_dir().join("timemanager-e2e-lab.pid")
}

/// What the engine holds of the `timemanager` compose project: containers and volumes
/// (by compose label) and the fixed-name network.
fn project_leftovers(sh: &Shell) -> anyhow::Result<Vec<String>> {
    let label = format!("label=com.docker.compose.project={COMPOSE_PROJECT}");
    let format = "{{.Names}}";
    let mut found: Vec<String> = cmd!(sh, "docker ps -a --filter {label} --format {format}")
        .quiet()
        .read()?
        .lines()
        .map(|name| format!("container {name}"))
        .collect();
    found.extend(
        cmd!(sh, "docker volume ls -q --filter {label}")
            .quiet()
            .read()?
            .lines()
            .map(|name| format!("volume {name}")),
    );
    let network = format!("name=^{COMPOSE_PROJECT}$");
    found.extend(
        cmd!(sh, "docker network ls -q --filter {network}")
            .quiet()
            .read()?
            .lines()
            .map(|_| format!("network {COMPOSE_PROJECT}")),
    );
    Ok(found)
}

/// The lab runs production's project name: it refuses to start next to a `timemanager`
/// project it did not create (a real deployment on this engine), and removes what a lab that
/// died without its drop left behind.
fn claim_project(sh: &Shell) -> anyhow::Result<()> {
    let found = project_leftovers(sh)?;
    if found.is_empty() {
        return Ok(());
    }
    let owner = fs::read_to_string(owner_file()).ok();
    let dead_lab = owner
        .as_deref()
        .map(str::trim)
        .is_some_and(|pid| !pid.is_empty() && !Path::new("/proc").join(pid).exists());
    if !dead_lab {
        bail!(
            "this Docker engine already has a `{COMPOSE_PROJECT}` compose project that this lab did not create:\n  {}\nthe lab runs the production stack under its real names and would replace it; stop it first (if it is disposable: `docker compose -p {COMPOSE_PROJECT} down`), or run the e2e on another machine",
            found.join("\n  ")
        );
    }
    eprintln!(
        "removing what an earlier lab run left behind: {}",
        found.join(", ")
    );
    remove_project(sh)
}

/// Removes the `timemanager` project's containers, volumes and network, by label: the same
/// as `down --volumes`, without needing its compose files.
fn remove_project(sh: &Shell) -> anyhow::Result<()> {
    let label = format!("label=com.docker.compose.project={COMPOSE_PROJECT}");
    let ids = cmd!(sh, "docker ps -aq --filter {label}").quiet().read()?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        cmd!(sh, "docker rm --force --volumes {ids...}")
            .quiet()
            .ignore_stdout()
            .run()?;
    }
    let volumes = cmd!(sh, "docker volume ls -q --filter {label}")
        .quiet()
        .read()?;
    let volumes: Vec<&str> = volumes.split_whitespace().collect();
    if !volumes.is_empty() {
        cmd!(sh, "docker volume rm {volumes...}")
            .quiet()
            .ignore_stdout()
            .run()?;
    }
    let network = format!("name=^{COMPOSE_PROJECT}$");
    let networks = cmd!(sh, "docker network ls -q --filter {network}")
        .quiet()
        .read()?;
    let networks: Vec<&str> = networks.split_whitespace().collect();
    if !networks.is_empty() {
        cmd!(sh, "docker network rm {networks...}")
            .quiet()
            .ignore_stdout()
            .run()?;
    }
    let left = project_leftovers(sh)?;
    ensure!(left.is_empty(), "still there: {}", left.join(", "));
    Ok(())
}

/// Traefik publishes 80 and 443 on the host (literal ports in the compose file): fail early,
/// naming the port, when something else listens there.
fn ports_free() -> anyhow::Result<()> {
    for port in [80, 443] {
        if let Err(err) = TcpListener::bind(("0.0.0.0", port)) {
            bail!(
                "port {port} is taken ({err}): the lab's Traefik publishes 80 and 443 on the host, as in production; stop what listens there (`ss -ltnp 'sport = :{port}'`) and run the e2e again"
            );
        }
    }
    Ok(())
}

/// Settings of the machine running the test that must not reach a lab's deploy.
pub(crate) const OUTER_ENV: &[&str] = &[
    "GITHUB_ACTOR",
    "GHCR_TOKEN",
    "GITHUB_TOKEN",
    "GITHUB_RUN_ID",
    "HETZNER_KNOWN_HOSTS_FILE",
];

/// Runs a clone's xtask to completion with `running` set meanwhile (the argv scanner looks
/// only then); `connections` is left 0 for the caller that counts them.
pub(crate) fn run_clone_xtask(
    command: xshell::Cmd<'_>,
    running: &AtomicBool,
) -> anyhow::Result<XtaskRun> {
    let start = Instant::now();
    running.store(true, Ordering::Relaxed);
    let output = command.output();
    running.store(false, Ordering::Relaxed);
    let output = output?;
    Ok(XtaskRun {
        ok: output.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        elapsed: start.elapsed(),
        connections: 0,
    })
}

/// The status and the backend's health JSON at `url` through Traefik; an error names what
/// answered instead of the JSON.
pub(crate) fn health_at(url: &str) -> anyhow::Result<(u16, Value)> {
    let res = edge("GET", url, &[], None)?;
    let body = health_json(&res).with_context(|| {
        format!(
            "{url} answered {} without the backend's health JSON: {}",
            res.status,
            excerpt(&res.text())
        )
    })?;
    Ok((res.status, body))
}

/// A request to the stack through Traefik, as a browser on the server would send it: the URL's
/// host is `localhost` (SNI and `Host`), Traefik's self-signed default certificate is accepted
/// (the lab has no ACME; production's is Let's Encrypt's), redirects are not followed. Any
/// status is a reply.
pub(crate) fn edge(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<Reply> {
    let tls = ureq::tls::TlsConfig::builder()
        .disable_verification(true)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .max_redirects(0)
        .tls_config(tls)
        .build()
        .into();
    let request = ureq::http::Request::builder().method(method).uri(url);
    let request = headers.iter().fold(request, |request, (name, value)| {
        request.header(*name, *value)
    });
    let result = match body {
        Some(body) => agent.run(request.body(body.to_owned())?),
        None => agent.run(request.body(())?),
    };
    let mut res = result.map_err(|err| anyhow::format_err!("{method} {url}: {err}"))?;
    let headers = http::header_pairs(res.headers());
    let body = res
        .body_mut()
        .read_to_string()
        .unwrap_or_default()
        .into_bytes();
    Ok(Reply {
        status: res.status().as_u16(),
        headers,
        body,
    })
}

/// The backend's health JSON (`status`, `database`, `revision`), if the reply is one: with no
/// backend router, Traefik's catch-all frontend router answers 200 with the SPA instead.
pub(crate) fn health_json(res: &Reply) -> Option<Value> {
    let body: Value = serde_json::from_slice(&res.body).ok()?;
    body.get("status")?.as_str()?;
    body.get("revision")?.as_str()?;
    Some(body)
}

/// The start of a body, for messages.
pub(crate) fn excerpt(text: &str) -> String {
    text.chars()
        .take(120)
        .collect::<String>()
        .replace('\n', " ")
}

/// `SOURCE_DATE_EPOCH` of every lab build: the checkout's commit time (see [`build`]).
pub(crate) fn build_epoch(sh: &Shell) -> anyhow::Result<String> {
    let _dir = sh.push_dir(project::root());
    Ok(cmd!(sh, "git log -1 --format=%ct").quiet().read()?)
}

/// Clones the working tree to `clone`, commits it as release A and builds the clone's own
/// xtask into `target` (the swarm e2e uses the compose e2e's, so its builds are incremental).
pub(crate) fn prepare_clone(sh: &Shell, clone: &Path, target: &Path) -> anyhow::Result<()> {
    let _ = fs::remove_dir_all(clone);
    fs::create_dir_all(clone.parent().context("clone without parent")?)?;
    project::clone_working_tree(sh, clone)?;
    let _dir = sh.push_dir(clone);
    cmd!(sh, "git add -A").quiet().run()?;
    commit(sh, "e2e: release A (the working tree)")?;
    // The clone's own xtask deploys, as CI runs the checkout's.
    let cargo = cargo(sh);
    cmd!(sh, "{cargo} build --quiet --package xtask")
        .env("CARGO_TARGET_DIR", target)
        .run()
        .context("building the clone's xtask")?;
    Ok(())
}

/// Builds the clone's HEAD (both images) with its own xtask.
pub(crate) fn build(
    sh: &Shell,
    clone: &Path,
    target: &Path,
    epoch: &str,
    label: &'static str,
) -> anyhow::Result<Release> {
    let _dir = sh.push_dir(clone);
    let xtask = target.join("debug/xtask");
    cmd!(sh, "{xtask} build")
        .env("CARGO_TARGET_DIR", target)
        // One epoch for all releases (the checkout's commit time): ring's build script
        // tracks SOURCE_DATE_EPOCH, so a new epoch per commit would rebuild ring, rustls
        // and sqlx each time. The releases still differ in code and revision.
        .env("SOURCE_DATE_EPOCH", epoch)
        .run()
        .with_context(|| format!("building release {label} in `{}`", clone.display()))?;
    let commit = cmd!(sh, "git rev-parse HEAD").quiet().read()?;
    let tag = commit.get(..7).context("short commit")?.to_owned();
    Ok(Release { label, tag, commit })
}

/// Commits everything in the clone the shell is in.
pub(crate) fn commit(sh: &Shell, message: &str) -> anyhow::Result<()> {
    // New files too (a release's migration): a build of an untracked file is `-dirty`.
    cmd!(sh, "git add --all")
        .quiet()
        .run()
        .context("adding to the scratch clone's index")?;
    cmd!(
        sh,
        "git -c user.name=e2e -c user.email=e2e@localhost -c commit.gpgsign=false commit --quiet --allow-empty -a -m {message}"
    )
    .quiet()
    .run()
    .context("committing in the scratch clone")
}

/// 32 random hex digits, from the kernel: names and secrets no other run uses.
pub(crate) fn random_hex() -> String {
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
