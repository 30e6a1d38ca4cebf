//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) on a
//! loopback port, with no auth, htpasswd Basic auth, or token auth against the
//! [`TokenServer`] run here. `FaultProxy` (in `fault_proxy.rs`) can stand in front of it.

use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::json;
use xshell::{Shell, cmd};

use crate::{
    digest::base64,
    harness::{daemon::Daemon, http, postgres::free_port, token_server::TokenServer},
    provision::{self, Need},
    registry::Credentials,
};

pub(crate) const DOCKER_REGISTRY: Need = Need {
    program: "docker-registry",
    package: "docker-registry",
};
pub(crate) const HTPASSWD: Need = Need {
    program: "htpasswd",
    package: "apache2-utils",
};
pub(crate) const OPENSSL: Need = Need {
    program: "openssl",
    package: "openssl",
};

/// How clients authenticate to the registry.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    /// Anyone may push. This one also answers with relative `Location` headers.
    None,
    /// Basic auth from an htpasswd file (bcrypt).
    Htpasswd { user: String, password: String },
    /// Bearer tokens from [`TokenServer`], which knows one user.
    Token { user: String, password: String },
}

/// A running registry; dropping it stops it (and its token server) and deletes its data.
pub(crate) struct TestRegistry {
    pub(crate) addr: SocketAddr,
    /// The user and password of [`Auth`], if any.
    pub(crate) credentials: Option<Credentials>,
    pub(crate) token_server: Option<TokenServer>,
    daemon: Option<Daemon>,
    dir: PathBuf,
}

impl TestRegistry {
    pub(crate) fn start(sh: &Shell, auth: Auth) -> anyhow::Result<TestRegistry> {
        TestRegistry::start_on(sh, auth, IpAddr::from([127, 0, 0, 1]))
    }

    /// The same on another address of this host: the swarm lab's nodes, each in its own
    /// network namespace, reach the host on their bridge, not on loopback.
    pub(crate) fn start_on(sh: &Shell, auth: Auth, ip: IpAddr) -> anyhow::Result<TestRegistry> {
        let mut needs = vec![DOCKER_REGISTRY];
        match auth {
            Auth::None => (),
            Auth::Htpasswd { .. } => needs.push(HTPASSWD),
            Auth::Token { .. } => needs.push(OPENSSL),
        }
        provision::ensure(sh, &needs)?;
        let program =
            provision::find_program("docker-registry").context("docker-registry not found")?;
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!(
            "timemanager-registry-{}-{port}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut registry = TestRegistry {
            addr: SocketAddr::from((ip, port)),
            credentials: None,
            token_server: None,
            daemon: None,
            dir: dir.clone(),
        };
        let (auth_config, relative_urls) = match &auth {
            Auth::None => (String::new(), true),
            Auth::Htpasswd { user, password } => {
                let file = dir.join("htpasswd");
                // `-i`: the password comes on stdin, never in argv.
                cmd!(sh, "htpasswd -B -i -c {file} {user}")
                    .stdin(password)
                    .quiet()
                    .secret()
                    .ignore_stderr()
                    .run()
                    .context("htpasswd")?;
                registry.credentials = Some(Credentials::new(user, password, "test registry"));
                (
                    format!(
                        "auth:\n  htpasswd:\n    realm: basic-realm\n    path: \"{}\"\n",
                        file.display()
                    ),
                    false,
                )
            }
            Auth::Token { user, password } => {
                let server = TokenServer::start(sh, &dir, user, password)?;
                let config = server.registry_config();
                registry.token_server = Some(server);
                registry.credentials = Some(Credentials::new(user, password, "test registry"));
                (config, false)
            }
        };
        let config = format!(
            concat!(
                "version: 0.1\n",
                "log:\n  level: warn\n  accesslog:\n    disabled: true\n",
                "storage:\n  filesystem:\n    rootdirectory: \"{data}\"\n  delete:\n    enabled: true\n",
                "  maintenance:\n    uploadpurging:\n      enabled: false\n",
                "http:\n  addr: {addr}\n  secret: fixed-test-secret\n  relativeurls: {relative}\n",
                "{auth}",
            ),
            data = dir.join("data").display(),
            addr = registry.addr,
            relative = relative_urls,
            auth = auth_config,
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config)?;
        let args = ["serve".to_owned(), config_path.display().to_string()];
        registry.daemon = Some(Daemon::start(sh, &dir, "registry", &program, &args)?);
        registry.wait_ready()?;
        Ok(registry)
    }

    /// `127.0.0.1:PORT` (or the address it was started on): what `--registry` takes.
    pub(crate) fn host(&self) -> String {
        self.addr.to_string()
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let url = format!("http://{}/v2/", self.addr);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match http::get(&url, &[]) {
                Ok(res) if matches!(res.status, 200 | 401) => return Ok(()),
                _ if Instant::now() > deadline => {
                    let log = self
                        .daemon
                        .as_ref()
                        .map(Daemon::log_tail)
                        .unwrap_or_default();
                    bail!("docker-registry did not answer {url} within 30 s; its log ends:\n{log}");
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Writes `<dir>/config.json` in docker's format holding this registry's credentials,
    /// for `skopeo --authfile` and `docker --config`: the password never goes in argv.
    pub(crate) fn write_docker_config(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("config.json");
        let auths = match &self.credentials {
            Some(creds) => {
                let pair = format!("{}:{}", creds.username, creds.secret.expose());
                json!({ self.host(): { "auth": base64::encode(pair.as_bytes()) } })
            }
            None => json!({}),
        };
        write_private(&path, json!({ "auths": auths }).to_string().as_bytes())?;
        Ok(path)
    }

    /// The end of the registry's log, for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        self.daemon
            .as_ref()
            .map(Daemon::log_tail)
            .unwrap_or_default()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        drop(self.daemon.take());
        drop(self.token_server.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing `{}`", path.display()))?;
    file.write_all(contents)?;
    Ok(())
}
