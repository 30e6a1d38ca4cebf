//! Long-running programs started in the background and stopped on drop.
//!
//! xshell only runs programs to completion, so daemons go through Debian's
//! `start-stop-daemon`, which detaches them, records their pid and stops them later.

use std::path::{Path, PathBuf};

use anyhow::Context;
use xshell::{Shell, cmd};

/// A background process; dropping it stops the process (TERM, then KILL after 10 s).
pub(crate) struct Daemon {
    name: String,
    /// Kept in memory: the pid file may be deleted with its directory before the drop.
    pid: String,
    pub(crate) log: PathBuf,
}

impl Daemon {
    /// Starts `program args...` with its output in `<dir>/<name>.log`.
    pub(crate) fn start(
        sh: &Shell,
        dir: &Path,
        name: &str,
        program: &Path,
        args: &[String],
    ) -> anyhow::Result<Daemon> {
        Daemon::start_as(sh, dir, name, program, args, &[])
    }

    /// Like [`Daemon::start`], with extra `start-stop-daemon` options such as `--chuid USER`.
    pub(crate) fn start_as(
        sh: &Shell,
        dir: &Path,
        name: &str,
        program: &Path,
        args: &[String],
        options: &[String],
    ) -> anyhow::Result<Daemon> {
        std::fs::create_dir_all(dir)?;
        let pidfile = dir.join(format!("{name}.pid"));
        let log = dir.join(format!("{name}.log"));
        cmd!(
            sh,
            "start-stop-daemon --start {options...} --background --make-pidfile --pidfile {pidfile} --output {log} --exec {program} -- {args...}"
        )
        .quiet()
        .run()
        .with_context(|| format!("starting {name}"))?;
        let pid = read_pid(&pidfile)
            .with_context(|| format!("{name} wrote no pid to `{}`", pidfile.display()))?;
        Ok(Daemon {
            name: name.to_owned(),
            pid,
            log,
        })
    }

    pub(crate) fn pid(&self) -> &str {
        &self.pid
    }

    /// The last lines of the daemon's output, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// The pid `start-stop-daemon` records; it may land a moment after `--start` returns.
fn read_pid(pidfile: &Path) -> anyhow::Result<String> {
    for _ in 0..50 {
        if let Ok(text) = std::fs::read_to_string(pidfile)
            && let Ok(pid) = text.trim().parse::<u32>()
        {
            return Ok(pid.to_string());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    anyhow::bail!("no pid after 1 s")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Ok(sh) = Shell::new() else { return };
        let pid = &self.pid;
        let stopped = cmd!(
            sh,
            "start-stop-daemon --stop --quiet --pid {pid} --retry TERM/10/KILL/5"
        )
        .quiet()
        .ignore_status()
        .run();
        if stopped.is_err() {
            eprintln!("warning: could not stop {}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `cargo xtask e2e` deleted its state directory, pid files included,
    /// before its daemons were dropped, and left `dockerd` running.
    #[test]
    fn a_daemon_whose_pid_file_is_gone_is_still_stopped() {
        let sh = Shell::new().unwrap();
        let dir = std::env::temp_dir().join(format!("xtask-daemon-{}", std::process::id()));
        let sleep = crate::provision::find_program("sleep").unwrap();
        let daemon = Daemon::start(&sh, &dir, "sleeper", &sleep, &["300".to_owned()]).unwrap();
        let proc_dir = PathBuf::from(format!("/proc/{}", daemon.pid));
        assert!(proc_dir.exists());
        std::fs::remove_dir_all(&dir).unwrap();
        drop(daemon);
        // A stopped child of start-stop-daemon is reaped by init; give it a moment.
        let gone = (0..50).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            std::fs::read_to_string(proc_dir.join("status"))
                .map_or(true, |s| s.contains("State:\tZ"))
        });
        assert!(gone, "the daemon outlived its handle");
    }
}
