//! What a deploy needs from flags and the environment, read and checked all at once,
//! before anything connects or changes: a missing setting is reported with all the others.

use std::path::PathBuf;

use crate::{
    deploy::{
        compose::EnvVar,
        secrets::{Redactor, Secret},
    },
    flags,
    registry::{credentials, reference},
};

/// Reads one environment variable; empty counts as unset (CI renders a missing secret as "").
pub(crate) type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub(crate) fn from_process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// Everything wrong with the settings, reported together.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    pub(crate) missing: Vec<String>,
    pub(crate) invalid: Vec<String>,
}

impl Problems {
    pub(crate) fn into_result(self) -> anyhow::Result<()> {
        if self.missing.is_empty() && self.invalid.is_empty() {
            return Ok(());
        }
        let mut message = String::from("the deploy cannot start:");
        if !self.missing.is_empty() {
            message.push_str("\n  missing settings (set them in the environment, or as GitHub secrets and variables of the `production` environment):");
            for name in &self.missing {
                message.push_str(&format!("\n    {name}"));
            }
        }
        for problem in &self.invalid {
            message.push_str(&format!("\n  {problem}"));
        }
        Err(anyhow::format_err!(message))
    }
}

/// How to reach the server over ssh.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) user: String,
    pub(crate) port: u16,
    pub(crate) identity: Identity,
    pub(crate) host_keys: HostKeys,
    /// Base directory on the server (`/opt/timemanager`).
    pub(crate) base: String,
    /// Compose project name (`timemanager`).
    pub(crate) project: String,
    /// From `TM_COMPOSE` (a test seam): which compose the server's scripts run.
    pub(crate) compose: ComposeChoice,
}

/// Which compose the server's scripts run: `docker compose` (v2, the CLI plugin) when the
/// server has it, else `docker-compose` (v1), unless `TM_COMPOSE=v1|v2` on the deploying
/// machine forces one (labs that have both test each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum ComposeChoice {
    #[default]
    Detect,
    V1,
    V2,
}

impl ComposeChoice {
    /// `TM_COMPOSE`'s value: `v1`, `v2`, or unset.
    pub(crate) fn parse(value: Option<&str>) -> Result<ComposeChoice, String> {
        match value {
            None => Ok(ComposeChoice::Detect),
            Some("v1") => Ok(ComposeChoice::V1),
            Some("v2") => Ok(ComposeChoice::V2),
            Some(other) => Err(format!(
                "TM_COMPOSE must be `v1` (docker-compose) or `v2` (docker compose), got `{other}`"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Identity {
    /// Whatever ssh finds by itself: ssh-agent, `~/.ssh/config`, default key files.
    Agent,
    File(PathBuf),
    /// Key text from `HETZNER_SSH_KEY`, written to a 0600 file only while ssh authenticates.
    Text(Secret),
}

#[derive(Debug, Clone)]
pub(crate) enum HostKeys {
    File(PathBuf),
    /// known_hosts lines from `HETZNER_KNOWN_HOSTS`.
    Text(String),
    /// Trust on first use, with a warning: the key is recorded in `~/.ssh/known_hosts`.
    AcceptNew,
}

impl Target {
    pub(crate) fn destination(&self) -> String {
        format!("{}@{}", self.user, self.host)
    }

    /// `root@host:22`, for messages.
    pub(crate) fn display(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }

    /// [`Target::display`], or `<HETZNER_HOST>` while no host is set (a dry run's header).
    pub(crate) fn display_or_placeholder(&self) -> String {
        if self.host.is_empty() {
            "<HETZNER_HOST>".to_owned()
        } else {
            self.display()
        }
    }
}

/// Reads the ssh target; problems are added to `problems`.
pub(crate) fn target(
    server: &flags::Server,
    env: Lookup<'_>,
    problems: &mut Problems,
    redactor: &mut Redactor,
) -> Target {
    let host = server.host.clone().or_else(|| env("HETZNER_HOST"));
    if host.is_none() {
        problems
            .missing
            .push("HETZNER_HOST (or --host): the server's address".to_owned());
    }
    let identity = match (&server.identity, env("HETZNER_SSH_KEY")) {
        (Some(file), _) => Identity::File(file.clone()),
        (None, Some(text)) => {
            let key = Secret::new(text);
            redactor.add(&key);
            Identity::Text(key)
        }
        (None, None) => Identity::Agent,
    };
    let host_keys = match (&server.known_hosts, env("HETZNER_KNOWN_HOSTS")) {
        (Some(file), _) => HostKeys::File(file.clone()),
        (None, Some(text)) => HostKeys::Text(text),
        (None, None) => HostKeys::AcceptNew,
    };
    if !is_safe_path(&server.remote_dir) || !server.remote_dir.starts_with('/') {
        problems.invalid.push(format!(
            "--remote-dir must be an absolute path of letters, digits, `/`, `.`, `_` and `-`, got `{}`",
            server.remote_dir
        ));
    }
    if !is_name(&server.compose_project) {
        problems.invalid.push(format!(
            "the compose project name must be lower-case letters, digits, `_` and `-`, got `{}`",
            server.compose_project
        ));
    }
    let compose = ComposeChoice::parse(env("TM_COMPOSE").as_deref()).unwrap_or_else(|problem| {
        problems.invalid.push(problem);
        ComposeChoice::Detect
    });
    Target {
        host: host.unwrap_or_default(),
        user: server.user.clone(),
        port: server.port,
        identity,
        host_keys,
        base: server.remote_dir.trim_end_matches('/').to_owned(),
        project: server.compose_project.clone(),
        compose,
    }
}

/// One line of the release's `.env`.
#[derive(Debug, Clone)]
pub(crate) struct EnvLine {
    pub(crate) name: &'static str,
    pub(crate) value: EnvValue,
}

#[derive(Debug, Clone)]
pub(crate) enum EnvValue {
    Plain(String),
    Secret(Secret),
}

/// Registry login for the server's pull: the registry's one credentials type.
pub(crate) use crate::registry::Credentials;

/// What a new release is made of, besides its files.
#[derive(Debug, Clone)]
pub(crate) struct ReleaseSettings {
    pub(crate) tag: String,
    /// `ghcr.io`, or a test registry's `127.0.0.1:PORT`.
    pub(crate) registry: String,
    /// `owner/repo`, lower-cased: image paths must be.
    pub(crate) repository: String,
    pub(crate) env: Vec<EnvLine>,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) profiles: Vec<String>,
    /// `https://$DOMAIN/api/health`, or `--health-url`.
    pub(crate) health_url: String,
}

/// The services whose images this repository builds, named like the compose services.
pub(crate) const OWN_SERVICES: &[&str] = &["backend", "frontend"];

impl ReleaseSettings {
    /// `REGISTRY/owner/repo/SERVICE:TAG`, as the compose file spells it.
    pub(crate) fn image_ref(&self, service: &str) -> String {
        format!("{}:{}", self.repository_of(service), self.tag)
    }

    /// `REGISTRY/owner/repo/SERVICE`, the name in `RepoDigests`.
    pub(crate) fn repository_of(&self, service: &str) -> String {
        format!("{}/{}/{service}", self.registry, self.repository)
    }

    #[cfg(test)]
    pub(crate) fn env_value(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|line| line.name == name)
            .and_then(|line| match &line.value {
                EnvValue::Plain(value) => Some(value.as_str()),
                EnvValue::Secret(_) => None,
            })
    }
}

/// Reads the release's settings: every variable of `vars` (`compose::ENV_VARS` for the
/// compose file; swarm mode passes the ones its stack reads), the registry credentials and
/// the health URL.
pub(crate) fn release(
    vars: &[EnvVar],
    tag: &str,
    profiles: &[String],
    health_url: Option<&str>,
    env: Lookup<'_>,
    problems: &mut Problems,
    redactor: &mut Redactor,
) -> ReleaseSettings {
    if !is_commit_tag(tag) {
        problems.invalid.push(format!(
            "the tag must be a 7-character commit hash (the immutable image tag), got `{tag}`{}",
            if tag.ends_with("-dirty") {
                ": commit your changes first, or deploy an existing tag with `--no-push --tag TAG`"
            } else {
                ""
            }
        ));
    }
    let mut lines = Vec::new();
    for var in vars {
        let found = match var.name {
            "IMAGE_TAG" => Some(tag.to_owned()),
            "GITHUB_REPOSITORY" => env(var.name)
                .or_else(|| {
                    crate::project::REPOSITORY_URL
                        .strip_prefix("https://github.com/")
                        .map(str::to_owned)
                })
                .map(|repo| repo.to_ascii_lowercase()),
            name => env(name).or_else(|| var.default.map(str::to_owned)),
        };
        let Some(value) = found else {
            problems.missing.push(var.name.to_owned());
            continue;
        };
        if let Some(reason) = dotenv_problem(&value) {
            // Never the value itself: it may be a secret.
            problems.invalid.push(format!("{} {reason}", var.name));
            continue;
        }
        let value = if var.secret {
            let secret = Secret::new(value);
            redactor.add(&secret);
            EnvValue::Secret(secret)
        } else {
            EnvValue::Plain(value)
        };
        lines.push(EnvLine {
            name: var.name,
            value,
        });
    }
    let plain = |name: &str| {
        lines
            .iter()
            .find(|line| line.name == name)
            .and_then(|line| match &line.value {
                EnvValue::Plain(value) => Some(value.clone()),
                EnvValue::Secret(_) => None,
            })
    };
    let registry = plain("REGISTRY").unwrap_or_else(|| "ghcr.io".to_owned());
    if reference::validate_host(&registry).is_err() {
        problems.invalid.push(format!(
            "REGISTRY must be a registry host such as `ghcr.io` or `127.0.0.1:5000`, got `{registry}`"
        ));
    }
    let repository = plain("GITHUB_REPOSITORY").unwrap_or_default();
    let credentials = credentials(env, problems, redactor);
    for profile in profiles {
        if !is_name(profile) {
            problems.invalid.push(format!(
                "--profile takes a compose profile name such as `monitoring`, got `{profile}`"
            ));
        }
    }
    let health_url = match (health_url, plain("DOMAIN")) {
        (Some(url), _) => url.to_owned(),
        (None, Some(domain)) => format!("https://{domain}/api/health"),
        (None, None) => String::new(),
    };
    ReleaseSettings {
        tag: tag.to_owned(),
        registry,
        repository,
        env: lines,
        credentials,
        profiles: profiles.to_vec(),
        health_url,
    }
}

/// The registry's lookup order (`registry::credentials::lookup_with`: `REGISTRY_USERNAME`
/// and `REGISTRY_PASSWORD` together, else for ghcr.io `GHCR_TOKEN` or `GITHUB_TOKEN` with
/// `GITHUB_ACTOR`), without the docker config: the server pulls with these, so they must
/// be explicit, never borrowed from this machine's `docker login`.
pub(crate) fn credentials(
    env: Lookup<'_>,
    problems: &mut Problems,
    redactor: &mut Redactor,
) -> Option<Credentials> {
    let host = env("REGISTRY").unwrap_or_else(|| "ghcr.io".to_owned());
    let no_helpers = &mut |_: &str, _: &str| Ok(None);
    match credentials::lookup_with(env, &host.to_ascii_lowercase(), None, no_helpers) {
        Ok(Some(credentials)) => {
            redactor.add(&credentials.secret);
            Some(credentials)
        }
        Ok(None) => {
            problems
                .missing
                .push("GITHUB_ACTOR (or REGISTRY_USERNAME): the registry user".to_owned());
            problems
                .missing
                .push("GHCR_TOKEN (or REGISTRY_PASSWORD): the registry token".to_owned());
            None
        }
        Err(err) => {
            problems.invalid.push(format!("{err:#}"));
            None
        }
    }
}

/// Why a value cannot be written to `.env` the same way for docker-compose v1 and v2, if so.
///
/// Values are single-quoted, which both read literally (no `$` interpolation, `#` kept);
/// a quote, a backslash or a newline inside would be read differently by the two.
fn dotenv_problem(value: &str) -> Option<&'static str> {
    if value.contains(['\'', '\\', '\n', '\r', '\0']) {
        Some(
            "contains a single quote, backslash or newline, which docker-compose v1 and v2 read differently in `.env`: choose a value without them",
        )
    } else {
        None
    }
}

/// A short commit hash: what `build` tags images with on a clean checkout.
pub(crate) fn is_commit_tag(tag: &str) -> bool {
    tag.len() == 7
        && tag
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A release tag already on the server (rollback accepts any tag it finds there): the
/// registry's tag grammar.
pub(crate) fn is_tag(tag: &str) -> bool {
    reference::validate_tag(tag).is_ok()
}

/// Compose service and profile names, project names.
pub(crate) fn is_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

/// Paths interpolated into remote scripts are quoted anyway; this keeps them boring.
fn is_safe_path(path: &str) -> bool {
    !path.is_empty()
        && !path.split('/').any(|part| part == "..")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::deploy::compose::ENV_VARS;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name: &str| map.get(name).cloned().filter(|v| !v.is_empty())
    }

    pub(crate) const FULL: &[(&str, &str)] = &[
        ("DOMAIN", "tm.example.com"),
        ("ACME_EMAIL", "ops@example.com"),
        ("GITHUB_REPOSITORY", "Yassine-El-Gherrabi/Time-Manager"),
        ("POSTGRES_PASSWORD", "pg-secret-value"),
        ("GRAFANA_PASSWORD", "grafana-secret-value"),
        ("GITHUB_ACTOR", "octocat"),
        ("GHCR_TOKEN", "ghcr-token-value"),
    ];

    #[test]
    fn every_missing_setting_is_listed_at_once() {
        let env = lookup(&[("DOMAIN", "tm.example.com"), ("POSTGRES_PASSWORD", "")]);
        let mut problems = Problems::default();
        let mut redactor = Redactor::default();
        release(
            ENV_VARS,
            "abc1234",
            &[],
            None,
            &env,
            &mut problems,
            &mut redactor,
        );
        let message = format!("{:#}", problems.into_result().unwrap_err());
        for name in [
            "ACME_EMAIL",
            "POSTGRES_PASSWORD",
            "GRAFANA_PASSWORD",
            "GHCR_TOKEN",
            "GITHUB_ACTOR",
        ] {
            assert!(message.contains(name), "{name} not in {message}");
        }
        assert!(!message.contains("DOMAIN\n"), "{message}");
    }

    #[test]
    fn release_settings_lowercase_the_repository_and_hide_secrets() {
        let env = lookup(FULL);
        let mut problems = Problems::default();
        let mut redactor = Redactor::default();
        let settings = release(
            ENV_VARS,
            "abc1234",
            &["monitoring".to_owned()],
            None,
            &env,
            &mut problems,
            &mut redactor,
        );
        problems.into_result().unwrap();
        assert_eq!(settings.repository, "yassine-el-gherrabi/time-manager");
        assert_eq!(
            settings.image_ref("backend"),
            "ghcr.io/yassine-el-gherrabi/time-manager/backend:abc1234"
        );
        assert_eq!(settings.health_url, "https://tm.example.com/api/health");
        assert_eq!(settings.env.len(), ENV_VARS.len());
        assert_eq!(settings.env_value("IMAGE_TAG"), Some("abc1234"));
        assert_eq!(settings.env_value("POSTGRES_USER"), Some("timemanager"));
        assert_eq!(settings.env_value("POSTGRES_PASSWORD"), None, "secret");
        assert_eq!(
            redactor.redact("pg-secret-value ghcr-token-value grafana-secret-value"),
            "<redacted> <redacted> <redacted>"
        );
        assert!(!format!("{settings:?}").contains("secret-value"));
    }

    #[test]
    fn dirty_tags_and_unportable_values_are_refused_without_printing_values() {
        let mut vars = FULL.to_vec();
        vars.push(("SMTP_PASSWORD", "it's-secret"));
        let env = lookup(&vars);
        let mut problems = Problems::default();
        release(
            ENV_VARS,
            "abc1234-dirty",
            &[],
            None,
            &env,
            &mut problems,
            &mut Redactor::default(),
        );
        let message = format!("{:#}", problems.into_result().unwrap_err());
        assert!(message.contains("commit your changes first"), "{message}");
        assert!(message.contains("SMTP_PASSWORD contains"), "{message}");
        assert!(!message.contains("it's-secret"), "{message}");
    }

    #[test]
    fn names_and_tags() {
        assert!(is_commit_tag("0f2eb79"));
        assert!(!is_commit_tag("0F2EB79"));
        assert!(!is_commit_tag("0f2eb79-dirty"));
        assert!(is_tag("v1.2.3") && is_tag("0f2eb79"));
        assert!(!is_tag("../x") && !is_tag("a b") && !is_tag("-rf"));
        assert!(is_name("monitoring") && !is_name("Mon") && !is_name("a;b"));
        assert!(is_safe_path("/opt/timemanager") && !is_safe_path("/opt/../etc"));
        assert!(!is_safe_path("/opt/time manager"));
    }

    #[test]
    fn tm_compose_forces_one_compose_or_is_refused() {
        let server = flags::Server {
            host: Some("203.0.113.7".to_owned()),
            user: "root".to_owned(),
            port: 22,
            identity: None,
            known_hosts: None,
            remote_dir: "/opt/timemanager".to_owned(),
            compose_project: "timemanager".to_owned(),
            mode: None,
        };
        for (value, expected) in [
            ("", ComposeChoice::Detect),
            ("v1", ComposeChoice::V1),
            ("v2", ComposeChoice::V2),
        ] {
            let mut problems = Problems::default();
            let vars = [("TM_COMPOSE", value)];
            let env = lookup(&vars);
            let found = target(&server, &env, &mut problems, &mut Redactor::default());
            assert_eq!(found.compose, expected);
            problems.into_result().unwrap();
        }
        let mut problems = Problems::default();
        let vars = [("TM_COMPOSE", "docker-compose")];
        let env = lookup(&vars);
        target(&server, &env, &mut problems, &mut Redactor::default());
        let message = format!("{:#}", problems.into_result().unwrap_err());
        assert!(message.contains("TM_COMPOSE must be `v1`"), "{message}");
    }
}
