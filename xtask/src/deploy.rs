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
//!   releases.jsonl                            one JSON line per deploy or rollback
//!   .deploy.lock, .deploy.lock.holder         flock held by the deploying ssh session
//! ```

pub(crate) mod compose;
mod health;
mod plan;
mod releases;
mod run;
mod scripts;
mod secrets;
mod settings;
mod ssh;
mod upload;

use std::time::Duration;

use anyhow::{Context as _, bail};
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
    flags, project,
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
        let remote = ServerScripts::read_only(&target);
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
        let remote = ServerScripts::read_only(&target);
        session.run(
            sh,
            "reading the server's status",
            &remote.status(),
            Stdout::Print,
        )?;
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
        let script = remote.logs(&self.service, self.tail, self.follow);
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
        !flags.no_push,
        &flags.insecure_registry,
        &holder,
    );
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
    Run::new(sh, target, scripts, redactor).execute(&plan)
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
    let reach = reach(&flags.health, &mut problems);
    problems.into_result()?;
    let scripts = ServerScripts::new(&target, run_id());
    let mut run = Run::new(sh, target, scripts.clone(), redactor);
    // The target depends on what the server holds: read it under the lock, then plan.
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
        services: OWN_SERVICES.iter().map(|s| (*s).to_owned()).collect(),
        url,
        timeout: Duration::from_secs(flags.health.health_timeout),
        reach,
    };
    let registry_host = releases.registry_of(&tag);
    let ensure_images = scripts.ensure_images(
        &tag,
        credentials
            .as_ref()
            .and_then(|c| registry_host.as_deref().map(|host| (host, c))),
    );
    let plan = plan::rollback_plan(&scripts, &tag, ensure_images, &gate);
    if flags.dry_run {
        println!(
            "Rollback of {} to {tag}, dry run: nothing changes.\n",
            run.target().display()
        );
        print!("{}", plan.describe());
        return Ok(());
    }
    run.execute(&plan)
}

#[cfg(test)]
mod tests;
