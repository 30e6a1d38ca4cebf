//! `cargo xtask deploy` and the commands that operate the server: `rollback`, `releases`,
//! `status`, `logs`, `server-setup`.
//!
//! A deploy is a [`plan::Plan`] built before anything runs (printed by `--dry-run`), then
//! executed step by step over one ssh connection while the server's deploy lock is held:
//!
//! ```text
//! /opt/timemanager/
//!   releases/<tag>/{docker-compose.prod.yml, infrastructure/, .env (0600), images,
//!                   .uploaded, .activated, .previous, .result}
//!   current -> releases/<tag>                 swapped atomically (rename of a new link)
//!   docker-compose.prod.yml, .env, infrastructure -> current/...   the runbook's paths
//!   releases.jsonl                            one JSON line per deploy or rollback
//!   .deploy.lock, .deploy.lock.holder         flock held by the deploying ssh session
//! ```

mod health;
mod plan;
mod scripts;
mod secrets;
mod settings;
mod ssh;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use serde_json::json;
use xshell::Shell;

use crate::{
    deploy::{
        plan::{Action, Gate, Local, Plan, Step},
        scripts::{ImageLine, Remote},
        secrets::Redactor,
        settings::{Lookup, OWN_SERVICES, Problems, ReleaseSettings, Target},
        ssh::{LockSession, Session, Stdout},
    },
    flags, project,
    push::{self, CredentialSource, PushOptions},
    registry, stack,
    steps::format_duration,
};

impl flags::Deploy {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        deploy(sh, &self, &settings::from_process_env)
    }
}

impl flags::Rollback {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        rollback(sh, &self, &settings::from_process_env)
    }
}

impl flags::Releases {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let (target, redactor) = server_target(&self.server, &settings::from_process_env)?;
        let session = Session::open(sh, &target, &redactor)?;
        let remote = Remote::read_only(&target);
        let text = session.run(
            sh,
            "listing releases",
            &remote.list_releases(),
            Stdout::Capture,
        )?;
        print!("{}", format_releases(&parse_releases(&text)));
        Ok(())
    }
}

impl flags::Status {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let env = &settings::from_process_env;
        let (target, redactor) = server_target(&self.server, env)?;
        let session = Session::open(sh, &target, &redactor)?;
        let remote = Remote::read_only(&target);
        session.run(
            sh,
            "reading the server's status",
            &remote.status(),
            Stdout::Print,
        )?;
        let url = self
            .health_url
            .or_else(|| env("DOMAIN").map(|domain| format!("https://{domain}/api/health")));
        if let Some(url) = url {
            match health::url_status(&url) {
                Ok(status) => println!("\nGET {url}: {status}"),
                Err(err) => println!("\nGET {url}: {err:#}"),
            }
        }
        Ok(())
    }
}

impl flags::Logs {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        if !settings::is_name(&self.service) {
            bail!(
                "`{}` is not a compose service name (e.g. `backend`)",
                self.service
            );
        }
        let (target, redactor) = server_target(&self.server, &settings::from_process_env)?;
        let session = Session::open(sh, &target, &redactor)?;
        let remote = Remote::read_only(&target);
        let script = remote.logs(&self.service, self.tail, self.follow);
        session.run(sh, "reading logs", &script, Stdout::Print)?;
        Ok(())
    }
}

impl flags::ServerSetup {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let script =
            scripts::server_setup(&self.server.remote_dir, self.server.port, &self.server.user);
        if self.dry_run {
            println!(
                "Sent over ssh's stdin to `{}bash -s` on the server:\n",
                if self.server.user == "root" {
                    ""
                } else {
                    "sudo -n "
                }
            );
            print!("{}", script.masked());
            return Ok(());
        }
        let (target, redactor) = server_target(&self.server, &settings::from_process_env)?;
        let session = Session::open(sh, &target, &redactor)?;
        session.run_as_root(sh, "provisioning the server", &script)?;
        eprintln!(
            "{} is ready: deploy with `cargo xtask deploy --host {}`",
            target.host, target.host
        );
        Ok(())
    }
}

/// Reads only what talking to the server needs.
fn server_target(server: &flags::Server, env: Lookup<'_>) -> anyhow::Result<(Target, Redactor)> {
    let mut problems = Problems::default();
    let mut redactor = Redactor::default();
    let target = settings::target(server, env, &mut problems, &mut redactor);
    problems.into_result()?;
    Ok((target, redactor))
}

fn deploy(sh: &Shell, flags: &flags::Deploy, env: Lookup<'_>) -> anyhow::Result<()> {
    let mut problems = Problems::default();
    let mut redactor = Redactor::default();
    let target = settings::target(&flags.server, env, &mut problems, &mut redactor);
    let tag = match &flags.tag {
        Some(tag) if flags.no_push => tag.clone(),
        given => {
            let version = project::revision(sh)?.version;
            if let Some(tag) = given.as_ref().filter(|tag| **tag != version) {
                bail!(
                    "--tag {tag} is not this checkout ({version}): add --no-push to deploy images already in the registry"
                );
            }
            version
        }
    };
    let release = settings::release(
        &tag,
        &flags.profiles,
        flags.health.health_url.as_deref(),
        env,
        &mut problems,
        &mut redactor,
    );
    let compose_file = flags
        .compose_file
        .clone()
        .unwrap_or_else(|| project::root().join(stack::COMPOSE_FILE));
    let infrastructure = flags
        .infrastructure
        .clone()
        .unwrap_or_else(|| project::root().join("infrastructure"));
    let upload = pack(&compose_file, &infrastructure).unwrap_or_else(|err| {
        problems.invalid.push(format!("{err:#}"));
        Upload::default()
    });
    let remote = Remote {
        base: target.base.clone(),
        project: target.project.clone(),
        run_id: run_id(),
    };
    let gate = Gate {
        services: OWN_SERVICES.iter().map(|s| (*s).to_owned()).collect(),
        url: release.health_url.clone(),
        timeout: Duration::from_secs(flags.health.health_timeout),
    };
    let holder = holder(env, "deploy", &tag);
    let plan = deploy_plan(&remote, &release, &upload, &gate, !flags.no_push, &holder);
    if flags.dry_run {
        println!(
            "Deploy of {tag} to {} ({}), dry run: nothing is sent.\n",
            if target.host.is_empty() {
                "<HETZNER_HOST>".to_owned()
            } else {
                target.display()
            },
            target.base
        );
        print!("{}", plan.describe());
        if let Err(err) = problems.into_result() {
            eprintln!("\nnote: a real run would stop at the preflight: {err:#}");
        }
        return Ok(());
    }
    problems.into_result()?;
    let mut run = Run {
        sh,
        kind: "deploy",
        tag: tag.clone(),
        target,
        remote,
        release: Some(&release),
        insecure_registries: flags.insecure_registry.clone(),
        redactor: redactor.clone(),
        session: None,
        lock: None,
        times: Vec::new(),
        previous: None,
        digests: BTreeMap::new(),
        pushed: BTreeMap::new(),
    };
    run.execute(&plan)
        .map_err(|err| anyhow::format_err!(redactor.redact(&format!("{err:#}"))))
}

/// The whole deploy, as data.
pub(crate) fn deploy_plan(
    remote: &Remote,
    release: &ReleaseSettings,
    upload: &Upload,
    gate: &Gate,
    push: bool,
    holder: &str,
) -> Plan {
    let tag = &release.tag;
    let images: Vec<ImageLine> = OWN_SERVICES
        .iter()
        .map(|service| ImageLine {
            service: (*service).to_owned(),
            reference: release.image_ref(service),
            repository: release.repository_of(service),
        })
        .collect();
    Plan {
        prelude: remote.prelude(),
        prepare: vec![
            step("preflight: settings", Action::Local(Local::CheckSettings)),
            if push {
                step("build and push images", Action::Local(Local::BuildAndPush))
            } else {
                step(
                    "preflight: images in the registry",
                    Action::Local(Local::CheckRegistry),
                )
            },
            step("connect", Action::Local(Local::Connect)),
            step("preflight: server", Action::Remote(remote.probe())),
            step("lock", Action::Lock(remote.lock(holder))),
            step(
                "upload release files",
                Action::Remote(remote.upload(tag, &upload.tar, upload.n_files)),
            ),
            step(
                "write .env",
                Action::Remote(remote.write_env(tag, &release.env, &release.profiles)),
            ),
            step(
                "registry login and pull",
                Action::Remote(remote.pull(
                    tag,
                    &release.registry,
                    release.credentials.as_ref(),
                    &images,
                )),
            ),
        ],
        activate: activation(remote, tag, &release.profiles, gate),
        fall_back: fall_back(remote, tag, gate),
        after_success: vec![step("cleanup", Action::Remote(remote.cleanup()))],
        finish: vec![step("record", Action::Record)],
    }
}

fn activation(remote: &Remote, tag: &str, profiles: &[String], gate: &Gate) -> Vec<Step> {
    vec![
        step("switch current", Action::Remote(remote.switch(tag))),
        step("start", Action::Remote(remote.start(profiles))),
        step("health gate", Action::HealthGate(gate.clone())),
    ]
}

fn fall_back(remote: &Remote, tag: &str, gate: &Gate) -> Vec<Step> {
    vec![
        step(
            "logs of the failing services",
            Action::Remote(remote.failing_logs(&gate.services, 40)),
        ),
        step("switch back", Action::Remote(remote.switch_back(tag))),
        // The previous release's own `.env` says which profiles it ran with.
        step(
            "start the previous release",
            Action::Remote(remote.start(&[])),
        ),
        step(
            "health gate (previous release)",
            Action::HealthGate(gate.clone()),
        ),
    ]
}

fn step(name: &str, action: Action) -> Step {
    Step {
        name: name.to_owned(),
        action,
    }
}

fn rollback(sh: &Shell, flags: &flags::Rollback, env: Lookup<'_>) -> anyhow::Result<()> {
    let mut problems = Problems::default();
    let mut redactor = Redactor::default();
    let target = settings::target(&flags.server, env, &mut problems, &mut redactor);
    // Only needed if the release's images were pruned from the server: optional here.
    let credentials = settings::credentials(env, &mut Problems::default(), &mut redactor);
    if let Some(tag) = flags.to.as_deref().filter(|tag| !settings::is_tag(tag)) {
        problems
            .invalid
            .push(format!("--to takes a release tag, got `{tag}`"));
    }
    problems.into_result()?;
    let remote = Remote {
        base: target.base.clone(),
        project: target.project.clone(),
        run_id: run_id(),
    };
    let mut run = Run {
        sh,
        kind: "rollback",
        tag: String::new(),
        target,
        remote: remote.clone(),
        release: None,
        insecure_registries: Vec::new(),
        redactor: redactor.clone(),
        session: None,
        lock: None,
        times: Vec::new(),
        previous: None,
        digests: BTreeMap::new(),
        pushed: BTreeMap::new(),
    };
    // The target depends on what the server holds: read it under the lock, then plan.
    run.step(&step("connect", Action::Local(Local::Connect)))?;
    if !flags.dry_run {
        let holder = holder(
            env,
            "rollback",
            flags.to.as_deref().unwrap_or("the previous release"),
        );
        run.step(&step("lock", Action::Lock(remote.lock(&holder))))?;
    }
    let listing = run.step_output(&step(
        "read releases",
        Action::Remote(remote.list_releases()),
    ))?;
    let releases = parse_releases(&listing);
    let tag = rollback_target(&releases, flags.to.as_deref())?;
    eprintln!("rolling back from {} to {tag}", releases.current);
    let url = match (&flags.health.health_url, env("DOMAIN")) {
        (Some(url), _) => url.clone(),
        (None, Some(domain)) => format!("https://{domain}/api/health"),
        (None, None) if !releases.domain.is_empty() => {
            format!("https://{}/api/health", releases.domain)
        }
        (None, None) => String::new(),
    };
    let gate = Gate {
        services: OWN_SERVICES.iter().map(|s| (*s).to_owned()).collect(),
        url,
        timeout: Duration::from_secs(flags.health.health_timeout),
    };
    let registry_host = releases.registry_of(&tag);
    let plan = Plan {
        prelude: remote.prelude(),
        prepare: vec![step(
            "images of the release",
            Action::Remote(
                remote.ensure_images(
                    &tag,
                    credentials
                        .as_ref()
                        .and_then(|c| registry_host.as_deref().map(|host| (host, c))),
                ),
            ),
        )],
        activate: activation(&remote, &tag, &[], &gate),
        fall_back: fall_back(&remote, &tag, &gate),
        after_success: Vec::new(),
        finish: vec![step("record", Action::Record)],
    };
    if flags.dry_run {
        println!(
            "Rollback of {} to {tag}, dry run: nothing changes.\n",
            run.target.display()
        );
        print!("{}", plan.describe());
        return Ok(());
    }
    run.tag = tag;
    run.execute(&plan)
        .map_err(|err| anyhow::format_err!(redactor.redact(&format!("{err:#}"))))
}

/// One deploy or rollback being executed.
struct Run<'a> {
    sh: &'a Shell,
    kind: &'static str,
    tag: String,
    target: Target,
    remote: Remote,
    release: Option<&'a ReleaseSettings>,
    insecure_registries: Vec<String>,
    redactor: Redactor,
    session: Option<Session>,
    lock: Option<LockSession>,
    times: Vec<(String, Duration)>,
    /// The release that was current before this run's switch.
    previous: Option<String>,
    /// Per service, the digest the server pulled.
    digests: BTreeMap<String, String>,
    /// Per service, the digest push (or the registry) reported.
    pushed: BTreeMap<String, String>,
}

impl<'a> Run<'a> {
    fn execute(&mut self, plan: &Plan) -> anyhow::Result<()> {
        let mut failure = None;
        let mut result = "ok";
        for step in &plan.prepare {
            if let Err(err) = self.step(step) {
                failure = Some(err.context(format!(
                    "{} of {} stopped before switching: the server still runs what it ran",
                    self.kind, self.tag
                )));
                result = "failed";
                break;
            }
        }
        if failure.is_none() {
            let activated = plan.activate.iter().try_for_each(|step| self.step(step));
            if let Err(err) = activated {
                eprintln!(
                    "\n{} is not healthy ({}): going back to the release that ran before",
                    self.tag,
                    self.redactor.redact(&format!("{err:#}"))
                );
                let back = plan.fall_back.iter().try_for_each(|step| self.step(step));
                let previous = self.previous.clone().unwrap_or_default();
                failure = Some(match back {
                    Ok(()) => {
                        result = "rolled-back";
                        err.context(format!(
                            "{} of {} failed; the server is back on {previous}, which is healthy",
                            self.kind, self.tag
                        ))
                    }
                    Err(back_err) => {
                        result = "failed";
                        err.context(format!(
                            "{} of {} failed, and going back failed too: {back_err:#}; see `cargo xtask status`",
                            self.kind, self.tag
                        ))
                    }
                });
            }
        }
        if failure.is_none() {
            for step in &plan.after_success {
                if let Err(err) = self.step(step) {
                    eprintln!(
                        "warning: {} failed, but {} is deployed and healthy: {err:#}",
                        step.name, self.tag
                    );
                }
            }
        }
        if self.lock.is_some() {
            for step in &plan.finish {
                let error = failure
                    .as_ref()
                    .map(|err| self.redactor.redact(&format!("{err:#}")));
                if let Err(err) = self.record(step, result, error.as_deref()) {
                    eprintln!("warning: could not record the {}: {err:#}", self.kind);
                }
            }
        }
        // Releases the lock before the summary, so a waiting deploy can go.
        drop(self.lock.take());
        self.print_summary();
        match failure {
            None => {
                eprintln!(
                    "{} of {} to {}: done",
                    self.kind,
                    self.tag,
                    self.target.display()
                );
                Ok(())
            }
            Some(err) => Err(err),
        }
    }

    fn step(&mut self, step: &Step) -> anyhow::Result<()> {
        self.step_output(step).map(drop)
    }

    /// Runs one step, printed with its duration; returns a remote step's stdout.
    fn step_output(&mut self, step: &Step) -> anyhow::Result<String> {
        eprintln!("==> {}", step.name);
        let start = Instant::now();
        let res = self.act(step);
        let elapsed = start.elapsed();
        self.times.push((step.name.clone(), elapsed));
        match &res {
            Ok(_) => eprintln!("<== {} ({})", step.name, format_duration(elapsed)),
            Err(_) => eprintln!("FAILED {} after {}", step.name, format_duration(elapsed)),
        }
        res.with_context(|| format!("step `{}`", step.name))
    }

    fn act(&mut self, step: &Step) -> anyhow::Result<String> {
        match &step.action {
            Action::Local(Local::CheckSettings) => Ok(String::new()),
            Action::Local(Local::BuildAndPush) => self.build_and_push().map(|()| String::new()),
            Action::Local(Local::CheckRegistry) => self.check_registry().map(|()| String::new()),
            Action::Local(Local::Connect) => {
                self.session = Some(Session::open(self.sh, &self.target, &self.redactor)?);
                Ok(String::new())
            }
            Action::Remote(script) => {
                let out = self
                    .session()?
                    .run(self.sh, &step.name, script, Stdout::Capture)?;
                self.read_facts(&out)?;
                Ok(out)
            }
            Action::Lock(script) => {
                self.lock = Some(self.session()?.lock(self.sh, script)?);
                Ok(String::new())
            }
            Action::HealthGate(gate) => {
                let session = self.session()?;
                health::wait(self.sh, session, &self.remote, gate).map(|_| String::new())
            }
            Action::Record => Ok(String::new()),
        }
    }

    fn session(&self) -> anyhow::Result<&Session> {
        self.session
            .as_ref()
            .context("internal: a remote step ran before `connect`")
    }

    /// `key=value` and `digest<TAB>service<TAB>digest` lines of remote steps.
    fn read_facts(&mut self, out: &str) -> anyhow::Result<()> {
        for line in out.lines() {
            if let Some(previous) = line.strip_prefix("previous=") {
                self.previous = Some(previous.to_owned());
            } else if let Some(rest) = line.strip_prefix("digest\t") {
                let (service, digest) = rest.split_once('\t').unwrap_or((rest, ""));
                if let Some(pushed) = self.pushed.get(service).filter(|p| *p != digest) {
                    bail!(
                        "the server pulled {service} {digest}, but {pushed} was pushed under {}: was the tag pushed again by someone else?",
                        self.tag
                    );
                }
                self.digests.insert(service.to_owned(), digest.to_owned());
            } else if let Some((key, value)) = line
                .split_once('=')
                .filter(|(key, _)| matches!(*key, "docker" | "compose" | "current"))
            {
                eprintln!(
                    "    {key}: {}",
                    if value.is_empty() { "none" } else { value }
                );
            }
        }
        Ok(())
    }

    fn release(&self) -> anyhow::Result<&'a ReleaseSettings> {
        self.release
            .context("internal: an image step ran without release settings")
    }

    fn registry_credentials(&self) -> anyhow::Result<CredentialSource> {
        Ok(match &self.release()?.credentials {
            Some(c) => CredentialSource::Given(registry::Credentials::new(
                &c.username,
                c.secret.expose(),
                "the deploy's registry settings",
            )),
            None => CredentialSource::Lookup,
        })
    }

    fn build_and_push(&mut self) -> anyhow::Result<()> {
        let release = self.release()?;
        let opts = PushOptions {
            registry: release.registry.clone(),
            namespace: Some(release.repository.clone()),
            tags: vec![release.tag.clone(), "latest".to_owned()],
            insecure_registries: self.insecure_registries.clone(),
            credentials: self.registry_credentials()?,
            ..PushOptions::default()
        };
        let pushed = push::push(self.sh, &opts)?;
        for image in pushed {
            self.pushed.insert(image.name, image.digest.to_string());
        }
        Ok(())
    }

    fn check_registry(&mut self) -> anyhow::Result<()> {
        let release = self.release()?;
        let host = registry::Registry::parse(&release.registry, &self.insecure_registries)?;
        let credentials = match self.registry_credentials()? {
            CredentialSource::Given(c) => Some(c),
            _ => None,
        };
        let client = registry::Client::new(
            host,
            credentials,
            registry::ClientOptions {
                write: false,
                ..registry::ClientOptions::default()
            },
        );
        let mut missing = Vec::new();
        for service in OWN_SERVICES {
            let repository = format!("{}/{service}", release.repository);
            match client.manifest_digest(&repository, &release.tag)? {
                Some(digest) => {
                    self.pushed
                        .insert((*service).to_owned(), digest.to_string());
                }
                None => missing.push(release.image_ref(service)),
            }
        }
        if !missing.is_empty() {
            bail!(
                "the registry has no {}: deploy without --no-push to build and push them",
                missing.join(", ")
            );
        }
        Ok(())
    }

    /// Appends this run's JSON line to `releases.jsonl` and marks the release's result.
    fn record(&mut self, step: &Step, result: &str, error: Option<&str>) -> anyhow::Result<()> {
        let steps: serde_json::Map<String, serde_json::Value> = self
            .times
            .iter()
            .map(|(name, elapsed)| {
                (
                    name.clone(),
                    json!((elapsed.as_secs_f64() * 1000.0).round() / 1000.0),
                )
            })
            .collect();
        let line = json!({
            "time": project::rfc3339(now_epoch()),
            "tag": self.tag,
            "kind": self.kind,
            "result": result,
            "previous": self.previous,
            "digests": self.digests,
            "by": who(&settings::from_process_env),
            "steps": steps,
            "error": error,
        })
        .to_string();
        let status = if result == "ok" { "ok" } else { "failed" };
        let script = self.remote.record(&self.tag, &line, status);
        let name = step.name.clone();
        self.step(&Step {
            name,
            action: Action::Remote(script),
        })
    }

    fn print_summary(&self) {
        eprintln!("\nsummary:");
        let width = self
            .times
            .iter()
            .map(|(name, _)| name.len())
            .max()
            .unwrap_or(0);
        let mut total = Duration::ZERO;
        for (name, elapsed) in &self.times {
            eprintln!("  {name:<width$}  {:>8}", format_duration(*elapsed));
            total += *elapsed;
        }
        eprintln!("  {:<width$}  {:>8}", "total", format_duration(total));
    }
}

/// `docker-compose.prod.yml` and `infrastructure/` as one tar, unpacked by the upload step.
#[derive(Debug, Default)]
pub(crate) struct Upload {
    pub(crate) tar: Vec<u8>,
    pub(crate) n_files: usize,
}

pub(crate) fn pack(compose_file: &Path, infrastructure: &Path) -> anyhow::Result<Upload> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut n_files = 0;
    append_file(&mut builder, compose_file, "docker-compose.prod.yml")?;
    n_files += 1;
    let mut stack = vec![(
        infrastructure.to_path_buf(),
        PathBuf::from("infrastructure"),
    )];
    if !infrastructure.is_dir() {
        bail!("`{}` is not a directory", infrastructure.display());
    }
    while let Some((dir, name)) = stack.pop() {
        append_header(
            &mut builder,
            &name,
            0,
            0o755,
            tar::EntryType::Directory,
            &[],
        )?;
        let mut entries: Vec<PathBuf> = fs::read_dir(&dir)
            .with_context(|| format!("reading `{}`", dir.display()))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        // Directories are pushed in reverse, so they pop in order after this one's files.
        let mut dirs = Vec::new();
        for path in entries {
            let child = name.join(path.file_name().context("entry without a name")?);
            let meta = fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                dirs.push((path, child));
            } else if meta.is_file() {
                append_file(&mut builder, &path, &child.display().to_string())?;
                n_files += 1;
            } else {
                bail!(
                    "`{}` is neither a file nor a directory: the release upload takes plain files only",
                    path.display()
                );
            }
        }
        stack.extend(dirs.into_iter().rev());
    }
    let tar = builder
        .into_inner()
        .context("finishing the upload archive")?;
    Ok(Upload { tar, n_files })
}

fn append_file(builder: &mut tar::Builder<Vec<u8>>, path: &Path, name: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let data = fs::read(path).with_context(|| format!("reading `{}`", path.display()))?;
    let executable = fs::metadata(path)?.permissions().mode() & 0o111 != 0;
    let mode = if executable { 0o755 } else { 0o644 };
    append_header(
        builder,
        Path::new(name),
        data.len() as u64,
        mode,
        tar::EntryType::Regular,
        &data,
    )
}

fn append_header(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &Path,
    size: u64,
    mode: u32,
    kind: tar::EntryType,
    data: &[u8],
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(now_epoch());
    builder
        .append_data(&mut header, name, data)
        .with_context(|| format!("adding `{}` to the upload", name.display()))
}

/// What `releases` reads from the server.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ServerReleases {
    pub(crate) current: String,
    pub(crate) releases: Vec<ReleaseInfo>,
    /// Who holds the deploy lock, if anyone.
    pub(crate) lock: Option<String>,
    /// `DOMAIN` of the current release's `.env`.
    pub(crate) domain: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ReleaseInfo {
    pub(crate) tag: String,
    pub(crate) uploaded: Option<u64>,
    pub(crate) activated: Option<u64>,
    /// `ok`, `failed`, or empty when never activated to the end.
    pub(crate) result: String,
    pub(crate) previous: String,
    /// The registry its images came from.
    pub(crate) registry: String,
}

impl ServerReleases {
    fn registry_of(&self, tag: &str) -> Option<String> {
        self.releases
            .iter()
            .find(|r| r.tag == tag)
            .map(|r| r.registry.clone())
            .filter(|r| !r.is_empty())
    }
}

pub(crate) fn parse_releases(text: &str) -> ServerReleases {
    let mut out = ServerReleases::default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["current", current] => out.current = (*current).to_owned(),
            ["lock", holder] => out.lock = Some((*holder).to_owned()),
            ["domain", domain] => out.domain = (*domain).to_owned(),
            [
                "release",
                tag,
                uploaded,
                activated,
                result,
                previous,
                rest @ ..,
            ] => out.releases.push(ReleaseInfo {
                tag: (*tag).to_owned(),
                uploaded: uploaded.parse().ok(),
                activated: activated.parse().ok(),
                result: (*result).to_owned(),
                previous: (*previous).to_owned(),
                registry: rest.first().map(|r| (*r).to_owned()).unwrap_or_default(),
            }),
            _ => {}
        }
    }
    out.releases
        .sort_by_key(|r| std::cmp::Reverse(r.activated.or(r.uploaded).unwrap_or(0)));
    out
}

/// The release `rollback` goes to: `--to`, else the newest healthy one before the current.
pub(crate) fn rollback_target(
    releases: &ServerReleases,
    to: Option<&str>,
) -> anyhow::Result<String> {
    let known = || {
        releases
            .releases
            .iter()
            .map(|r| r.tag.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match to {
        Some(tag) if tag == releases.current => {
            bail!("{tag} is already the current release")
        }
        Some(tag) => match releases.releases.iter().find(|r| r.tag == tag) {
            Some(_) => Ok(tag.to_owned()),
            None => bail!(
                "release {tag} is not on the server (it keeps the last {} releases): {}",
                scripts::KEEP_RELEASES,
                known()
            ),
        },
        None => releases
            .releases
            .iter()
            .find(|r| r.tag != releases.current && r.result == "ok")
            .map(|r| r.tag.clone())
            .with_context(|| {
                format!(
                    "no healthy release other than the current one ({}) is on the server: {}",
                    releases.current,
                    known()
                )
            }),
    }
}

pub(crate) fn format_releases(releases: &ServerReleases) -> String {
    let mut out = String::from("  TAG       DEPLOYED              RESULT       PREVIOUS\n");
    for release in &releases.releases {
        let marker = if release.tag == releases.current {
            "*"
        } else {
            " "
        };
        let when = release
            .activated
            .or(release.uploaded)
            .map(project::rfc3339)
            .unwrap_or_default();
        let result = match (release.result.as_str(), release.activated) {
            ("", None) => "uploaded",
            ("", Some(_)) => "unfinished",
            (result, _) => result,
        };
        out.push_str(&format!(
            "{marker} {:<9} {:<21} {:<12} {}\n",
            release.tag, when, result, release.previous
        ));
    }
    if releases.releases.is_empty() {
        out.push_str("  (no releases yet)\n");
    }
    if let Some(holder) = &releases.lock {
        out.push_str(&format!("\ndeploy in progress: {holder}\n"));
    }
    out
}

/// Who runs this: the GitHub actor and run, else `user@host`.
fn who(env: Lookup<'_>) -> String {
    match env("GITHUB_ACTOR") {
        Some(actor) => match (
            env("GITHUB_SERVER_URL"),
            env("GITHUB_REPOSITORY"),
            env("GITHUB_RUN_ID"),
        ) {
            (Some(server), Some(repo), Some(run)) => {
                format!("{actor} ({server}/{repo}/actions/runs/{run})")
            }
            _ => actor,
        },
        None => format!(
            "{}@{}",
            env("USER").or_else(|| env("LOGNAME")).unwrap_or_else(|| {
                if crate::provision::is_root() {
                    "root"
                } else {
                    "unknown"
                }
                .to_owned()
            }),
            hostname()
        ),
    }
}

fn holder(env: Lookup<'_>, kind: &str, tag: &str) -> String {
    format!(
        "{} ({kind} of {tag}, since {}, pid {} on {})",
        who(env),
        project::rfc3339(now_epoch()),
        std::process::id(),
        hostname()
    )
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".to_owned())
}

fn now_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A random id for this run, from the kernel (no extra dependency).
fn run_id() -> String {
    let uuid = fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap_or_else(|_| {
        format!(
            "{:x}{:x}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        )
    });
    uuid.chars()
        .filter(char::is_ascii_hexdigit)
        .take(16)
        .collect()
}

impl Remote {
    /// For commands that only read: no run id, no lock.
    fn read_only(target: &Target) -> Remote {
        Remote {
            base: target.base.clone(),
            project: target.project.clone(),
            run_id: "read-only".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests;
