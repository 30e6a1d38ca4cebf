//! OpenSSH through xshell: one ControlMaster connection per run, on a socket in a private
//! directory, shared by every later `ssh` so a deploy opens one TCP connection.
//!
//! Scripts go to `bash -s` over stdin. Commands are built with `cmd!`; the few that must
//! stream (output while it happens, a lock held for the whole run) are spawned through
//! `std::process::Command::from`, because xshell only runs programs to completion.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::deploy::{
    scripts::Script,
    secrets::Redactor,
    settings::{HostKeys, Identity, Target},
};

/// What to do with the remote script's stdout besides returning it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stdout {
    /// Data for this program (`key=value` lines): returned only.
    Capture,
    /// Meant for people (`status`, `logs`): printed as it comes, and returned.
    Print,
}

/// An open connection to the server.
pub(crate) struct Session {
    target: Target,
    dir: PrivateDir,
    redactor: Redactor,
}

impl Session {
    /// Authenticates once and leaves a master connection in the background.
    pub(crate) fn open(
        sh: &Shell,
        target: &Target,
        redactor: &Redactor,
    ) -> anyhow::Result<Session> {
        let dir = PrivateDir::create()?;
        let session = Session {
            target: target.clone(),
            dir,
            redactor: redactor.clone(),
        };
        if let HostKeys::Text(text) = &target.host_keys {
            write_private(&session.known_hosts_path(), text.as_bytes())?;
        }
        if let HostKeys::AcceptNew = &target.host_keys {
            eprintln!(
                "warning: no pinned host key for {} (set HETZNER_KNOWN_HOSTS or --known-hosts): accepting the key ssh sees on first contact",
                target.host
            );
        }
        // The key exists on disk only while the master authenticates; the guard removes it
        // on every path out of this function, the directory's own guard after that.
        let key = match &target.identity {
            Identity::Text(key) => {
                let path = session.dir.path.join("id");
                let mut text = key.expose().trim().to_owned();
                text.push('\n');
                write_private(&path, text.as_bytes())?;
                Some(RemoveOnDrop(path))
            }
            Identity::File(_) | Identity::Agent => None,
        };
        let mut args = session.common_args();
        match (&key, &target.identity) {
            (Some(key), _) => args.extend(identity_args(&key.0)),
            (None, Identity::File(file)) => args.extend(identity_args(file)),
            _ => {}
        }
        let dest = target.destination();
        cmd!(
            sh,
            "ssh {args...} -o ControlMaster=yes -o ControlPersist=60 -f -N {dest}"
        )
        .quiet()
        .run()
        .with_context(|| {
            format!(
                "connecting to {} over ssh: check the address, the key ({}) and the host key ({})",
                target.display(),
                match &target.identity {
                    Identity::Agent => "ssh-agent or ~/.ssh",
                    Identity::File(_) => "--identity",
                    Identity::Text(_) => "HETZNER_SSH_KEY",
                },
                match &target.host_keys {
                    HostKeys::File(_) => "--known-hosts",
                    HostKeys::Text(_) => "HETZNER_KNOWN_HOSTS",
                    HostKeys::AcceptNew => "~/.ssh/known_hosts",
                }
            )
        })?;
        drop(key);
        Ok(session)
    }

    fn known_hosts_path(&self) -> PathBuf {
        self.dir.path.join("known_hosts")
    }

    fn control_path(&self) -> PathBuf {
        self.dir.path.join("ctl")
    }

    /// Options of every ssh call of this session.
    fn common_args(&self) -> Vec<String> {
        let mut args = vec![
            "-p".to_owned(),
            self.target.port.to_string(),
            "-l".to_owned(),
            self.target.user.clone(),
            "-o".to_owned(),
            "BatchMode=yes".to_owned(),
            "-o".to_owned(),
            "ConnectTimeout=20".to_owned(),
            "-o".to_owned(),
            "ServerAliveInterval=15".to_owned(),
            "-o".to_owned(),
            "ServerAliveCountMax=4".to_owned(),
            "-o".to_owned(),
            format!("ControlPath={}", self.control_path().display()),
        ];
        match &self.target.host_keys {
            HostKeys::File(file) => args.extend([
                "-o".to_owned(),
                format!("UserKnownHostsFile={}", file.display()),
                "-o".to_owned(),
                "StrictHostKeyChecking=yes".to_owned(),
            ]),
            HostKeys::Text(_) => args.extend([
                "-o".to_owned(),
                format!("UserKnownHostsFile={}", self.known_hosts_path().display()),
                "-o".to_owned(),
                "StrictHostKeyChecking=yes".to_owned(),
            ]),
            HostKeys::AcceptNew => args.extend([
                "-o".to_owned(),
                "StrictHostKeyChecking=accept-new".to_owned(),
            ]),
        }
        args
    }

    /// A command through the master only: it never opens a connection of its own.
    /// Marked secret because its stdin may carry secrets (a `.env`, a registry token).
    fn client(&self, sh: &Shell) -> Command {
        self.client_as(sh, false)
    }

    fn client_as(&self, sh: &Shell, sudo: bool) -> Command {
        let args = self.common_args();
        let dest = self.target.destination();
        let sudo: &[&str] = if sudo { &["sudo", "-n"] } else { &[] };
        Command::from(
            cmd!(
                sh,
                "ssh {args...} -o ControlMaster=no -T {dest} {sudo...} bash -s"
            )
            .quiet()
            .secret(),
        )
    }

    /// Like [`Session::run`] with output printed, as root (`sudo -n` unless the user is root).
    pub(crate) fn run_as_root(
        &self,
        sh: &Shell,
        what: &str,
        script: &Script,
    ) -> anyhow::Result<String> {
        self.run_with(sh, what, script, Stdout::Print, self.target.user != "root")
    }

    /// Like [`Session::run_as_root`], stdout captured (`swarm-setup` reads the join token).
    pub(crate) fn capture_as_root(
        &self,
        sh: &Shell,
        what: &str,
        script: &Script,
    ) -> anyhow::Result<String> {
        self.run_with(
            sh,
            what,
            script,
            Stdout::Capture,
            self.target.user != "root",
        )
    }

    /// Runs `script` on the server; remote stderr is printed (redacted) as it comes.
    pub(crate) fn run(
        &self,
        sh: &Shell,
        what: &str,
        script: &Script,
        stdout: Stdout,
    ) -> anyhow::Result<String> {
        self.run_with(sh, what, script, stdout, false)
    }

    fn run_with(
        &self,
        sh: &Shell,
        what: &str,
        script: &Script,
        stdout: Stdout,
        sudo: bool,
    ) -> anyhow::Result<String> {
        let mut child = self
            .client_as(sh, sudo)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running ssh: is OpenSSH's client installed?")?;
        let input = script.render();
        let mut stdin = child.stdin.take().context("ssh stdin")?;
        let mut stderr = child.stderr.take().context("ssh stderr")?;
        let mut out = child.stdout.take().context("ssh stdout")?;
        let redactor = &self.redactor;
        let (captured, last_err) = std::thread::scope(|scope| {
            // A remote failure can close stdin early; the exit status tells the story then.
            scope.spawn(move || {
                let _ = stdin.write_all(input.as_bytes());
            });
            let errors = scope.spawn(move || {
                let mut last = Vec::new();
                for line in BufReader::new(&mut stderr).lines().map_while(Result::ok) {
                    let line = redactor.redact(&line);
                    eprintln!("    {line}");
                    last.push(line);
                    if last.len() > 5 {
                        last.remove(0);
                    }
                }
                last
            });
            let mut captured = String::new();
            for line in BufReader::new(&mut out).lines().map_while(Result::ok) {
                if stdout == Stdout::Print {
                    println!("{}", redactor.redact(&line));
                }
                captured.push_str(&line);
                captured.push('\n');
            }
            (captured, errors.join().unwrap_or_default())
        });
        let status = child.wait().context("waiting for ssh")?;
        if !status.success() {
            let place = format!("{}:{}", self.target.display(), self.target.base);
            let detail = last_err.join("\n    ");
            match status.code() {
                Some(255) => bail!(
                    "{what}: ssh to {place} failed (exit 255, the connection or the remote shell): {detail}"
                ),
                code => bail!(
                    "{what} failed on {place} (exit {}): {detail}",
                    code.map_or_else(|| "by signal".to_owned(), |c| c.to_string())
                ),
            }
        }
        Ok(captured)
    }

    /// Takes the server's deploy lock: the remote script holds `flock` while this session's
    /// stdin stays open, so the lock goes when this run ends or its connection dies.
    pub(crate) fn lock(&self, sh: &Shell, script: &Script) -> anyhow::Result<LockSession> {
        let mut child = self
            .client(sh)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("running ssh for the deploy lock")?;
        let mut stdin = child.stdin.take().context("ssh stdin")?;
        stdin
            .write_all(script.render().as_bytes())
            .and_then(|()| stdin.flush())
            .context("sending the lock script")?;
        let mut stdout = BufReader::new(child.stdout.take().context("ssh stdout")?);
        let mut line = String::new();
        loop {
            line.clear();
            stdout
                .read_line(&mut line)
                .context("reading the lock answer")?;
            match line.trim_end().strip_prefix("waiting\t") {
                Some(unit) => eprintln!("    waiting for {unit} to end"),
                None => break,
            }
        }
        let place = format!("{}:{}", self.target.display(), self.target.base);
        if line.trim_end() == "locked" {
            return Ok(LockSession {
                child,
                stdin: Some(stdin),
                _stdout: stdout.into_inner(),
            });
        }
        drop(stdin);
        let _ = child.wait();
        match line.trim_end().strip_prefix("held\t") {
            Some(holder) => bail!(
                "another deploy holds the lock on {place}: {holder}\n  wait for it to end (its lock goes with its ssh session, or its activation unit), then run again"
            ),
            None => bail!("taking the deploy lock on {place} failed: {}", line.trim()),
        }
    }

    /// Closes the master connection.
    fn close(&self) {
        let Ok(sh) = Shell::new() else { return };
        let control = format!("ControlPath={}", self.control_path().display());
        let dest = self.target.destination();
        let _ = cmd!(sh, "ssh -o {control} -O exit {dest}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

/// The deploy lock, held on the server until this value is dropped.
pub(crate) struct LockSession {
    child: Child,
    stdin: Option<ChildStdin>,
    _stdout: ChildStdout,
}

impl Drop for LockSession {
    fn drop(&mut self) {
        // End of input: the remote `cat` returns, the script removes the holder file, and
        // the lock goes with the shell.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

fn identity_args(path: &Path) -> [String; 4] {
    [
        "-i".to_owned(),
        path.display().to_string(),
        "-o".to_owned(),
        "IdentitiesOnly=yes".to_owned(),
    ]
}

/// A directory only this user can enter, removed on drop.
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    fn create() -> anyhow::Result<PrivateDir> {
        // Unix socket paths are limited to about 100 bytes: stay short.
        let mut parent = std::env::temp_dir();
        if parent.as_os_str().len() > 60 {
            parent = PathBuf::from("/tmp");
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path = parent.join(format!("tm-ssh-{}-{nanos:x}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating the private directory `{}`", path.display()))?;
        Ok(PrivateDir { path })
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Creates `path` with mode 0600 from the start: never readable by others, not even briefly.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating `{}`", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("writing `{}`", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn session(host_keys: HostKeys) -> Session {
        Session {
            target: Target {
                host: "203.0.113.7".to_owned(),
                user: "root".to_owned(),
                port: 2222,
                identity: Identity::Agent,
                host_keys,
                base: "/opt/timemanager".to_owned(),
                project: "timemanager".to_owned(),
                compose: crate::deploy::settings::ComposeChoice::Detect,
            },
            dir: PrivateDir::create().unwrap(),
            redactor: Redactor::default(),
        }
    }

    #[test]
    fn host_keys_are_checked_strictly_when_pinned_and_on_first_use_otherwise() {
        let pinned = session(HostKeys::Text(
            "[203.0.113.7]:2222 ssh-ed25519 AAAA".to_owned(),
        ));
        let args = pinned.common_args().join(" ");
        assert!(args.contains("StrictHostKeyChecking=yes"), "{args}");
        assert!(args.contains(&format!(
            "UserKnownHostsFile={}",
            pinned.known_hosts_path().display()
        )));
        assert!(
            args.starts_with("-p 2222 -l root -o BatchMode=yes"),
            "{args}"
        );
        assert!(args.contains(&format!("ControlPath={}/ctl", pinned.dir.path.display())));
        let file = session(HostKeys::File(PathBuf::from("/etc/ssh/pinned")));
        assert!(
            file.common_args()
                .join(" ")
                .contains("UserKnownHostsFile=/etc/ssh/pinned -o StrictHostKeyChecking=yes")
        );
        let first_use = session(HostKeys::AcceptNew);
        assert!(
            first_use
                .common_args()
                .join(" ")
                .contains("StrictHostKeyChecking=accept-new")
        );
        // Dropping a session that never connected only tries `ssh -O exit`, quietly.
    }

    #[test]
    fn private_files_are_0600_in_a_0700_directory_and_go_away() {
        let dir = PrivateDir::create().unwrap();
        let path = dir.path.clone();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let key = path.join("id");
        write_private(&key, b"key").unwrap();
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_to_string(&key).unwrap(), "key");
        drop(RemoveOnDrop(key.clone()));
        assert!(!key.exists());
        drop(dir);
        assert!(!path.exists());
    }
}
