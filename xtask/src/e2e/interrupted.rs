//! Scenario 5 of the zero-downtime switches: the deploying machine goes away in the middle of
//! activation, once killed (SIGKILL to the client and its ssh processes) and once cut off
//! (the sshd processes serving its connection killed). The activation unit on the server
//! finishes alone and holds the deploy lock until it ends; the new release serves, `status`
//! reports the outcome, and no request fails meanwhile. The next deploy (the no-change one
//! of `zero_downtime`) must succeed.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use xshell::{Shell, cmd};

use crate::{
    e2e::Scenario,
    harness::lab::{Lab, Release, Server, XtaskRun},
    steps::format_duration,
};

/// How the deploying machine goes away.
#[derive(Clone, Copy)]
enum Interruption {
    /// SIGKILL to the client's process group (the xtask and its ssh processes).
    KillClient,
    /// SIGKILL to the sshd processes serving the connection.
    CutConnection,
}

impl Interruption {
    fn describe(self) -> &'static str {
        match self {
            Interruption::KillClient => "client killed (SIGKILL)",
            Interruption::CutConnection => "ssh connection cut",
        }
    }
}

/// What the server's activation unit did after the interruption.
struct Finished {
    run: String,
    /// From the interruption to the unit's result.
    after: Duration,
    /// The deploy lock was held at every check while the unit ran.
    lock_checks: usize,
}

impl Scenario<'_> {
    /// Scenario 5 on `server` (current release `b`): D with the client killed, then B again
    /// with the connection cut. Returns the report lines.
    pub(super) fn interrupted(
        &mut self,
        number: &str,
        server: &Server,
        b: &Release,
        d: &Release,
    ) -> anyhow::Result<Vec<String>> {
        let compose = server.compose.name();
        let mut lines = Vec::new();
        for (release, how) in [
            (d, Interruption::KillClient),
            (b, Interruption::CutConnection),
        ] {
            let step = format!(
                "{number}. {compose}: deploy {}, {}",
                release.label,
                how.describe()
            );
            let mut finished = None;
            let (sh, lab) = (self.sh, self.lab);
            let (out, load) = self.under_load(&step, || {
                let (out, done) = interrupt(sh, lab, server, release, how)?;
                finished = Some(done);
                Ok(out)
            })?;
            let finished = finished.context("the interrupted deploy reported nothing")?;
            self.outputs.push(("zd-interrupted", out.output.clone()));
            ensure!(
                !out.ok,
                "{step}: the interrupted client exited 0:\n{}",
                out.output
            );
            if let Interruption::CutConnection = how {
                ensure!(
                    out.output.contains("lost contact with the activation of")
                        && out.output.contains("cargo xtask status"),
                    "{step}: the cut-off client does not say the activation goes on on the server:\n{}",
                    out.output
                );
            }
            ensure!(
                self.lab.revision()? == release.commit,
                "{step}: {} is not serving after its activation unit finished",
                release.label
            );
            let status = self.status(server)?;
            let expected = format!(
                "last activation: run {}, deploy of {}: ok",
                finished.run, release.tag
            );
            ensure!(
                status.contains(&expected),
                "{step}: `status` does not say `{expected}`:\n{status}"
            );
            lines.push(format!(
                "{number}. zero downtime, {compose}, deploy {} with the {}: the unit finished ok {} later, the lock held at all {} checks meanwhile, `status` reports it; {}",
                release.label,
                how.describe(),
                format_duration(finished.after),
                finished.lock_checks,
                load.summary()
            ));
        }
        Ok(lines)
    }

    /// `cargo xtask status` of the server.
    fn status(&self, server: &Server) -> anyhow::Result<String> {
        let out = self.lab.status(self.sh, server)?;
        ensure!(out.ok, "status failed:\n{}", out.output);
        Ok(out.output)
    }
}

/// Starts the deploy, interrupts it once its unit runs `start`, and waits for the unit.
fn interrupt(
    sh: &Shell,
    lab: &Lab,
    server: &Server,
    release: &Release,
    how: Interruption,
) -> anyhow::Result<(XtaskRun, Finished)> {
    let deploys = server.base.join("deploys");
    let before = units(&deploys);
    let log = lab.clone.join("../interrupted-deploy.log");
    let started = Instant::now();
    let mut child = lab.spawn_deploy(sh, server, release, &["--no-push"], &log)?;
    // The client is interrupted whatever happens next: no deploy outlives the test.
    let result = (|| {
        let journal = wait_for(
            Duration::from_secs(180),
            "its activation unit to run `start`",
            || {
                let fresh = units(&deploys)
                    .into_iter()
                    .find(|unit| !before.contains(unit));
                Ok(fresh.filter(|unit| {
                    fs::read_to_string(unit.with_extension("log"))
                        .is_ok_and(|text| text.contains("==> start"))
                }))
            },
        )?;
        match how {
            Interruption::KillClient => {
                let group = format!("-{}", child.id());
                cmd!(sh, "kill -KILL -- {group}").quiet().run()?;
            }
            Interruption::CutConnection => {
                let killed = lab.sshd.cut_connections()?;
                ensure!(killed > 0, "no sshd process served the deploy");
            }
        }
        let cut = Instant::now();
        let mut lock_checks = 0;
        let state = wait_for(Duration::from_secs(300), "the unit to end", || {
            let state = fs::read_to_string(journal.with_extension("state"))?;
            if state.contains("result=running") {
                ensure!(
                    lock_held(sh, &server.base)?,
                    "the deploy lock is free while the activation unit still runs"
                );
                lock_checks += 1;
                return Ok(None);
            }
            Ok(Some(state))
        })?;
        ensure!(
            state.contains("result=ok"),
            "the activation unit did not end ok:\n{state}\njournal:\n{}",
            fs::read_to_string(journal.with_extension("log")).unwrap_or_default()
        );
        ensure!(
            lock_checks > 0,
            "the unit ended before the lock was checked"
        );
        let run = journal
            .file_stem()
            .and_then(|name| name.to_str())
            .unwrap_or_default()
            .to_owned();
        Ok(Finished {
            run,
            after: cut.elapsed(),
            lock_checks,
        })
    })();
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    forget_ssh_dirs(sh, child.id());
    let finished = result?;
    ensure!(
        lock_free(sh, &server.base)?,
        "the deploy lock is still held after the unit ended"
    );
    let out = XtaskRun {
        ok: status.success(),
        output: fs::read_to_string(&log).unwrap_or_default(),
        elapsed: started.elapsed(),
        connections: 1,
    };
    Ok((out, finished))
}

/// What a client killed with SIGKILL could not clean up: its ssh master connection (which
/// detached itself from the process group) and its private directory.
fn forget_ssh_dirs(sh: &Shell, pid: u32) {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("tm-ssh-{pid}-")) {
            continue;
        }
        let control = format!("ControlPath={}", entry.path().join("ctl").display());
        let _ = cmd!(sh, "ssh -o {control} -O exit 127.0.0.1")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run();
        let _ = fs::remove_dir_all(entry.path());
    }
}

/// The activation units' journals (`deploys/<run>.log`) on the server, without extension.
fn units(deploys: &Path) -> Vec<PathBuf> {
    fs::read_dir(deploys)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "pid"))
                .map(|path| path.with_extension(""))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `check` every 100 ms until it returns something, at most `limit`.
fn wait_for<T>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = check()? {
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!("waited {} for {what}", format_duration(limit));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lock_free(sh: &Shell, base: &Path) -> anyhow::Result<bool> {
    let lock = base.join(".deploy.lock");
    Ok(cmd!(sh, "flock -n {lock} true")
        .quiet()
        .ignore_stderr()
        .run()
        .is_ok())
}

fn lock_held(sh: &Shell, base: &Path) -> anyhow::Result<bool> {
    lock_free(sh, base).map(|free| !free)
}
