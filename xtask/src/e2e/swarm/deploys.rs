//! The deploy scenarios of `cargo xtask e2e --mode swarm`, on the swarm `swarm-setup` made:
//! the real stack deployed with the clone's own `cargo xtask deploy --mode swarm` over ssh to
//! the manager, as a user would, with the load generator running through Traefik.
//!
//! The releases are builds of the compose e2e's scratch clone (`Lab`'s, under `target/e2e/`)
//! in `project::clones_target_dir`, so after `cargo xtask e2e` they are incremental: A (the
//! working tree), B (a code change) and C (B with a backend that cannot reach the database,
//! so its new tasks fail their health check). The images go to a lab registry on the host's
//! bridge address, which every node's engine takes as an insecure registry; PostgreSQL's and
//! Traefik's stand-ins (`harness/lab_images.rs`) are loaded into each engine.
//!
//! The stack file is `docker-stack.yml` with two lab edits, each checked to apply: no
//! `postgres-backup` (its image is pinned by digest and has no stand-in, as in the compose
//! lab's override), and Traefik mounts the manager's engine socket, not this machine's (the
//! nodes share its file system).

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use xshell::{Shell, cmd};

use crate::{
    e2e::probes::Scanner,
    harness::{
        docker,
        lab::{self, Release, XtaskRun},
        lab_images::{self, LabImageSet},
        load::{self, Load, LoadReport},
        registry::{Auth, TestRegistry},
        swarm_lab::SwarmLab,
    },
    project,
    steps::{Steps, format_duration},
};

/// `GITHUB_REPOSITORY` of the lab's images.
const REPOSITORY: &str = "e2e/timemanager";

/// The stack file at the checkout's root.
const STACK_FILE: &str = "docker-stack.yml";

/// The stack's name on the manager (`COMPOSE_PROJECT` of the deploy).
const STACK: &str = "timemanager";

/// The services whose tasks the scenarios follow.
const OWN: [&str; 2] = ["backend", "frontend"];

/// The deploys and their checks, in order; the report lines. The stack is removed before
/// this returns, also on failure: a node's `dockerd` stopped with running tasks would leave
/// their containers behind.
pub(super) fn run(
    sh: &Shell,
    lab: &SwarmLab,
    steps: &mut Steps,
    base: &Path,
) -> anyhow::Result<Vec<String>> {
    let result = scenarios(sh, lab, steps, base);
    let removed = remove_stack(lab);
    let report = result?;
    removed?;
    Ok(report)
}

/// What every deploy of the scenarios uses.
struct Cluster<'a> {
    lab: &'a SwarmLab,
    manager: String,
    /// The clone's xtask, its checkout and target directory, and the builds' epoch.
    clone: PathBuf,
    target: PathBuf,
    epoch: String,
    /// The settings a CI job would have in its environment, secrets included.
    env: Vec<(&'static str, String)>,
    /// Set while a deploy or rollback runs: the argv scanner looks only then.
    running: Arc<AtomicBool>,
    server_args: Vec<String>,
}

/// One run of the clone's xtask.
fn scenarios(
    sh: &Shell,
    lab: &SwarmLab,
    steps: &mut Steps,
    base: &Path,
) -> anyhow::Result<Vec<String>> {
    let mut report = Vec::new();
    // The stand-ins are built (or found) in this machine's engine, then loaded into each node.
    let _engine = docker::engine(sh, &lab.dir.join("host-engine"))?;
    let images_start = Instant::now();
    let images = steps.run("stand-in images into the 3 engines", || {
        let images = lab_images::ensure_lab_images(sh, LabImageSet::Core)?;
        let archives = images
            .iter()
            .map(lab_images::archive)
            .collect::<anyhow::Result<Vec<_>>>()?;
        lab.load_images(&archives)?;
        Ok(images)
    })?;
    let images_time = images_start.elapsed();
    let secret = |what: &str| format!("e2e-{what}-{}", lab::random_hex());
    let registry_password = secret("registry");
    let registry = steps.run("lab registry on the bridge", || {
        TestRegistry::start_on(
            sh,
            Auth::Htpasswd {
                user: "e2e".to_owned(),
                password: registry_password.clone(),
            },
            lab.gateway.parse().context("the lab's gateway address")?,
        )
    })?;
    report.push(format!(
        "lab: {} loaded into each of the 3 engines in {}; registry on the bridge at {}",
        images
            .iter()
            .map(|image| image.reference.as_str())
            .collect::<Vec<_>>()
            .join(" and "),
        format_duration(images_time),
        registry.host()
    ));

    let stack_file = lab.dir.join("docker-stack.lab.yml");
    fs::write(&stack_file, lab_stack(lab)?)?;
    let manager = lab.nodes[0].addr.clone();
    let target_root = project::target_dir().join("e2e");
    let postgres_password = secret("postgres");
    let cluster = Cluster {
        lab,
        manager: manager.clone(),
        clone: target_root.join("clone"),
        target: project::clones_target_dir(),
        epoch: lab::build_epoch(sh)?,
        env: vec![
            ("DOMAIN", manager.clone()),
            ("ACME_EMAIL", "e2e@timemanager.test".to_owned()),
            ("GITHUB_REPOSITORY", REPOSITORY.to_owned()),
            ("REGISTRY", registry.host()),
            ("REGISTRY_USERNAME", "e2e".to_owned()),
            ("REGISTRY_PASSWORD", registry_password.clone()),
            // No GRAFANA_PASSWORD: the swarm stack runs no Grafana, and the deploy must not
            // ask for it.
            ("POSTGRES_PASSWORD", postgres_password.clone()),
        ],
        running: Arc::new(AtomicBool::new(false)),
        server_args: vec![
            "--mode".to_owned(),
            "swarm".to_owned(),
            "--host".to_owned(),
            manager.clone(),
            "--identity".to_owned(),
            lab.client_key.display().to_string(),
            "--known-hosts".to_owned(),
            lab.known_hosts.display().to_string(),
            "--remote-dir".to_owned(),
            base.display().to_string(),
            "--health-url".to_owned(),
            format!("https://{manager}/api/health"),
            "--health-insecure-tls".to_owned(),
            "--health-timeout".to_owned(),
            "120".to_owned(),
        ],
    };
    let mut secrets = vec![registry_password, postgres_password];
    secrets.extend(
        fs::read_to_string(&lab.client_key)?
            .lines()
            .filter(|line| line.len() > 20 && !line.starts_with("-----"))
            .map(str::to_owned),
    );
    let scanner = Scanner::start(secrets.clone(), cluster.running.clone());
    let result = cluster.releases(sh, steps, &stack_file, &registry);
    let scan = scanner.stop();
    report.extend(result?);

    // 6. Secrets: in no process's argv on any node (one pid namespace for all), nor in any
    // service's spec.
    ensure!(
        scan.hits.is_empty(),
        "a secret was in a process's argv during a deploy:\n{}",
        scan.hits.join("\n")
    );
    let docker = lab.docker(0)?;
    let ids = cmd!(docker, "docker service ls -q").quiet().read()?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    let services = ids.len();
    let inspect = cmd!(docker, "docker service inspect {ids...}")
        .quiet()
        .read()?;
    for secret in &secrets {
        ensure!(
            !inspect.contains(secret.as_str()),
            "a secret is in `docker service inspect` output"
        );
    }
    ensure!(
        inspect.contains("/run/secrets/database_url"),
        "the backend's spec does not read DATABASE_URL_FILE"
    );
    report.push(format!(
        "scenario 6, secrets: in no argv ({} scans of {} processes on all nodes during the deploys), not in `docker service inspect` of the {} services ({} bytes)",
        scan.scans,
        scan.processes,
        services,
        inspect.len()
    ));
    Ok(report)
}

impl Cluster<'_> {
    /// Scenarios 1 to 5 (3 after 5: the failing release is built last).
    fn releases(
        &self,
        sh: &Shell,
        steps: &mut Steps,
        stack_file: &Path,
        registry: &TestRegistry,
    ) -> anyhow::Result<Vec<String>> {
        let mut report = Vec::new();
        let registry_host = registry.host();
        let deploy_args = |release: &Release| {
            let mut args = vec!["deploy".to_owned()];
            args.extend(self.server_args.iter().cloned());
            args.extend([
                "--stack-file".to_owned(),
                stack_file.display().to_string(),
                "--insecure-registry".to_owned(),
                registry_host.clone(),
                "--tag".to_owned(),
                release.tag.clone(),
            ]);
            args
        };

        steps.run("scratch clone: release A", || {
            lab::prepare_clone(sh, &self.clone, &self.target)
        })?;
        let a = steps.run("build A", || {
            lab::build(sh, &self.clone, &self.target, &self.epoch, "A")
        })?;
        let out = steps.run("scenario 1: deploy A (--mode swarm, over ssh)", || {
            self.xtask(sh, &deploy_args(&a))?.expect_ok("deploy A")
        })?;
        self.expect_revision(&a)?;
        let spread = self.spread()?;
        let data = self.write_data()?;
        report.push(format!(
            "scenario 1, deploy A ({}) on an empty swarm: {} (build and push included); {spread}; a row written into PostgreSQL on the labelled node (cluster {data})",
            a.tag,
            format_duration(out.elapsed)
        ));

        let b = steps.run("build B (a code change)", || {
            self.commit_change("B", RELEASE_B)?;
            lab::build(sh, &self.clone, &self.target, &self.epoch, "B")
        })?;
        let (out, traffic) = steps.run("scenario 2: deploy B under load", || {
            load::during(&self.load(), || {
                self.xtask(sh, &deploy_args(&b))?.expect_ok("deploy B")
            })
        })?;
        let digests = self.expect_serving(&traffic, "deploy B", &b, &data)?;
        report.push(format!(
            "scenario 2, deploy B ({}): {} (build and push included; the rolling update {}); every task on B's digest ({digests}); data kept; load: {}",
            b.tag,
            format_duration(out.elapsed),
            converge_time(&out.output),
            traffic.summary()
        ));

        let c = steps.run("build C (backend cannot reach the database)", || {
            self.commit_change("C", RELEASE_C)?;
            lab::build(sh, &self.clone, &self.target, &self.epoch, "C")
        })?;
        let (out, traffic) = steps.run(
            "scenario 3: deploy C under load, swarm rolls it back",
            || load::during(&self.load(), || self.xtask(sh, &deploy_args(&c))),
        )?;
        ensure!(
            !out.ok,
            "deploy C, whose backend never gets healthy, succeeded:\n{}",
            out.output
        );
        let named = out
            .output
            .lines()
            .find(|line| line.contains("swarm rolled back or paused backend ("))
            .with_context(|| {
                format!(
                    "deploy C failed without naming the backend's rollback:\n{}",
                    out.output
                )
            })?;
        self.expect_serving(&traffic, "deploy C", &b, &data)?;
        report.push(format!(
            "scenario 3, deploy C ({}, backend never healthy): exits non-zero in {} saying `{}`; B runs again, every task on B's digest; data kept; load: {}",
            c.tag,
            format_duration(out.elapsed),
            lab::excerpt(named.trim_start_matches("error: ")),
            traffic.summary()
        ));

        report.push(steps.run(
            "scenario 4: a worker's dockerd stopped, then started",
            || self.node_loss(&data),
        )?);

        let mut rollback = vec!["rollback".to_owned()];
        rollback.extend(self.server_args.iter().cloned());
        rollback.extend(["--to".to_owned(), a.tag.clone()]);
        let (out, traffic) = steps.run("scenario 5: rollback to A under load", || {
            load::during(&self.load(), || {
                self.xtask(sh, &rollback)?.expect_ok("rollback")
            })
        })?;
        self.expect_serving(&traffic, "rollback", &a, &data)?;
        report.push(format!(
            "scenario 5, rollback to A: {} (the stack update {}); every task on A's digest; data kept; load: {}",
            format_duration(out.elapsed),
            converge_time(&out.output),
            traffic.summary()
        ));
        Ok(report)
    }

    /// The clone's xtask with the settings in its environment, as CI would run it.
    fn xtask(&self, sh: &Shell, args: &[String]) -> anyhow::Result<XtaskRun> {
        let _dir = sh.push_dir(&self.clone);
        let xtask = self.target.join("debug/xtask");
        let mut command = cmd!(sh, "{xtask} {args...}")
            .quiet()
            .ignore_status()
            .env("CARGO_TARGET_DIR", &self.target)
            .env("SOURCE_DATE_EPOCH", &self.epoch);
        // And the ssh target (the scenarios name the manager with flags), the mode, and the
        // Grafana password a swarm deploy must not ask for.
        let outer = [
            "HETZNER_HOST",
            "HETZNER_SSH_KEY",
            "HETZNER_KNOWN_HOSTS",
            "DEPLOY_MODE",
            "GRAFANA_PASSWORD",
        ];
        for name in lab::OUTER_ENV.iter().chain(&outer) {
            command = command.env_remove(name);
        }
        for (name, value) in &self.env {
            command = command.env(name, value);
        }
        lab::run_clone_xtask(command, &self.running)
    }

    /// The load of the zero-downtime scenarios, through Traefik on the manager's address.
    fn load(&self) -> Load {
        Load {
            base: format!("https://{}", self.manager),
            // No session: the SPA and the backend's health (which asks the database).
            paths: vec!["/", "/api/health"],
            max_time: Duration::from_secs(400),
            ..Load::default()
        }
    }

    /// After a deploy under load: no request failed, `release` serves on every task (their
    /// digests, for the report), the data is there.
    fn expect_serving(
        &self,
        traffic: &LoadReport,
        what: &str,
        release: &Release,
        data: &str,
    ) -> anyhow::Result<String> {
        expect_no_failures(traffic, what)?;
        self.expect_revision(release)?;
        let digests = self.every_task_on(release)?;
        self.check_data(data)?;
        Ok(digests)
    }

    /// The backend's revision through Traefik is the release's.
    fn expect_revision(&self, release: &Release) -> anyhow::Result<()> {
        let url = format!("https://{}/api/health", self.manager);
        let (status, body) = lab::health_at(&url)?;
        ensure!(
            status == 200 && body["revision"] == release.commit.as_str(),
            "{url} answered {status} {body}, not release {}'s revision",
            release.label
        );
        Ok(())
    }

    /// Scenario 4: a worker's `dockerd` stopped, its tasks rescheduled on the other nodes, the
    /// stack serving after that window, the node back.
    fn node_loss(&self, data: &str) -> anyhow::Result<String> {
        let placed = self.placement()?;
        let nodes = self.nodes()?;
        // The worker with the most of the own services' tasks.
        let (lost, _) = (1..self.lab.nodes.len())
            .map(|i| {
                let addr = &self.lab.nodes[i].addr;
                let count = placed
                    .iter()
                    .filter(|(_, node)| nodes.get(node) == Some(addr))
                    .count();
                (i, count)
            })
            .max_by_key(|(_, count)| *count)
            .context("the lab has no worker")?;
        let addr = self.lab.nodes[lost].addr.clone();
        let id = nodes
            .iter()
            .find(|(_, a)| **a == addr)
            .map(|(id, _)| id.clone())
            .with_context(|| format!("no swarm node has the address {addr}"))?;
        let moved = placed.iter().filter(|(_, node)| *node == id).count();
        ensure!(moved > 0, "no backend or frontend task runs on a worker");
        let (window, during) = load::during(&self.load(), || {
            let stopped = Instant::now();
            self.lab.stop_engine(lost);
            let deadline = stopped + Duration::from_secs(120);
            loop {
                let now = self.placement()?;
                let elsewhere = now.iter().filter(|(_, node)| *node != id).count();
                if elsewhere == 2 * OWN.len() {
                    return Ok(stopped.elapsed());
                }
                ensure!(
                    Instant::now() < deadline,
                    "120 s after {addr}'s dockerd stopped, its tasks still run nowhere else: {now:?}"
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        })?;
        // After the window, requests keep succeeding.
        let after = Load {
            max_time: Duration::from_secs(60),
            ..self.load()
        };
        let ((), traffic) = load::during(&after, || {
            std::thread::sleep(Duration::from_secs(10));
            Ok(())
        })?;
        expect_no_failures(&traffic, "after the node loss")?;
        self.check_data(data)?;
        let sh = Shell::new()?;
        let restarted = Instant::now();
        self.lab.start_engine(&sh, lost)?;
        let docker = self.lab.docker(0)?;
        let format = "{{.Status.State}}";
        let deadline = restarted + Duration::from_secs(60);
        while cmd!(docker, "docker node inspect --format {format} {id}")
            .quiet()
            .read()?
            != "ready"
        {
            ensure!(
                Instant::now() < deadline,
                "{addr} did not rejoin the swarm within 60 s of its dockerd's restart"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(format!(
            "scenario 4, {addr}'s dockerd stopped with {moved} of the {} backend/frontend tasks: rescheduled on the other nodes in {} (load meanwhile: {}{}); the 10 s after: {}; data kept; the node Ready again {} after its dockerd restarted",
            2 * OWN.len(),
            format_duration(window),
            during.summary(),
            if during.failures.is_empty() {
                String::new()
            } else {
                format!(
                    ", such as: {}",
                    during.failures[..during.failures.len().min(2)].join("; ")
                )
            },
            traffic.summary(),
            format_duration(restarted.elapsed())
        ))
    }

    /// The running tasks of the own services: (service, node id).
    fn placement(&self) -> anyhow::Result<Vec<(&'static str, String)>> {
        let docker = self.lab.docker(0)?;
        let mut placed = Vec::new();
        for service in OWN {
            let tasks = running_tasks(&docker, service, "{{.Status.State}} {{.NodeID}}")?;
            placed.extend(
                tasks
                    .lines()
                    .filter_map(|line| line.strip_prefix("running "))
                    .map(|node| (service, node.to_owned())),
            );
        }
        Ok(placed)
    }

    /// Node id to its address: the nodes share this machine's hostname.
    fn nodes(&self) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        let docker = self.lab.docker(0)?;
        let ids = cmd!(docker, "docker node ls -q").quiet().read()?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        let format = "{{.ID}} {{.Status.Addr}}";
        let out = cmd!(docker, "docker node inspect --format {format} {ids...}")
            .quiet()
            .read()?;
        Ok(out
            .lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(id, addr)| (id.to_owned(), addr.to_owned()))
            .collect())
    }

    /// Each own service's two running tasks, on two nodes.
    fn spread(&self) -> anyhow::Result<String> {
        let placed = self.placement()?;
        let nodes = self.nodes()?;
        let mut lines = Vec::new();
        for service in OWN {
            let mut on: Vec<&str> = placed
                .iter()
                .filter(|(s, _)| *s == service)
                .map(|(_, node)| nodes.get(node).map_or(node.as_str(), String::as_str))
                .collect();
            let running = on.len();
            on.sort_unstable();
            on.dedup();
            if running != 2 || on.len() != 2 {
                let docker = self.lab.docker(0)?;
                let format = "{{.Name}} {{.Node}} {{.CurrentState}} {{.Error}}";
                let name = format!("{STACK}_{service}");
                let tasks = cmd!(
                    docker,
                    "docker service ps --no-trunc --format {format} {name}"
                )
                .quiet()
                .read()
                .unwrap_or_default();
                bail!(
                    "{service}: expected 2 running tasks on 2 nodes, got {on:?}; its tasks:\n{tasks}"
                );
            }
            lines.push(format!("{service} on {}", on.join(" and ")));
        }
        Ok(lines.join(", "))
    }

    /// Every running task of the own services runs the service's image, pinned to the
    /// release's digest; the digests, shortened.
    fn every_task_on(&self, release: &Release) -> anyhow::Result<String> {
        let docker = self.lab.docker(0)?;
        let mut digests = Vec::new();
        for service in OWN {
            let name = format!("{STACK}_{service}");
            let format = "{{.Spec.TaskTemplate.ContainerSpec.Image}}";
            let image = cmd!(docker, "docker service inspect --format {format} {name}")
                .quiet()
                .read()?;
            let (reference, digest) = image
                .split_once('@')
                .with_context(|| format!("{service}'s image is not pinned: {image}"))?;
            ensure!(
                reference.ends_with(&format!("/{service}:{}", release.tag)),
                "{service} runs {image}, not release {}",
                release.label
            );
            let tasks = running_tasks(
                &docker,
                service,
                "{{.Status.State}} {{.Spec.ContainerSpec.Image}}",
            )?;
            let expected = format!("running {image}");
            ensure!(
                tasks.lines().count() == 2 && tasks.lines().all(|line| line == expected),
                "{service}: not every task runs {image}:\n{tasks}"
            );
            digests.push(format!("{service} {}", digest.get(..19).unwrap_or(digest)));
        }
        Ok(digests.join(", "))
    }

    /// A row in a table of its own, through psql in the PostgreSQL task on the labelled
    /// node; returns the cluster's system identifier (drawn once per data directory).
    fn write_data(&self) -> anyhow::Result<String> {
        self.psql(
            "CREATE TABLE swarm_e2e (note text NOT NULL); INSERT INTO swarm_e2e VALUES ('written under A')",
        )?;
        self.psql("SELECT system_identifier FROM pg_control_system()")
    }

    fn check_data(&self, cluster: &str) -> anyhow::Result<()> {
        let rows = self.psql("SELECT note FROM swarm_e2e")?;
        ensure!(
            rows == "written under A",
            "the row written under A is gone: {rows:?}"
        );
        let now = self.psql("SELECT system_identifier FROM pg_control_system()")?;
        ensure!(
            now == cluster,
            "PostgreSQL runs another cluster ({now}, was {cluster}): not its volume's"
        );
        Ok(())
    }

    fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let docker = self.lab.docker(0)?;
        let label = format!("label=com.docker.swarm.service.name={STACK}_postgres");
        let ids = cmd!(docker, "docker ps -q --filter {label}")
            .quiet()
            .read()?;
        let id = ids
            .split_whitespace()
            .next()
            .context("no PostgreSQL container runs on the manager (the labelled node)")?;
        let out = cmd!(
            docker,
            "docker exec {id} psql -U timemanager -d timemanager -v ON_ERROR_STOP=1 -At -c {sql}"
        )
        .quiet()
        .read()
        .with_context(|| format!("psql `{sql}` in the PostgreSQL task"))?;
        Ok(out.trim().to_owned())
    }

    /// Commits an edit of the clone as the next release.
    fn commit_change(&self, label: &str, edits: &[(&str, &str, &str)]) -> anyhow::Result<()> {
        for (file, from, to) in edits {
            super::super::edit(&self.clone.join(file), from, to)?;
        }
        let sh = Shell::new()?;
        let _dir = sh.push_dir(&self.clone);
        lab::commit(&sh, &format!("e2e swarm: release {label}"))
    }
}

/// B: a code change that reaches the backend's binary.
const RELEASE_B: &[(&str, &str, &str)] = &[(
    "backend/src/lib.rs",
    "pub const VERSION",
    "/// Release B of the swarm e2e: a code change that reaches the binary.\n#[used]\nstatic E2E_SWARM_B: [u8; 7] = *b\"swarm-b\";\n\npub const VERSION",
)];

/// C: B with a backend that cannot reach the database (the compose e2e's C): its tasks exit
/// before they are ever healthy.
const RELEASE_C: &[(&str, &str, &str)] = super::super::RELEASE_C;

fn expect_no_failures(traffic: &LoadReport, what: &str) -> anyhow::Result<()> {
    ensure!(
        traffic.failed == 0 && !traffic.cut_short && traffic.sent > 0,
        "{what}: {}; first failures:\n  {}",
        traffic.summary(),
        traffic.failures.join("\n  ")
    );
    Ok(())
}

/// "converged in N s", from `swarm_deploy.sh`'s last line.
fn converge_time(output: &str) -> String {
    output
        .lines()
        .rev()
        .find_map(|line| line.split_once("every service converged in "))
        .map(|(_, time)| format!("converged in {}", time.trim()))
        .unwrap_or_else(|| "converge time not reported".to_owned())
}

/// `docker-stack.yml` with the lab's two edits, each checked to apply.
fn lab_stack(lab: &SwarmLab) -> anyhow::Result<String> {
    let stack = fs::read_to_string(project::root().join(STACK_FILE))?;
    let (start, end) = (
        stack
            .find("\n  postgres-backup:\n")
            .context("docker-stack.yml has no postgres-backup service: update the lab's edits")?,
        stack
            .find("\nsecrets:\n")
            .context("docker-stack.yml has no top-level secrets: update the lab's edits")?,
    );
    ensure!(
        start < end,
        "docker-stack.yml: postgres-backup is not the last service"
    );
    let stack = format!("{}\n{}", &stack[..start], &stack[end..]);
    let socket = "      - /var/run/docker.sock:/var/run/docker.sock:ro\n";
    let Some(manager_socket) = lab.nodes[0].docker_host.strip_prefix("unix://") else {
        bail!("the manager's engine is not a unix socket");
    };
    ensure!(
        stack.matches(socket).count() == 1,
        "docker-stack.yml no longer mounts the docker socket once: update the lab's edits"
    );
    Ok(stack.replace(
        socket,
        &format!("      - {manager_socket}:/var/run/docker.sock:ro\n"),
    ))
}

/// `docker stack rm`, then waits, bounded, until no node runs a container of it.
fn remove_stack(lab: &SwarmLab) -> anyhow::Result<()> {
    let docker = lab.docker(0)?;
    cmd!(docker, "docker stack rm {STACK}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .ignore_status()
        .run()?;
    // Every swarm task's container carries this label.
    let label = "label=com.docker.swarm.task";
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut left = Vec::new();
        for (i, node) in lab.nodes.iter().enumerate() {
            let docker = lab.docker(i)?;
            let ids = cmd!(docker, "docker ps -aq --filter {label}")
                .quiet()
                .ignore_stderr()
                .read()
                .unwrap_or_default();
            if !ids.trim().is_empty() {
                left.push(format!(
                    "{}: {}",
                    node.netns,
                    ids.split_whitespace().count()
                ));
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the stack's containers were still there 90 s after `docker stack rm`: {}",
                left.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One line per task of the stack's `service` that Swarm wants running, in `format` (a
/// `docker inspect` template for tasks); empty when it has none.
fn running_tasks(docker: &Shell, service: &str, format: &str) -> anyhow::Result<String> {
    let name = format!("{STACK}_{service}");
    let ids = cmd!(
        docker,
        "docker service ps -q --filter desired-state=running {name}"
    )
    .quiet()
    .read()?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return Ok(String::new());
    }
    Ok(cmd!(
        docker,
        "docker inspect --type task --format {format} {ids...}"
    )
    .quiet()
    .read()?)
}
