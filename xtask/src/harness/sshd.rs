//! An OpenSSH server for tests: Debian's `sshd` on a free loopback port, with a generated
//! host key and a generated client key for the current user (root in the e2e test).
//!
//! `LogLevel VERBOSE` logs one "Connection from" line per TCP connection, which is how the
//! tests check that a deploy opens exactly one.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::{
    harness::{daemon::Daemon, postgres::free_port},
    provision::{self, Need},
};

pub(crate) const SSHD: Need = Need {
    program: "sshd",
    package: "openssh-server",
};
pub(crate) const SSH: Need = Need {
    program: "ssh",
    package: "openssh-client",
};

/// A running sshd; dropping it stops the server and deletes its keys.
pub(crate) struct Sshd {
    pub(crate) port: u16,
    /// Private key (no passphrase) that `authorized_keys` accepts.
    pub(crate) client_key: PathBuf,
    /// `[127.0.0.1]:PORT <type> <key>`: the server's host key, for a pinned known_hosts.
    pub(crate) known_hosts: String,
    dir: PathBuf,
    daemon: Option<Daemon>,
}

impl Sshd {
    pub(crate) fn start(sh: &Shell) -> anyhow::Result<Sshd> {
        provision::ensure(sh, &[SSHD, SSH])?;
        // `sshd -D` re-executes itself, so it wants an absolute path; sbin may not be on PATH.
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .iter()
            .map(PathBuf::from)
            .find(|path| path.is_file())
            .or_else(|| provision::find_program("sshd"))
            .context("sshd not found")?;
        let port = free_port()?;
        let dir =
            std::env::temp_dir().join(format!("timemanager-sshd-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&dir)
                .with_context(|| format!("creating `{}`", dir.display()))?;
        }
        let host_key = dir.join("host_key");
        let client_key = dir.join("client_key");
        for (key, comment) in [(&host_key, "e2e-host"), (&client_key, "e2e-client")] {
            cmd!(sh, "ssh-keygen -q -t ed25519 -N '' -C {comment} -f {key}")
                .quiet()
                .run()
                .context("ssh-keygen")?;
        }
        let authorized = dir.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized)?;
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        let config = dir.join("sshd_config");
        std::fs::write(&config, config_text(port, &host_key, &authorized))?;
        let args: Vec<String> = vec![
            "-D".to_owned(),
            "-e".to_owned(),
            "-f".to_owned(),
            config.display().to_string(),
        ];
        let daemon = Daemon::start(sh, &dir, "sshd", &sshd, &args)?;
        let public = std::fs::read_to_string(host_key.with_extension("pub"))?;
        let mut fields = public.split_whitespace();
        let known_hosts = format!(
            "[127.0.0.1]:{port} {} {}\n",
            fields.next().unwrap_or_default(),
            fields.next().unwrap_or_default()
        );
        let server = Sshd {
            port,
            client_key,
            known_hosts,
            dir,
            daemon: Some(daemon),
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        // A probe connection would count as a connection: wait for the log line instead.
        while !self.log().contains("Server listening on 127.0.0.1") {
            if Instant::now() > deadline {
                bail!(
                    "sshd did not listen on 127.0.0.1:{} within 20 s; its log ends:\n{}",
                    self.port,
                    self.daemon
                        .as_ref()
                        .map(Daemon::log_tail)
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn log(&self) -> String {
        self.daemon
            .as_ref()
            .and_then(|daemon| std::fs::read_to_string(&daemon.log).ok())
            .unwrap_or_default()
    }

    /// Cuts every connection sshd serves, as a network failure would: SIGKILL to the sshd
    /// processes under the listener (one or two per connection), never to the listener or
    /// the programs the sessions run. Returns how many were killed.
    pub(crate) fn cut_connections(&self) -> anyhow::Result<usize> {
        let listener = self
            .daemon
            .as_ref()
            .context("sshd is not running")?
            .pid()
            .to_owned();
        // pid -> (parent, name), from /proc/PID/stat: "PID (NAME) STATE PPID ...".
        let mut processes = Vec::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let pid = stat[..open].trim().to_owned();
            let name = stat[open + 1..close].to_owned();
            let parent = stat[close + 1..]
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            processes.push((pid, parent, name));
        }
        let mut tree = vec![listener.clone()];
        let mut victims: Vec<String> = Vec::new();
        while let Some(parent) = tree.pop() {
            for (pid, ppid, name) in &processes {
                if *ppid == parent && name.starts_with("sshd") {
                    tree.push(pid.clone());
                    victims.push(pid.clone());
                }
            }
        }
        let killed = victims.len();
        if !victims.is_empty() {
            let sh = Shell::new()?;
            cmd!(sh, "kill -KILL {victims...}")
                .quiet()
                .ignore_status()
                .ignore_stderr()
                .run()?;
        }
        Ok(killed)
    }

    /// TCP connections sshd has accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.log()
            .lines()
            .filter(|line| line.contains("Connection from"))
            .count()
    }

    pub(crate) fn log_tail(&self) -> String {
        self.daemon
            .as_ref()
            .map(Daemon::log_tail)
            .unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        drop(self.daemon.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config_text(port: u16, host_key: &Path, authorized: &Path) -> String {
    format!(
        "# Test server on loopback only: key authentication, root allowed (as on a fresh VPS).
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
AuthorizedKeysFile {authorized}
PidFile none
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The keys live under /tmp, which is world-writable: StrictModes would refuse them.
StrictModes no
PrintMotd no
LogLevel VERBOSE
Subsystem sftp internal-sftp
",
        host_key = host_key.display(),
        authorized = authorized.display()
    )
}
