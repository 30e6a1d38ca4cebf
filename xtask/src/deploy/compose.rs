//! The compose contract between the deploy and `docker-compose.prod.yml`: the file, the
//! project name, every variable the file reads, i.e. every line of the `.env` the deploy
//! writes (a test keeps the list and the file equal), and what the zero-downtime switch of
//! the app services needs from their definitions (a test checks those too).

pub(crate) const COMPOSE_FILE: &str = "docker-compose.prod.yml";

/// The compose project name the deploy uses, so volumes survive new release directories.
pub(crate) const COMPOSE_PROJECT: &str = "timemanager";

/// The app services a deploy switches side by side (`scripts/switch_services.sh`): no
/// `container_name` and no host port (two containers run at once), a health check, and a
/// drain on SIGTERM longer than Traefik's load-balancer health check takes to notice it.
/// Every other service (PostgreSQL, Traefik, monitoring) is recreated in place, stop first.
pub(crate) const SWITCHED_SERVICES: &[&str] = &["backend", "frontend"];

/// `stop_grace_period` of the switched services, which the switch also gives `docker stop`
/// (compose v1 does not copy it into the container's own stop timeout).
pub(crate) const STOP_GRACE_SECONDS: u32 = 30;

/// Seconds the switch waits between the new containers turning healthy and the old ones
/// starting to drain: Traefik's docker provider applies a change up to 2 s after the event
/// (`providersThrottleDuration`).
pub(crate) const SWITCH_SETTLE_SECONDS: u32 = 3;

/// One variable docker-compose.prod.yml interpolates, i.e. one line of the `.env` the deploy writes.
#[derive(Debug, Clone)]
pub(crate) struct EnvVar {
    pub(crate) name: &'static str,
    /// `Some` for `${NAME:-default}` (optional), `None` for `${NAME}` (required).
    pub(crate) default: Option<&'static str>,
    /// Comes from a CI secret; never printed, never in argv.
    pub(crate) secret: bool,
}

/// Every variable of docker-compose.prod.yml; `compose_variables_match_env_vars` keeps the two in sync.
pub(crate) const ENV_VARS: &[EnvVar] = &[
    EnvVar {
        name: "DOMAIN",
        default: None,
        secret: false,
    },
    EnvVar {
        name: "ACME_EMAIL",
        default: None,
        secret: false,
    },
    // The registry host of our images: GHCR in production, a loopback registry in tests.
    EnvVar {
        name: "REGISTRY",
        default: Some("ghcr.io"),
        secret: false,
    },
    EnvVar {
        name: "GITHUB_REPOSITORY",
        default: None,
        secret: false,
    },
    EnvVar {
        name: "IMAGE_TAG",
        default: None,
        secret: false,
    },
    EnvVar {
        name: "POSTGRES_USER",
        default: Some("timemanager"),
        secret: false,
    },
    EnvVar {
        name: "POSTGRES_DB",
        default: Some("timemanager"),
        secret: false,
    },
    EnvVar {
        name: "POSTGRES_PASSWORD",
        default: None,
        secret: true,
    },
    EnvVar {
        name: "RUST_LOG",
        default: Some("info"),
        secret: false,
    },
    EnvVar {
        name: "SMTP_HOST",
        default: Some(""),
        secret: false,
    },
    EnvVar {
        name: "SMTP_PASSWORD",
        default: Some(""),
        secret: true,
    },
    EnvVar {
        name: "GRAFANA_USER",
        default: Some("admin"),
        secret: false,
    },
    EnvVar {
        name: "GRAFANA_PASSWORD",
        default: None,
        secret: true,
    },
];

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, fs};

    use super::*;
    use crate::project;

    /// A `${NAME}`, `${NAME:-default}`, `${NAME:?message}` or `$NAME` in a compose file.
    #[derive(Debug, PartialEq)]
    struct VarRef<'a> {
        name: &'a str,
        default: Option<&'a str>,
    }

    /// The references compose interpolates: `$$` is an escaped `$`.
    fn var_refs(text: &str) -> Vec<VarRef<'_>> {
        let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let mut refs = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                rest = tail;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body.find('}').expect("unclosed `${`");
                let inner = &body[..end];
                let name_end = inner.find(|c| !is_name(c)).unwrap_or(inner.len());
                let (name, op) = inner.split_at(name_end);
                let default = op.strip_prefix(":-").or_else(|| op.strip_prefix('-'));
                refs.push(VarRef { name, default });
                rest = &body[end + 1..];
            } else {
                let name_end = after.find(|c| !is_name(c)).unwrap_or(after.len());
                if name_end > 0 {
                    refs.push(VarRef {
                        name: &after[..name_end],
                        default: None,
                    });
                }
                rest = &after[name_end..];
            }
        }
        refs
    }

    /// Compose interpolates values, not comments.
    fn without_comments(text: &str) -> String {
        text.lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .map(|line| line.split_once(" #").map_or(line, |(code, _)| code))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn compose_variables_match_env_vars() {
        let text = fs::read_to_string(project::root().join(COMPOSE_FILE)).unwrap();
        let text = without_comments(&text);
        let refs = var_refs(&text);
        let used: BTreeSet<&str> = refs.iter().map(|var| var.name).collect();
        let listed: BTreeSet<&str> = ENV_VARS.iter().map(|var| var.name).collect();
        assert_eq!(
            listed.len(),
            ENV_VARS.len(),
            "ENV_VARS lists a variable twice"
        );
        assert_eq!(
            used, listed,
            "the variables of {COMPOSE_FILE} (left) and ENV_VARS (right) differ"
        );
        for found in &refs {
            let var = ENV_VARS.iter().find(|var| var.name == found.name).unwrap();
            assert_eq!(
                found.default, var.default,
                "`{}` has default {:?} in {COMPOSE_FILE} but {:?} in ENV_VARS (every use must agree)",
                found.name, found.default, var.default
            );
        }
    }

    /// The lines of service `name`'s block in the compose file (indented under it).
    fn service_block<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        let header = format!("  {name}:");
        text.lines()
            .skip_while(|line| *line != header)
            .skip(1)
            .take_while(|line| line.is_empty() || line.starts_with("    "))
            .collect()
    }

    /// The value of `key: value` in a block, quotes and a unit suffix `s` removed.
    fn seconds(block: &[&str], key: &str) -> f64 {
        let line = block
            .iter()
            .find_map(|line| line.trim().strip_prefix(&format!("{key}:")))
            .unwrap_or_else(|| panic!("no `{key}` in {block:?}"));
        line.trim()
            .trim_matches('"')
            .trim_end_matches('s')
            .parse()
            .unwrap_or_else(|_| panic!("`{key}: {line}` is not a number of seconds"))
    }

    /// The switch runs two containers of an app service at once and drains the old one;
    /// PostgreSQL and Traefik keep their fixed names (stop first, as documented).
    #[test]
    fn switched_services_can_run_twice_and_drain_before_they_stop() {
        let text = fs::read_to_string(project::root().join(COMPOSE_FILE)).unwrap();
        // The in-flight grace of the binaries after their drain, and the backend's pool close.
        let shutdown = fs::read_to_string(project::root().join("shutdown/src/lib.rs")).unwrap();
        let grace: f64 = shutdown
            .lines()
            .find_map(|line| {
                line.strip_prefix("pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(")
            })
            .and_then(|rest| rest.strip_suffix(");"))
            .expect("SHUTDOWN_GRACE in shutdown/src/lib.rs")
            .parse()
            .unwrap();
        let pool_close = 5.0;
        for service in SWITCHED_SERVICES {
            let block = service_block(&text, service);
            assert!(
                !block.is_empty(),
                "no service `{service}` in {COMPOSE_FILE}"
            );
            for forbidden in ["container_name:", "ports:"] {
                assert!(
                    !block.iter().any(|line| line.trim().starts_with(forbidden)),
                    "{service} has `{forbidden}`: two containers of it could not run at once"
                );
            }
            let drain = seconds(&block, "SHUTDOWN_DRAIN_SECONDS");
            let interval = seconds(
                &block,
                &format!("traefik.http.services.{service}.loadbalancer.healthcheck.interval"),
            );
            let timeout = seconds(
                &block,
                &format!("traefik.http.services.{service}.loadbalancer.healthcheck.timeout"),
            );
            assert!(
                drain > interval + timeout,
                "{service}: a drain of {drain} s ends before Traefik's health check ({interval} s + {timeout} s) surely saw it"
            );
            // Traefik rebuilds its routes on every container event and starts its own check
            // over; only Docker's `unhealthy` keeps a draining container out for good, and it
            // must come (retries failed probes, then Traefik's reload) before the drain ends.
            let docker_interval = seconds(&block, "interval");
            let retries = seconds(&block, "retries");
            assert!(
                drain > docker_interval * retries + f64::from(SWITCH_SETTLE_SECONDS),
                "{service}: a drain of {drain} s ends before Docker calls it unhealthy ({retries} probes every {docker_interval} s) and Traefik drops it"
            );
            let stop = seconds(&block, "stop_grace_period");
            assert_eq!(stop, f64::from(STOP_GRACE_SECONDS), "{service}");
            assert!(
                stop > drain + grace + pool_close,
                "{service}: stop_grace_period {stop} s is not above drain {drain} s + in-flight {grace} s + {pool_close} s"
            );
            assert!(
                block.iter().any(|line| line.trim() == "healthcheck:"),
                "{service} has no health check: the switch could not tell when it is ready"
            );
        }
        for (service, name) in [
            ("postgres", "timemanager-postgres"),
            ("traefik", "timemanager-traefik"),
        ] {
            let block = service_block(&text, service);
            assert!(
                block.contains(&format!("    container_name: {name}").as_str()),
                "{service} lost its fixed name {name}"
            );
        }
    }

    #[test]
    fn finds_every_form_of_reference_and_skips_escapes() {
        let refs =
            var_refs("a: ${A}\nb: ${B:-x y}/${C-}\nc: $${NOT} $$NOT2 ${D:?D is required} $E.");
        let expected = [
            VarRef {
                name: "A",
                default: None,
            },
            VarRef {
                name: "B",
                default: Some("x y"),
            },
            VarRef {
                name: "C",
                default: Some(""),
            },
            VarRef {
                name: "D",
                default: None,
            },
            VarRef {
                name: "E",
                default: None,
            },
        ];
        assert_eq!(refs, expected);
        assert_eq!(
            without_comments("# ${X}\na: 1 # ${Y}\nb: ${Z}"),
            "a: 1\nb: ${Z}"
        );
    }
}
