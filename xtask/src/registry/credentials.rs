//! Registry credentials: where they come from, and how they stay out of logs.
//!
//! First found wins: `REGISTRY_USERNAME`/`REGISTRY_PASSWORD`; for ghcr.io `GHCR_TOKEN`
//! (or `GITHUB_TOKEN`) with `GITHUB_ACTOR`; the docker config (`$DOCKER_CONFIG/config.json`
//! or `~/.docker/config.json`): `credHelpers`, then `credsStore`, then `auths`; anonymous.

use std::{collections::BTreeMap, fmt, path::PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;
use xshell::{Shell, cmd};

use crate::digest::base64;

/// A password or token. `Debug` prints `<redacted>`; there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The only way to the value: call sites are easy to audit.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// The one placeholder for a masked secret, in `Debug` output and in redacted text alike.
pub(crate) const REDACTED: &str = "<redacted>";

/// Replaces every known secret value in text that is printed: registry error bodies,
/// remote output, container logs. A second line of defence: secrets are not supposed to
/// get there.
#[derive(Debug, Default, Clone)]
pub(crate) struct Redactor {
    /// Longest first, so a secret that contains another is replaced whole.
    values: Vec<Secret>,
}

impl Redactor {
    pub(crate) fn add(&mut self, secret: &Secret) {
        // Multi-line secrets (a private key) are matched line by line: output is printed by line.
        for line in secret.expose().lines() {
            let line = line.trim();
            // Very short fragments (a key's `-----` fences cut by `trim`) would mangle output.
            if line.len() >= 4 && !self.values.iter().any(|known| known.expose() == line) {
                self.values.push(Secret::new(line));
            }
        }
        self.values
            .sort_by_key(|value| std::cmp::Reverse(value.expose().len()));
    }

    pub(crate) fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for value in &self.values {
            if text.contains(value.expose()) {
                text = text.replace(value.expose(), REDACTED);
            }
        }
        text
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) username: String,
    pub(crate) secret: Secret,
    /// An identity (refresh) token from `docker login`, exchanged with an OAuth2 POST,
    /// rather than a password.
    pub(crate) identity_token: bool,
    /// Where they were found, for error messages: `REGISTRY_USERNAME/REGISTRY_PASSWORD`.
    pub(crate) source: String,
}

impl Credentials {
    pub(crate) fn new(username: &str, password: &str, source: &str) -> Credentials {
        Credentials {
            username: username.to_owned(),
            secret: Secret::new(password),
            identity_token: false,
            source: source.to_owned(),
        }
    }

    /// The `Authorization` header value for Basic auth.
    pub(crate) fn basic_header(&self) -> Secret {
        let pair = format!("{}:{}", self.username, self.secret.expose());
        Secret::new(format!("Basic {}", base64::encode(pair.as_bytes())))
    }
}

/// Looks credentials up for `host` in the environment, the docker config and its helpers.
pub(crate) fn lookup(sh: &Shell, host: &str) -> anyhow::Result<Option<Credentials>> {
    let env = |name: &str| sh.var(name).ok().filter(|value| !value.is_empty());
    let config = match docker_config_path(&env) {
        Some(path) if path.is_file() => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading `{}`", path.display()))?;
            Some(DockerConfig::parse(&text, path)?)
        }
        _ => None,
    };
    lookup_with(&env, host, config.as_ref(), &mut |helper, server| {
        run_helper(sh, helper, server)
    })
}

/// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
fn docker_config_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    match env("DOCKER_CONFIG") {
        Some(dir) => Some(PathBuf::from(dir).join("config.json")),
        None => env("HOME").map(|home| PathBuf::from(home).join(".docker/config.json")),
    }
}

/// The lookup order, with the environment, the parsed config and the helper runner
/// passed in so tests need neither a real environment nor helper programs.
pub(crate) fn lookup_with(
    env: &dyn Fn(&str) -> Option<String>,
    host: &str,
    config: Option<&DockerConfig>,
    helper: &mut dyn FnMut(&str, &str) -> anyhow::Result<Option<Credentials>>,
) -> anyhow::Result<Option<Credentials>> {
    match (env("REGISTRY_USERNAME"), env("REGISTRY_PASSWORD")) {
        (Some(user), Some(password)) => {
            return Ok(Some(Credentials::new(
                &user,
                &password,
                "REGISTRY_USERNAME/REGISTRY_PASSWORD",
            )));
        }
        (None, None) => (),
        (Some(_), None) => bail!("REGISTRY_USERNAME is set but REGISTRY_PASSWORD is not: set both"),
        (None, Some(_)) => bail!("REGISTRY_PASSWORD is set but REGISTRY_USERNAME is not: set both"),
    }
    if host == "ghcr.io" {
        for variable in ["GHCR_TOKEN", "GITHUB_TOKEN"] {
            if let Some(token) = env(variable) {
                // GHCR identifies the caller by the token; the user name only has to be there.
                let user = env("GITHUB_ACTOR").unwrap_or_else(|| "token".to_owned());
                return Ok(Some(Credentials::new(
                    &user,
                    &token,
                    &format!("{variable} (user GITHUB_ACTOR)"),
                )));
            }
        }
    }
    let Some(config) = config else {
        return Ok(None);
    };
    let server = helper_server_url(host);
    if let Some(name) = config
        .cred_helpers
        .get(host)
        .or(config.cred_helpers.get(&server))
    {
        return helper(name, &server);
    }
    if let Some(store) = &config.creds_store
        && let Some(found) = helper(store, &server)?
    {
        return Ok(Some(found));
    }
    Ok(config.auth_for(host))
}

/// The server URL docker's helpers store Docker Hub under; other registries by host.
fn helper_server_url(host: &str) -> String {
    if is_docker_hub(host) {
        "https://index.docker.io/v1/".to_owned()
    } else {
        host.to_owned()
    }
}

fn is_docker_hub(host: &str) -> bool {
    matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

/// What push reads from a docker `config.json`.
#[derive(Debug, Default)]
pub(crate) struct DockerConfig {
    path: PathBuf,
    auths: BTreeMap<String, Value>,
    creds_store: Option<String>,
    cred_helpers: BTreeMap<String, String>,
}

impl DockerConfig {
    pub(crate) fn parse(text: &str, path: PathBuf) -> anyhow::Result<DockerConfig> {
        let json: Value = serde_json::from_str(text)
            .with_context(|| format!("`{}` is not valid JSON", path.display()))?;
        let strings = |value: &Value| -> BTreeMap<String, String> {
            value
                .as_object()
                .map(|map| {
                    map.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(DockerConfig {
            auths: json["auths"]
                .as_object()
                .map(|map| map.clone().into_iter().collect())
                .unwrap_or_default(),
            creds_store: json["credsStore"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            cred_helpers: strings(&json["credHelpers"]),
            path,
        })
    }

    /// The `auths` entry for `host`, matching keys written as `host`, `https://host` or
    /// `https://host/v1/`.
    fn auth_for(&self, host: &str) -> Option<Credentials> {
        let key_host = |key: &str| {
            let key = key
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            key.split('/').next().unwrap_or(key).to_ascii_lowercase()
        };
        let (_, entry) = self.auths.iter().find(|(key, _)| {
            let key = key_host(key);
            key == host || (is_docker_hub(host) && is_docker_hub(&key))
        })?;
        let source = format!("`auths` in `{}`", self.path.display());
        if let Some(token) = entry["identitytoken"].as_str().filter(|t| !t.is_empty()) {
            return Some(Credentials {
                username: entry["username"].as_str().unwrap_or_default().to_owned(),
                secret: Secret::new(token),
                identity_token: true,
                source,
            });
        }
        if let Some(auth) = entry["auth"].as_str().filter(|a| !a.is_empty()) {
            let decoded = String::from_utf8(base64::decode(auth)?).ok()?;
            let (user, password) = decoded.split_once(':')?;
            return Some(Credentials::new(user, password, &source));
        }
        let user = entry["username"].as_str()?;
        let password = entry["password"].as_str()?;
        Some(Credentials::new(user, password, &source))
    }
}

/// Runs `docker-credential-<helper> get` with the server URL on stdin (the helper
/// protocol); the secret comes back on stdout and never touches argv or the log.
fn run_helper(sh: &Shell, helper: &str, server: &str) -> anyhow::Result<Option<Credentials>> {
    if helper.is_empty()
        || !helper
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        bail!("docker config names an invalid credential helper `{helper}`");
    }
    let program = format!("docker-credential-{helper}");
    let output = cmd!(sh, "{program} get")
        .stdin(server)
        .quiet()
        .secret()
        .ignore_status()
        .output()
        .with_context(|| {
            format!("running `{program}` (named in the docker config): is it installed?")
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stdout.contains("credentials not found") || stderr.contains("credentials not found") {
            return Ok(None);
        }
        bail!(
            "`{program} get` failed for {server}: {}",
            stderr.lines().next().unwrap_or("no message")
        );
    }
    parse_helper_output(&stdout, &program)
}

/// `{"ServerURL": "...", "Username": "...", "Secret": "..."}`; user `<token>` marks an
/// identity token.
fn parse_helper_output(stdout: &str, program: &str) -> anyhow::Result<Option<Credentials>> {
    let json: Value = serde_json::from_str(stdout)
        .map_err(|_| anyhow::format_err!("`{program} get` did not print JSON"))?;
    let (Some(user), Some(secret)) = (json["Username"].as_str(), json["Secret"].as_str()) else {
        bail!("`{program} get` printed no `Username` and `Secret`");
    };
    if secret.is_empty() {
        return Ok(None);
    }
    let identity_token = user == "<token>";
    Ok(Some(Credentials {
        username: if identity_token {
            String::new()
        } else {
            user.to_owned()
        },
        secret: Secret::new(secret),
        identity_token,
        source: format!("`{program}`"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    fn no_helper(_: &str, _: &str) -> anyhow::Result<Option<Credentials>> {
        panic!("no helper expected")
    }

    fn config(text: &str) -> DockerConfig {
        DockerConfig::parse(text, PathBuf::from("config.json")).unwrap()
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let creds = Credentials::new("alice", "hunter2", "test");
        let debug = format!("{creds:?} {:?}", creds.basic_header());
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(
            !debug.contains(&base64::encode(b"alice:hunter2")),
            "{debug}"
        );
        assert!(debug.contains("<redacted>"));
        assert_eq!(
            creds.basic_header().expose(),
            format!("Basic {}", base64::encode(b"alice:hunter2"))
        );
    }

    #[test]
    fn precedence_registry_env_then_ghcr_token_then_docker_config() {
        let docker = config(&format!(
            r#"{{"auths":{{"ghcr.io":{{"auth":"{}"}}}}}}"#,
            base64::encode(b"cfg:cfgpass")
        ));
        let all = env_of(&[
            ("REGISTRY_USERNAME", "reg"),
            ("REGISTRY_PASSWORD", "regpass"),
            ("GHCR_TOKEN", "ghcr"),
            ("GITHUB_TOKEN", "gh"),
            ("GITHUB_ACTOR", "octocat"),
        ]);
        let found = lookup_with(&all, "ghcr.io", Some(&docker), &mut no_helper)
            .unwrap()
            .unwrap();
        assert_eq!(
            (found.username.as_str(), found.secret.expose()),
            ("reg", "regpass")
        );

        let ghcr = env_of(&[
            ("GHCR_TOKEN", "ghcr"),
            ("GITHUB_TOKEN", "gh"),
            ("GITHUB_ACTOR", "octocat"),
        ]);
        let found = lookup_with(&ghcr, "ghcr.io", Some(&docker), &mut no_helper)
            .unwrap()
            .unwrap();
        assert_eq!(
            (found.username.as_str(), found.secret.expose()),
            ("octocat", "ghcr")
        );

        let github = env_of(&[("GITHUB_TOKEN", "gh")]);
        let found = lookup_with(&github, "ghcr.io", None, &mut no_helper)
            .unwrap()
            .unwrap();
        assert_eq!(
            (found.username.as_str(), found.secret.expose()),
            ("token", "gh")
        );

        // GitHub tokens are for ghcr.io only.
        let found = lookup_with(&github, "127.0.0.1:5000", None, &mut no_helper).unwrap();
        assert_eq!(found, None);

        let found = lookup_with(&env_of(&[]), "ghcr.io", Some(&docker), &mut no_helper)
            .unwrap()
            .unwrap();
        assert_eq!(
            (found.username.as_str(), found.secret.expose()),
            ("cfg", "cfgpass")
        );
        assert_eq!(found.source, "`auths` in `config.json`");

        assert_eq!(
            lookup_with(&env_of(&[]), "ghcr.io", None, &mut no_helper).unwrap(),
            None
        );
    }

    #[test]
    fn half_set_registry_variables_are_an_error() {
        let err = lookup_with(
            &env_of(&[("REGISTRY_USERNAME", "u")]),
            "x",
            None,
            &mut no_helper,
        )
        .unwrap_err();
        assert!(err.to_string().contains("REGISTRY_PASSWORD"), "{err}");
    }

    #[test]
    fn docker_config_keys_passwords_and_identity_tokens() {
        let docker = config(
            r#"{"auths":{
                "https://index.docker.io/v1/":{"username":"hub","password":"hubpass"},
                "http://127.0.0.1:5000/v2/":{"auth":"bG9jYWw6cDphc3M="},
                "quay.io":{"username":"q","identitytoken":"refresh"},
                "empty.example":{}
            }}"#,
        );
        let get = |host| lookup_with(&env_of(&[]), host, Some(&docker), &mut no_helper).unwrap();
        let hub = get("docker.io").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.secret.expose()),
            ("hub", "hubpass")
        );
        // The password may contain `:`; the user name may not.
        let local = get("127.0.0.1:5000").unwrap();
        assert_eq!(
            (local.username.as_str(), local.secret.expose()),
            ("local", "p:ass")
        );
        let quay = get("quay.io").unwrap();
        assert!(quay.identity_token);
        assert_eq!(quay.secret.expose(), "refresh");
        assert_eq!(get("empty.example"), None);
        assert_eq!(get("127.0.0.1:5001"), None);
    }

    #[test]
    fn cred_helpers_win_over_creds_store_which_wins_over_auths() {
        let docker = config(
            r#"{"credsStore":"desktop","credHelpers":{"ghcr.io":"gh"},
                "auths":{"ghcr.io":{},"example.com":{"username":"a","password":"b"}}}"#,
        );
        let mut calls = Vec::new();
        let mut helper = |name: &str, server: &str| {
            calls.push(format!("{name} {server}"));
            Ok(match name {
                "gh" => Some(Credentials::new("h", "from-gh", "gh")),
                _ => None,
            })
        };
        let found = lookup_with(&env_of(&[]), "ghcr.io", Some(&docker), &mut helper)
            .unwrap()
            .unwrap();
        assert_eq!(found.secret.expose(), "from-gh");
        // The store has nothing for example.com: fall back to `auths`.
        let found = lookup_with(&env_of(&[]), "example.com", Some(&docker), &mut helper)
            .unwrap()
            .unwrap();
        assert_eq!(found.secret.expose(), "b");
        let found = lookup_with(&env_of(&[]), "docker.io", Some(&docker), &mut helper).unwrap();
        assert_eq!(found, None);
        assert_eq!(
            calls,
            [
                "gh ghcr.io",
                "desktop example.com",
                "desktop https://index.docker.io/v1/"
            ]
        );
    }

    #[test]
    fn helper_output_parsing() {
        let creds = parse_helper_output(
            r#"{"ServerURL":"ghcr.io","Username":"u","Secret":"s"}"#,
            "docker-credential-x",
        )
        .unwrap()
        .unwrap();
        assert_eq!((creds.username.as_str(), creds.secret.expose()), ("u", "s"));
        assert!(!creds.identity_token);
        let token = parse_helper_output(r#"{"Username":"<token>","Secret":"r"}"#, "h")
            .unwrap()
            .unwrap();
        assert!(token.identity_token);
        assert!(parse_helper_output("nope", "h").is_err());
    }

    /// The real helper protocol: `docker-credential-NAME get`, server URL on stdin, JSON out.
    #[test]
    fn credential_helper_gets_the_server_on_stdin_and_nothing_in_argv() {
        let dir = std::env::temp_dir().join(format!("xtask-helper-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("docker-credential-xtasktest");
        std::fs::write(
            &script,
            concat!(
                "#!/bin/sh\n",
                "[ \"$1\" = get ] && [ $# = 1 ] || exit 2\n",
                "read -r server\n",
                "case \"$server\" in\n",
                "  ghcr.io) printf '{\"ServerURL\":\"%s\",\"Username\":\"u\",\"Secret\":\"s3cret\"}' \"$server\" ;;\n",
                "  *) echo 'credentials not found in native keychain'; exit 1 ;;\n",
                "esac\n",
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sh = Shell::new().unwrap();
        let path = format!(
            "{}:{}",
            dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        sh.set_var("PATH", path);
        let creds = run_helper(&sh, "xtasktest", "ghcr.io").unwrap().unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.secret.expose()),
            ("u", "s3cret")
        );
        assert_eq!(creds.source, "`docker-credential-xtasktest`");
        assert_eq!(run_helper(&sh, "xtasktest", "quay.io").unwrap(), None);
        assert!(run_helper(&sh, "../evil", "ghcr.io").is_err());
        let missing = run_helper(&sh, "absent-helper", "ghcr.io").unwrap_err();
        assert!(
            format!("{missing:#}").contains("docker-credential-absent-helper"),
            "{missing:#}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn docker_config_location() {
        let env = env_of(&[("HOME", "/home/u")]);
        assert_eq!(
            docker_config_path(&env),
            Some(PathBuf::from("/home/u/.docker/config.json"))
        );
        let env = env_of(&[("HOME", "/home/u"), ("DOCKER_CONFIG", "/cfg")]);
        assert_eq!(
            docker_config_path(&env),
            Some(PathBuf::from("/cfg/config.json"))
        );
    }
}
