//! `cargo xtask e2e`: deploys, rolls back and breaks releases on one machine, with real
//! parts only, all on loopback: sshd as the server (Debian's openssh-server, a generated
//! key, root), a registry with htpasswd auth (Debian's docker-registry), the Docker engine,
//! and PostgreSQL, from the lab in `harness/lab.rs`.
//!
//! The releases are real builds of this checkout, from a scratch clone whose target
//! directory persists under `target/e2e/` (reruns are incremental; the developer's own
//! target directory is never touched):
//!
//! - A: the working tree, committed;
//! - B: A plus a code change (a new static in the backend: another binary, another revision);
//! - C: B with `/health` answering 503 (a backend that fails its health check).
//!
//! Each deploy runs the clone's own `cargo xtask deploy`, as CI would on that commit. The
//! scenario is six numbered steps, one function each, that each return their report line;
//! a step builds on the server state the previous one left, so they run in order and the
//! first failure ends the run.

mod probes;

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use serde_json::Value;
use xshell::Shell;

use crate::{
    e2e::probes::{Poller, Scanner, leftover_processes, leftover_ssh_dirs},
    flags,
    harness::{
        http,
        lab::{Lab, Release, XtaskRun, commit},
    },
    steps::{Steps, format_duration},
};

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

/// The numbered steps in order, then the report.
fn scenario(sh: &Shell, lab: &Lab, steps: &mut Steps) -> anyhow::Result<String> {
    let scanner = Scanner::start(lab.secret_values(), lab.running.clone());
    let mut run = Scenario {
        sh,
        lab,
        steps,
        outputs: Vec::new(),
    };
    run.steps
        .run("scratch clone: release A", || lab.prepare_clone(sh))?;
    let a = run.steps.run("build A", || lab.build(sh, "A", None))?;
    let (deployed_a, user_id) = run.deploy_a(&a)?;
    let mut report = vec![deployed_a];
    let b = run
        .steps
        .run("build B (a code change)", || build_b(sh, lab, &a))?;
    report.push(run.deploy_b(&b, user_id)?);
    report.push(run.rollback_to_a(&a, user_id)?);
    let c = run
        .steps
        .run("build C (/health broken)", || build_c(sh, lab, &a))?;
    report.push(run.deploy_c_unhealthy(&a, &c, user_id)?);
    report.push(run.concurrent_deploys(&b)?);
    report.push(run.secrets(scanner)?);
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

/// What the numbered steps share: the lab, the timed steps, and every run's output, which
/// step 6 checks for secrets.
struct Scenario<'a> {
    sh: &'a Shell,
    lab: &'a Lab,
    steps: &'a mut Steps,
    outputs: Vec<(&'static str, String)>,
}

impl Scenario<'_> {
    /// Step 1, release A: health, data through the frontend's origin, .env mode. Also returns
    /// the user it created, which every later step expects to find.
    fn deploy_a(&mut self, a: &Release) -> anyhow::Result<(String, i64)> {
        let (sh, lab) = (self.sh, self.lab);
        let out = self.steps.run("1. deploy A", || {
            lab.deploy(sh, a, &[])?.expect_ok("deploy A")
        })?;
        one_connection(&out, "deploy A")?;
        let line = format!(
            "1. deploy A ({}): {}; A, B, the rollback and C each opened exactly 1 TCP connection to sshd",
            a.tag,
            format_duration(out.elapsed),
        );
        self.outputs.push(("1-deploy-A", out.output));
        ensure!(
            lab.revision()? == a.commit,
            "/health does not show A's revision"
        );
        let user_id = self
            .steps
            .run("1. data through the frontend's origin", || create_data(lab))?;
        let env_file = lab.base.join("releases").join(&a.tag).join(".env");
        let mode = fs::metadata(&env_file)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "{} has mode {mode:o}", env_file.display());
        ensure!(
            lab.served_marker()? == a.marker().trim(),
            "static serves {}",
            lab.served_marker()?
        );
        Ok((line, user_id))
    }

    /// Step 2, release B: a real code change, same data.
    fn deploy_b(&mut self, b: &Release, user_id: i64) -> anyhow::Result<String> {
        let (sh, lab) = (self.sh, self.lab);
        let poller = Poller::start(lab.health_url());
        let out = self.steps.run("2. deploy B", || {
            lab.deploy(sh, b, &[])?.expect_ok("deploy B")
        })?;
        let window_b = poller.stop();
        one_connection(&out, "deploy B")?;
        ensure!(
            lab.revision()? == b.commit,
            "/health does not show B's revision"
        );
        check_data(lab, user_id)?;
        ensure!(
            lab.served_marker()? == b.marker().trim(),
            "the static service still serves `{}`: a changed config file did not reach it",
            lab.served_marker()?
        );
        let line = format!(
            "2. deploy B ({}): {}, /health not 200 for {} (container recreated), data kept, changed config file reached the unchanged service",
            b.tag,
            format_duration(out.elapsed),
            format_duration(window_b)
        );
        self.outputs.push(("2-deploy-B", out.output));
        Ok(line)
    }

    /// Step 3: rollback to A.
    fn rollback_to_a(&mut self, a: &Release, user_id: i64) -> anyhow::Result<String> {
        let (sh, lab) = (self.sh, self.lab);
        let out = self
            .steps
            .run("3. rollback", || lab.rollback(sh)?.expect_ok("rollback"))?;
        one_connection(&out, "rollback")?;
        ensure!(lab.revision()? == a.commit, "rollback did not bring A back");
        check_data(lab, user_id)?;
        ensure!(
            lab.served_marker()? == a.marker().trim(),
            "rollback left B's config file in use"
        );
        let line = format!(
            "3. rollback to A: {}, data kept, A's own config file back",
            format_duration(out.elapsed)
        );
        self.outputs.push(("3-rollback", out.output));
        Ok(line)
    }

    /// Step 4, release C fails its health check: the deploy fails and A serves again.
    fn deploy_c_unhealthy(
        &mut self,
        a: &Release,
        c: &Release,
        user_id: i64,
    ) -> anyhow::Result<String> {
        let (sh, lab) = (self.sh, self.lab);
        let poller = Poller::start(lab.health_url());
        let out = self.steps.run("4. deploy C (unhealthy)", || {
            let out = lab.deploy(sh, c, &[])?;
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
        let line = format!(
            "4. deploy C (unhealthy): exit non-zero after {}, A serving again; /health not 200 for {}",
            format_duration(out.elapsed),
            format_duration(window_c)
        );
        self.outputs.push(("4-deploy-C-unhealthy", out.output));
        Ok(line)
    }

    /// Step 5: two deploys at once: the second fails fast, naming the holder.
    fn concurrent_deploys(&mut self, b: &Release) -> anyhow::Result<String> {
        let (sh, lab) = (self.sh, self.lab);
        let (first, second) = self.steps.run("5. two deploys at once", || {
            let holder = lab.base.join(".deploy.lock.holder");
            std::thread::scope(|scope| -> anyhow::Result<(XtaskRun, XtaskRun)> {
                let first = scope.spawn(|| {
                    let sh = Shell::new()?;
                    lab.deploy(&sh, b, &["--no-push"])
                });
                let deadline = Instant::now() + Duration::from_secs(60);
                while !holder.exists() && !first.is_finished() {
                    ensure!(
                        Instant::now() < deadline,
                        "the first deploy never took the lock"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
                let second = lab.deploy(sh, b, &["--no-push"])?;
                let first = first
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::format_err!("deploy thread panicked")))?;
                Ok((first, second))
            })
        })?;
        let first = first.expect_ok("the first of two concurrent deploys")?;
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
        let line = format!(
            "5. concurrent deploys: second failed after {} naming the holder; first succeeded in {}",
            format_duration(second.elapsed),
            format_duration(first.elapsed)
        );
        self.outputs.push(("5-concurrent-first", first.output));
        self.outputs.push(("5-concurrent-second", second.output));
        Ok(line)
    }

    /// Step 6, secrets: in no argv on the machine during any deploy, in no output, .env 0600.
    fn secrets(&mut self, scanner: Scanner) -> anyhow::Result<String> {
        let lab = self.lab;
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
        for (name, output) in &self.outputs {
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
        Ok(format!(
            "6. secrets: {} scans of /proc/*/cmdline ({} process samples) during the deploys found none; {} outputs free of secrets (kept in {}); every .env is 0600",
            scan.scans,
            scan.processes,
            self.outputs.len(),
            logs.display()
        ))
    }
}

/// Release B: A plus a new static in the backend (another binary, another revision); its
/// static service keeps A's image tag, so only its config file changes there.
fn build_b(sh: &Shell, lab: &Lab, a: &Release) -> anyhow::Result<Release> {
    edit(
        &lab.clone.join("backend/src/lib.rs"),
        "pub const VERSION",
        "/// Release B of the e2e test: a code change that reaches the binary.\n#[used]\nstatic E2E_RELEASE_B: [u8; 9] = *b\"release-b\";\n\npub const VERSION",
    )?;
    let dir = sh.push_dir(&lab.clone);
    commit(sh, "e2e: release B")?;
    drop(dir);
    lab.build(sh, "B", Some(&a.tag))
}

/// Release C: B with `/health` answering 503.
fn build_c(sh: &Shell, lab: &Lab, a: &Release) -> anyhow::Result<Release> {
    edit(
        &lab.clone.join("backend/src/health.rs"),
        "(StatusCode::OK, \"ok\", \"ok\")",
        "(StatusCode::SERVICE_UNAVAILABLE, \"ok\", \"ok\")",
    )?;
    let dir = sh.push_dir(&lab.clone);
    commit(sh, "e2e: release C, /health broken")?;
    drop(dir);
    lab.build(sh, "C", Some(&a.tag))
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

/// Every ssh call of a run goes through its one ControlMaster connection.
fn one_connection(out: &XtaskRun, what: &str) -> anyhow::Result<()> {
    ensure!(
        out.connections == 1,
        "{what} opened {} TCP connections to sshd, expected 1",
        out.connections
    );
    Ok(())
}

/// Creates a user and a clock entry the way the web app does from its own origin: a CORS
/// preflight, then the calls with `Origin`, each answered with that origin allowed.
fn create_data(lab: &Lab) -> anyhow::Result<i64> {
    const ALLOW_ORIGIN: &str = "access-control-allow-origin";
    let origin = lab.frontend_origin();
    let index = http::request("GET", &format!("{origin}/"), &[], None)?;
    ensure!(
        index.status == 200,
        "the frontend answered {}",
        index.status
    );
    let api = format!("http://127.0.0.1:{}", lab.backend_port);
    let preflight = http::request(
        "OPTIONS",
        &format!("{api}/users"),
        &[
            ("Origin", &origin),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        None,
    )?;
    ensure!(
        preflight.header(ALLOW_ORIGIN) == Some(origin.as_str()),
        "CORS preflight from {origin}: status {}, allow-origin {:?}",
        preflight.status,
        preflight.header(ALLOW_ORIGIN)
    );
    let user = http::request(
        "POST",
        &format!("{api}/users"),
        &[("Origin", &origin), ("Content-Type", "application/json")],
        Some(r#"{"username":"e2e-user","email":"e2e@example.com"}"#),
    )?;
    ensure!(
        user.status == 201 && user.header(ALLOW_ORIGIN) == Some(origin.as_str()),
        "creating a user: {} {}",
        user.status,
        user.text()
    );
    let id = serde_json::from_str::<Value>(&user.text())?["id"]
        .as_i64()
        .context("no user id")?;
    let entry = http::request(
        "POST",
        &format!("{api}/users/{id}/clock/in"),
        &[("Origin", &origin)],
        None,
    )?;
    ensure!(
        entry.status == 201,
        "clocking in: {} {}",
        entry.status,
        entry.text()
    );
    Ok(id)
}

fn check_data(lab: &Lab, id: i64) -> anyhow::Result<()> {
    let api = format!("http://127.0.0.1:{}", lab.backend_port);
    let user = http::request("GET", &format!("{api}/users/{id}"), &[], None)?;
    ensure!(
        user.status == 200 && user.text().contains("e2e-user"),
        "user {id} is gone: {} {}",
        user.status,
        user.text()
    );
    let status = http::request("GET", &format!("{api}/users/{id}/clock/status"), &[], None)?;
    ensure!(
        status.status == 200 && status.text().contains("\"clocked_in\":true"),
        "the clock entry is gone: {} {}",
        status.status,
        status.text()
    );
    Ok(())
}
