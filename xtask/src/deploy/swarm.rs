//! `--mode swarm` (or `DEPLOY_MODE=swarm`): the same commands onto a Docker Swarm, through
//! one ssh connection to a manager, and `swarm-setup`, which makes the swarm.
//!
//! The release directory, lock, record, `current` link and cleanup are compose mode's; what
//! differs is what runs the release:
//!
//! ```text
//! releases/<tag>/docker-stack.yml   the stack file (checked in beside docker-compose.prod.yml)
//! releases/<tag>/.env               plain values only (0600), exported for `stack deploy`
//! swarm-secrets.env                 names of the current secrets (the values are in Swarm)
//! ```
//!
//! Secrets become Docker secrets named by a hash of their content (`<key>_<12 hex>`): an
//! unchanged secret keeps its name, a new value gets a new secret, and unused ones are removed
//! after a healthy deploy. `docker stack deploy --with-registry-auth --prune --resolve-image
//! always` deploys the current release; its exit code says nothing about the outcome, so
//! `swarm_deploy.sh` waits, bounded, until each service's update completed with every task
//! running the pinned image, and fails on `paused` or `rollback_*` naming the service.
//! A rollback (and the fall back of a failed deploy) deploys an older release's stack file
//! the same way: exact for the whole stack, where `docker service rollback` goes one spec
//! back per service only.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use xshell::Shell;

use crate::{
    deploy::{
        compose::{ENV_VARS, EnvVar},
        health,
        plan::{self, Action, DeployOptions, Gate, Local, Plan, Revision, Step, step},
        releases::{parse_releases, rollback_target},
        run::{Run, holder, run_id},
        scripts::{ImageLine, Script, ServerScripts},
        secrets::{Redactor, Secret},
        settings::{
            self, Credentials, EnvLine, EnvValue, Lookup, OWN_SERVICES, Problems, ReleaseSettings,
            Target,
        },
        ssh::{Session, Stdout},
        upload::Upload,
    },
    flags::{self, Mode},
};

/// The stack file, checked in at the repository's root.
pub(crate) const STACK_FILE: &str = "docker-stack.yml";

/// The services of `docker-stack.yml` (a test keeps them equal); a deploy waits for every
/// service the stack has after `docker stack deploy --prune`.
#[cfg(test)]
pub(crate) const SERVICES: &[&str] = &[
    "postgres",
    "backend",
    "frontend",
    "traefik",
    "postgres-backup",
];

const SWARM_PROBE: &str = include_str!("scripts/swarm_probe.sh");
const SWARM_PULL: &str = include_str!("scripts/swarm_pull.sh");
const SWARM_SECRETS: &str = include_str!("scripts/swarm_secrets.sh");
const SWARM_DEPLOY: &str = include_str!("scripts/swarm_deploy.sh");
const SWARM_CLEANUP: &str = include_str!("scripts/swarm_cleanup.sh");
const SWARM_STATUS: &str = include_str!("scripts/swarm_status.sh");
const SWARM_LOGS: &str = include_str!("scripts/swarm_logs.sh");
const SWARM_INIT: &str = include_str!("scripts/swarm_init.sh");
const SWARM_JOIN: &str = include_str!("scripts/swarm_join.sh");
const SWARM_LABEL: &str = include_str!("scripts/swarm_label.sh");

/// Every swarm script file, for the shellcheck test.
#[cfg(test)]
pub(crate) const FILES: &[(&str, &str)] = &[
    ("swarm_probe.sh", SWARM_PROBE),
    ("swarm_pull.sh", SWARM_PULL),
    ("swarm_secrets.sh", SWARM_SECRETS),
    ("swarm_deploy.sh", SWARM_DEPLOY),
    ("swarm_cleanup.sh", SWARM_CLEANUP),
    ("swarm_status.sh", SWARM_STATUS),
    ("swarm_logs.sh", SWARM_LOGS),
    ("swarm_init.sh", SWARM_INIT),
    ("swarm_join.sh", SWARM_JOIN),
    ("swarm_label.sh", SWARM_LABEL),
];

/// `--mode`, else `DEPLOY_MODE`, else compose.
pub(crate) fn mode(flag: Option<Mode>, env: Lookup<'_>) -> anyhow::Result<Mode> {
    match (flag, env("DEPLOY_MODE").as_deref()) {
        (Some(mode), _) => Ok(mode),
        (None, None | Some("" | "compose")) => Ok(Mode::Compose),
        (None, Some("swarm")) => Ok(Mode::Swarm),
        (None, Some(other)) => bail!("DEPLOY_MODE must be `compose` or `swarm`, got `{other}`"),
    }
}

/// One Docker secret of a release.
#[derive(Debug, Clone)]
pub(crate) struct StackSecret {
    /// The name the stack file gives it (`secrets:` key, file under `/run/secrets/`).
    pub(crate) key: &'static str,
    /// The variable the stack file reads its Swarm name from.
    pub(crate) var: &'static str,
    /// `<key>_<12 hex of a hash of key and content>`.
    pub(crate) name: String,
    pub(crate) value: Secret,
}

impl StackSecret {
    fn new(key: &'static str, var: &'static str, value: Secret) -> StackSecret {
        let mut hasher = Sha256::new();
        hasher.update(b"timemanager-secret\0");
        hasher.update(key.as_bytes());
        hasher.update(b"\0");
        hasher.update(value.expose().as_bytes());
        let hash = hasher.finalize();
        let mut name = format!("{key}_");
        for byte in &hash[..6] {
            let _ = write!(name, "{byte:02x}");
        }
        StackSecret {
            key,
            var,
            name,
            value,
        }
    }
}

/// The variables of `compose::ENV_VARS` the stack file reads (`${NAME}`), and
/// `POSTGRES_PASSWORD`, which its secrets are made of: a swarm deploy asks for no others
/// (the stack runs no Grafana and no mail relay secret).
const STACK_VARS: &[&str] = &[
    "DOMAIN",
    "ACME_EMAIL",
    "REGISTRY",
    "GITHUB_REPOSITORY",
    "IMAGE_TAG",
    "POSTGRES_USER",
    "POSTGRES_DB",
    "POSTGRES_PASSWORD",
    "RUST_LOG",
    "SMTP_HOST",
];

fn stack_vars() -> Vec<EnvVar> {
    ENV_VARS
        .iter()
        .filter(|var| STACK_VARS.contains(&var.name))
        .cloned()
        .collect()
}

/// The release's secrets as the stack file mounts them: PostgreSQL's password, and the
/// backend's DATABASE_URL made from it as docker-compose.prod.yml makes it.
pub(crate) fn stack_secrets(release: &ReleaseSettings) -> Vec<StackSecret> {
    let plain = |name: &str, default: &str| {
        release
            .env
            .iter()
            .find(|line| line.name == name)
            .and_then(|line| match &line.value {
                EnvValue::Plain(value) => Some(value.clone()),
                EnvValue::Secret(_) => None,
            })
            .unwrap_or_else(|| default.to_owned())
    };
    let Some(password) = release
        .env
        .iter()
        .find(|line| line.name == "POSTGRES_PASSWORD")
        .and_then(|line| match &line.value {
            EnvValue::Secret(secret) => Some(secret.clone()),
            EnvValue::Plain(_) => None,
        })
    else {
        return Vec::new();
    };
    let url = format!(
        "postgres://{}:{}@postgres:5432/{}",
        plain("POSTGRES_USER", "timemanager"),
        password.expose(),
        plain("POSTGRES_DB", "timemanager")
    );
    vec![
        StackSecret::new("postgres_password", "TM_SECRET_POSTGRES_PASSWORD", password),
        StackSecret::new("database_url", "TM_SECRET_DATABASE_URL", Secret::new(url)),
    ]
}

/// The release's `.env` in this mode: the plain values only, and what the stack file adds.
pub(crate) fn stack_env(release: &ReleaseSettings, base: &str, replicas: u32) -> Vec<EnvLine> {
    let mut lines: Vec<EnvLine> = release
        .env
        .iter()
        .filter(|line| matches!(line.value, EnvValue::Plain(_)))
        .cloned()
        .collect();
    lines.push(EnvLine {
        name: "TM_BASE",
        value: EnvValue::Plain(base.to_owned()),
    });
    lines.push(EnvLine {
        name: "SWARM_REPLICAS",
        value: EnvValue::Plain(replicas.to_string()),
    });
    lines
}

/// The scripts of this mode, beside compose mode's in [`ServerScripts`].
impl ServerScripts {
    /// Read-only: Docker answers, this node is a manager, one node holds the database label.
    pub(crate) fn swarm_probe(&self) -> Script {
        self.wrap(&Script::new(), SWARM_PROBE, false)
    }

    /// Pulls the images on the manager and records their digests in `releases/<tag>/images`.
    pub(crate) fn swarm_pull(
        &self,
        tag: &str,
        registry: &str,
        credentials: Option<&Credentials>,
        images: &[ImageLine],
    ) -> Script {
        self.pull_with(SWARM_PULL, tag, registry, credentials, images)
    }

    /// Writes `releases/<tag>/docker-stack.yml`, creates the secrets Swarm lacks (content
    /// from here-documents through a pipe) and `swarm-secrets.env` with their names.
    pub(crate) fn swarm_secrets(&self, tag: &str, stack: &str, secrets: &[StackSecret]) -> Script {
        let delimiter = self.delimiter();
        let mut values = Script::new();
        values.value("tag", tag);
        let column = |f: fn(&StackSecret) -> &str| secrets.iter().map(f).collect::<Vec<_>>();
        values
            .array("secret_keys", &column(|s| s.key))
            .array("secret_vars", &column(|s| s.var))
            .array("secret_names", &column(|s| &s.name));
        values.heredoc("stack_file", &delimiter, |s| {
            s.data(
                format!("{STACK_FILE}, {} bytes", stack.len()),
                if stack.ends_with('\n') {
                    stack.to_owned()
                } else {
                    format!("{stack}\n")
                },
            );
        });
        for (i, secret) in secrets.iter().enumerate() {
            values.heredoc(&format!("secret_{i}"), &delimiter, |s| {
                s.secret(secret.key, &secret.value).line("");
            });
        }
        self.wrap(&values, SWARM_SECRETS, true)
    }

    /// `docker stack deploy` of the current release, then the bounded wait for every service.
    pub(crate) fn swarm_deploy(
        &self,
        registry: &str,
        credentials: Option<&Credentials>,
        timeout: Duration,
    ) -> Script {
        let mut values = Script::new();
        values
            .value("stack", &self.project)
            .array("own_services", OWN_SERVICES)
            .value("timeout", &timeout.as_secs().to_string());
        self.registry_values(&mut values, registry, credentials);
        self.wrap(&values, SWARM_DEPLOY, true)
    }

    /// Removes the secrets no longer named in `swarm-secrets.env` that no service uses.
    pub(crate) fn swarm_cleanup(&self) -> Script {
        self.wrap(&Script::new(), SWARM_CLEANUP, true)
    }

    /// Nodes, services with their update state, running tasks and where they run.
    pub(crate) fn swarm_status(&self) -> Script {
        let mut values = Script::new();
        values.value("stack", &self.project);
        self.wrap(&values, SWARM_STATUS, false)
    }

    /// `docker service logs` of one service (all its tasks, on every node).
    pub(crate) fn swarm_logs(&self, service: &str, tail: u32, follow: bool) -> Script {
        let mut values = Script::new();
        values
            .value("stack", &self.project)
            .value("svc", service)
            .value("tail", &tail.to_string())
            .value("follow", if follow { "1" } else { "" });
        self.wrap(&values, SWARM_LOGS, false)
    }
}

/// The whole swarm deploy, as data.
pub(crate) fn deploy_plan(
    scripts: &ServerScripts,
    release: &ReleaseSettings,
    upload: &Upload,
    stack: &str,
    gate: &Gate,
    options: &DeployOptions<'_>,
    replicas: u32,
) -> Plan {
    let tag = &release.tag;
    let lines = plan::image_lines(release);
    let images = plan::images_step(release, options);
    let deploy = scripts.swarm_deploy(
        &release.registry,
        release.credentials.as_ref(),
        gate.timeout,
    );
    Plan {
        kind: "deploy",
        tag: tag.clone(),
        prelude: scripts.prelude(),
        prepare: vec![
            images,
            step("connect", Action::Local(Local::Connect)),
            step("preflight: swarm", Action::Remote(scripts.swarm_probe())),
            step("lock", Action::Lock(scripts.lock(options.holder))),
            step(
                "upload release files",
                Action::Remote(scripts.upload(tag, upload)),
            ),
            step(
                "write .env (no secrets)",
                Action::Remote(scripts.write_env(
                    tag,
                    &stack_env(release, &scripts.base, replicas),
                    &[],
                )),
            ),
            step(
                "stack file and secrets",
                Action::Remote(scripts.swarm_secrets(tag, stack, &stack_secrets(release))),
            ),
            step(
                "registry login and pull on the manager",
                Action::Remote(scripts.swarm_pull(
                    tag,
                    &release.registry,
                    release.credentials.as_ref(),
                    &lines,
                )),
            ),
        ],
        activate: activation(scripts, tag, deploy.clone(), gate),
        fall_back: fall_back(scripts, tag, deploy, gate),
        after_success: vec![
            step("cleanup", Action::Remote(scripts.cleanup())),
            step(
                "remove unused secrets",
                Action::Remote(scripts.swarm_cleanup()),
            ),
        ],
        finish: vec![step(
            "record",
            Action::Record {
                kind: "deploy",
                tag: tag.clone(),
            },
        )],
        on_server: false,
    }
}

/// A rollback to `tag`, a swarm release the server still has: its stack file deployed with
/// the current secrets.
pub(crate) fn rollback_plan(
    scripts: &ServerScripts,
    tag: &str,
    deploy: Script,
    gate: &Gate,
) -> Plan {
    Plan {
        kind: "rollback",
        tag: tag.to_owned(),
        prelude: scripts.prelude(),
        prepare: Vec::new(),
        activate: activation(scripts, tag, deploy.clone(), gate),
        fall_back: fall_back(scripts, tag, deploy, gate),
        after_success: Vec::new(),
        finish: vec![step(
            "record",
            Action::Record {
                kind: "rollback",
                tag: tag.to_owned(),
            },
        )],
        on_server: false,
    }
}

fn activation(scripts: &ServerScripts, tag: &str, deploy: Script, gate: &Gate) -> Vec<Step> {
    vec![
        step("switch current", Action::Remote(scripts.switch(tag))),
        step("stack deploy and converge", Action::Remote(deploy)),
        step(
            "health gate",
            Action::HealthGate {
                gate: gate.clone(),
                revision: Revision::Of(tag.to_owned()),
            },
        ),
    ]
}

fn fall_back(scripts: &ServerScripts, tag: &str, deploy: Script, gate: &Gate) -> Vec<Step> {
    vec![
        step("switch back", Action::Remote(scripts.switch_back(tag))),
        step(
            "stack deploy of the previous release",
            Action::Remote(deploy),
        ),
        step(
            "health gate (previous release)",
            Action::HealthGate {
                gate: gate.clone(),
                revision: Revision::Previous,
            },
        ),
    ]
}

/// `deploy --mode swarm`: settings as compose mode reads them, then the swarm plan.
pub(crate) fn deploy(
    sh: &Shell,
    flags: &flags::Deploy,
    env: Lookup<'_>,
    tag: String,
) -> anyhow::Result<()> {
    let mut problems = Problems::default();
    let mut redactor = Redactor::default();
    let target = settings::target(&flags.server, env, &mut problems, &mut redactor);
    let vars = stack_vars();
    let release = settings::release(
        &vars,
        &tag,
        &[],
        flags.health.health_url.as_deref(),
        env,
        &mut problems,
        &mut redactor,
    );
    if !flags.profiles.is_empty() {
        problems.invalid.push(
            "--profile is a compose-mode option: the swarm stack has no monitoring profile"
                .to_owned(),
        );
    }
    if flags.replicas == 0 {
        problems
            .invalid
            .push("--replicas must be at least 1".to_owned());
    }
    let secrets = stack_secrets(&release);
    for secret in &secrets {
        redactor.add(&secret.value);
    }
    let root = crate::project::root();
    let stack_path = flags
        .stack_file
        .clone()
        .unwrap_or_else(|| root.join(STACK_FILE));
    let stack = std::fs::read_to_string(&stack_path).unwrap_or_else(|err| {
        problems
            .invalid
            .push(format!("reading `{}`: {err}", stack_path.display()));
        String::new()
    });
    let compose_file = flags
        .compose_file
        .clone()
        .unwrap_or_else(|| root.join(crate::deploy::compose::COMPOSE_FILE));
    let infrastructure = flags
        .infrastructure
        .clone()
        .unwrap_or_else(|| root.join("infrastructure"));
    let upload =
        crate::deploy::upload::pack(&compose_file, &infrastructure, None).unwrap_or_else(|err| {
            problems.invalid.push(format!("{err:#}"));
            Upload::default()
        });
    let scripts = ServerScripts::new(&target, run_id());
    let gate = Gate {
        // Swarm's own health checks gate each task; the URL through Traefik gates the whole.
        services: Vec::new(),
        url: release.health_url.clone(),
        timeout: Duration::from_secs(flags.health.health_timeout),
        reach: reach(&flags.health, &mut problems),
    };
    let holder = holder(env, "deploy", &tag);
    let plan = deploy_plan(
        &scripts,
        &release,
        &upload,
        &stack,
        &gate,
        &DeployOptions {
            push: !flags.no_push,
            insecure_registries: &flags.insecure_registry,
            holder: &holder,
            keep_snapshots: flags.keep_snapshots,
        },
        flags.replicas,
    );
    if flags.dry_run {
        println!(
            "Swarm deploy of {tag} through {} ({}), dry run: nothing is sent.\n",
            target.display_or_placeholder(),
            target.base
        );
        print!("{}", plan.describe());
        if let Err(err) = problems.into_result() {
            eprintln!("\nnote: a real run would stop at the preflight: {err:#}");
        }
        return Ok(());
    }
    problems.into_result()?;
    Run::new(sh, target, scripts, redactor).execute(&plan)
}

/// `rollback --mode swarm`: under the lock, the target release's stack file deployed again.
pub(crate) fn rollback(sh: &Shell, flags: &flags::Rollback, env: Lookup<'_>) -> anyhow::Result<()> {
    if flags.restore.is_some() {
        bail!(
            "--restore is a compose-mode option: in swarm mode restore a dump by hand (README \"Scaling out\")"
        );
    }
    let mut problems = Problems::default();
    let mut redactor = Redactor::default();
    let target = settings::target(&flags.server, env, &mut problems, &mut redactor);
    let credentials = settings::credentials(env, &mut Problems::default(), &mut redactor);
    if let Some(tag) = flags.to.as_deref().filter(|tag| !settings::is_tag(tag)) {
        problems
            .invalid
            .push(format!("--to takes a release tag, got `{tag}`"));
    }
    let reach = reach(&flags.health, &mut problems);
    problems.into_result()?;
    let scripts = ServerScripts::new(&target, run_id());
    let mut run = Run::new(sh, target, scripts.clone(), redactor);
    run.step(&step("connect", Action::Local(Local::Connect)))?;
    if !flags.dry_run {
        let holder = holder(
            env,
            "rollback",
            flags.to.as_deref().unwrap_or("the previous release"),
        );
        run.step(&step("lock", Action::Lock(scripts.lock(&holder))))?;
    }
    let listing = run.step_output(&step(
        "read releases",
        Action::Remote(scripts.list_releases()),
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
        services: Vec::new(),
        url,
        timeout: Duration::from_secs(flags.health.health_timeout),
        reach,
    };
    let registry = releases.registry_of(&tag).unwrap_or_default();
    let deploy = scripts.swarm_deploy(&registry, credentials.as_ref(), gate.timeout);
    let plan = rollback_plan(&scripts, &tag, deploy, &gate);
    if flags.dry_run {
        println!(
            "Swarm rollback of {} to {tag}, dry run: nothing changes.\n",
            run.target().display()
        );
        print!("{}", plan.describe());
        return Ok(());
    }
    run.execute(&plan)
}

fn reach(health: &flags::HealthGate, problems: &mut Problems) -> health::Reach {
    health::Reach::new(health.health_insecure_tls, health.health_resolve.as_deref()).unwrap_or_else(
        |err| {
            problems.invalid.push(format!("{err:#}"));
            health::Reach::default()
        },
    )
}

/// The scripts of `swarm-setup`: they run on bare provisioned servers, as root, before any
/// release directory exists, so they carry their own two helpers instead of the prelude.
fn setup_script(values: &Script, file: &str) -> Script {
    let mut script = Script::new();
    script
        .line("set -euo pipefail")
        .line(r#"say() { printf '%s\n' "$*" >&2; }"#)
        .line(r#"die() { say "error: $*"; exit 3; }"#)
        .line("main() {")
        .append(values)
        .text(file)
        .line("}")
        .line("main </dev/null");
    script
}

/// `swarm init` on the manager (idempotent), the firewall for the peers, and the join token
/// and address on stdout.
pub(crate) fn init_script(advertise_addr: &str, peers: &[String]) -> Script {
    let mut values = Script::new();
    values
        .value("advertise_addr", advertise_addr)
        .array("peers", peers);
    setup_script(&values, SWARM_INIT)
}

/// Joins a worker through the engine's API, the token in the request body from stdin.
pub(crate) fn join_script(
    manager_addr: &str,
    advertise_addr: &str,
    token: &Secret,
    peers: &[String],
    delimiter: &str,
) -> Script {
    let mut values = Script::new();
    values
        .value("manager_addr", manager_addr)
        .value("advertise_addr", advertise_addr)
        .array("peers", peers)
        .heredoc("join_token", delimiter, |s| {
            s.secret("join token", token).line("");
        });
    setup_script(&values, SWARM_JOIN)
}

/// Puts `timemanager.db=true` on the database's node, refusing to move it.
pub(crate) fn label_script(db_node: &str) -> Script {
    let mut values = Script::new();
    values.value("db_node", db_node);
    setup_script(&values, SWARM_LABEL)
}

/// `key=value` of a setup script's stdout.
fn fact<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

impl flags::SwarmSetup {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        swarm_setup(sh, &self, &settings::from_process_env)
    }
}

fn swarm_setup(sh: &Shell, flags: &flags::SwarmSetup, env: Lookup<'_>) -> anyhow::Result<()> {
    let advertise = flags.advertise_addr.clone().unwrap_or_default();
    let db_node = flags.db_node.clone().unwrap_or_else(|| "self".to_owned());
    for host in &flags.workers {
        if host.is_empty() || host.starts_with('-') || host.contains(char::is_whitespace) {
            bail!("--worker takes a host name or address, got `{host}`");
        }
    }
    if !settings::is_name(&db_node.to_ascii_lowercase()) && db_node != "self" {
        bail!("--db-node takes a node's hostname, got `{db_node}`");
    }
    let manager = flags.server.host.clone().or_else(|| env("HETZNER_HOST"));
    let peers_of = |me: &str| -> Vec<String> {
        manager
            .iter()
            .chain(&flags.workers)
            .filter(|host| *host != me)
            .cloned()
            .collect()
    };
    let manager_name = manager
        .clone()
        .unwrap_or_else(|| "<HETZNER_HOST>".to_owned());
    let init = init_script(&advertise, &peers_of(&manager_name));
    if flags.dry_run {
        println!(
            "Swarm setup, dry run: nothing is sent. Each script goes over ssh's stdin to `bash -s` as root.\n"
        );
        println!("## on the manager {manager_name}\n");
        print!("{}", init.masked());
        let placeholder = Secret::new("<join token>".to_owned());
        for worker in &flags.workers {
            println!("\n## on the worker {worker}\n");
            print!(
                "{}",
                join_script(
                    "<manager address>",
                    "",
                    &placeholder,
                    &peers_of(worker),
                    "TM_EOF"
                )
                .masked()
            );
        }
        println!("\n## on the manager again\n");
        print!("{}", label_script(&db_node).masked());
        return Ok(());
    }
    let (manager_target, redactor) = server_target(&flags.server, env)?;
    let session = Session::open(sh, &manager_target, &redactor)?;
    let out = session.capture_as_root(sh, "swarm init", &init)?;
    let manager_addr = fact(&out, "manager_addr")
        .filter(|addr| !addr.is_empty())
        .context("the manager reported no swarm address")?
        .to_owned();
    let token = Secret::new(
        fact(&out, "join_token")
            .filter(|token| !token.is_empty())
            .context("the manager reported no join token")?
            .to_owned(),
    );
    let mut redactor = redactor;
    redactor.add(&token);
    let delimiter = format!("TM_EOF_{}", run_id());
    for worker in &flags.workers {
        let server = flags::Server {
            host: Some(worker.clone()),
            ..flags.server.clone()
        };
        let (target, _) = server_target(&server, env)?;
        let worker_session = Session::open(sh, &target, &redactor)?;
        let script = join_script(&manager_addr, "", &token, &peers_of(worker), &delimiter);
        worker_session
            .capture_as_root(sh, &format!("swarm join ({worker})"), &script)
            .with_context(|| format!("joining {worker} to the swarm"))?;
    }
    session.run_as_root(sh, "label the database node", &label_script(&db_node))?;
    eprintln!(
        "the swarm is ready: deploy with `cargo xtask deploy --mode swarm --host {}`",
        manager_target.host
    );
    Ok(())
}

/// Reads only what talking to one node needs.
fn server_target(server: &flags::Server, env: Lookup<'_>) -> anyhow::Result<(Target, Redactor)> {
    let mut problems = Problems::default();
    let mut redactor = Redactor::default();
    let target = settings::target(server, env, &mut problems, &mut redactor);
    problems.into_result()?;
    Ok((target, redactor))
}

/// `status --mode swarm`.
pub(crate) fn status(sh: &Shell, session: &Session, target: &Target) -> anyhow::Result<()> {
    let scripts = ServerScripts::read_only(target);
    session
        .run(
            sh,
            "reading the swarm's status",
            &scripts.swarm_status(),
            Stdout::Print,
        )
        .map(drop)
}

#[cfg(test)]
mod tests;
