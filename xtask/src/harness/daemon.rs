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
    pidfile: PathBuf,
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
        Ok(Daemon {
            name: name.to_owned(),
            pidfile,
            log,
        })
    }

    /// The last lines of the daemon's output, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Ok(sh) = Shell::new() else { return };
        let pidfile = &self.pidfile;
        let stopped = cmd!(sh, "start-stop-daemon --stop --quiet --pidfile {pidfile} --remove-pidfile --retry TERM/10/KILL/5")
            .quiet()
            .ignore_status()
            .run();
        if stopped.is_err() {
            eprintln!("warning: could not stop {}", self.name);
        }
    }
}
