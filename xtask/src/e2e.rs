//! `cargo xtask e2e`: deploys, rolls back and breaks releases on one machine, with real
//! parts only, all on loopback: sshd as the server (Debian's openssh-server, a generated
//! key, root), a registry with htpasswd auth (Debian's docker-registry), the Docker engine,
//! and PostgreSQL from the harness.
//!
//! The releases are real builds of this checkout, from a scratch clone whose target
//! directory persists under `target/e2e/` (reruns are incremental; the developer's own
//! target directory is never touched):
//!
//! - A: the working tree, committed;
//! - B: A plus a code change (a new static in the backend: another binary, another revision);
//! - C: B with `/health` answering 503 (a backend that fails its health check).
//!
//! Each deploy runs the clone's own `cargo xtask deploy`, as CI would on that commit.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use xshell::{Shell, cmd};

use crate::{
    flags,
    harness::{
        docker::{self, Engine},
        postgres::{Postgres, free_port},
        registry::{Auth, Registry},
        sshd::Sshd,
    },
    project::{self, cargo},
    provision,
    steps::{Steps, format_duration},
};

/// The compose file shipped as each release's `docker-compose.prod.yml`.
pub(crate) const COMPOSE_TEMPLATE: &str = include_str!("../e2e/docker-compose.e2e.yml");

impl flags::E2e {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let mut steps = Steps::default();
        let lab = steps.run("start sshd, registry, PostgreSQL, Docker", || {
            Lab::start(sh)
        })?;
        let mut lab = lab;
        lab.keep = self.keep_server_dir;
        let markers = lab.process_markers();
        let result = scenario(sh, &lab, &mut steps);
        if result.is_err() {
            eprintln!("sshd log ends:\n{}", lab.sshd.log_tail());
        }
        drop(lab);
        let leftovers = leftover_processes(&markers);
        let result = result.and_then(|report| {
            ensure!(
                leftovers.is_empty(),
                "processes left behind:\n  {}",
                leftovers.join("\n  ")
            );
            Ok(report)
        })?;
        steps.print_summary();
        println!("{result}");
        Ok(())
    }
}

/// Everything the scenario runs against; dropping it removes the containers, images and
/// files it made and stops what it started.
pub(crate) struct Lab {
    root: PathBuf,
    base: PathBuf,
    project: String,
    backend_port: u16,
    frontend_port: u16,
    static_port: u16,
    secrets: Vec<(&'static str, String)>,
    clone: PathBuf,
    target: PathBuf,
    /// `SOURCE_DATE_EPOCH` of every build: see [`Lab::build`].
    epoch: String,
    /// Set while a deploy or rollback runs: the argv scanner looks only then.
    running: Arc<AtomicBool>,
    keep: bool,
    sshd: Sshd,
    registry: Registry,
    pg: Postgres,
    _engine: Engine,
}

/// A built release of the scratch clone.
#[derive(Debug, Clone)]
struct Release {
    label: &'static str,
    tag: String,
    commit: String,
}

/// One run of the clone's xtask.
struct Outcome {
    ok: bool,
    output: String,
    elapsed: Duration,
    connections: usize,
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
        let registry = Registry::start(
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

    fn secret_values(&self) -> Vec<String> {
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
    fn process_markers(&self) -> Vec<String> {
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

    fn health_url(&self) -> String {
        format!("http://127.0.0.1:{}/health", self.backend_port)
    }

    fn frontend_origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.frontend_port)
    }

    /// Clones the working tree and commits it as release A.
    fn prepare_clone(&self, sh: &Shell) -> anyhow::Result<()> {
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
    fn build(
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
        fs::write(dir.join("infrastructure/e2e/marker.txt"), marker(release))?;
        Ok(())
    }

    /// `cargo xtask deploy` of the clone, as CI would run it on that commit.
    fn deploy(&self, sh: &Shell, release: &Release, extra: &[&str]) -> anyhow::Result<Outcome> {
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

    fn rollback(&self, sh: &Shell) -> anyhow::Result<Outcome> {
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

    fn run_xtask(&self, sh: &Shell, args: &[String]) -> anyhow::Result<Outcome> {
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
        Ok(Outcome {
            ok: output.status.success(),
            output: text,
            elapsed,
            connections: self.sshd.connections() - before,
        })
    }

    fn revision(&self) -> anyhow::Result<String> {
        let res = http(&self.health_url(), "GET", &[], None)?;
        ensure!(res.0 == 200, "/health answered {}: {}", res.0, res.2);
        let body: Value = serde_json::from_str(&res.2).context("/health is not JSON")?;
        Ok(body["revision"].as_str().unwrap_or_default().to_owned())
    }

    fn marker(&self) -> anyhow::Result<String> {
        let url = format!("http://127.0.0.1:{}/marker.txt", self.static_port);
        let res = http(&url, "GET", &[], None)?;
        ensure!(res.0 == 200, "{url} answered {}", res.0);
        Ok(res.2.trim().to_owned())
    }

    /// The last line of the server's `releases.jsonl`.
    fn last_record(&self) -> anyhow::Result<Value> {
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

fn marker(release: &Release) -> String {
    format!("release {} ({})\n", release.label, release.tag)
}

fn commit(sh: &Shell, message: &str) -> anyhow::Result<()> {
    cmd!(
        sh,
        "git -c user.name=e2e -c user.email=e2e@localhost -c commit.gpgsign=false commit --quiet --allow-empty -a -m {message}"
    )
    .quiet()
    .run()
    .context("committing in the scratch clone")
}

/// Edits a file of the clone; the pattern must be there (the e2e must not silently test
/// an unchanged release when the code moves on).
fn edit(path: &Path, from: &str, to: &str) -> anyhow::Result<()> {
    let text = fs::read_to_string(path).with_context(|| format!("reading `{}`", path.display()))?;
    ensure!(
        text.contains(from),
        "`{}` no longer contains `{from}`: update the e2e's release edits",
        path.display()
    );
    fs::write(path, text.replacen(from, to, 1))?;
    Ok(())
}

fn scenario(sh: &Shell, lab: &Lab, steps: &mut Steps) -> anyhow::Result<String> {
    let mut report = Vec::new();
    let mut outputs = Vec::new();
    let scanner = Scanner::start(lab.secret_values(), lab.running.clone());

    steps.run("scratch clone: release A", || lab.prepare_clone(sh))?;
    let a = steps.run("build A", || lab.build(sh, "A", None))?;

    // 1. Release A: health, data through the frontend's origin, .env mode.
    let out = steps.run("1. deploy A", || {
        expect_ok(lab.deploy(sh, &a, &[])?, "deploy A")
    })?;
    one_connection(&out, "deploy A")?;
    report.push(format!(
        "1. deploy A ({}): {}; A, B, the rollback and C each opened exactly 1 TCP connection to sshd",
        a.tag,
        format_duration(out.elapsed),
    ));
    outputs.push(("1-deploy-A", out.output));
    ensure!(
        lab.revision()? == a.commit,
        "/health does not show A's revision"
    );
    let user_id = steps.run("1. data through the frontend's origin", || create_data(lab))?;
    let env_file = lab.base.join("releases").join(&a.tag).join(".env");
    let mode = fs::metadata(&env_file)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "{} has mode {mode:o}", env_file.display());
    ensure!(
        lab.marker()? == marker(&a).trim(),
        "static serves {}",
        lab.marker()?
    );

    // 2. Release B: a real code change, same data.
    let b = steps.run("build B (a code change)", || {
        edit(
            &lab.clone.join("backend/src/lib.rs"),
            "pub const VERSION",
            "/// Release B of the e2e test: a code change that reaches the binary.\n#[used]\nstatic E2E_RELEASE_B: [u8; 9] = *b\"release-b\";\n\npub const VERSION",
        )?;
        let _dir = sh.push_dir(&lab.clone);
        commit(sh, "e2e: release B")?;
        drop(_dir);
        lab.build(sh, "B", Some(&a.tag))
    })?;
    let poller = Poller::start(lab.health_url());
    let out = steps.run("2. deploy B", || {
        expect_ok(lab.deploy(sh, &b, &[])?, "deploy B")
    })?;
    let window_b = poller.stop();
    one_connection(&out, "deploy B")?;
    ensure!(
        lab.revision()? == b.commit,
        "/health does not show B's revision"
    );
    check_data(lab, user_id)?;
    ensure!(
        lab.marker()? == marker(&b).trim(),
        "the static service still serves `{}`: a changed config file did not reach it",
        lab.marker()?
    );
    report.push(format!(
        "2. deploy B ({}): {}, /health not 200 for {} (container recreated), data kept, changed config file reached the unchanged service",
        b.tag,
        format_duration(out.elapsed),
        format_duration(window_b)
    ));
    outputs.push(("2-deploy-B", out.output));

    // 3. Rollback to A.
    let out = steps.run("3. rollback", || expect_ok(lab.rollback(sh)?, "rollback"))?;
    one_connection(&out, "rollback")?;
    ensure!(lab.revision()? == a.commit, "rollback did not bring A back");
    check_data(lab, user_id)?;
    ensure!(
        lab.marker()? == marker(&a).trim(),
        "rollback left B's config file in use"
    );
    report.push(format!(
        "3. rollback to A: {}, data kept, A's own config file back",
        format_duration(out.elapsed)
    ));
    outputs.push(("3-rollback", out.output));

    // 4. Release C fails its health check: the deploy fails and A serves again.
    let c = steps.run("build C (/health broken)", || {
        edit(
            &lab.clone.join("backend/src/health.rs"),
            "(StatusCode::OK, \"ok\", \"ok\")",
            "(StatusCode::SERVICE_UNAVAILABLE, \"ok\", \"ok\")",
        )?;
        let _dir = sh.push_dir(&lab.clone);
        commit(sh, "e2e: release C, /health broken")?;
        drop(_dir);
        lab.build(sh, "C", Some(&a.tag))
    })?;
    let poller = Poller::start(lab.health_url());
    let out = steps.run("4. deploy C (unhealthy)", || {
        let out = lab.deploy(sh, &c, &[])?;
        ensure!(
            !out.ok,
            "deploying the broken release succeeded:\n{}",
            out.output
        );
        Ok(out)
    })?;
    let window_c = poller.stop();
    one_connection(&out, "the failed deploy of C")?;
    ensure!(
        out.output
            .contains(&format!("the server is back on {}", a.tag)),
        "the failed deploy does not say it went back to A:\n{}",
        out.output
    );
    ensure!(
        out.output.contains("health probe:") || out.output.contains("last 40 log lines"),
        "the failed deploy printed no logs of the failing service:\n{}",
        out.output
    );
    ensure!(
        lab.revision()? == a.commit,
        "A is not serving after the failed deploy"
    );
    check_data(lab, user_id)?;
    let record = lab.last_record()?;
    ensure!(record["result"] == "rolled-back", "last record: {record}");
    report.push(format!(
        "4. deploy C (unhealthy): exit non-zero after {}, A serving again; /health not 200 for {}",
        format_duration(out.elapsed),
        format_duration(window_c)
    ));
    outputs.push(("4-deploy-C-unhealthy", out.output));

    // 5. Two deploys at once: the second fails fast, naming the holder.
    let (first, second) = steps.run("5. two deploys at once", || {
        let holder = lab.base.join(".deploy.lock.holder");
        std::thread::scope(|scope| -> anyhow::Result<(Outcome, Outcome)> {
            let first = scope.spawn(|| {
                let sh = Shell::new()?;
                lab.deploy(&sh, &b, &["--no-push"])
            });
            let deadline = Instant::now() + Duration::from_secs(60);
            while !holder.exists() && !first.is_finished() {
                ensure!(
                    Instant::now() < deadline,
                    "the first deploy never took the lock"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            let second = lab.deploy(sh, &b, &["--no-push"])?;
            let first = first
                .join()
                .unwrap_or_else(|_| Err(anyhow::format_err!("deploy thread panicked")))?;
            Ok((first, second))
        })
    })?;
    let first = expect_ok(first, "the first of two concurrent deploys")?;
    ensure!(
        !second.ok,
        "the second concurrent deploy succeeded:\n{}",
        second.output
    );
    ensure!(
        second.output.contains("another deploy holds the lock")
            && second.output.contains(&format!("deploy of {}", b.tag)),
        "the second deploy does not name the lock holder:\n{}",
        second.output
    );
    ensure!(
        second.elapsed < Duration::from_secs(10),
        "the second deploy took {} to give up",
        format_duration(second.elapsed)
    );
    ensure!(
        lab.revision()? == b.commit,
        "B is not serving after the concurrent deploys"
    );
    report.push(format!(
        "5. concurrent deploys: second failed after {} naming the holder; first succeeded in {}",
        format_duration(second.elapsed),
        format_duration(first.elapsed)
    ));
    outputs.push(("5-concurrent-first", first.output));
    outputs.push(("5-concurrent-second", second.output));

    // 6. Secrets: in no argv on the machine during any deploy, in no output, .env 0600.
    let scan = scanner.stop();
    ensure!(
        scan.hits.is_empty(),
        "secrets seen in process argv:\n  {}",
        scan.hits.join("\n  ")
    );
    let secrets = lab.secret_values();
    // Kept for reading: what each run printed (checked free of secrets just below).
    let logs = lab.target.parent().unwrap_or(&lab.target).join("logs");
    let _ = fs::remove_dir_all(&logs);
    fs::create_dir_all(&logs)?;
    for (name, output) in &outputs {
        fs::write(logs.join(format!("{name}.log")), output)?;
        for secret in &secrets {
            ensure!(
                !output.contains(secret.as_str()),
                "the output of {name} contains a secret"
            );
        }
    }
    for entry in fs::read_dir(lab.base.join("releases"))? {
        let env_file = entry?.path().join(".env");
        if env_file.exists() {
            let mode = fs::metadata(&env_file)?.permissions().mode() & 0o777;
            ensure!(mode == 0o600, "{} has mode {mode:o}", env_file.display());
        }
    }
    report.push(format!(
        "6. secrets: {} scans of /proc/*/cmdline ({} process samples) during the deploys found none; {} outputs free of secrets (kept in {}); every .env is 0600",
        scan.scans,
        scan.processes,
        outputs.len(),
        logs.display()
    ));
    ensure!(
        leftover_ssh_dirs().is_empty(),
        "private ssh directories left: {:?}",
        leftover_ssh_dirs()
    );
    Ok(format!(
        "e2e: all scenarios passed\n  {}",
        report.join("\n  ")
    ))
}

/// Every ssh call of a run goes through its one ControlMaster connection.
fn one_connection(out: &Outcome, what: &str) -> anyhow::Result<()> {
    ensure!(
        out.connections == 1,
        "{what} opened {} TCP connections to sshd, expected 1",
        out.connections
    );
    Ok(())
}

fn expect_ok(out: Outcome, what: &str) -> anyhow::Result<Outcome> {
    ensure!(out.ok, "{what} failed:\n{}", out.output);
    Ok(out)
}

/// Creates a user and a clock entry the way the web app does from its own origin: a CORS
/// preflight, then the calls with `Origin`, each answered with that origin allowed.
fn create_data(lab: &Lab) -> anyhow::Result<i64> {
    let origin = lab.frontend_origin();
    let index = http(&format!("{origin}/"), "GET", &[], None)?;
    ensure!(index.0 == 200, "the frontend answered {}", index.0);
    let api = format!("http://127.0.0.1:{}", lab.backend_port);
    let preflight = http(
        &format!("{api}/users"),
        "OPTIONS",
        &[
            ("Origin", &origin),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        None,
    )?;
    ensure!(
        preflight.1.as_deref() == Some(origin.as_str()),
        "CORS preflight from {origin}: status {}, allow-origin {:?}",
        preflight.0,
        preflight.1
    );
    let user = http(
        &format!("{api}/users"),
        "POST",
        &[("Origin", &origin), ("Content-Type", "application/json")],
        Some(r#"{"username":"e2e-user","email":"e2e@example.com"}"#),
    )?;
    ensure!(
        user.0 == 201 && user.1.as_deref() == Some(origin.as_str()),
        "creating a user: {} {}",
        user.0,
        user.2
    );
    let id = serde_json::from_str::<Value>(&user.2)?["id"]
        .as_i64()
        .context("no user id")?;
    let entry = http(
        &format!("{api}/users/{id}/clock/in"),
        "POST",
        &[("Origin", &origin)],
        None,
    )?;
    ensure!(entry.0 == 201, "clocking in: {} {}", entry.0, entry.2);
    Ok(id)
}

fn check_data(lab: &Lab, id: i64) -> anyhow::Result<()> {
    let api = format!("http://127.0.0.1:{}", lab.backend_port);
    let user = http(&format!("{api}/users/{id}"), "GET", &[], None)?;
    ensure!(
        user.0 == 200 && user.2.contains("e2e-user"),
        "user {id} is gone: {} {}",
        user.0,
        user.2
    );
    let status = http(&format!("{api}/users/{id}/clock/status"), "GET", &[], None)?;
    ensure!(
        status.0 == 200 && status.2.contains("\"clocked_in\":true"),
        "the clock entry is gone: {} {}",
        status.0,
        status.2
    );
    Ok(())
}

/// A request: status, `access-control-allow-origin`, body.
fn http(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<(u16, Option<String>, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .allow_non_standard_methods(true)
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
    let allow = res
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = res.body_mut().read_to_string().unwrap_or_default();
    Ok((res.status().as_u16(), allow, text))
}

/// Polls `/health` every 50 ms in a bounded thread and measures the time it did not answer 200.
struct Poller {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Duration>,
}

impl Poller {
    fn start(url: String) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_millis(500)))
                .build()
                .into();
            let mut down_since: Option<Instant> = None;
            let mut longest = Duration::ZERO;
            // Bounded: a forgotten poller stops by itself.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let up = agent
                    .get(&url)
                    .call()
                    .is_ok_and(|res| res.status().as_u16() == 200);
                match (up, down_since) {
                    (false, None) => down_since = Some(Instant::now()),
                    (true, Some(since)) => {
                        longest = longest.max(since.elapsed());
                        down_since = None;
                    }
                    _ => {}
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Some(since) = down_since {
                longest = longest.max(since.elapsed());
            }
            longest
        });
        Poller { stop, handle }
    }

    /// The longest window during which `/health` did not answer 200.
    fn stop(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(Duration::MAX)
    }
}

/// Reads every process's argv over and over, looking for secret values.
struct Scanner {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<ScanReport>,
}

struct ScanReport {
    scans: usize,
    processes: usize,
    hits: Vec<String>,
}

impl Scanner {
    fn start(secrets: Vec<String>, running: Arc<AtomicBool>) -> Scanner {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let hits = Mutex::new(Vec::new());
            let processes = AtomicUsize::new(0);
            let mut scans = 0;
            let own = std::process::id().to_string();
            let deadline = Instant::now() + Duration::from_secs(3600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                if !running.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                scans += 1;
                let Ok(entries) = fs::read_dir("/proc") else {
                    break;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let Some(pid) = name
                        .to_str()
                        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                    else {
                        continue;
                    };
                    if pid == own {
                        continue;
                    }
                    let Ok(argv) = fs::read(entry.path().join("cmdline")) else {
                        continue;
                    };
                    processes.fetch_add(1, Ordering::Relaxed);
                    let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
                    for secret in &secrets {
                        if argv.contains(secret.as_str()) {
                            let shown = argv.replace(secret.as_str(), "<SECRET>");
                            let mut hits = hits
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            if hits.len() < 20 {
                                hits.push(format!("pid {pid}: {}", &shown[..shown.len().min(300)]));
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            ScanReport {
                scans,
                processes: processes.into_inner(),
                hits: hits
                    .into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            }
        });
        Scanner { stop, handle }
    }

    fn stop(self) -> ScanReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(ScanReport {
            scans: 0,
            processes: 0,
            hits: vec!["the scanner thread panicked".to_owned()],
        })
    }
}

/// Processes whose command line names something this test started.
fn leftover_processes(markers: &[String]) -> Vec<String> {
    // Daemons stop asynchronously after their TERM: give them a moment.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut found = Vec::new();
        let own = std::process::id().to_string();
        if let Ok(entries) = fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == own || !name.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let Ok(argv) = fs::read(entry.path().join("cmdline")) else {
                    continue;
                };
                let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
                if markers.iter().any(|m| argv.contains(m.as_str())) {
                    found.push(format!("pid {name}: {}", &argv[..argv.len().min(200)]));
                }
            }
        }
        if found.is_empty() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The deploy's private ssh directories (`tm-ssh-*`) of processes that no longer run.
fn leftover_ssh_dirs() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix("tm-ssh-")?.split('-').next()?.to_owned();
            (!Path::new("/proc").join(pid).exists()).then(|| entry.path())
        })
        .collect()
}

fn random_hex() -> String {
    fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect()
}

/// `cargo xtask bench deploy`: no-change deploys against the e2e lab.
pub(crate) fn bench_deploy(sh: &Shell, runs: usize, machine: &str) -> anyhow::Result<()> {
    let lab = Lab::start(sh)?;
    lab.prepare_clone(sh)?;
    let a = lab.build(sh, "A", None)?;
    eprintln!("first deploy of {} (not measured)...", a.tag);
    expect_ok(lab.deploy(sh, &a, &[])?, "the first deploy")?;
    let mut samples = Vec::new();
    for run in 0..runs.max(1) {
        eprintln!("no-change deploy {}/{runs}...", run + 1);
        let out = expect_ok(lab.deploy(sh, &a, &[])?, "a no-change deploy")?;
        let record = lab.last_record()?;
        samples.push((out.elapsed, out.connections, record["steps"].clone()));
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let step = |steps: &Value, names: &[&str]| -> f64 {
        names
            .iter()
            .filter_map(|name| steps[*name].as_f64())
            .fold(0.0, |acc, x| acc + x)
    };
    let groups: &[(&str, &[&str])] = &[
        ("build + push (no-op)", &["build and push images"]),
        (
            "ssh: connect, server preflight, lock",
            &["connect", "preflight: server", "lock"],
        ),
        (
            "upload: files, .env",
            &["upload release files", "write .env"],
        ),
        ("pull (login, pull, digests)", &["registry login and pull"]),
        ("up: switch, compose up", &["switch current", "start"]),
        ("health gate", &["health gate"]),
        ("cleanup", &["cleanup"]),
    ];
    println!("machine: {machine}; compose: docker-compose v1 on the local engine");
    println!(
        "| no-change deploy (median of {}) | seconds |",
        samples.len()
    );
    println!("|---|---|");
    let wall = median(samples.iter().map(|s| s.0.as_secs_f64()).collect());
    println!("| wall (process start to exit) | {wall:.2} |");
    let mut accounted = 0.0;
    for (label, names) in groups {
        let value = median(samples.iter().map(|s| step(&s.2, names)).collect());
        accounted += value;
        println!("| {label} | {value:.2} |");
    }
    let pull = median(
        samples
            .iter()
            .map(|s| step(&s.2, &["registry login and pull"]))
            .collect(),
    );
    let up = median(samples.iter().map(|s| step(&s.2, &["start"])).collect());
    let build = median(
        samples
            .iter()
            .map(|s| step(&s.2, &["build and push images"]))
            .collect(),
    );
    println!(
        "| other (process start, settings, the record, summary) | {:.2} |",
        (wall - accounted).max(0.0)
    );
    println!(
        "\noverhead beyond build+push, pull and container start: {:.2} s (target <= 3 s)",
        wall - pull - up - build
    );
    let connections: Vec<usize> = samples.iter().map(|s| s.1).collect();
    println!("TCP connections to sshd per deploy: {connections:?} (target: 1)");
    Ok(())
}
