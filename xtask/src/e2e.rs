//! `cargo xtask e2e`: deploys, rolls back and breaks releases of the production stack on one
//! machine, with real parts only, all on loopback, from the lab in `harness/lab.rs`: sshd as
//! the server, an htpasswd registry, the Docker engine, and `docker-compose.prod.yml` byte for
//! byte (Traefik in front on 80/443, PostgreSQL in its named volume) with the lab's override.
//!
//! The releases are real builds of this checkout, from a scratch clone under `target/e2e/`
//! that builds in `project::clones_target_dir` (reruns are incremental, dependencies another
//! scratch clone compiled are reused; the developer's own target directory is never touched):
//!
//! - A: the working tree, committed;
//! - B: A plus a code change (another binary, another revision) and a changed Traefik
//!   configuration file (a response header), which must reach the unchanged Traefik;
//! - C: B with a backend that cannot reach the database (it connects to a wrong port and
//!   gives up after 2 s);
//! - D: B's files with another code change (`e2e/zero_downtime.rs`).
//!
//! Each deploy runs the clone's own `cargo xtask deploy`, as CI would on that commit. The
//! scenario is numbered steps, one function each, that each return their report line; a step
//! builds on the server state the previous one left, so they run in order and the first
//! failure ends the run. Steps 1 to 7 run under compose v2 (production's) with the
//! monitoring profile; step 8 deploys A under compose v1 on the same volume. Steps 7b and 8b
//! are the zero-downtime switches under load, under v2 and v1, ending with deploys whose
//! client is killed or cut off mid-activation (`e2e/interrupted.rs`).

mod data_safety;
mod interrupted;
mod probes;
mod stack;
mod swarm;
mod zero_downtime;

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use xshell::Shell;

use crate::{
    e2e::probes::{Poller, Scanner, leftover_processes, leftover_ssh_dirs},
    flags,
    harness::lab::{Compose, Lab, Release, Server, XtaskRun, commit},
    steps::{Steps, format_duration, human_bytes},
};

impl flags::E2e {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        if self.mode == Some(flags::Mode::Swarm) {
            return swarm::run(sh);
        }
        let mut steps = Steps::default();
        let mut lab = steps.run(
            "lab: engine, compose v2, stand-in images, registry, sshd",
            || Lab::start(sh),
        )?;
        lab.keep = self.keep_server_dir;
        let markers = lab.process_markers();
        let result = scenario(sh, &mut lab, &mut steps);
        if result.is_err() {
            eprintln!("sshd log ends:\n{}", lab.sshd.log_tail());
            eprintln!("the stack:\n{}", stack::state_report(sh));
        }
        // Checked while the engine still runs: it may be the lab's own, stopped with it.
        let stopped = lab.stop();
        let leftovers = leftover_processes(&markers);
        let result = result.and_then(|report| {
            stopped?;
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
fn scenario(sh: &Shell, lab: &mut Lab, steps: &mut Steps) -> anyhow::Result<String> {
    // node-exporter's `/:/host:ro,rslave` needs `/` shared, as on systemd hosts.
    let shared_root = lab.share_root(sh)?;
    let lab: &Lab = lab;
    let scanner = Scanner::start(lab.secret_values(), lab.running.clone());
    let mut run = Scenario {
        sh,
        lab,
        steps,
        outputs: Vec::new(),
        server: lab.server("timemanager", Compose::V2, true),
    };
    let mut report = vec![lab_images(lab)];
    run.steps
        .run("scratch clone: release A", || lab.prepare_clone(sh))?;
    let a = run.steps.run("build A", || lab.build(sh, "A"))?;
    let (line, data) = run.deploy_a(&a)?;
    report.push(line);
    let b = run
        .steps
        .run("build B (a code change, a Traefik header)", || {
            build_b(sh, lab)
        })?;
    report.push(run.deploy_b(&b, &data)?);
    report.push(run.rollback_to_a(&a, &data)?);
    report.push(run.restart_postgres(&data)?);
    let c = run
        .steps
        .run("build C (backend cannot reach the database)", || {
            build_c(sh, lab)
        })?;
    report.push(run.deploy_c_no_database(&a, &c, &data)?);
    report.push(run.concurrent_deploys(&b)?);
    report.extend(run.data_safety(&b)?);
    report.push(run.monitoring(&shared_root)?);
    let d = run.steps.run("build D (B's files, a code change)", || {
        zero_downtime::build_d(sh, lab, &b)
    })?;
    let switches = zero_downtime::Releases {
        b: &b,
        c: &c,
        d: &d,
    };
    let main = run.server.clone();
    report.extend(run.zero_downtime("7b", &main, &switches, &data)?);
    report.push(run.compose_v1(&a, &data)?);
    let v1 = lab.server("timemanager-v1", Compose::V1, false);
    report.extend(run.zero_downtime("8b", &v1, &switches, &data)?);
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

/// The report line of the stand-in images: built (cold) or found in the cache.
fn lab_images(lab: &Lab) -> String {
    let images: Vec<String> = lab
        .images
        .iter()
        .map(|image| {
            format!(
                "{} ({}, {})",
                image.reference,
                human_bytes(image.size_bytes),
                if image.cached {
                    "cached".to_owned()
                } else {
                    format!("built in {:.1} s", image.build_secs)
                }
            )
        })
        .collect();
    format!(
        "0. lab images in {}: {}",
        format_duration(lab.images_time),
        images.join(", ")
    )
}

/// What every later step expects to find: data written in release A, and the PostgreSQL
/// cluster (in its volume) it lives in.
struct Data {
    user_id: i64,
    cluster: String,
}

/// What the numbered steps share: the lab, the timed steps, every run's output (the last step
/// checks them for secrets), and the server of the main scenario.
struct Scenario<'a> {
    sh: &'a Shell,
    lab: &'a Lab,
    steps: &'a mut Steps,
    outputs: Vec<(&'static str, String)>,
    server: Server,
}

impl Scenario<'_> {
    /// Step 1, release A on an empty server: the edge through Traefik, data written through it
    /// into PostgreSQL's volume, .env mode.
    fn deploy_a(&mut self, a: &Release) -> anyhow::Result<(String, Data)> {
        let (sh, lab, server) = (self.sh, self.lab, &self.server);
        let out = self.steps.run("1. deploy A", || {
            lab.deploy(sh, server, a, &[])?.expect_ok("deploy A")
        })?;
        one_connection(&out, "deploy A")?;
        let figures = deploy_figures(server)?;
        self.outputs.push(("1-deploy-A", out.output.clone()));
        ensure!(
            lab.revision()? == a.commit,
            "{} does not show A's revision",
            crate::harness::lab::HEALTH_URL
        );
        let edge = self
            .steps
            .run("1. Traefik's edge", || stack::edge_checks(sh))?;
        let user_id = self
            .steps
            .run("1. data through Traefik", stack::create_data)?;
        let cluster = stack::postgres_cluster(sh)?;
        let env_file = server.base.join("releases").join(&a.tag).join(".env");
        let mode = fs::metadata(&env_file)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "{} has mode {mode:o}", env_file.display());
        let line = format!(
            "1. deploy A ({}, {}, --profile monitoring) on an empty server: {} ({figures}); {edge}; user and clock entry written through Traefik into {}; A, B, the rollbacks and C each opened exactly 1 TCP connection to sshd",
            a.tag,
            server.compose.name(),
            format_duration(out.elapsed),
            stack::POSTGRES_VOLUME,
        );
        Ok((line, Data { user_id, cluster }))
    }

    /// Step 2, release B: a real code change and a changed Traefik file, same data.
    fn deploy_b(&mut self, b: &Release, data: &Data) -> anyhow::Result<String> {
        let (sh, lab, server) = (self.sh, self.lab, &self.server);
        let rows = data_safety::fingerprint(sh)?;
        let poller = Poller::start();
        let writer = data_safety::Writer::start("writer-b");
        let out = self.steps.run("2. deploy B", || {
            lab.deploy(sh, server, b, &[])?.expect_ok("deploy B")
        })?;
        let window = poller.stop();
        let written = writer.stop()?;
        one_connection(&out, "deploy B")?;
        self.outputs.push(("2-deploy-B", out.output.clone()));
        let figures = deploy_figures(server)?;
        data_safety::check_acked(sh, "writer-b", &written)?;
        ensure!(
            data_safety::fingerprint(sh)? == rows,
            "deploy B changed rows from before it"
        );
        let record = server.last_record()?;
        ensure!(
            out.output
                .contains(&format!("1 pending: {}", data_safety::EXPAND_DESCRIPTION))
                && record["migrated"][0] == data_safety::EXPAND_DESCRIPTION
                && record["snapshot"].as_str().is_some_and(|s| {
                    s.ends_with(&format!(
                        "-{}.pgdump",
                        record["previous"].as_str().unwrap_or("?")
                    ))
                }),
            "deploy B did not snapshot and migrate its expand migration: record {record}\n{}",
            out.output
        );
        ensure!(
            lab.revision()? == b.commit,
            "the health JSON does not show B's revision"
        );
        stack::check_data(data.user_id)?;
        ensure!(
            release_header()?.as_deref() == Some("B"),
            "Traefik does not send B's `{RELEASE_HEADER}` header: a changed file of infrastructure/traefik/dynamic/ did not reach the unchanged Traefik"
        );
        let seconds = |name: &str| record["steps"][name].as_f64().unwrap_or_default();
        Ok(format!(
            "2. deploy B ({}, an expand migration): {} ({figures}; migrations {:.1} s, snapshot {:.1} s, migrate {:.1} s), health JSON not ok for {} (Traefik recreated for its changed file), data kept, {} acknowledged writes all present ({} failed requests), B's Traefik file served by the recreated Traefik",
            b.tag,
            format_duration(out.elapsed),
            seconds("migrations"),
            seconds("snapshot"),
            seconds("migrate"),
            format_duration(window.down),
            written.acked.len(),
            written.failed
        ))
    }

    /// Step 3: rollback to A.
    fn rollback_to_a(&mut self, a: &Release, data: &Data) -> anyhow::Result<String> {
        let (sh, lab, server) = (self.sh, self.lab, &self.server);
        let rows = data_safety::fingerprint(sh)?;
        let poller = Poller::start();
        let writer = data_safety::Writer::start("writer-rollback");
        let out = self.steps.run("3. rollback", || {
            lab.rollback(sh, server, &[])?.expect_ok("rollback")
        })?;
        let window = poller.stop();
        let written = writer.stop()?;
        one_connection(&out, "rollback")?;
        self.outputs.push(("3-rollback", out.output.clone()));
        // The defect this guards against: A's start-up migration refused B's newer one.
        ensure!(lab.revision()? == a.commit, "rollback did not bring A back");
        ensure!(
            out.output
                .contains("safe: the target release runs on these newer expand migrations"),
            "the rollback did not apply the rule to B's expand migration:\n{}",
            out.output
        );
        data_safety::check_acked(sh, "writer-rollback", &written)?;
        ensure!(
            data_safety::fingerprint(sh)? == rows,
            "the rollback changed rows from before it"
        );
        stack::check_data(data.user_id)?;
        ensure!(
            release_header()?.is_none(),
            "rollback left B's Traefik file in use"
        );
        Ok(format!(
            "3. rollback to A across B's expand migration (allowed by the rule; A runs on the newer schema): {}, health JSON not ok for {}, data kept, A's own Traefik file back",
            format_duration(out.elapsed),
            format_duration(window.down)
        ))
    }

    /// Step 4: PostgreSQL's container restarted; the data is in its volume, not the container.
    fn restart_postgres(&mut self, data: &Data) -> anyhow::Result<String> {
        let sh = self.sh;
        let (restart, healthy) = self.steps.run("4. restart PostgreSQL", || {
            let start = Instant::now();
            xshell::cmd!(sh, "docker restart timemanager-postgres")
                .quiet()
                .ignore_stdout()
                .run()?;
            let restart = start.elapsed();
            let healthy = stack::wait_healthy(Duration::from_secs(60))?;
            anyhow::Ok((restart, restart + healthy))
        })?;
        stack::check_data(data.user_id)?;
        let rows = stack::users_in_database(sh)?;
        ensure!(rows == 1, "psql finds {rows} rows of the e2e user");
        ensure!(
            stack::postgres_cluster(sh)? == data.cluster,
            "the database in {} is another cluster",
            stack::POSTGRES_VOLUME
        );
        Ok(format!(
            "4. `docker restart timemanager-postgres`: {}, health JSON ok again after {}; data kept, in the database (psql) and in the same cluster {} of the volume {}",
            format_duration(restart),
            format_duration(healthy),
            data.cluster,
            stack::POSTGRES_VOLUME,
        ))
    }

    /// Step 5, release C cannot reach the database: its gate fails and A serves again.
    fn deploy_c_no_database(
        &mut self,
        a: &Release,
        c: &Release,
        data: &Data,
    ) -> anyhow::Result<String> {
        let (sh, lab) = (self.sh, self.lab);
        // C's backend gives up on the database after 2 s and exits: a short gate suffices.
        let server = Server {
            health_timeout: 75,
            ..self.server.clone()
        };
        let poller = Poller::start();
        let out = self.steps.run("5. deploy C (no database)", || {
            let out = lab.deploy(sh, &server, c, &[])?;
            ensure!(
                !out.ok,
                "deploying a release whose backend cannot reach the database succeeded:\n{}",
                out.output
            );
            Ok(out)
        })?;
        let window = poller.stop();
        one_connection(&out, "the failed deploy of C")?;
        self.outputs
            .push(("5-deploy-C-no-database", out.output.clone()));
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
        let why = out
            .output
            .lines()
            .find(|line| line.contains("is not healthy"))
            .unwrap_or("(no reason printed)")
            .trim()
            .to_owned();
        ensure!(
            lab.revision()? == a.commit,
            "A is not serving after the failed deploy"
        );
        stack::check_data(data.user_id)?;
        let record = self.server.last_record()?;
        ensure!(record["result"] == "rolled-back", "last record: {record}");
        Ok(format!(
            "5. deploy C (backend cannot reach the database): exit non-zero after {} ({why}), A serving again; health JSON not ok for {}, of which {} answers were Traefik's SPA fallback with 200",
            format_duration(out.elapsed),
            format_duration(window.down),
            window.spa_fallbacks
        ))
    }

    /// Step 6: two deploys at once: the second fails fast, naming the holder.
    fn concurrent_deploys(&mut self, b: &Release) -> anyhow::Result<String> {
        let (sh, lab, server) = (self.sh, self.lab, &self.server);
        let (first, second) = self.steps.run("6. two deploys at once", || {
            let holder = server.base.join(".deploy.lock.holder");
            std::thread::scope(|scope| -> anyhow::Result<(XtaskRun, XtaskRun)> {
                let first = scope.spawn(|| {
                    let sh = Shell::new()?;
                    lab.deploy(&sh, server, b, &["--no-push"])
                });
                let deadline = Instant::now() + Duration::from_secs(60);
                while !holder.exists() && !first.is_finished() {
                    ensure!(
                        Instant::now() < deadline,
                        "the first deploy never took the lock"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
                let second = lab.deploy(sh, server, b, &["--no-push"])?;
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
        // B again converges: its migration is applied, so no snapshot and no migration.
        ensure!(
            first
                .output
                .contains("is pending: no snapshot, no migration"),
            "deploying B a second time did not find its migrations applied:\n{}",
            first.output
        );
        let line = format!(
            "6. concurrent deploys: second failed after {} naming the holder; first (B again: no migration pending, no snapshot) succeeded in {}",
            format_duration(second.elapsed),
            format_duration(first.elapsed)
        );
        self.outputs.push(("6-concurrent-first", first.output));
        self.outputs.push(("6-concurrent-second", second.output));
        Ok(line)
    }

    /// Step 7, the monitoring profile: Prometheus scrapes the backend; what has no stand-in
    /// does not run.
    fn monitoring(&mut self, shared_root: &str) -> anyhow::Result<String> {
        let sh = self.sh;
        let waited = self.steps.run("7. Prometheus scrapes the backend", || {
            let start = Instant::now();
            loop {
                let up = stack::prometheus_up(sh, "backend")?;
                if up.as_deref() == Some("1") {
                    return Ok(start.elapsed());
                }
                // One scrape interval (15 s) after B's backend started, at the latest.
                ensure!(
                    start.elapsed() < Duration::from_secs(60),
                    "Prometheus's up{{job=\"backend\"}} is {up:?} after 60 s"
                );
                std::thread::sleep(Duration::from_secs(1));
            }
        })?;
        let mut also = Vec::new();
        for job in ["prometheus", "traefik", "node"] {
            also.push(format!(
                "{job} {}",
                stack::prometheus_up(sh, job)?.unwrap_or_else(|| "absent".to_owned())
            ));
        }
        let running = stack::running_services(sh)?;
        let not_run = ["grafana", "loki", "promtail", "tempo", "postgres-backup"];
        for service in not_run {
            ensure!(
                !running.iter().any(|s| s == service),
                "{service} runs in the lab, which has no stand-in for it: {running:?}"
            );
        }
        ensure!(
            running.iter().any(|s| s == "node-exporter"),
            "node-exporter is not running: {running:?}"
        );
        Ok(format!(
            "7. monitoring profile (compose v2 with the lab's monitoring override; {shared_root}): up{{job=\"backend\"}} == 1 after {} (also up: {}); running: {}; untested: {} (not run), Prometheus 3.x and node-exporter 1.9 (Debian's 2.42 and 1.5 stand in)",
            format_duration(waited),
            also.join(", "),
            running.join(", "),
            not_run.join(", ")
        ))
    }

    /// Step 8, compose v1: the v2 stack down (its volume kept), then deploy A under
    /// `docker-compose` v1 to a second server directory; the data of step 1 is still there.
    fn compose_v1(&mut self, a: &Release, data: &Data) -> anyhow::Result<String> {
        let (sh, lab) = (self.sh, self.lab);
        let main = self.server.clone();
        let v1 = lab.server("timemanager-v1", Compose::V1, false);
        let down = self.steps.run("8. compose v2 down, volume kept", || {
            let start = Instant::now();
            lab.down(sh, &main, false)?;
            anyhow::Ok(start.elapsed())
        })?;
        ensure!(
            stack::volume_exists(sh),
            "`down` without --volumes lost {}",
            stack::POSTGRES_VOLUME
        );
        // A first v1 deploy on the volume v2 left; 8b deploys, rolls back and fails under v1.
        let out = self.steps.run("8. v1: deploy A", || {
            lab.deploy(sh, &v1, a, &["--no-push"])?
                .expect_ok("deploy A under compose v1")
        })?;
        one_connection(&out, "deploy A under v1")?;
        self.outputs.push(("8-v1-deploy-A", out.output.clone()));
        ensure!(lab.revision()? == a.commit, "compose v1 did not bring up A");
        stack::check_data(data.user_id)?;
        let made_by = stack::created_by(sh, "backend")?;
        ensure!(
            made_by.starts_with("1."),
            "the backend's container was created by compose {made_by}, not v1"
        );
        ensure!(
            stack::postgres_cluster(sh)? == data.cluster,
            "the database in {} is another cluster after the switch to compose v1",
            stack::POSTGRES_VOLUME
        );
        Ok(format!(
            "8. compose v1 (containers by compose {made_by}): v2 stack down in {}, volume kept; deploy A {}; step 1's data still there, same cluster in the same volume",
            format_duration(down),
            format_duration(out.elapsed)
        ))
    }

    /// Step 9, secrets: in no argv on the machine during any deploy (containers included), in
    /// no output, every .env 0600.
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
        let mut n_env = 0;
        for base in [
            &self.server.base,
            &lab.server("timemanager-v1", Compose::V1, false).base,
        ] {
            for entry in fs::read_dir(base.join("releases"))? {
                let env_file = entry?.path().join(".env");
                if env_file.exists() {
                    let mode = fs::metadata(&env_file)?.permissions().mode() & 0o777;
                    ensure!(mode == 0o600, "{} has mode {mode:o}", env_file.display());
                    n_env += 1;
                }
            }
        }
        Ok(format!(
            "9. secrets: {} scans of /proc/*/cmdline ({} process samples, the stack's containers included) during the deploys found none; {} outputs free of secrets (kept in {}); {n_env} .env files, all 0600",
            scan.scans,
            scan.processes,
            self.outputs.len(),
            logs.display()
        ))
    }
}

/// The header release B's Traefik configuration adds to every response of the SPA.
const RELEASE_HEADER: &str = "x-e2e-release";

fn release_header() -> anyhow::Result<Option<String>> {
    let res = crate::harness::lab::edge("GET", "https://localhost/", &[], None)?;
    ensure!(
        res.status == 200,
        "`/` through Traefik answered {}",
        res.status
    );
    Ok(res.header(RELEASE_HEADER).map(str::to_owned))
}

/// The deploy's own timings from the server's record: `up` and the health gate.
fn deploy_figures(server: &Server) -> anyhow::Result<String> {
    let record = server.last_record()?;
    let seconds = |name: &str| record["steps"][name].as_f64();
    Ok(format!(
        "pull {}, up {}, health gate {}",
        seconds("registry login and pull").map_or("-".to_owned(), |s| format!("{s:.1} s")),
        seconds("start").map_or("-".to_owned(), |s| format!("{s:.1} s")),
        seconds("health gate").map_or("-".to_owned(), |s| format!("{s:.1} s")),
    ))
}

/// Release B: A plus a new static in the backend (another binary, another revision) and a
/// response header in Traefik's security-headers middleware (a changed configuration file
/// that the unchanged Traefik must serve).
fn build_b(sh: &Shell, lab: &Lab) -> anyhow::Result<Release> {
    edit(
        &lab.clone.join("backend/src/lib.rs"),
        "pub const VERSION",
        "/// Release B of the e2e test: a code change that reaches the binary.\n#[used]\nstatic E2E_RELEASE_B: [u8; 9] = *b\"release-b\";\n\npub const VERSION",
    )?;
    edit(
        &lab.clone
            .join("infrastructure/traefik/dynamic/middlewares.yml"),
        "    security-headers:\n      headers:\n",
        "    security-headers:\n      headers:\n        customResponseHeaders:\n          X-E2E-Release: \"B\"\n",
    )?;
    data_safety::add_expand_migration(lab)?;
    let dir = sh.push_dir(&lab.clone);
    commit(sh, "e2e: release B")?;
    drop(dir);
    lab.build(sh, "B")
}

/// Release C: B with a backend that connects to a port where PostgreSQL does not listen, the
/// way a release with a wrong database setting fails. It gives up after 2 s instead of 30:
/// its container exits at once, and each of the three gates that fail it ends sooner.
fn build_c(sh: &Shell, lab: &Lab) -> anyhow::Result<Release> {
    for (file, from, to) in RELEASE_C {
        edit(&lab.clone.join(file), from, to)?;
    }
    let dir = sh.push_dir(&lab.clone);
    commit(sh, "e2e: release C, database unreachable")?;
    drop(dir);
    lab.build(sh, "C")
}

/// Release C's edits (file, from, to), for the swarm e2e's C too.
const RELEASE_C: &[(&str, &str, &str)] = &[
    (
        "backend/src/lib.rs",
        "let options = config.database.connect_options();",
        "let options = config.database.connect_options().port(5433);",
    ),
    (
        "backend/src/lib.rs",
        "const STARTUP_DB_WAIT: Duration = Duration::from_secs(30);",
        "const STARTUP_DB_WAIT: Duration = Duration::from_secs(2);",
    ),
];

/// Adds a file to the clone; it must not be there yet.
fn edit_new(path: &Path, text: &str) -> anyhow::Result<()> {
    ensure!(
        !path.exists(),
        "`{}` already exists: update the e2e's release edits",
        path.display()
    );
    fs::write(path, text).with_context(|| format!("writing `{}`", path.display()))
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

#[cfg(test)]
mod tests;
