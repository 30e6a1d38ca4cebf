//! The health gate: the services' containers running and healthy (read with `docker inspect`,
//! found by compose labels, the same under compose v1 and v2) and the health URL answering 200
//! with the backend's health JSON: `"status":"ok"` and, when known, the release's revision.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use ureq::unversioned::{
    resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver},
    transport::{DefaultConnector, NextTimeout},
};
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

/// Polls until the gate passes, fails, or times out; returns how long it took. `revision` is
/// the release tag the backend's `revision` must start with, when the tag is a commit.
pub(crate) fn wait(
    sh: &Shell,
    session: &Session,
    scripts: &ServerScripts,
    gate: &Gate,
    revision: Option<&str>,
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
            Verdict::Healthy => match get(&gate.url, &gate.reach) {
                Ok((200, body)) => match check_body(&body, revision) {
                    Ok(()) => Verdict::Healthy,
                    Err(why) => Verdict::Waiting(format!("{} {why}", gate.url)),
                },
                Ok((status, _)) => Verdict::Waiting(format!("{} answered {status}", gate.url)),
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
                        format!(", {} answers 200 with the backend's health JSON", gate.url)
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

/// How the health URL is reached. Production trusts the system's roots and DNS; a lab may
/// accept Traefik's self-signed default certificate (ACME cannot reach Let's Encrypt there)
/// and pin the URL's host to an address, as `curl --resolve` does.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reach {
    pub(crate) insecure_tls: bool,
    /// `HOST`, and the address it resolves to (the port is the URL's).
    pub(crate) resolve: Option<(String, IpAddr)>,
}

impl Reach {
    /// From `--health-insecure-tls` and `--health-resolve HOST:ADDR`.
    pub(crate) fn new(insecure_tls: bool, resolve: Option<&str>) -> anyhow::Result<Reach> {
        let resolve = match resolve {
            None => None,
            Some(text) => {
                let (host, addr) = text
                    .split_once(':')
                    .filter(|(host, _)| !host.is_empty())
                    .with_context(|| {
                        format!("--health-resolve takes HOST:ADDR, e.g. `tm.localhost:127.0.0.1`, got `{text}`")
                    })?;
                let addr = addr
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse()
                    .with_context(|| format!("--health-resolve: `{addr}` is not an IP address"))?;
                Some((host.to_ascii_lowercase(), addr))
            }
        };
        Ok(Reach {
            insecure_tls,
            resolve,
        })
    }

    /// For `--dry-run`: how this differs from production, if it does.
    pub(crate) fn describe(&self) -> String {
        let mut out = String::new();
        if let Some((host, addr)) = &self.resolve {
            out.push_str(&format!(" ({host} resolved to {addr})"));
        }
        if self.insecure_tls {
            out.push_str(" (any TLS certificate accepted)");
        }
        out
    }
}

/// Resolves one host to a fixed address and every other host through DNS.
#[derive(Debug)]
struct PinnedResolver {
    host: String,
    addr: IpAddr,
}

impl Resolver for PinnedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let pinned = uri
            .host()
            .is_some_and(|host| host.eq_ignore_ascii_case(&self.host));
        if !pinned {
            return DefaultResolver::default().resolve(uri, config, timeout);
        }
        let port = uri
            .port_u16()
            .or_else(|| match uri.scheme_str() {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            })
            .ok_or(ureq::Error::HostNotFound)?;
        let mut addrs = self.empty();
        addrs.push(SocketAddr::new(self.addr, port));
        Ok(addrs)
    }
}

/// GET `url`: the status and the body, or why there were none.
pub(crate) fn get(url: &str, reach: &Reach) -> anyhow::Result<(u16, String)> {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)));
    if reach.insecure_tls {
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .disable_verification(true)
                .build(),
        );
    }
    let config = config.build();
    let agent = match &reach.resolve {
        Some((host, addr)) => ureq::Agent::with_parts(
            config,
            DefaultConnector::default(),
            PinnedResolver {
                host: host.clone(),
                addr: *addr,
            },
        ),
        None => ureq::Agent::new_with_config(config),
    };
    let mut res = agent
        .get(url)
        .call()
        .map_err(|err| anyhow::format_err!("{err}"))?;
    let status = res.status().as_u16();
    // The health JSON is a few dozen bytes, the SPA's index.html a few kilobytes.
    let body = res
        .body_mut()
        .with_config()
        .limit(1024 * 1024)
        .read_to_string()
        .map_err(|err| {
            anyhow::format_err!("answered {status}, but reading the body failed: {err}")
        })?;
    Ok((status, body))
}

/// GET `url`: the status, or why there was none (`cargo xtask status`).
pub(crate) fn url_status(url: &str, reach: &Reach) -> anyhow::Result<u16> {
    get(url, reach).map(|(status, _)| status)
}

/// Checks a 200's body is the backend's health JSON, `"status":"ok"`, and, when `revision`
/// is given, a `revision` (the full commit) that starts with it. Traefik drops the routers of
/// an unhealthy backend, and `/api/health` then falls through to the SPA's catch-all router,
/// which answers 200 with `index.html`: the status code alone proves nothing.
pub(crate) fn check_body(body: &str, revision: Option<&str>) -> Result<(), String> {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let Some(status) = json.as_ref().and_then(|json| json["status"].as_str()) else {
        let start: String = body
            .chars()
            .take(80)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        return Err(format!(
            "answered 200 but not the backend's health JSON ({}{})",
            start.trim(),
            if body.chars().count() > 80 { "…" } else { "" }
        ));
    };
    if status != "ok" {
        return Err(format!("answered 200 with status `{status}`"));
    }
    let Some(expected) = revision else {
        return Ok(());
    };
    let found = json
        .as_ref()
        .and_then(|json| json["revision"].as_str())
        .unwrap_or_default();
    if !found.starts_with(expected) {
        return Err(format!(
            "answers revision `{found}`, not {expected} (still the release before?)"
        ));
    }
    Ok(())
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
        let scripts = crate::deploy::scripts::tests::remote("/nonexistent");
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

    #[test]
    fn the_body_must_be_the_backends_health_json_of_the_release() {
        let full = "abc1234f00dfeedbeef00000000000000000000";
        let ok =
            format!(r#"{{"status":"ok","database":"ok","version":"0.1.0","revision":"{full}"}}"#);
        assert_eq!(check_body(&ok, Some("abc1234")), Ok(()));
        assert_eq!(check_body(&ok, None), Ok(()));
        // Traefik's fall-through to the SPA when the backend's routers are gone.
        let spa = format!(
            "<!doctype html>\n<html lang=\"en\">\n  <head>\n    <title>Time Manager</title>{}</head></html>",
            " ".repeat(200)
        );
        let why = check_body(&spa, Some("abc1234")).unwrap_err();
        assert!(
            why.starts_with(
                "answered 200 but not the backend's health JSON (<!doctype html> <html lang=\"en\">"
            ) && why.ends_with("…)"),
            "{why}"
        );
        assert!(why.len() < 200, "{why}");
        let why = check_body("[1, 2]", None).unwrap_err();
        assert!(
            why.contains("not the backend's health JSON ([1, 2])"),
            "{why}"
        );
        let degraded = r#"{"status":"degraded","database":"unavailable","revision":"abc1234"}"#;
        assert_eq!(
            check_body(degraded, None),
            Err("answered 200 with status `degraded`".to_owned())
        );
        let old = r#"{"status":"ok","revision":"0000000aaaa"}"#;
        let why = check_body(old, Some("abc1234")).unwrap_err();
        assert!(why.contains("revision `0000000aaaa`, not abc1234"), "{why}");
        // An unknown revision (a build without TIMEMANAGER_REVISION) is not this release.
        let unknown = r#"{"status":"ok","revision":"unknown"}"#;
        assert!(check_body(unknown, Some("abc1234")).is_err());
        assert_eq!(check_body(unknown, None), Ok(()));
    }

    #[test]
    fn health_resolve_takes_host_and_address() {
        let reach = Reach::new(true, Some("TM.localhost:127.0.0.1")).unwrap();
        assert_eq!(
            reach.resolve,
            Some(("tm.localhost".to_owned(), IpAddr::from([127, 0, 0, 1])))
        );
        assert_eq!(
            reach.describe(),
            " (tm.localhost resolved to 127.0.0.1) (any TLS certificate accepted)"
        );
        let v6 = Reach::new(false, Some("tm.localhost:[::1]")).unwrap();
        assert_eq!(
            v6.resolve.map(|(_, addr)| addr),
            Some(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]))
        );
        assert_eq!(Reach::default().describe(), "");
        for bad in [":127.0.0.1", "tm.localhost", "tm.localhost:localhost"] {
            let err = Reach::new(false, Some(bad)).unwrap_err();
            assert!(
                format!("{err:#}").contains("--health-resolve"),
                "{bad}: {err:#}"
            );
        }
    }

    /// A name no resolver knows reaches a loopback server through `--health-resolve`, with
    /// the name in the Host header, as Traefik routes by it.
    #[test]
    fn a_resolved_host_reaches_the_pinned_address() {
        use std::io::{BufRead, BufReader, Write};

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                request.push_str(&line);
            }
            let body = r#"{"status":"ok","revision":"abc1234ffff"}"#;
            write!(
                &stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            request
        });
        let reach = Reach::new(false, Some("lab.invalid:127.0.0.1")).unwrap();
        let url = format!("http://lab.invalid:{port}/api/health");
        let (status, body) = get(&url, &reach).unwrap();
        assert_eq!(status, 200);
        assert_eq!(check_body(&body, Some("abc1234")), Ok(()));
        let request = server.join().unwrap().to_ascii_lowercase();
        assert!(
            request.contains(&format!("host: lab.invalid:{port}")),
            "{request}"
        );
        // Without the pin, the reserved `.invalid` name does not resolve.
        assert!(get(&url, &Reach::default()).is_err());
    }
}
