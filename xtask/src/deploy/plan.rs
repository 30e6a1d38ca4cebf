//! The deploy as data: every remote script and upload is built before anything runs, so
//! `--dry-run` prints exactly what would run (secrets masked) and tests check it offline.

use std::{fmt::Write as _, time::Duration};

use crate::deploy::secrets::Secret;

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
    HealthGate(Gate),
    /// Appends the JSON line of this run to `releases.jsonl` (written when the run ends).
    Record,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Local {
    /// Preflight: every setting is present (before anything else).
    CheckSettings,
    /// `image::build` then push both images under the tag.
    BuildAndPush,
    /// The tag's manifests exist in the registry (with `--no-push`).
    CheckRegistry,
    /// Opens the one ssh connection (ControlMaster) all later steps share.
    Connect,
}

#[derive(Debug, Clone)]
pub(crate) struct Gate {
    pub(crate) services: Vec<String>,
    pub(crate) url: String,
    pub(crate) timeout: Duration,
}

/// The steps of a deploy or rollback, by phase.
#[derive(Debug, Default)]
pub(crate) struct Plan {
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
    /// Always, once the lock is held: the record of this run.
    pub(crate) finish: Vec<Step>,
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
        for (title, steps) in [
            ("prepare (nothing running changes)", &self.prepare),
            ("activate", &self.activate),
            (
                "only if activation fails: back to the previous release",
                &self.fall_back,
            ),
            (
                "after a healthy activation (best effort, never fails the deploy)",
                &self.after_success,
            ),
            (
                "finish (then the lock's session ends, which releases it)",
                &self.finish,
            ),
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
        Action::Local(Local::CheckSettings) => {
            "(local) check that every setting is present; list all missing ones at once\n"
                .to_owned()
        }
        Action::Local(Local::BuildAndPush) => {
            "(local) `cargo xtask build`, then push both images under the tag (the registry skips blobs it has)\n".to_owned()
        }
        Action::Local(Local::CheckRegistry) => {
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
        Action::HealthGate(gate) => format!(
            "(poll for at most {} s) containers of {} running and healthy (docker inspect, found by compose labels), and GET {} answering 200\n",
            gate.timeout.as_secs(),
            gate.services.join(", "),
            if gate.url.is_empty() { "<no health URL>" } else { &gate.url }
        ),
        Action::Record => {
            "append {time, tag, kind, result, previous, digests, by, step durations} as one line to releases.jsonl; mark the release ok or failed\n".to_owned()
        }
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
mod tests {
    use super::*;

    #[test]
    fn secrets_are_rendered_for_the_server_and_masked_for_people() {
        let mut script = Script::new();
        script
            .line("cat <<'EOF'")
            .text("PASSWORD='")
            .secret("POSTGRES_PASSWORD", &Secret::new("s3cret"))
            .line("'")
            .line("EOF");
        assert!(script.has_secrets());
        assert_eq!(script.render(), "cat <<'EOF'\nPASSWORD='s3cret'\nEOF\n");
        assert_eq!(
            script.masked(),
            "cat <<'EOF'\nPASSWORD='<secret POSTGRES_PASSWORD>'\nEOF\n"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("/opt/timemanager"), "/opt/timemanager");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn base64_is_wrapped_like_coreutils() {
        assert_eq!(base64(b"foobar"), "Zm9vYmFy\n");
        let long = base64(&[0xff; 60]);
        assert_eq!(long.lines().next().unwrap().len(), 76);
        assert_eq!(long.lines().count(), 2);
        assert_eq!(base64(b""), "");
    }
}
