//! The executor: runs a [`Plan`]'s steps over one ssh connection while the server's deploy
//! lock is held, falls back when activation fails, and records the run on the server.

use std::{
    collections::BTreeMap,
    fs,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use serde_json::json;
use xshell::Shell;

use crate::{
    deploy::{
        activation, health,
        migrations::{self, MigrationState},
        plan::{Action, Images, Local, MigrationCheck, Plan, Revision, Step, step},
        scripts::{Fact, Script, ServerScripts, parse_facts},
        secrets::Redactor,
        settings::{self, Lookup, OWN_SERVICES, Target},
        ssh::{LockSession, Session, Stdout},
    },
    project,
    push::{self, CredentialSource, PushOptions},
    registry,
    steps::Steps,
};

/// One deploy or rollback being executed: the connection, the lock, the steps so far, and
/// what the server reported.
pub(crate) struct Run<'a> {
    sh: &'a Shell,
    target: Target,
    scripts: ServerScripts,
    redactor: Redactor,
    session: Option<Session>,
    lock: Option<LockSession>,
    steps: Steps,
    /// The release that was current before this run's switch.
    previous: Option<String>,
    /// Per service, the digest the server pulled.
    digests: BTreeMap<String, String>,
    /// Per service, the digest push (or the registry) reported, and the tag it is under.
    pushed: BTreeMap<String, (String, String)>,
    /// How the run ended so far, for the record: `ok`, `failed` or `rolled-back`, and why.
    result: &'static str,
    error: Option<String>,
    /// What the migrations step read, once it ran.
    migrations: Option<MigrationState>,
    /// The snapshot this run took, and the migrations it applied ("version description").
    snapshot: Option<String>,
    migrated: Vec<String>,
}

impl<'a> Run<'a> {
    pub(crate) fn new(
        sh: &'a Shell,
        target: Target,
        scripts: ServerScripts,
        redactor: Redactor,
    ) -> Run<'a> {
        Run {
            sh,
            target,
            scripts,
            redactor,
            session: None,
            lock: None,
            steps: Steps::default(),
            previous: None,
            digests: BTreeMap::new(),
            pushed: BTreeMap::new(),
            result: "ok",
            error: None,
            migrations: None,
            snapshot: None,
            migrated: Vec::new(),
        }
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// Runs the plan's phases; the error, if any, is redacted.
    pub(crate) fn execute(&mut self, plan: &Plan) -> anyhow::Result<()> {
        self.execute_phases(plan)
            .map_err(|err| anyhow::format_err!(self.redactor.redact(&format!("{err:#}"))))
    }

    fn execute_phases(&mut self, plan: &Plan) -> anyhow::Result<()> {
        let (kind, tag) = (plan.kind, &plan.tag);
        let mut failure = None;
        for step in &plan.prepare {
            if let Err(err) = self.step(step) {
                failure = Some(err.context(format!(
                    "{kind} of {tag} stopped before switching: the server still runs what it ran"
                )));
                self.result = "failed";
                break;
            }
        }
        if failure.is_none() {
            let activated = if plan.on_server {
                self.activate_on_server(plan)
            } else {
                self.activate_here(plan)
            };
            failure = activated.err();
        }
        if self.lock.is_some() {
            self.error = failure
                .as_ref()
                .map(|err| self.redactor.redact(&format!("{err:#}")));
            for step in &plan.finish {
                if let Err(err) = self.step(step) {
                    eprintln!("warning: could not record the {kind}: {err:#}");
                }
            }
        }
        // Releases the lock before the summary, so a waiting deploy can go.
        drop(self.lock.take());
        self.steps.print_summary();
        match failure {
            None => {
                eprintln!("{kind} of {tag} to {}: done", self.target.display());
                Ok(())
            }
            Some(err) => Err(err),
        }
    }

    /// Activation step by step from here; on failure, back to the previous release.
    fn activate_here(&mut self, plan: &Plan) -> anyhow::Result<()> {
        let (kind, tag) = (plan.kind, &plan.tag);
        let Err(err) = plan.activate.iter().try_for_each(|step| self.step(step)) else {
            for step in &plan.after_success {
                if let Err(err) = self.step(step) {
                    eprintln!(
                        "warning: {} failed, but {tag} is deployed and healthy: {err:#}",
                        step.name
                    );
                }
            }
            return Ok(());
        };
        eprintln!(
            "\n{tag} is not healthy ({}): going back to the release that ran before",
            self.redactor.redact(&format!("{err:#}"))
        );
        let back = plan.fall_back.iter().try_for_each(|step| self.step(step));
        let previous = self.previous.clone().unwrap_or_default();
        self.result = if back.is_ok() {
            "rolled-back"
        } else {
            "failed"
        };
        Err(failed_activation(
            kind,
            tag,
            err,
            &previous,
            back.map_err(|back_err| format!(": {back_err:#}")),
        ))
    }

    /// Activation as one unit on the server (see [`activation`]): started, handed the lock,
    /// followed through its journal until it ends.
    fn activate_on_server(&mut self, plan: &Plan) -> anyhow::Result<()> {
        let (kind, tag) = (plan.kind, &plan.tag);
        let head = activation::record_head(self.record_fields(kind, tag, &self.steps))?;
        let files = activation::unit_files(&self.scripts, plan, &head)?;
        let launch = step(
            "start the activation unit",
            Action::Remote(self.scripts.launch(&files)),
        );
        if let Err(err) = self.step(&launch) {
            self.result = "failed";
            return Err(err.context(format!(
                "{kind} of {tag} stopped before switching: the server still runs what it ran"
            )));
        }
        // The hand-over: the unit waits for this lock session to end.
        drop(self.lock.take());
        let journal = activation::journal_path(&self.target.base, &self.scripts.run_id);
        let follow = step(
            "activation on the server",
            Action::Remote(self.scripts.follow()),
        );
        let state = self.step_output(&follow).with_context(|| {
            format!(
                "lost contact with the activation of {tag} on {} (run {}): it goes on there and holds the deploy lock until it ends; `cargo xtask status` shows how it ended, its journal is {journal}",
                self.target.display(),
                self.scripts.run_id
            )
        })?;
        let outcome = activation::Outcome::parse(&state)?;
        let previous = outcome.previous.clone().unwrap_or_default();
        let cause = || anyhow::format_err!("{}", outcome.cause());
        match outcome.result.as_str() {
            "ok" => Ok(()),
            // The unit's reason already says where going back failed.
            "rolled-back" => Err(failed_activation(kind, tag, cause(), &previous, Ok(()))),
            "failed" => Err(failed_activation(
                kind,
                tag,
                cause(),
                &previous,
                Err(String::new()),
            )),
            other => bail!(
                "the activation unit of run {} ended without a result (state `{other}`): `cargo xtask status` shows the server's state, its journal is {journal}",
                self.scripts.run_id
            ),
        }
    }

    /// Runs one step outside a plan (rollback connects and reads the releases first).
    pub(crate) fn step(&mut self, step: &Step) -> anyhow::Result<()> {
        self.step_output(step).map(drop)
    }

    /// Runs one step, printed with its duration; returns a remote step's stdout.
    pub(crate) fn step_output(&mut self, step: &Step) -> anyhow::Result<String> {
        // Out of `self` while the step runs, which needs `self` whole.
        let mut steps = std::mem::take(&mut self.steps);
        let res = steps.attempt(&step.name, |before| self.act(step, before));
        self.steps = steps;
        res
    }

    /// Does what the step says; `before` are the steps run so far.
    fn act(&mut self, step: &Step, before: &Steps) -> anyhow::Result<String> {
        match &step.action {
            Action::Local(Local::BuildAndPush(images)) => {
                self.build_and_push(images).map(|()| String::new())
            }
            Action::Local(Local::CheckRegistry(images)) => {
                self.check_registry(images).map(|()| String::new())
            }
            Action::Local(Local::Connect) => {
                self.session = Some(Session::open(self.sh, &self.target, &self.redactor)?);
                Ok(String::new())
            }
            Action::Remote(script) => self.remote(step, script),
            Action::Lock(script) => {
                self.lock = Some(self.session()?.lock(self.sh, script)?);
                Ok(String::new())
            }
            Action::HealthGate { gate, revision } => {
                let expected = match revision {
                    Revision::Of(tag) => Some(tag.as_str()),
                    Revision::Previous => self.previous.as_deref(),
                }
                .filter(|tag| settings::is_commit_tag(tag));
                let session = self.session()?;
                health::wait(self.sh, session, &self.scripts, gate, expected).map(|_| String::new())
            }
            Action::Record { kind, tag } => {
                self.record(step, before, kind, tag).map(|()| String::new())
            }
            Action::Migrations { script, check } => {
                let out = self.remote(step, script)?;
                let state = MigrationState::parse(&out)?;
                state.check_no_failed()?;
                match check {
                    MigrationCheck::Pending => eprintln!("    {}", state.describe_pending()),
                    MigrationCheck::Rollback { target } => {
                        let verdict = state.rollback_verdict();
                        if !verdict.is_safe() {
                            bail!(migrations::refusal(target, &state));
                        }
                        eprintln!("    {verdict}");
                    }
                }
                self.migrations = Some(state);
                Ok(out)
            }
            Action::IfPending {
                script,
                needs_database,
            } => {
                let state = self
                    .migrations
                    .as_ref()
                    .context("internal: a migration step ran before `migrations`")?;
                if state.pending().is_empty() || (*needs_database && state.database.is_none()) {
                    eprintln!("    skipped");
                    return Ok(String::new());
                }
                let pending: Vec<String> = state
                    .pending()
                    .iter()
                    .map(|r| format!("{} {}", r.version, r.description))
                    .collect();
                let out = self.remote(step, script)?;
                for line in out.lines() {
                    if let Some(rest) = line.strip_prefix("snapshot\t") {
                        let path = rest.split('\t').next().unwrap_or(rest);
                        eprintln!("    {path}");
                        self.snapshot = Some(path.to_owned());
                    }
                    // `migrate.sh` ends with the rows of _sqlx_migrations.
                    if line.starts_with("applied\t") {
                        self.migrated.clone_from(&pending);
                    }
                }
                Ok(out)
            }
            Action::Restore(script) => {
                let out = self.remote(step, script)?;
                eprint!("{}", migrations::restore_report(&out));
                Ok(out)
            }
        }
    }

    /// A remote step's stdout, its facts taken in.
    fn remote(&mut self, step: &Step, script: &Script) -> anyhow::Result<String> {
        let out = self
            .session()?
            .run(self.sh, &step.name, script, Stdout::Capture)?;
        self.read_facts(&out)?;
        Ok(out)
    }

    fn session(&self) -> anyhow::Result<&Session> {
        self.session
            .as_ref()
            .context("internal: a remote step ran before `connect`")
    }

    /// Takes in what a remote step reported (see `scripts::parse_facts`).
    fn read_facts(&mut self, out: &str) -> anyhow::Result<()> {
        for fact in parse_facts(out) {
            match fact {
                Fact::Previous(previous) => self.previous = Some(previous),
                Fact::Digest { service, digest } => {
                    if let Some((pushed, tag)) = self.pushed.get(&service).filter(|p| p.0 != digest)
                    {
                        bail!(
                            "the server pulled {service} {digest}, but {pushed} was pushed under {tag}: was the tag pushed again by someone else?"
                        );
                    }
                    self.digests.insert(service, digest);
                }
                Fact::Info { key, value } => eprintln!(
                    "    {key}: {}",
                    if value.is_empty() { "none" } else { &value }
                ),
            }
        }
        Ok(())
    }

    fn build_and_push(&mut self, images: &Images) -> anyhow::Result<()> {
        let opts = PushOptions {
            registry: images.registry.clone(),
            namespace: Some(images.repository.clone()),
            tags: vec![images.tag.clone(), "latest".to_owned()],
            insecure_registries: images.insecure_registries.clone(),
            credentials: registry_credentials(images),
            ..PushOptions::default()
        };
        let pushed = push::push(self.sh, &opts)?;
        for image in pushed {
            self.pushed
                .insert(image.name, (image.digest.to_string(), images.tag.clone()));
        }
        Ok(())
    }

    fn check_registry(&mut self, images: &Images) -> anyhow::Result<()> {
        let host = registry::Registry::parse(&images.registry, &images.insecure_registries)?;
        let credentials = match registry_credentials(images) {
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
            let repository = format!("{}/{service}", images.repository);
            match client.manifest_digest(&repository, &images.tag)? {
                Some(digest) => {
                    self.pushed.insert(
                        (*service).to_owned(),
                        (digest.to_string(), images.tag.clone()),
                    );
                }
                None => missing.push(format!("{}/{repository}:{}", images.registry, images.tag)),
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

    /// The run's record: everything known so far, with the steps run so far.
    fn record_fields(
        &self,
        kind: &str,
        tag: &str,
        before: &Steps,
    ) -> serde_json::Map<String, serde_json::Value> {
        let steps: serde_json::Map<String, serde_json::Value> = before
            .durations()
            .map(|(name, elapsed)| {
                (
                    name.to_owned(),
                    json!((elapsed.as_secs_f64() * 1000.0).round() / 1000.0),
                )
            })
            .collect();
        let record = json!({
            "time": project::rfc3339(now_epoch()),
            "tag": tag,
            "kind": kind,
            "result": self.result,
            "previous": self.previous,
            "digests": self.digests,
            "by": who(&settings::from_process_env),
            "steps": steps,
            "error": self.error,
            "snapshot": self.snapshot,
            "migrated": self.migrated,
        });
        match record {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        }
    }

    /// Appends this run's JSON line to `releases.jsonl` and marks the release's result.
    fn record(&mut self, step: &Step, before: &Steps, kind: &str, tag: &str) -> anyhow::Result<()> {
        let line = serde_json::Value::Object(self.record_fields(kind, tag, before)).to_string();
        let status = if self.result == "ok" { "ok" } else { "failed" };
        let script = self.scripts.record(tag, &line, status);
        self.session()?
            .run(self.sh, &step.name, &script, Stdout::Capture)
            .map(drop)
    }
}

impl Run<'_> {
    /// The line `db snapshot` appends to `releases.jsonl`.
    pub(crate) fn record_snapshot(&mut self, path: &str) -> anyhow::Result<()> {
        let line = json!({
            "time": project::rfc3339(now_epoch()),
            "kind": "snapshot",
            "snapshot": path,
            "by": who(&settings::from_process_env),
        })
        .to_string();
        let script = self.scripts.record("", &line, "");
        self.session()?
            .run(self.sh, "record", &script, Stdout::Capture)
            .map(drop)
    }
}

/// The error of a failed activation: `back` is how going back to `previous` ended (its
/// error's text, if any, is appended as it comes).
fn failed_activation(
    kind: &str,
    tag: &str,
    cause: anyhow::Error,
    previous: &str,
    back: Result<(), String>,
) -> anyhow::Error {
    match back {
        Ok(()) => cause.context(format!(
            "{kind} of {tag} failed; the server is back on {previous}, which is healthy"
        )),
        Err(why) => cause.context(format!(
            "{kind} of {tag} failed, and going back failed too{why}; see `cargo xtask status`"
        )),
    }
}

fn registry_credentials(images: &Images) -> CredentialSource {
    match &images.credentials {
        Some(credentials) => CredentialSource::Given(credentials.clone()),
        None => CredentialSource::Lookup,
    }
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

/// What the lock's holder file says about this run.
pub(crate) fn holder(env: Lookup<'_>, kind: &str, tag: &str) -> String {
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
pub(crate) fn run_id() -> String {
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
