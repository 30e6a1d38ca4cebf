//! The deploy as data: every remote script and upload is built before anything runs, so
//! `--dry-run` prints exactly what would run (secrets masked) and tests check it offline.

use std::{fmt::Write as _, time::Duration};

use crate::deploy::{
    health::Reach,
    scripts::{ImageLine, Script, ServerScripts},
    settings::{self, Credentials, OWN_SERVICES, ReleaseSettings},
    upload::Upload,
};

/// One named, timed step of a deploy.
#[derive(Debug)]
pub(crate) struct Step {
    pub(crate) name: String,
    pub(crate) action: Action,
}

#[derive(Debug)]
pub(crate) enum Action {
    /// Runs here, not on the server (described for `--dry-run`).
    Local(Local),
    /// A script run on the server.
    Remote(Script),
    /// A script that takes the server's deploy lock and holds it until this run ends.
    Lock(Script),
    /// Polls the services' container health on the server and the health URL from here.
    HealthGate { gate: Gate, revision: Revision },
    /// Appends the JSON line of this run to `releases.jsonl` and marks the release's result:
    /// built when it runs, from the steps before it.
    Record { kind: &'static str, tag: String },
    /// Reads the release's migrations and the database's (`migration_state.sh`): a deploy
    /// learns which are pending, a rollback applies the rollback rule and stops if refused.
    Migrations {
        script: Script,
        check: MigrationCheck,
    },
    /// Runs only when the migrations step found pending migrations (and, with
    /// `needs_database`, a database to dump).
    IfPending {
        script: Script,
        needs_database: bool,
    },
    /// Restores a snapshot (`restore.sh`) and prints what the restore removed.
    Restore(Script),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MigrationCheck {
    /// A deploy: which of the release's migrations are pending.
    Pending,
    /// A rollback: may the target release run on the database's schema?
    Rollback { target: String },
}

#[derive(Debug, Clone)]
pub(crate) enum Local {
    /// `image::build` then push both images under the tag.
    BuildAndPush(Images),
    /// The tag's manifests exist in the registry (with `--no-push`).
    CheckRegistry(Images),
    /// Opens the one ssh connection (ControlMaster) all later steps share.
    Connect,
}

/// The images of a deploy: where they are pushed, or checked with `--no-push`.
#[derive(Debug, Clone)]
pub(crate) struct Images {
    /// `ghcr.io`, or a test registry's `127.0.0.1:PORT`.
    pub(crate) registry: String,
    /// `owner/repo`: the images are `REGISTRY/owner/repo/SERVICE:TAG`.
    pub(crate) repository: String,
    pub(crate) tag: String,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) insecure_registries: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Gate {
    pub(crate) services: Vec<String>,
    pub(crate) url: String,
    pub(crate) timeout: Duration,
    pub(crate) reach: Reach,
}

/// The revision the backend's health JSON must report (its `revision` is the full commit, a
/// release's tag the short one); a tag that is not a commit leaves only `"status":"ok"`.
#[derive(Debug, Clone)]
pub(crate) enum Revision {
    /// The release being activated.
    Of(String),
    /// The release that was current before this run's switch, known once the switch ran.
    Previous,
}

/// The steps of a deploy or rollback, by phase.
#[derive(Debug)]
pub(crate) struct Plan {
    /// `deploy` or `rollback`, as the record and the messages name it.
    pub(crate) kind: &'static str,
    /// The release that becomes current.
    pub(crate) tag: String,
    /// Shown once by `--dry-run`: every remote script starts with it.
    pub(crate) prelude: String,
    /// Before the switch: a failure here changes nothing that runs.
    pub(crate) prepare: Vec<Step>,
    /// Switch `current`, start, health gate: a failure here triggers `fall_back`.
    pub(crate) activate: Vec<Step>,
    /// Back to the release that was current before, health-gated the same way.
    pub(crate) fall_back: Vec<Step>,
    /// After a healthy activation only; a failure here is a warning, never a failed deploy.
    pub(crate) after_success: Vec<Step>,
    /// Always, once the lock is held: the record of this run (written by the unit when
    /// activation runs on the server).
    pub(crate) finish: Vec<Step>,
    /// Activate, fall back, after success and the record run on the server as one detached
    /// unit that holds the lock (`activation`); else step by step from here (swarm mode,
    /// where the swarm's own rolling update is the server-side part).
    pub(crate) on_server: bool,
}

impl Plan {
    /// The `--dry-run` listing.
    pub(crate) fn describe(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Every remote script is sent over ssh's stdin to `bash -s` and starts with:\n"
        );
        out.push_str(&indent(&self.prelude));
        let mut n = 0;
        let (activate, finish) = if self.on_server {
            (
                "activate, on the server: the deploying machine writes the next steps as files to deploys/<run id>/ and starts them as one unit detached from ssh (systemd-run, else setsid), hands it the lock, and streams its journal deploys/<run id>.log; the unit holds the lock until it ends, and finishes even if the connection dies",
                "finish, by the unit (by the deploying machine when a prepare step failed); then the lock is released",
            )
        } else {
            (
                "activate",
                "finish (then the lock's session ends, which releases it)",
            )
        };
        for (title, steps) in [
            ("prepare (nothing running changes)", &self.prepare),
            (activate, &self.activate),
            (
                "only if activation fails: back to the previous release",
                &self.fall_back,
            ),
            (
                "after a healthy activation (best effort, never fails the deploy)",
                &self.after_success,
            ),
            (finish, &self.finish),
        ] {
            if steps.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n## {title}");
            for step in steps {
                n += 1;
                let _ = writeln!(out, "\n{n}. {}", step.name);
                let text = describe_action(&step.action);
                // Scripts start with the prelude shown above: print only what follows it.
                let text = match text.find(&self.prelude) {
                    Some(at) if !self.prelude.is_empty() => {
                        format!(
                            "{}(prelude)\n{}",
                            &text[..at],
                            &text[at + self.prelude.len()..]
                        )
                    }
                    _ => text,
                };
                out.push_str(&indent(&text));
            }
        }
        out
    }
}

fn describe_action(action: &Action) -> String {
    match action {
        Action::Local(Local::BuildAndPush(_)) => {
            "(local) `cargo xtask build`, then push both images under the tag (the registry skips blobs it has)\n".to_owned()
        }
        Action::Local(Local::CheckRegistry(_)) => {
            "(local) check that the registry has a manifest for each image under the tag\n"
                .to_owned()
        }
        Action::Local(Local::Connect) => {
            "(local) ssh -M: one connection, shared by every later step through a private control socket\n".to_owned()
        }
        Action::Remote(script) => script.masked(),
        Action::Lock(script) => format!(
            "(held by its own ssh session until the run ends; it dies with the connection)\n{}",
            script.masked()
        ),
        Action::HealthGate { gate, revision } => format!(
            "(poll for at most {} s) containers of {} running and healthy (docker inspect, found by compose labels), and GET {}{} answering 200 with the backend's health JSON: \"status\":\"ok\", {}\n",
            gate.timeout.as_secs(),
            gate.services.join(", "),
            if gate.url.is_empty() { "<no health URL>" } else { &gate.url },
            gate.reach.describe(),
            match revision {
                Revision::Of(tag) if settings::is_commit_tag(tag) =>
                    format!("\"revision\" starting with {tag}"),
                Revision::Of(tag) => format!("any \"revision\" ({tag} is not a commit)"),
                Revision::Previous =>
                    "\"revision\" starting with the previous release's tag (when it is a commit)".to_owned(),
            }
        ),
        Action::Record { .. } => {
            "append {time, tag, kind, result, previous, digests, by, step durations, snapshot, migrated} as one line to releases.jsonl; mark the release ok or failed\n".to_owned()
        }
        Action::Migrations { script, check } => format!(
            "{}\n{}",
            match check {
                MigrationCheck::Pending => "(read only) the release's migrations against _sqlx_migrations: the pending ones are printed, and decide the next two steps",
                MigrationCheck::Rollback { .. } => "(read only) the rule: stop unless every applied migration the target does not know is `expand` (then it runs on the newer schema); a `contract` one names the snapshot to restore with --restore",
            },
            script.masked()
        ),
        Action::IfPending { script, needs_database } => format!(
            "(only if migrations are pending{})\n{}",
            if *needs_database { " and a database exists" } else { "" },
            script.masked()
        ),
        Action::Restore(script) => format!(
            "(stops backend and frontend until the release starts; prints the rows per table it removed)\n{}",
            script.masked()
        ),
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| {
            if line.is_empty() {
                "\n".to_owned()
            } else {
                format!("    {line}\n")
            }
        })
        .collect()
}

/// How a deploy runs, besides what it ships.
pub(crate) struct DeployOptions<'a> {
    /// Build and push (else only check the registry has the tag).
    pub(crate) push: bool,
    pub(crate) insecure_registries: &'a [String],
    /// Who holds the lock, for its holder file.
    pub(crate) holder: &'a str,
    /// Snapshots kept on the server.
    pub(crate) keep_snapshots: usize,
}

/// The whole deploy, as data.
pub(crate) fn deploy_plan(
    scripts: &ServerScripts,
    release: &ReleaseSettings,
    upload: &Upload,
    gate: &Gate,
    options: &DeployOptions<'_>,
) -> Plan {
    let tag = &release.tag;
    let lines = image_lines(release);
    let images = images_step(release, options);
    Plan {
        kind: "deploy",
        tag: tag.clone(),
        prelude: scripts.prelude(),
        prepare: vec![
            images,
            step("connect", Action::Local(Local::Connect)),
            step("preflight: server", Action::Remote(scripts.probe())),
            step("lock", Action::Lock(scripts.lock(options.holder))),
            step(
                "upload release files",
                Action::Remote(scripts.upload(tag, upload)),
            ),
            step(
                "write .env",
                Action::Remote(scripts.write_env(tag, &release.env, &release.profiles)),
            ),
            step(
                "registry login and pull",
                Action::Remote(scripts.pull(
                    tag,
                    &release.registry,
                    release.credentials.as_ref(),
                    &lines,
                )),
            ),
            step(
                "migrations",
                Action::Migrations {
                    script: scripts.migration_state(tag),
                    check: MigrationCheck::Pending,
                },
            ),
            step(
                "snapshot",
                Action::IfPending {
                    script: scripts.snapshot(options.keep_snapshots),
                    needs_database: true,
                },
            ),
            step(
                "migrate",
                Action::IfPending {
                    script: scripts.migrate(tag),
                    needs_database: false,
                },
            ),
        ],
        activate: activation(scripts, tag, &release.profiles, gate),
        fall_back: fall_back(scripts, tag, gate),
        after_success: vec![step("cleanup", Action::Remote(scripts.cleanup()))],
        finish: vec![record("deploy", tag)],
        on_server: true,
    }
}

/// The release's own images, as the pull steps check them.
pub(crate) fn image_lines(release: &ReleaseSettings) -> Vec<ImageLine> {
    OWN_SERVICES
        .iter()
        .map(|service| ImageLine {
            service: (*service).to_owned(),
            reference: release.image_ref(service),
            repository: release.repository_of(service),
        })
        .collect()
}

/// The first step of a deploy: build and push the images, or with `--no-push` check that the
/// registry has them.
pub(crate) fn images_step(release: &ReleaseSettings, options: &DeployOptions<'_>) -> Step {
    let images = Images {
        registry: release.registry.clone(),
        repository: release.repository.clone(),
        tag: release.tag.clone(),
        credentials: release.credentials.clone(),
        insecure_registries: options.insecure_registries.to_vec(),
    };
    if options.push {
        step(
            "build and push images",
            Action::Local(Local::BuildAndPush(images)),
        )
    } else {
        step(
            "preflight: images in the registry",
            Action::Local(Local::CheckRegistry(images)),
        )
    }
}

/// A rollback to `tag`, a release the server still has: checked against the database's
/// schema by the rollback rule, or, with `restore`, onto that snapshot's data.
pub(crate) fn rollback_plan(
    scripts: &ServerScripts,
    tag: &str,
    ensure_images: Script,
    gate: &Gate,
    restore: Option<&str>,
) -> Plan {
    let schema = match restore {
        None => step(
            "migrations",
            Action::Migrations {
                script: scripts.migration_state(tag),
                check: MigrationCheck::Rollback {
                    target: tag.to_owned(),
                },
            },
        ),
        Some(snapshot) => step(
            &format!("restore {snapshot}"),
            Action::Restore(scripts.restore(snapshot, OWN_SERVICES)),
        ),
    };
    Plan {
        kind: "rollback",
        tag: tag.to_owned(),
        prelude: scripts.prelude(),
        prepare: vec![
            step("images of the release", Action::Remote(ensure_images)),
            schema,
        ],
        activate: activation(scripts, tag, &[], gate),
        fall_back: fall_back(scripts, tag, gate),
        after_success: Vec::new(),
        finish: vec![record("rollback", tag)],
        on_server: true,
    }
}

fn activation(scripts: &ServerScripts, tag: &str, profiles: &[String], gate: &Gate) -> Vec<Step> {
    vec![
        step("switch current", Action::Remote(scripts.switch(tag))),
        step(
            "start",
            Action::Remote(scripts.start(profiles, gate.timeout)),
        ),
        step("health gate", Action::Remote(scripts.gate(gate))),
    ]
}

/// The gate reads the release to check from `current`, so the same script checks the
/// previous release after `switch back`.
fn fall_back(scripts: &ServerScripts, tag: &str, gate: &Gate) -> Vec<Step> {
    vec![
        step(
            "logs of the failing services",
            Action::Remote(scripts.failing_logs(&gate.services, 40)),
        ),
        step("switch back", Action::Remote(scripts.switch_back(tag))),
        // The previous release's own `.env` says which profiles it ran with.
        step(
            "start the previous release",
            Action::Remote(scripts.start(&[], gate.timeout)),
        ),
        step(
            "health gate (previous release)",
            Action::Remote(scripts.gate(gate)),
        ),
    ]
}

fn record(kind: &'static str, tag: &str) -> Step {
    step(
        "record",
        Action::Record {
            kind,
            tag: tag.to_owned(),
        },
    )
}

pub(crate) fn step(name: &str, action: Action) -> Step {
    Step {
        name: name.to_owned(),
        action,
    }
}
