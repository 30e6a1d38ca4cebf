//! The zero-downtime scenarios of the e2e: every kind of release switch under load through
//! Traefik (`harness/load.rs`), each with zero failed requests, under compose v2 and v1.
//!
//! They switch between releases B and D (B's files with a code change of its own) and fail
//! with C (B's files, a backend that cannot reach the database), so only the app containers
//! change: a changed Traefik or PostgreSQL is recreated in place (stop first), which is a
//! gap by design (README, "Deploying"). Per compose: a code-change deploy (B to D), a
//! rollback (D to B), a no-change deploy (B again: no container recreated) and a release that
//! fails its health gate (C: the new container is removed, B's containers were never
//! touched); between the rollback and the no-change deploy, two deploys whose client goes
//! away mid-activation (`e2e/interrupted.rs`). Under v2 the code-change deploy also holds two requests open across the switch:
//! one ends after the old backend's drain, one outlives the drain and the in-flight grace,
//! and the report says how each ended.

use std::{
    io::Read,
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use xshell::{Shell, cmd};

use crate::{
    e2e::{Data, Scenario, edit, one_connection, stack},
    harness::{
        lab::{self, Compose, Lab, Release, Server, XtaskRun, commit},
        load::{self, Load, LoadReport},
    },
    steps::format_duration,
};

/// The releases the switches go between.
pub(super) struct Releases<'a> {
    pub(super) b: &'a Release,
    pub(super) c: &'a Release,
    pub(super) d: &'a Release,
}

/// The in-flight grace of both binaries once their drain is over (`SHUTDOWN_GRACE` of the
/// `shutdown` crate): a request still running then is cut.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(8);

/// Release D: B's files and a code change of its own (C's broken database port undone), so
/// a switch between B and D changes the app containers only.
pub(super) fn build_d(sh: &Shell, lab: &Lab, b: &Release) -> anyhow::Result<Release> {
    // On B itself: the clone's HEAD is wherever the scenarios before left it.
    let dir = sh.push_dir(&lab.clone);
    let commit_b = &b.commit;
    cmd!(sh, "git checkout --quiet --detach {commit_b}").run()?;
    drop(dir);
    edit(
        &lab.clone.join("backend/src/lib.rs"),
        "pub const VERSION",
        "/// Release D of the e2e test: another code change, B's files.\n#[used]\nstatic E2E_RELEASE_D: [u8; 9] = *b\"release-d\";\n\npub const VERSION",
    )?;
    let dir = sh.push_dir(&lab.clone);
    commit(sh, "e2e: release D, a code change on B's files")?;
    drop(dir);
    lab.build(sh, "D")
}

impl Scenario<'_> {
    /// The four switches on `server`, whose current release is B or is made B first (not
    /// measured: from another release, Traefik's file changes too). Returns the report lines.
    pub(super) fn zero_downtime(
        &mut self,
        number: &str,
        server: &Server,
        releases: &Releases<'_>,
        data: &Data,
    ) -> anyhow::Result<Vec<String>> {
        let (sh, lab) = (self.sh, self.lab);
        let Releases { b, c, d } = *releases;
        let compose = server.compose.name();
        let mut lines = Vec::new();
        if lab.revision()? != b.commit {
            let out = self
                .steps
                .run(&format!("{number}. {compose}: deploy B"), || {
                    lab.deploy(sh, server, b, &["--no-push"])?
                        .expect_ok("deploy B before the switches")
                })?;
            self.outputs.push(("zd-setup-B", out.output));
        }
        // Pushed by the first code-change deploy (compose v2), found in the registry after.
        let push: &[&str] = if server.compose == Compose::V2 {
            &[]
        } else {
            &["--no-push"]
        };

        // 1. A code change: both app services switch side by side.
        let before = Ids::read(sh)?;
        let held = if server.compose == Compose::V2 {
            Some(HeldRequests::start(sh)?)
        } else {
            None
        };
        let (out, load) = self.under_load(&format!("{number}. {compose}: deploy D"), || {
            lab.deploy(sh, server, d, push)?.expect_ok("deploy D")
        })?;
        let held = held.map(HeldRequests::finish).transpose()?;
        self.check_switch("deploy D", &out, d, &before, data)?;
        lines.push(format!(
            "{number}. zero downtime, {compose}, code-change deploy B to D: {}; {}{}",
            format_duration(out.elapsed),
            load.summary(),
            held.map(|held| format!("; {held}")).unwrap_or_default()
        ));

        // 2. A rollback: the same switch back.
        let before = Ids::read(sh)?;
        let (out, load) = self.under_load(&format!("{number}. {compose}: rollback"), || {
            lab.rollback(sh, server, &[])?.expect_ok("rollback to B")
        })?;
        self.check_switch("rollback", &out, b, &before, data)?;
        lines.push(format!(
            "{number}. zero downtime, {compose}, rollback D to B: {}; {}",
            format_duration(out.elapsed),
            load.summary()
        ));

        // 5. The deploying machine killed, then cut off, mid-activation (ends on B).
        lines.extend(self.interrupted(number, server, b, d)?);

        // 3. No change: nothing is recreated; also the deploy after the interrupted ones.
        let before = Ids::read(sh)?;
        let (out, load) =
            self.under_load(&format!("{number}. {compose}: deploy B again"), || {
                lab.deploy(sh, server, b, &["--no-push"])?
                    .expect_ok("the no-change deploy of B")
            })?;
        one_connection(&out, "the no-change deploy")?;
        self.outputs.push(("zd-no-change", out.output.clone()));
        let after = Ids::read(sh)?;
        ensure!(
            after.all == before.all,
            "the no-change deploy recreated containers: {:?} before, {:?} after",
            before.all,
            after.all
        );
        lines.push(format!(
            "{number}. zero downtime, {compose}, no-change deploy of B: {}, all {} containers kept; {}",
            format_duration(out.elapsed),
            after.all.len(),
            load.summary()
        ));

        // 4. A release that never gets healthy: its container is removed, B's were never touched.
        let failing = Server {
            health_timeout: 75,
            ..server.clone()
        };
        let before = Ids::read(sh)?;
        let (out, load) = self.under_load(&format!("{number}. {compose}: deploy C"), || {
            let out = lab.deploy(sh, &failing, c, &["--no-push"])?;
            ensure!(
                !out.ok,
                "deploying C (no database) succeeded:\n{}",
                out.output
            );
            Ok(out)
        })?;
        one_connection(&out, "the failed deploy of C")?;
        self.outputs.push(("zd-deploy-C", out.output.clone()));
        for expected in [
            format!("the server is back on {}", b.tag),
            "the new release's container is not healthy".to_owned(),
            "last 40 log lines".to_owned(),
            "the running release was never touched".to_owned(),
        ] {
            ensure!(
                out.output.contains(&expected),
                "the failed deploy of C does not say `{expected}`:\n{}",
                out.output
            );
        }
        let why = out
            .output
            .lines()
            .find(|line| line.contains("the new release's container is not healthy"))
            .map(|line| line.trim().trim_start_matches("switch: ").to_owned())
            .unwrap_or_default();
        ensure!(
            lab.revision()? == b.commit,
            "B is not serving after C failed"
        );
        let after = Ids::read(sh)?;
        ensure!(
            after.all == before.all,
            "the failed deploy of C touched the running containers: {:?} before, {:?} after",
            before.all,
            after.all
        );
        stack::check_data(data.user_id)?;
        let record = server.last_record()?;
        ensure!(record["result"] == "rolled-back", "last record: {record}");
        lines.push(format!(
            "{number}. zero downtime, {compose}, deploy C (fails its health gate): exit non-zero after {} ({why}), B's containers untouched; {}",
            format_duration(out.elapsed),
            load.summary()
        ));
        Ok(lines)
    }

    /// Runs `deploy` as a timed step under load; no request may fail.
    pub(super) fn under_load(
        &mut self,
        step: &str,
        deploy: impl FnOnce() -> anyhow::Result<XtaskRun>,
    ) -> anyhow::Result<(XtaskRun, LoadReport)> {
        let load = Load {
            cookie: Some(stack::sign_in()?.cookie),
            ..Load::default()
        };
        let (out, report) = self.steps.run(step, || load::during(&load, deploy))?;
        ensure!(
            !report.cut_short,
            "{step}: the load stopped at its bound ({} requests or {} s) before the deploy ended",
            load.max_requests,
            load.max_time.as_secs()
        );
        ensure!(
            report.failed == 0,
            "{step}: {} of {} requests failed during the deploy:\n  {}\n{}",
            report.failed,
            report.sent,
            report.failures.join("\n  "),
            out.output
        );
        eprintln!("    load: {}", report.summary());
        Ok((out, report))
    }

    /// After a switch to `release`: it serves, the data is there, both app services have new
    /// containers, PostgreSQL's and Traefik's are the same.
    fn check_switch(
        &mut self,
        what: &'static str,
        out: &XtaskRun,
        release: &Release,
        before: &Ids,
        data: &Data,
    ) -> anyhow::Result<()> {
        one_connection(out, what)?;
        self.outputs.push((what, out.output.clone()));
        ensure!(
            self.lab.revision()? == release.commit,
            "{what}: the health JSON does not show {}'s revision",
            release.label
        );
        stack::check_data(data.user_id)?;
        let after = Ids::read(self.sh)?;
        for (service, old, new) in [
            ("backend", &before.backend, &after.backend),
            ("frontend", &before.frontend, &after.frontend),
        ] {
            ensure!(
                new.len() == 1 && old != new,
                "{what}: {service} went from containers {old:?} to {new:?}, expected one new container"
            );
        }
        ensure!(
            after.kept == before.kept,
            "{what}: PostgreSQL or Traefik was recreated ({:?} before, {:?} after)",
            before.kept,
            after.kept
        );
        Ok(())
    }
}

/// The project's running containers.
struct Ids {
    all: Vec<String>,
    backend: Vec<String>,
    frontend: Vec<String>,
    /// PostgreSQL's and Traefik's.
    kept: Vec<String>,
}

impl Ids {
    fn read(sh: &Shell) -> anyhow::Result<Ids> {
        let mut kept = stack::container_ids(sh, Some("postgres"))?;
        kept.extend(stack::container_ids(sh, Some("traefik"))?);
        Ok(Ids {
            all: stack::container_ids(sh, None)?,
            backend: stack::container_ids(sh, Some("backend"))?,
            frontend: stack::container_ids(sh, Some("frontend"))?,
            kept,
        })
    }
}

/// Two `POST /api/users` sent through Traefik to the running backend before a switch, their
/// bodies held back: the first is finished 2 s after the old backend's drain is over, the
/// second only after its in-flight grace too.
struct HeldRequests {
    watcher: JoinHandle<anyhow::Result<Watched>>,
    short: JoinHandle<anyhow::Result<u16>>,
    long: JoinHandle<anyhow::Result<u16>>,
}

/// What the watcher saw of the old backend.
struct Watched {
    drain: Duration,
    /// The old backend logged a 201 for `POST /users`: the first request was its.
    answered_by_old: bool,
    /// From its "shutdown requested" to the container being gone (an upper bound on its exit).
    gone_after: Option<Duration>,
}

impl HeldRequests {
    fn start(sh: &Shell) -> anyhow::Result<HeldRequests> {
        let old = stack::container_ids(sh, Some("backend"))?;
        ensure!(
            old.len() == 1,
            "expected one backend container, got {old:?}"
        );
        let old = old[0].clone();
        let format = "{{range .Config.Env}}{{println .}}{{end}}";
        let env = cmd!(sh, "docker inspect --format {format} {old}")
            .quiet()
            .read()?;
        let drain: f64 = env
            .lines()
            .find_map(|line| line.strip_prefix("SHUTDOWN_DRAIN_SECONDS="))
            .context("the backend container has no SHUTDOWN_DRAIN_SECONDS")?
            .parse()
            .context("SHUTDOWN_DRAIN_SECONDS")?;
        let drain = Duration::from_secs_f64(drain);
        let (release_short, short_rx) = mpsc::channel();
        let (release_long, long_rx) = mpsc::channel();
        // Creating a user is the admin's; the session and its CSRF token go with each POST.
        let session = stack::sign_in()?;
        let (cookie, csrf) = (session.cookie.clone(), session.csrf.clone());
        let short = std::thread::spawn(move || held_post("zd-long-1", &cookie, &csrf, short_rx));
        let (cookie, csrf) = (session.cookie, session.csrf);
        let long = std::thread::spawn(move || held_post("zd-long-2", &cookie, &csrf, long_rx));
        // Both requests reach the old backend before the deploy starts a new one.
        std::thread::sleep(Duration::from_secs(1));
        let watcher = std::thread::spawn(move || -> anyhow::Result<Watched> {
            let sh = Shell::new()?;
            let logs = |sh: &Shell| -> Option<String> {
                cmd!(sh, "docker logs {old}")
                    .quiet()
                    .ignore_status()
                    .output()
                    .ok()
                    .filter(|out| out.status.success())
                    .map(|out| {
                        format!(
                            "{}{}",
                            String::from_utf8_lossy(&out.stdout),
                            String::from_utf8_lossy(&out.stderr)
                        )
                    })
            };
            // Bounded: the deploy reaches the switch within minutes or has failed.
            let deadline = Instant::now() + Duration::from_secs(300);
            let signalled = loop {
                let text = logs(&sh).context("the old backend is gone before its drain")?;
                if text.contains("shutdown requested") {
                    break Instant::now();
                }
                ensure!(
                    Instant::now() < deadline,
                    "the old backend never got SIGTERM"
                );
                std::thread::sleep(Duration::from_millis(200));
            };
            let mut last = String::new();
            let mut gone_after = None;
            let mut released = (false, false);
            let end = signalled + drain + IN_FLIGHT_GRACE + Duration::from_secs(30);
            while Instant::now() < end {
                let since = signalled.elapsed();
                if !released.0 && since >= drain + Duration::from_secs(2) {
                    let _ = release_short.send(());
                    released.0 = true;
                }
                if !released.1 && since >= drain + IN_FLIGHT_GRACE + Duration::from_secs(4) {
                    let _ = release_long.send(());
                    released.1 = true;
                }
                match logs(&sh) {
                    Some(text) => last = text,
                    None if gone_after.is_none() => gone_after = Some(since),
                    None => {}
                }
                if released.1 && gone_after.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let answered_by_old = last.lines().any(|line| {
                serde_json::from_str::<serde_json::Value>(line).is_ok_and(|line| {
                    line["message"] == "request"
                        && line["method"] == "POST"
                        && line["route"] == "/users"
                        && line["status"] == 201
                })
            });
            Ok(Watched {
                drain,
                answered_by_old,
                gone_after,
            })
        });
        Ok(HeldRequests {
            watcher,
            short,
            long,
        })
    }

    /// Joins the threads; the first request must have been answered by the old backend.
    fn finish(self) -> anyhow::Result<String> {
        let join = |handle: JoinHandle<anyhow::Result<u16>>| {
            handle
                .join()
                .unwrap_or_else(|_| Err(anyhow::format_err!("the request thread panicked")))
        };
        let watched = self
            .watcher
            .join()
            .unwrap_or_else(|_| Err(anyhow::format_err!("the watcher thread panicked")))?;
        let short = join(self.short);
        let long = join(self.long);
        let short = short.context("the request held 2 s past the old backend's drain")?;
        ensure!(
            short == 201 && watched.answered_by_old,
            "the request held 2 s past the old backend's drain got {short} (answered by the old backend: {})",
            watched.answered_by_old
        );
        let long = match long {
            Ok(201) => "finished (201)".to_owned(),
            Ok(status) => format!("cut ({status} from Traefik)"),
            Err(err) => format!("cut ({err:#})"),
        };
        Ok(format!(
            "requests held open across the switch: one finished 2 s after the old backend's {} s drain (201 from the old backend), one held {} s past its drain + in-flight grace: {long}, the old backend gone {} after its SIGTERM (stop_grace_period 30 s)",
            watched.drain.as_secs_f64(),
            4,
            watched
                .gone_after
                .map_or("never seen".to_owned(), format_duration)
        ))
    }
}

/// `POST /api/users` through Traefik whose body stops after 10 bytes until `release`; the
/// status, or the transport error.
fn held_post(
    username: &str,
    cookie: &str,
    csrf: &str,
    release: mpsc::Receiver<()>,
) -> anyhow::Result<u16> {
    let body = format!(r#"{{"username":"{username}","email":"{username}@example.com"}}"#);
    let (first, rest) = body.as_bytes().split_at(10);
    let reader = HeldBody {
        parts: vec![first.to_vec(), rest.to_vec()],
        release: Some(release),
    };
    let tls = ureq::tls::TlsConfig::builder()
        .disable_verification(true)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(180)))
        .tls_config(tls)
        .build()
        .into();
    let url = format!("https://{}/api/users", lab::DOMAIN);
    let res = agent
        .post(&url)
        .header("Content-Type", "application/json")
        .header("Origin", format!("https://{}", lab::DOMAIN))
        .header("Cookie", cookie)
        .header("X-CSRF-Token", csrf)
        .send(ureq::SendBody::from_owned_reader(reader))
        .map_err(|err| anyhow::format_err!("POST {url}: {err}"))?;
    Ok(res.status().as_u16())
}

/// A request body sent in two parts, the second once released (bounded: 120 s).
struct HeldBody {
    parts: Vec<Vec<u8>>,
    release: Option<mpsc::Receiver<()>>,
}

impl Read for HeldBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.parts.len() == 1
            && let Some(release) = self.release.take()
        {
            release
                .recv_timeout(Duration::from_secs(120))
                .map_err(|_| std::io::Error::other("the held body was never released"))?;
        }
        let Some(part) = self.parts.first_mut() else {
            return Ok(0);
        };
        let n = part.len().min(buf.len());
        buf[..n].copy_from_slice(&part[..n]);
        part.drain(..n);
        if part.is_empty() {
            self.parts.remove(0);
        }
        Ok(n)
    }
}
