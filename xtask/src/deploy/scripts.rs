//! The bash scripts the server runs: one file per step in `scripts/`, sent to `bash -s` over
//! ssh's stdin, so no value, secret or not, is ever in an argument list on either machine.
//!
//! Rust only prepends what a file reads: `name=value` lines, each value quoted (`quote`) or
//! validated before, and bulk data or secrets as functions that print a quoted here-document
//! with a per-run delimiter. Bash reads a script from a pipe one byte at a time and runs
//! `main` only once the whole body has arrived, so a cut connection never runs half a step;
//! `main </dev/null` keeps commands from eating the rest of the script.
//!
//! What a script prints for the deploying machine is parsed next to it: [`parse_facts`] here,
//! `releases::parse_releases` and `health::parse_states` with their scripts.

use std::{fmt::Write as _, time::Duration};

use crate::deploy::{
    compose::{STOP_GRACE_SECONDS, SWITCH_SETTLE_SECONDS, SWITCHED_SERVICES},
    secrets::Secret,
    settings::{ComposeChoice, Credentials, EnvLine, EnvValue, Target},
    upload::{OVERRIDE_FILE, Upload},
};

/// Variables and helpers every script starts with (after `base`, `project` and `run_id`).
const PRELUDE: &str = include_str!("scripts/prelude.sh");
const PROBE: &str = include_str!("scripts/probe.sh");
const LOCK: &str = include_str!("scripts/lock.sh");
const UPLOAD: &str = include_str!("scripts/upload.sh");
const WRITE_ENV: &str = include_str!("scripts/write_env.sh");
const REGISTRY_LOGIN: &str = include_str!("scripts/registry_login.sh");
const PULL: &str = include_str!("scripts/pull.sh");
const SWITCH: &str = include_str!("scripts/switch.sh");
const SWITCH_BACK: &str = include_str!("scripts/switch_back.sh");
const START: &str = include_str!("scripts/start.sh");
const SWITCH_SERVICES: &str = include_str!("scripts/switch_services.sh");
pub(crate) const CONTAINER_STATES: &str = include_str!("scripts/container_states.sh");
const FAILING_LOGS: &str = include_str!("scripts/failing_logs.sh");
const RECORD: &str = include_str!("scripts/record.sh");
const CLEANUP: &str = include_str!("scripts/cleanup.sh");
pub(crate) const LIST_RELEASES: &str = include_str!("scripts/list_releases.sh");
const STATUS: &str = include_str!("scripts/status.sh");
const LOGS: &str = include_str!("scripts/logs.sh");
const ENSURE_IMAGES: &str = include_str!("scripts/ensure_images.sh");
const SERVER_SETUP: &str = include_str!("scripts/server_setup.sh");
/// Helpers of the database steps, put before their files.
const DB: &str = include_str!("scripts/db.sh");
const MIGRATION_STATE: &str = include_str!("scripts/migration_state.sh");
const DATABASE_STATE: &str = include_str!("scripts/database_state.sh");
const SNAPSHOT: &str = include_str!("scripts/snapshot.sh");
const MIGRATE: &str = include_str!("scripts/migrate.sh");
const LIST_SNAPSHOTS: &str = include_str!("scripts/list_snapshots.sh");
const RESTORE: &str = include_str!("scripts/restore.sh");
const CREATE_ADMIN: &str = include_str!("scripts/create_admin.sh");
pub(crate) const GATE: &str = include_str!("scripts/gate.sh");
pub(crate) const LAUNCH: &str = include_str!("scripts/launch.sh");
pub(crate) const ACTIVATE: &str = include_str!("scripts/activate.sh");
pub(crate) const FOLLOW: &str = include_str!("scripts/follow.sh");

/// Every script file, for the shellcheck test.
#[cfg(test)]
pub(crate) const FILES: &[(&str, &str)] = &[
    ("prelude.sh", PRELUDE),
    ("probe.sh", PROBE),
    ("lock.sh", LOCK),
    ("upload.sh", UPLOAD),
    ("write_env.sh", WRITE_ENV),
    ("registry_login.sh", REGISTRY_LOGIN),
    ("pull.sh", PULL),
    ("switch.sh", SWITCH),
    ("switch_back.sh", SWITCH_BACK),
    ("start.sh", START),
    ("switch_services.sh", SWITCH_SERVICES),
    ("container_states.sh", CONTAINER_STATES),
    ("failing_logs.sh", FAILING_LOGS),
    ("record.sh", RECORD),
    ("cleanup.sh", CLEANUP),
    ("list_releases.sh", LIST_RELEASES),
    ("status.sh", STATUS),
    ("logs.sh", LOGS),
    ("ensure_images.sh", ENSURE_IMAGES),
    ("server_setup.sh", SERVER_SETUP),
    ("db.sh", DB),
    ("migration_state.sh", MIGRATION_STATE),
    ("database_state.sh", DATABASE_STATE),
    ("snapshot.sh", SNAPSHOT),
    ("migrate.sh", MIGRATE),
    ("list_snapshots.sh", LIST_SNAPSHOTS),
    ("restore.sh", RESTORE),
    ("create_admin.sh", CREATE_ADMIN),
    ("gate.sh", GATE),
    ("launch.sh", LAUNCH),
    ("activate.sh", ACTIVATE),
    ("follow.sh", FOLLOW),
];

/// How long a deploy waits for another run's activation unit to end before giving up, and
/// how long a unit waits for its deploying machine to hand over the lock.
pub(crate) const LOCK_WAIT_SECONDS: u64 = 600;

/// Releases kept by cleanup (besides the current one and any a container still mounts).
pub(crate) const KEEP_RELEASES: usize = 5;

/// A bash script for the server, sent over ssh's stdin (never as an argument).
#[derive(Debug, Default, Clone)]
pub(crate) struct Script {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    /// A secret value, only ever inside a quoted here-document.
    Secret {
        name: String,
        value: Secret,
    },
    /// Bulk data such as a base64 tar archive, summarised when printed.
    Data {
        summary: String,
        text: String,
    },
}

impl Script {
    pub(crate) fn new() -> Script {
        Script::default()
    }

    pub(crate) fn text(&mut self, text: impl AsRef<str>) -> &mut Script {
        match self.parts.last_mut() {
            Some(Part::Text(last)) => last.push_str(text.as_ref()),
            _ => self.parts.push(Part::Text(text.as_ref().to_owned())),
        }
        self
    }

    pub(crate) fn line(&mut self, text: impl AsRef<str>) -> &mut Script {
        self.text(text).text("\n")
    }

    pub(crate) fn secret(&mut self, name: &str, value: &Secret) -> &mut Script {
        self.parts.push(Part::Secret {
            name: name.to_owned(),
            value: value.clone(),
        });
        self
    }

    pub(crate) fn data(&mut self, summary: String, text: String) -> &mut Script {
        self.parts.push(Part::Data { summary, text });
        self
    }

    pub(crate) fn append(&mut self, other: &Script) -> &mut Script {
        for part in &other.parts {
            match part {
                Part::Text(text) => {
                    self.text(text);
                }
                other => self.parts.push(other.clone()),
            }
        }
        self
    }

    #[cfg(test)]
    pub(crate) fn has_secrets(&self) -> bool {
        self.parts
            .iter()
            .any(|part| matches!(part, Part::Secret { .. }))
    }

    /// The script as the server receives it.
    pub(crate) fn render(&self) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Text(text) | Part::Data { text, .. } => text.as_str(),
                Part::Secret { value, .. } => value.expose(),
            })
            .collect()
    }

    /// The script as people see it: secrets and bulk data replaced by placeholders.
    pub(crate) fn masked(&self) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Secret { name, .. } => {
                    let _ = write!(out, "<secret {name}>");
                }
                Part::Data { summary, .. } => {
                    let _ = writeln!(out, "<{summary}>");
                }
            }
        }
        out
    }
}

impl Script {
    /// `name=value`, the value quoted for bash.
    pub(crate) fn value(&mut self, name: &str, value: &str) -> &mut Script {
        self.line(format!("{name}={}", quote(value)))
    }

    /// `name=(value...)`, a bash array of quoted values.
    pub(crate) fn array<S: AsRef<str>>(&mut self, name: &str, values: &[S]) -> &mut Script {
        let quoted: Vec<String> = values.iter().map(|v| quote(v.as_ref())).collect();
        self.line(format!("{name}=({})", quoted.join(" ")))
    }

    /// `name() { cat <<'DELIMITER' ... }`: a function that prints the here-document `fill`
    /// writes, quoted so bash expands nothing in it.
    pub(crate) fn heredoc(
        &mut self,
        name: &str,
        delimiter: &str,
        fill: impl FnOnce(&mut Script),
    ) -> &mut Script {
        self.line(format!("{name}() {{"))
            .line(format!("  cat <<'{delimiter}'"));
        fill(self);
        self.line(delimiter).line("}")
    }
}

/// Where the scripts act, and which run they belong to: makes every script of one run.
#[derive(Debug, Clone)]
pub(crate) struct ServerScripts {
    pub(crate) base: String,
    pub(crate) project: String,
    /// Written into the lock's holder file; mutating steps check it is still there.
    pub(crate) run_id: String,
    pub(crate) compose: ComposeChoice,
}

impl ServerScripts {
    /// The scripts of one run against `target`.
    pub(crate) fn new(target: &Target, run_id: String) -> ServerScripts {
        ServerScripts {
            base: target.base.clone(),
            project: target.project.clone(),
            run_id,
            compose: target.compose,
        }
    }

    /// For commands that only read: no run id, no lock.
    pub(crate) fn read_only(target: &Target) -> ServerScripts {
        ServerScripts::new(target, "read-only".to_owned())
    }

    /// Variables and helpers shared by every script.
    pub(crate) fn prelude(&self) -> String {
        let mut out = format!(
            "set -euo pipefail\numask 022\nbase={}\nproject={}\nrun_id={}\n",
            quote(&self.base),
            quote(&self.project),
            quote(&self.run_id)
        );
        match self.compose {
            ComposeChoice::Detect => {}
            ComposeChoice::V1 => out.push_str("compose_choice=v1\n"),
            ComposeChoice::V2 => out.push_str("compose_choice=v2\n"),
        }
        out.push_str(PRELUDE);
        out
    }

    /// `prelude`, then `values` and `file` as the function `main`; `guard` first in `main`
    /// for steps that change the server.
    pub(crate) fn wrap(&self, values: &Script, file: &str, guard: bool) -> Script {
        self.wrap_with_stdin(values, file, guard, false)
    }

    fn wrap_with_stdin(
        &self,
        values: &Script,
        file: &str,
        guard: bool,
        keep_stdin: bool,
    ) -> Script {
        let mut script = Script::new();
        script.text(self.prelude()).line("main() {");
        if guard {
            script.line("guard");
        }
        script.append(values).text(file).line("}");
        script.line(if keep_stdin {
            "main"
        } else {
            "main </dev/null"
        });
        script
    }

    pub(crate) fn delimiter(&self) -> String {
        format!("TM_EOF_{}", self.run_id.replace('-', "_"))
    }

    /// Read-only facts: Docker, compose, tools, the current release.
    pub(crate) fn probe(&self) -> Script {
        self.wrap(&Script::new(), PROBE, false)
    }

    /// Takes the lock and holds it while this ssh session's stdin stays open; waits (and
    /// says so) while another run's activation unit is alive.
    pub(crate) fn lock(&self, holder: &str) -> Script {
        let mut values = Script::new();
        values
            .value("lock_holder", holder)
            .value("lock_wait", &LOCK_WAIT_SECONDS.to_string());
        self.wrap_with_stdin(&values, LOCK, false, true)
    }

    /// Unpacks the compose file and `infrastructure/` into `releases/<tag>/`, through a
    /// staging directory; an existing release with the same tag must have the same files.
    pub(crate) fn upload(&self, tag: &str, upload: &Upload) -> Script {
        let mut values = Script::new();
        values.value("tag", tag).heredoc("upload_tar", &self.delimiter(), |s| {
            s.data(
                format!(
                    "base64 of a tar of docker-compose.prod.yml{} and infrastructure/: {} files, {} bytes",
                    if upload.has_override {
                        format!(", {OVERRIDE_FILE} (a lab's override)")
                    } else {
                        String::new()
                    },
                    upload.n_files,
                    upload.tar.len()
                ),
                base64(&upload.tar),
            );
        });
        self.wrap(&values, UPLOAD, true)
    }

    /// Writes the release's `.env`: umask 077, a temporary file, then a rename.
    pub(crate) fn write_env(&self, tag: &str, env: &[EnvLine], profiles: &[String]) -> Script {
        let mut values = Script::new();
        values
            .value("tag", tag)
            .value(
                "n_variables",
                &(env.len() + usize::from(!profiles.is_empty())).to_string(),
            )
            .heredoc("env_file", &self.delimiter(), |s| {
                for line in env {
                    s.text(format!("{}='", line.name));
                    match &line.value {
                        EnvValue::Plain(value) => s.text(value),
                        EnvValue::Secret(secret) => s.secret(line.name, secret),
                    };
                    s.line("'");
                }
                if !profiles.is_empty() {
                    // Compose reads its own settings from `.env` too: a rollback to this
                    // release, or an operator's `docker compose up` in the base directory,
                    // gets the same profiles.
                    s.line(format!("COMPOSE_PROFILES='{}'", profiles.join(",")));
                }
            });
        self.wrap(&values, WRITE_ENV, true)
    }

    /// `registry`, `registry_user` and the password's here-document, then `registry_login`.
    pub(crate) fn registry_values(
        &self,
        values: &mut Script,
        registry: &str,
        credentials: Option<&Credentials>,
    ) {
        values.value("registry", registry);
        match credentials {
            Some(credentials) => {
                values
                    .value("registry_user", &credentials.username)
                    .heredoc("registry_password", &self.delimiter(), |s| {
                        s.secret("registry password", &credentials.secret).line("");
                    });
            }
            None => {
                values.value("registry_user", "");
            }
        }
        values.text(REGISTRY_LOGIN);
    }

    /// `docker login --password-stdin`, pull this repository's images, check their digests,
    /// write `releases/<tag>/images`, log out.
    pub(crate) fn pull(
        &self,
        tag: &str,
        registry: &str,
        credentials: Option<&Credentials>,
        images: &[ImageLine],
    ) -> Script {
        self.pull_with(PULL, tag, registry, credentials, images)
    }

    /// `body` (compose mode's or swarm mode's pull) with the images' columns and the
    /// registry login's values.
    pub(crate) fn pull_with(
        &self,
        body: &str,
        tag: &str,
        registry: &str,
        credentials: Option<&Credentials>,
        images: &[ImageLine],
    ) -> Script {
        let mut values = Script::new();
        values.value("tag", tag);
        let column = |f: fn(&ImageLine) -> &str| images.iter().map(f).collect::<Vec<_>>();
        values
            .array("services", &column(|i| &i.service))
            .array("references", &column(|i| &i.reference))
            .array("repositories", &column(|i| &i.repository));
        self.registry_values(&mut values, registry, credentials);
        self.wrap(&values, body, true)
    }

    /// Points `current` at the release, atomically, and the operators' links into it.
    pub(crate) fn switch(&self, tag: &str) -> Script {
        let mut values = Script::new();
        values.value("tag", tag);
        self.wrap(&values, SWITCH, true)
    }

    /// Points `current` back at the release recorded as `<tag>/.previous`.
    pub(crate) fn switch_back(&self, tag: &str) -> Script {
        let mut values = Script::new();
        values.value("tag", tag);
        self.wrap(&values, SWITCH_BACK, true)
    }

    /// Starts the current release: the app services whose container changes switch side by
    /// side (`switch_services.sh`: the new container healthy within `switch_timeout`, then the
    /// old one drained and removed), every other service `up -d --remove-orphans` in place;
    /// then recreates the services whose mounted configuration files differ.
    pub(crate) fn start(&self, profiles: &[String], switch_timeout: Duration) -> Script {
        let args: Vec<&str> = profiles
            .iter()
            .flat_map(|profile| ["--profile", profile.as_str()])
            .collect();
        let mut values = Script::new();
        values
            .array("profile_args", &args)
            .array("switched", SWITCHED_SERVICES)
            .value(
                "switch_timeout",
                &switch_timeout.as_secs().max(1).to_string(),
            )
            .value("stop_grace", &STOP_GRACE_SECONDS.to_string())
            .value("settle", &SWITCH_SETTLE_SECONDS.to_string())
            .value("log_lines", "40")
            .text(SWITCH_SERVICES);
        self.wrap(&values, START, true)
    }

    /// The last log lines and health probe output of the services that are not healthy.
    pub(crate) fn failing_logs(&self, services: &[String], lines: u32) -> Script {
        let mut values = Script::new();
        values
            .array("services", services)
            .value("lines", &lines.to_string());
        self.wrap(&values, FAILING_LOGS, false)
    }

    /// Appends the run's record and marks the release's result.
    pub(crate) fn record(&self, tag: &str, json_line: &str, result: &str) -> Script {
        let mut values = Script::new();
        values
            .value("tag", tag)
            .value("record", json_line)
            .value("result", result);
        self.wrap(&values, RECORD, true)
    }

    /// Keeps the newest releases, the current one and any a running container mounts;
    /// removes the others with their image tags, then dangling images. Never fails the run.
    pub(crate) fn cleanup(&self) -> Script {
        let mut values = Script::new();
        values.value("keep", &KEEP_RELEASES.to_string());
        self.wrap(&values, CLEANUP, true)
    }

    /// The current release, `compose ps`, and each container's health.
    pub(crate) fn status(&self) -> Script {
        self.wrap(&Script::new(), STATUS, false)
    }

    /// `docker logs` of the service's container.
    /// `timemanager-backend create-admin` in the running backend container, the password
    /// in a quoted here-document piped to its stdin.
    pub(crate) fn create_admin(
        &self,
        email: &str,
        username: Option<&str>,
        password: &Secret,
    ) -> Script {
        let mut values = Script::new();
        values
            .value("email", email)
            .value("username", username.unwrap_or_default())
            .heredoc("admin_password", &self.delimiter(), |s| {
                s.secret("admin_password", password).line("");
            });
        self.wrap(&values, CREATE_ADMIN, false)
    }

    pub(crate) fn logs(&self, service: &str, tail: u32, follow: bool) -> Script {
        let mut values = Script::new();
        values
            .value("svc", service)
            .value("tail", &tail.to_string())
            .value("follow", if follow { "1" } else { "" });
        self.wrap(&values, LOGS, false)
    }

    /// Checks the images of a release are still on the server with their recorded digests,
    /// pulling the missing ones (rollback uses the release's own digests, not today's).
    pub(crate) fn ensure_images(
        &self,
        tag: &str,
        registry: Option<(&str, &Credentials)>,
    ) -> Script {
        let mut values = Script::new();
        values.value("tag", tag);
        match registry {
            Some((registry, credentials)) => {
                self.registry_values(&mut values, registry, Some(credentials));
            }
            None => self.registry_values(&mut values, "", None),
        }
        self.wrap(&values, ENSURE_IMAGES, true)
    }
}

impl ServerScripts {
    /// What the release's backend knows (`releases/<tag>/migrations.jsonl`, made from its
    /// image if missing) and what the database applied: `known`, `database` and `applied`
    /// lines for `migrations::MigrationState`, and the snapshots on the server.
    pub(crate) fn migration_state(&self, tag: &str) -> Script {
        let mut values = Script::new();
        values.value("tag", tag);
        self.wrap(
            &values,
            &format!("{DB}{MIGRATION_STATE}{DATABASE_STATE}{LIST_SNAPSHOTS}"),
            false,
        )
    }

    /// Only the database's side of [`ServerScripts::migration_state`], for `--dry-run`.
    pub(crate) fn database_state(&self) -> Script {
        self.wrap(&Script::new(), &format!("{DB}{DATABASE_STATE}"), false)
    }

    /// `pg_dump -Fc` inside the PostgreSQL container to `snapshots/<time>-<current>.pgdump`,
    /// checked and fsynced; keeps the newest `keep`.
    pub(crate) fn snapshot(&self, keep: usize) -> Script {
        let mut values = Script::new();
        values.value("keep", &keep.to_string());
        self.wrap(&values, &format!("{DB}{SNAPSHOT}"), true)
    }

    /// `timemanager-backend migrate` once, in a one-off container of the release's image.
    pub(crate) fn migrate(&self, tag: &str) -> Script {
        let mut values = Script::new();
        values.value("tag", tag);
        self.wrap(&values, &format!("{DB}{MIGRATE}"), true)
    }

    /// The snapshots on the server: `snapshot<TAB>path<TAB>bytes` lines.
    pub(crate) fn list_snapshots(&self) -> Script {
        self.wrap(&Script::new(), LIST_SNAPSHOTS, false)
    }

    /// Stops the app services, dumps the database to a rescue file, restores `snapshot`
    /// into a fresh database, checks it and swaps it in under the database's name.
    pub(crate) fn restore(&self, snapshot: &str, app_services: &[&str]) -> Script {
        let mut values = Script::new();
        values
            .value("snapshot", snapshot)
            .array("app_services", app_services);
        self.wrap(&values, &format!("{DB}{RESTORE}"), true)
    }
}

/// One image of a release, as the pull step checks it.
#[derive(Debug, Clone)]
pub(crate) struct ImageLine {
    pub(crate) service: String,
    /// `registry/owner/repo/service:tag`
    pub(crate) reference: String,
    /// `registry/owner/repo/service`
    pub(crate) repository: String,
}

/// Provisions a fresh Debian or Ubuntu server; safe to run again.
pub(crate) fn server_setup(base: &str, ssh_port: u16, deploy_user: &str) -> Script {
    let mut script = Script::new();
    script
        .line("set -euo pipefail")
        .value("base", base)
        .value("ssh_port", &ssh_port.to_string())
        .value("deploy_user", deploy_user)
        .line("main() {")
        .text(SERVER_SETUP)
        .line("}")
        .line("main </dev/null");
    script
}

/// A line a remote step printed for the deploying machine.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fact {
    /// `previous=TAG` (`switch.sh`): the release that was current before the switch.
    Previous(String),
    /// `digest<TAB>SERVICE<TAB>DIGEST` (`check_digest` of `prelude.sh`, run by `pull.sh`).
    Digest { service: String, digest: String },
    /// `docker=`, `compose=` (`probe.sh`) and `current=` (`probe.sh`, `switch_back.sh`):
    /// shown to the user as they are.
    Info { key: String, value: String },
}

/// The facts in a remote step's stdout; other lines are not facts.
pub(crate) fn parse_facts(out: &str) -> Vec<Fact> {
    out.lines()
        .filter_map(|line| {
            if let Some(previous) = line.strip_prefix("previous=") {
                Some(Fact::Previous(previous.to_owned()))
            } else if let Some(rest) = line.strip_prefix("digest\t") {
                let (service, digest) = rest.split_once('\t').unwrap_or((rest, ""));
                Some(Fact::Digest {
                    service: service.to_owned(),
                    digest: digest.to_owned(),
                })
            } else {
                line.split_once('=')
                    .filter(|(key, _)| matches!(*key, "docker" | "compose" | "current"))
                    .map(|(key, value)| Fact::Info {
                        key: key.to_owned(),
                        value: value.to_owned(),
                    })
            }
        })
        .collect()
}

/// Quotes a value for bash: single quotes, with `'` written as `'\''`.
pub(crate) fn quote(value: &str) -> String {
    if !value.is_empty()
        && value.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b':' | b'@' | b'=')
        })
    {
        return value.to_owned();
    }
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Base64 in 76-character lines, for binary data inside a here-document (`base64 -d`).
pub(crate) fn base64(data: &[u8]) -> String {
    let encoded = crate::digest::base64::encode(data);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 76 + 1);
    for line in encoded.as_bytes().chunks(76) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;
