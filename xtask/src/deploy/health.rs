//! The health gate: the services' containers running and healthy (read with `docker inspect`,
//! found by compose labels, the same under compose v1 and v2) and the health URL answering 200.

use std::time::{Duration, Instant};

use anyhow::bail;
use xshell::Shell;

use crate::deploy::{
    plan::Gate,
    scripts::{CONTAINER_STATES, Script, ServerScripts},
    ssh::{Session, Stdout},
};

impl ServerScripts {
    /// One line per container of the project, as [`parse_states`] reads it: service, state,
    /// health, restarts, image, separated by tabs.
    pub(crate) fn container_states(&self) -> Script {
        self.wrap(&Script::new(), CONTAINER_STATES, false)
    }
}

/// One container, as `ServerScripts::container_states` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Container {
    pub(crate) service: String,
    pub(crate) state: String,
    /// `healthy`, `unhealthy`, `starting`, or `none` without a health check.
    pub(crate) health: String,
    pub(crate) restarts: u32,
    pub(crate) image: String,
}

pub(crate) fn parse_states(text: &str) -> Vec<Container> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            Some(Container {
                service: fields.next()?.to_owned(),
                state: fields.next()?.to_owned(),
                health: fields.next()?.to_owned(),
                restarts: fields.next()?.parse().unwrap_or(0),
                image: fields.next().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Healthy,
    /// Not yet: what is still missing.
    Waiting(String),
    /// Will not get better by waiting: what failed.
    Failed(String),
}

/// Judges the containers of the gated services.
pub(crate) fn judge(containers: &[Container], services: &[String]) -> Verdict {
    let mut waiting = Vec::new();
    for service in services {
        let mine: Vec<&Container> = containers
            .iter()
            .filter(|c| &c.service == service)
            .collect();
        if mine.is_empty() {
            return Verdict::Failed(format!(
                "{service}: no container (is it in the compose file?)"
            ));
        }
        for container in mine {
            match (container.state.as_str(), container.health.as_str()) {
                ("running", "healthy" | "none") => {}
                ("running", "unhealthy") => {
                    return Verdict::Failed(format!("{service}: health check failing (unhealthy)"));
                }
                ("exited" | "dead", _) => {
                    return Verdict::Failed(format!("{service}: container {}", container.state));
                }
                // A crash loop shows as `restarting`, then briefly `running` + `starting`.
                (_, _) if container.restarts >= 3 => {
                    return Verdict::Failed(format!(
                        "{service}: restarted {} times",
                        container.restarts
                    ));
                }
                (state, health) => waiting.push(format!("{service}: {state}, {health}")),
            }
        }
    }
    if waiting.is_empty() {
        Verdict::Healthy
    } else {
        Verdict::Waiting(waiting.join("; "))
    }
}

/// Polls until the gate passes, fails, or times out; returns how long it took.
pub(crate) fn wait(
    sh: &Shell,
    session: &Session,
    scripts: &ServerScripts,
    gate: &Gate,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let deadline = start + gate.timeout;
    let states = scripts.container_states();
    let mut last_report = Instant::now();
    loop {
        let output = session.run(sh, "reading container health", &states, Stdout::Capture)?;
        let containers = parse_states(&output);
        let verdict = match judge(&containers, &gate.services) {
            Verdict::Healthy if gate.url.is_empty() => Verdict::Healthy,
            Verdict::Healthy => match url_status(&gate.url) {
                Ok(200) => Verdict::Healthy,
                Ok(status) => Verdict::Waiting(format!("{} answered {status}", gate.url)),
                Err(err) => Verdict::Waiting(format!("{}: {err}", gate.url)),
            },
            other => other,
        };
        match verdict {
            Verdict::Healthy => {
                eprintln!(
                    "    healthy: {}{}",
                    gate.services.join(", "),
                    if gate.url.is_empty() {
                        String::new()
                    } else {
                        format!(", {} answers 200", gate.url)
                    }
                );
                return Ok(start.elapsed());
            }
            Verdict::Failed(why) => bail!("the release is not healthy: {why}"),
            Verdict::Waiting(why) => {
                if Instant::now() > deadline {
                    bail!(
                        "the release is not healthy after {} s: {why}",
                        gate.timeout.as_secs()
                    );
                }
                if last_report.elapsed() > Duration::from_secs(5) {
                    eprintln!("    waiting: {why}");
                    last_report = Instant::now();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// GET `url`: the status, or why there was none.
pub(crate) fn url_status(url: &str) -> anyhow::Result<u16> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let res = agent
        .get(url)
        .call()
        .map_err(|err| anyhow::format_err!("{err}"))?;
    Ok(res.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> Vec<String> {
        vec!["backend".to_owned(), "frontend".to_owned()]
    }

    #[test]
    fn reads_docker_inspect_lines() {
        let text = "backend\trunning\thealthy\t0\tghcr.io/o/r/backend:abc1234\npostgres\trunning\tnone\t2\tpostgres:16\n";
        let states = parse_states(text);
        assert_eq!(states.len(), 2);
        assert_eq!(states[1].restarts, 2);
        assert_eq!(states[0].image, "ghcr.io/o/r/backend:abc1234");
    }

    /// The script run for real, with a `docker` on PATH that answers like Docker would for
    /// two containers, read by the parser.
    #[test]
    fn the_states_script_prints_what_the_parser_reads() {
        let fake = crate::deploy::scripts::tests::FakeDocker::new("states");
        let scripts = ServerScripts::read_only("/nonexistent", "timemanager");
        let out = fake.run(&scripts.container_states());
        assert!(out.ok, "{}", out.stderr);
        let states = parse_states(&out.stdout);
        assert_eq!(
            states,
            [
                Container {
                    service: "backend".to_owned(),
                    state: "running".to_owned(),
                    health: "healthy".to_owned(),
                    restarts: 0,
                    image: "ghcr.io/o/r/backend:abc1234".to_owned(),
                },
                Container {
                    service: "frontend".to_owned(),
                    state: "restarting".to_owned(),
                    health: "starting".to_owned(),
                    restarts: 3,
                    image: "ghcr.io/o/r/frontend:abc1234".to_owned(),
                },
            ]
        );
        assert!(
            fake.calls()
                .contains("ps -aq --filter label=com.docker.compose.project=timemanager")
        );
    }

    #[test]
    fn verdicts() {
        let c = |service: &str, state: &str, health: &str, restarts: u32| Container {
            service: service.to_owned(),
            state: state.to_owned(),
            health: health.to_owned(),
            restarts,
            image: String::new(),
        };
        let healthy = [
            c("backend", "running", "healthy", 0),
            c("frontend", "running", "none", 0),
        ];
        assert_eq!(judge(&healthy, &services()), Verdict::Healthy);
        let starting = [
            c("backend", "running", "starting", 0),
            c("frontend", "running", "healthy", 0),
        ];
        assert!(
            matches!(judge(&starting, &services()), Verdict::Waiting(w) if w.contains("backend"))
        );
        let unhealthy = [
            c("backend", "running", "unhealthy", 0),
            c("frontend", "running", "healthy", 0),
        ];
        assert!(
            matches!(judge(&unhealthy, &services()), Verdict::Failed(f) if f.contains("backend"))
        );
        let exited = [
            c("backend", "running", "healthy", 0),
            c("frontend", "exited", "none", 0),
        ];
        assert!(
            matches!(judge(&exited, &services()), Verdict::Failed(f) if f.contains("frontend"))
        );
        let looping = [
            c("backend", "restarting", "starting", 3),
            c("frontend", "running", "healthy", 0),
        ];
        assert!(
            matches!(judge(&looping, &services()), Verdict::Failed(f) if f.contains("restarted 3"))
        );
        let missing = [c("backend", "running", "healthy", 0)];
        assert!(
            matches!(judge(&missing, &services()), Verdict::Failed(f) if f.contains("frontend"))
        );
    }
}
