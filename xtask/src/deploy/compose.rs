//! The compose contract between the deploy and `docker-compose.prod.yml`: the file, the
//! project name, and every variable the file reads, i.e. every line of the `.env` the deploy
//! writes (a test keeps the list and the file equal).

pub(crate) const COMPOSE_FILE: &str = "docker-compose.prod.yml";

/// The compose project name the deploy uses, so volumes survive new release directories.
pub(crate) const COMPOSE_PROJECT: &str = "timemanager";

/// One variable docker-compose.prod.yml interpolates, i.e. one line of the `.env` the deploy writes.
#[derive(Debug)]
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
