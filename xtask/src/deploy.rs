//! `cargo xtask deploy` and the commands that operate the server: `rollback`, `releases`,
//! `status`, `logs`, `create-admin`, `server-setup`.
//!
//! A deploy is a [`plan::Plan`] built before anything runs (printed by `--dry-run`), then
//! executed step by step over one ssh connection while the server's deploy lock is held:
//!
//! ```text
//! /opt/timemanager/
//!   releases/<tag>/{docker-compose.prod.yml, infrastructure/, .env (0600), images,
//!                   .uploaded, .activated, .previous, .result,
//!                   docker-compose.override.yml (test labs only: --compose-override)}
//!   current -> releases/<tag>                 swapped atomically (rename of a new link)
//!   docker-compose.prod.yml, .env, infrastructure -> current/...   the runbook's paths
//!   docker-compose.override.yml -> current/...  only while the current release has one
//!   releases.jsonl                            one JSON line per deploy, rollback or snapshot
//!   snapshots/<time>-<tag>.pgdump             pg_dump -Fc, before each migrating deploy
//!   snapshots/<time>-<tag>.rescue.pgdump      what a restore replaced (never pruned)
//!   .deploy.lock, .deploy.lock.holder         flock held by the deploying ssh session
//! ```
//!
//! A release with pending migrations is migrated once, by `timemanager-backend migrate` in a
//! one-off container of its image, after a snapshot and before the switch; a rollback goes
//! ahead only if the target runs on the schema (see [`migrations`]).

mod activation;
pub(crate) mod compose;
mod health;
mod migrations;
mod plan;
mod releases;
mod run;
mod scripts;
mod secrets;
mod settings;
mod ssh;
mod swarm;
mod upload;

use std::time::Duration;

use anyhow::{Context, bail};
use xshell::Shell;

use crate::{
    deploy::{
        plan::{Action, Gate, Local, step},
        releases::{format_releases, parse_releases, rollback_target},
        run::{Run, holder, run_id},
        scripts::ServerScripts,
        secrets::{Redactor, Secret},
        settings::{Lookup, OWN_SERVICES, Problems, Target},
        ssh::{Session, Stdout},
        upload::{Upload, pack},
    },
    flags::{self, Mode},
    project,
};

impl flags::Deploy {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let env = &settings::from_process_env;
        match swarm::mode(self.server.mode, env)? {
            Mode::Compose => deploy(sh, &self, env),
            Mode::Swarm => swarm::deploy(sh, &self, env, deploy_tag(sh, &self)?),
        }
    }
}

impl flags::Rollback {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let env = &settings::from_process_env;
        match swarm::mode(self.server.mode, env)? {
            Mode::Compose => rollback(sh, &self, env),
            Mode::Swarm => swarm::rollback(sh, &self, env),
        }
    }
}

impl flags::Releases {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let text = read_only(sh, &self.server, "listing releases", |remote| {
            remote.list_releases()
        })?;
        print!("{}", format_releases(&parse_releases(&text)));
        Ok(())
    }
}

impl flags::Status {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let env = &settings::from_process_env;
        let (target, redactor) = server_target(&self.server, env)?;
        let session = Session::open(sh, &target, &redactor)?;
        let remote = ServerScripts::read_only(&target);
        match swarm::mode(self.server.mode, env)? {
            Mode::Compose => {
                session.run(
                    sh,
                    "reading the server's status",
                    &remote.status(),
                    Stdout::Print,
                )?;
            }
            Mode::Swarm => swarm::status(sh, &session, &target)?,
        }
        let url = self
            .health_url
            .or_else(|| env("DOMAIN").map(|domain| format!("https://{domain}/api/health")));
        let reach = health::Reach::new(self.health_insecure_tls, self.health_resolve.as_deref())?;
        if let Some(url) = url {
            match health::url_status(&url, &reach) {
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
        let remote = ServerScripts::read_only(&target);
        let script = match swarm::mode(self.server.mode, &settings::from_process_env)? {
            Mode::Compose => remote.logs(&self.service, self.tail, self.follow),
            Mode::Swarm => remote.swarm_logs(&self.service, self.tail, self.follow),
        };
        session.run(sh, "reading logs", &script, Stdout::Print)?;
        Ok(())
    }
}

impl flags::CreateAdmin {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let stdin = std::io::stdin();
        let password = read_admin_password(stdin.lock(), std::io::IsTerminal::is_terminal(&stdin))?;
        let (target, mut redactor) = server_target(&self.server, &settings::from_process_env)?;
        redactor.add(&password);
        let session = Session::open(sh, &target, &redactor)?;
        let script = ServerScripts::read_only(&target).create_admin(
            &self.email,
            self.username.as_deref(),
            &password,
        );
        session.run(sh, "creating the admin", &script, Stdout::Print)?;
        Ok(())
    }
}

/// The first line of stdin; a terminal is refused because it would echo the password.
fn read_admin_password(
    mut input: impl std::io::BufRead,
    is_terminal: bool,
) -> anyhow::Result<Secret> {
    if is_terminal {
        bail!(
            "pipe the password on stdin, a terminal would show it: \
             `read -rs PW && printf '%s\\n' \"$PW\" | cargo xtask create-admin --email ...`"
        );
    }
    let mut line = String::new();
    input
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        bail!("no password on stdin: its first line is the password");
    }
    Ok(Secret::new(password))
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

/// Runs one read-only script on the server; its stdout.
fn read_only(
    sh: &Shell,
    server: &flags::Server,
    what: &str,
    script: impl FnOnce(&ServerScripts) -> scripts::Script,
) -> anyhow::Result<String> {
    let (target, redactor) = server_target(server, &settings::from_process_env)?;
    let session = Session::open(sh, &target, &redactor)?;
    session.run(
        sh,
        what,
        &script(&ServerScripts::read_only(&target)),
        Stdout::Capture,
    )
}

/// Reads only what talking to the server needs.
fn server_target(server: &flags::Server, env: Lookup<'_>) -> anyhow::Result<(Target, Redactor)> {
    let mut problems = Problems::default();
    let mut redactor = Redactor::default();
    let target = settings::target(server, env, &mut problems, &mut redactor);
    problems.into_result()?;
    Ok((target, redactor))
}

/// How the health URL is reached: `--health-insecure-tls` and `--health-resolve` (labs).
fn reach(health: &flags::HealthGate, problems: &mut Problems) -> health::Reach {
    health::Reach::new(health.health_insecure_tls, health.health_resolve.as_deref()).unwrap_or_else(
        |err| {
            problems.invalid.push(format!("{err:#}"));
            health::Reach::default()
        },
    )
}

fn deploy(sh: &Shell, flags: &flags::Deploy, env: Lookup<'_>) -> anyhow::Result<()> {
    let mut problems = Problems::default();
    let mut redactor = Redactor::default();
    let target = settings::target(&flags.server, env, &mut problems, &mut redactor);
    let tag = deploy_tag(sh, flags)?;
    let release = settings::release(
        compose::ENV_VARS,
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
        .unwrap_or_else(|| project::root().join(compose::COMPOSE_FILE));
    let infrastructure = flags
        .infrastructure
        .clone()
        .unwrap_or_else(|| project::root().join("infrastructure"));
    let upload = pack(
        &compose_file,
        &infrastructure,
        flags.compose_override.as_deref(),
    )
    .unwrap_or_else(|err| {
        problems.invalid.push(format!("{err:#}"));
        Upload::default()
    });
    let scripts = ServerScripts::new(&target, run_id());
    let gate = Gate {
        services: OWN_SERVICES.iter().map(|s| (*s).to_owned()).collect(),
        url: release.health_url.clone(),
        timeout: Duration::from_secs(flags.health.health_timeout),
        reach: reach(&flags.health, &mut problems),
    };
    let holder = holder(env, "deploy", &tag);
    let plan = plan::deploy_plan(
        &scripts,
        &release,
        &upload,
        &gate,
        &plan::DeployOptions {
            push: !flags.no_push,
            insecure_registries: &flags.insecure_registry,
            holder: &holder,
            keep_snapshots: flags.keep_snapshots,
        },
    );
    if flags.dry_run {
        println!(
            "Deploy of {tag} to {} ({}), dry run: nothing changes (only the database's migrations are read, when the server can be reached).\n",
            target.display_or_placeholder(),
            target.base
        );
        print!("{}", plan.describe());
        print!("{}", dry_run_migrations(sh, &target, &redactor));
        if let Err(err) = problems.into_result() {
            eprintln!("\nnote: a real run would stop at the preflight: {err:#}");
        }
        return Ok(());
    }
    problems.into_result()?;
    Run::new(sh, target, scripts, redactor).execute(&plan)
}

/// `--tag` with `--no-push`, else this checkout's commit (which `--tag` may only repeat).
fn deploy_tag(sh: &Shell, flags: &flags::Deploy) -> anyhow::Result<String> {
    Ok(match &flags.tag {
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
    })
}

fn rollback(sh: &Shell, flags: &flags::Rollback, env: Lookup<'_>) -> anyhow::Result<()> {
    let to = match (&flags.restore, &flags.to) {
        (Some(snapshot), to) => {
            let release = snapshot_release(snapshot)?;
            if let Some(to) = to.as_deref().filter(|to| *to != release) {
                bail!(
                    "{snapshot} holds the schema of release {release}, not of {to}: roll back with `--to {release} --restore {snapshot}`"
                );
            }
            Some(release.to_owned())
        }
        (None, to) => to.clone(),
    };
    let goal = Goal {
        to: to.as_deref(),
        restore: flags.restore.as_deref(),
        may_be_current: false,
    };
    go_back(sh, &flags.server, &flags.health, goal, flags.dry_run, env)
}

/// What a rollback or restore goes back to.
struct Goal<'a> {
    /// The release (default: the newest healthy one before the current).
    to: Option<&'a str>,
    /// A snapshot to restore first.
    restore: Option<&'a str>,
    /// `db restore` may restart the current release on the restored data.
    may_be_current: bool,
}

fn go_back(
    sh: &Shell,
    server: &flags::Server,
    health: &flags::HealthGate,
    goal: Goal<'_>,
    dry_run: bool,
    env: Lookup<'_>,
) -> anyhow::Result<()> {
    let mut problems = Problems::default();
    let mut redactor = Redactor::default();
    let target = settings::target(server, env, &mut problems, &mut redactor);
    // Only needed if the release's images were pruned from the server: optional here.
    let credentials = settings::credentials(env, &mut Problems::default(), &mut redactor);
    if let Some(tag) = goal.to.filter(|tag| !settings::is_tag(tag)) {
        problems
            .invalid
            .push(format!("--to takes a release tag, got `{tag}`"));
    }
    let reach = reach(health, &mut problems);
    problems.into_result()?;
    let scripts = ServerScripts::new(&target, run_id());
    let mut run = Run::new(sh, target, scripts.clone(), redactor);
    // The target depends on what the server holds: read it under the lock, then plan.
    run.step(&step("connect", Action::Local(Local::Connect)))?;
    if !dry_run {
        let holder = holder(env, "rollback", goal.to.unwrap_or("the previous release"));
        run.step(&step("lock", Action::Lock(scripts.lock(&holder))))?;
    }
    let listing = run.step_output(&step(
        "read releases",
        Action::Remote(scripts.list_releases()),
    ))?;
    let releases = parse_releases(&listing);
    let tag = match goal.to {
        Some(tag) if goal.may_be_current && tag == releases.current => tag.to_owned(),
        to => rollback_target(&releases, to)?,
    };
    eprintln!("rolling back from {} to {tag}", releases.current);
    let url = match (&health.health_url, env("DOMAIN")) {
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
        timeout: Duration::from_secs(health.health_timeout),
        reach,
    };
    let registry_host = releases.registry_of(&tag);
    let ensure_images = scripts.ensure_images(
        &tag,
        credentials
            .as_ref()
            .and_then(|c| registry_host.as_deref().map(|host| (host, c))),
    );
    let plan = plan::rollback_plan(&scripts, &tag, ensure_images, &gate, goal.restore);
    if dry_run {
        println!(
            "Rollback of {} to {tag}, dry run: nothing changes.\n",
            run.target().display()
        );
        print!("{}", plan.describe());
        return Ok(());
    }
    run.execute(&plan)
}

/// The release a snapshot belongs to, from its name.
fn snapshot_release(snapshot: &str) -> anyhow::Result<&str> {
    migrations::release_of(snapshot)
        .filter(|_| migrations::is_snapshot_name(snapshot))
        .with_context(|| {
            format!(
                "`{snapshot}` is not a snapshot name such as 20261201T120000Z-abc1234.pgdump: see `cargo xtask db snapshots`"
            )
        })
}

impl flags::Db {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let env = &settings::from_process_env;
        let server = match &self.command {
            flags::DbCommand::Snapshot(cmd) => &cmd.server,
            flags::DbCommand::Snapshots(cmd) => &cmd.server,
            flags::DbCommand::Restore(cmd) => &cmd.server,
        };
        if swarm::mode(server.mode, env)? == Mode::Swarm {
            bail!(
                "`db` works in compose mode only: in swarm mode PostgreSQL runs on the node labelled timemanager.db=true, see README \"Scaling out\" for dumps"
            );
        }
        match self.command {
            flags::DbCommand::Snapshot(cmd) => db_snapshot(sh, &cmd, env),
            flags::DbCommand::Snapshots(cmd) => {
                let text = read_only(sh, &cmd.server, "listing snapshots", |remote| {
                    remote.list_snapshots()
                })?;
                print!("{}", migrations::format_snapshots(&text));
                Ok(())
            }
            flags::DbCommand::Restore(cmd) => {
                let release = snapshot_release(&cmd.snapshot)?.to_owned();
                let goal = Goal {
                    to: Some(&release),
                    restore: Some(&cmd.snapshot),
                    may_be_current: true,
                };
                go_back(sh, &cmd.server, &cmd.health, goal, cmd.dry_run, env)
            }
        }
    }
}

/// `db snapshot`: under the deploy lock, dumped, pruned and recorded in `releases.jsonl`.
fn db_snapshot(sh: &Shell, cmd: &flags::DbSnapshot, env: Lookup<'_>) -> anyhow::Result<()> {
    let (target, redactor) = server_target(&cmd.server, env)?;
    let scripts = ServerScripts::new(&target, run_id());
    let mut run = Run::new(sh, target, scripts.clone(), redactor);
    run.step(&step("connect", Action::Local(Local::Connect)))?;
    run.step(&step(
        "lock",
        Action::Lock(scripts.lock(&holder(env, "snapshot", "the database"))),
    ))?;
    let out = run.step_output(&step(
        "snapshot",
        Action::Remote(scripts.snapshot(cmd.keep)),
    ))?;
    let path = out
        .lines()
        .find_map(|line| line.strip_prefix("snapshot\t"))
        .and_then(|rest| rest.split('\t').next())
        .context("the snapshot step reported no file")?;
    run.record_snapshot(path)?;
    println!("{path}");
    Ok(())
}

/// The migrations `--dry-run` shows: this checkout's, and the pending ones when the server
/// can be read (one read-only script; nothing changes).
fn dry_run_migrations(sh: &Shell, target: &Target, redactor: &Redactor) -> String {
    let known = match migrations::local_release(&project::root().join("backend/migrations")) {
        Ok(known) => known,
        Err(err) => return format!("\nThe release's migrations cannot be read: {err:#}\n"),
    };
    let applied = if target.host.is_empty() {
        Err("no server: set HETZNER_HOST or --host".to_owned())
    } else {
        Session::open(sh, target, redactor)
            .and_then(|session| {
                session.run(
                    sh,
                    "reading the server's migrations",
                    &ServerScripts::read_only(target).database_state(),
                    Stdout::Capture,
                )
            })
            .map_err(|err| format!("{err:#}"))
    };
    migrations::dry_run(known, applied)
}

#[cfg(test)]
mod tests;
