//! The activation unit: switch, start, health gate, the fall back to the previous release,
//! cleanup and the record run on the server as one detached process (`scripts/activate.sh`)
//! that takes the deploy lock from the deploying machine and holds it until it and everything
//! it started have ended. A killed client or a cut connection cannot leave the server
//! half-switched: the unit finishes alone, and `status` or the next deploy (which waits for
//! it) shows how it ended.
//!
//! The deploying machine builds the unit's files from the plan (each step a script exactly
//! as `--dry-run` prints it), starts the unit (`launch.sh`: systemd-run, else setsid), hands
//! over the lock by closing its lock session, then streams the journal (`follow.sh`) and
//! reads the state file.

use anyhow::{Context, bail};

use crate::deploy::{
    plan::{Action, Gate, Plan, Step},
    scripts::{ACTIVATE, FOLLOW, GATE, LAUNCH, LOCK_WAIT_SECONDS, Script, ServerScripts},
};

/// Where a run's unit keeps its files, journal and state, under the base directory.
pub(crate) fn journal_path(base: &str, run_id: &str) -> String {
    format!("{base}/deploys/{run_id}.log")
}

impl ServerScripts {
    /// The health gate, on the server: see `scripts/gate.sh`.
    pub(crate) fn gate(&self, gate: &Gate) -> Script {
        let mut values = Script::new();
        values
            .array("gate_services", &gate.services)
            .value("gate_url", &gate.url)
            .value("gate_timeout", &gate.timeout.as_secs().max(1).to_string())
            .array("curl_args", &curl_args(gate));
        self.wrap(&values, GATE, false)
    }

    /// Streams the unit's journal until it ends, then prints its state file.
    pub(crate) fn follow(&self) -> Script {
        self.wrap(&Script::new(), FOLLOW, false)
    }

    /// The unit's driver: runs the named step files in order, falls back, records.
    fn activation_unit(&self, plan: &Plan, lists: &StepLists, record_head: &str) -> Script {
        let mut values = Script::new();
        values
            .value("kind", plan.kind)
            .value("tag", &plan.tag)
            .value("lock_wait", &LOCK_WAIT_SECONDS.to_string())
            .value("record_head", record_head)
            .array("activate_steps", &lists.activate)
            .array("fall_back_steps", &lists.fall_back)
            .array("after_success_steps", &lists.after_success);
        self.wrap(&values, ACTIVATE, false)
    }

    /// Writes the unit's files to `deploys/<run id>/` and starts it detached.
    pub(crate) fn launch(&self, files: &[(String, String)]) -> Script {
        let mut values = Script::new();
        values.heredoc("unit_files", &self.delimiter(), |s| {
            for (name, text) in files {
                s.data(
                    format!("{name}: the script above, base64"),
                    format!(
                        "{name} {}\n",
                        crate::digest::base64::encode(text.as_bytes())
                    ),
                );
            }
        });
        self.wrap(&values, LAUNCH, true)
    }
}

/// `curl` options for the gate's URL, from `--health-insecure-tls` and `--health-resolve`.
fn curl_args(gate: &Gate) -> Vec<String> {
    let mut args = Vec::new();
    if gate.reach.insecure_tls {
        args.push("--insecure".to_owned());
    }
    if let Some((host, addr)) = &gate.reach.resolve {
        let port = gate
            .url
            .parse::<ureq::http::Uri>()
            .ok()
            .and_then(|uri| {
                uri.port_u16().or(match uri.scheme_str() {
                    Some("http") => Some(80),
                    _ => Some(443),
                })
            })
            .unwrap_or(443);
        let addr = match addr {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            std::net::IpAddr::V4(v4) => v4.to_string(),
        };
        args.extend(["--resolve".to_owned(), format!("{host}:{port}:{addr}")]);
    }
    args
}

/// The unit's steps by phase, as `NAME:FILE` entries of its driver's arrays.
#[derive(Debug, Default)]
struct StepLists {
    activate: Vec<String>,
    fall_back: Vec<String>,
    after_success: Vec<String>,
}

/// The files of a plan's unit: one script per step of its activate, fall-back and
/// after-success phases (`1.sh`, `2.sh`, ...) and the driver, `activate.sh`. `record_head`
/// is the run's record so far: a JSON object left open inside its `"steps"` object, which
/// the unit completes with its own steps' durations and the result.
pub(crate) fn unit_files(
    scripts: &ServerScripts,
    plan: &Plan,
    record_head: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    let mut lists = StepLists::default();
    for (list, steps) in [
        (&mut lists.activate, &plan.activate),
        (&mut lists.fall_back, &plan.fall_back),
        (&mut lists.after_success, &plan.after_success),
    ] {
        for step in steps {
            let Step {
                name,
                action: Action::Remote(script),
            } = step
            else {
                bail!(
                    "internal: `{}` runs on the deploying machine and cannot be part of the server's activation unit",
                    step.name
                );
            };
            if name.contains(':') {
                bail!("internal: a unit step's name has a `:`: {name}");
            }
            if script.masked() != script.render() {
                bail!(
                    "internal: `{name}` carries a secret, which must not be written to the server's unit files"
                );
            }
            let file = format!("{}.sh", files.len() + 1);
            list.push(format!("{name}:{file}"));
            files.push((file, script.render()));
        }
    }
    let driver = scripts.activation_unit(plan, &lists, record_head);
    files.push(("activate.sh".to_owned(), driver.render()));
    Ok(files)
}

/// How a unit ended, from its state file.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// `ok`, `rolled-back`, `failed`, or `running` when the unit died without a result.
    pub(crate) result: String,
    pub(crate) previous: Option<String>,
    pub(crate) failed_step: Option<String>,
    /// The last error the failing step printed.
    pub(crate) reason: Option<String>,
}

impl Outcome {
    /// From the state file's `key=value` lines (`follow.sh` prints it last).
    pub(crate) fn parse(text: &str) -> anyhow::Result<Outcome> {
        let mut outcome = Outcome::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.to_owned();
            match key {
                "result" => outcome.result = value,
                "previous" => outcome.previous = Some(value),
                "failed_step" => outcome.failed_step = Some(value),
                "reason" => outcome.reason = Some(value),
                _ => {}
            }
        }
        if outcome.result.is_empty() {
            bail!("the activation unit's state file has no result:\n{text}");
        }
        Ok(outcome)
    }

    /// The failing step and its reason, for the error.
    pub(crate) fn cause(&self) -> String {
        format!(
            "{}: {}",
            self.failed_step.as_deref().unwrap_or("activation"),
            self.reason.as_deref().unwrap_or("(no reason recorded)")
        )
    }
}

/// `record` without its closing braces: the JSON object of the run, the `"steps"` object
/// last and open, the fields the unit writes (`previous`, `result`, `error`) left out.
pub(crate) fn record_head(
    mut record: serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<String> {
    for field in ["previous", "result", "error"] {
        record.remove(field);
    }
    let steps = record.remove("steps").unwrap_or_default();
    let steps = serde_json::to_string(&steps)?;
    let rest = serde_json::to_string(&record)?;
    let rest = rest
        .strip_suffix('}')
        .context("internal: a JSON object ends with `}`")?;
    let steps = steps.strip_suffix('}').unwrap_or("{");
    let sep = if rest.ends_with('{') { "" } else { "," };
    Ok(format!("{rest}{sep}\"steps\":{steps}"))
}

#[cfg(test)]
mod tests;
