//! A Docker engine for tests: the running one, or `dockerd` from Debian's `docker.io` started here.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::{harness::daemon::Daemon, provision};

pub(crate) const DOCKERD: provision::Need = provision::Need {
    program: "dockerd",
    package: "docker.io",
};

/// A reachable engine; stops `dockerd` on drop when this process started it.
pub(crate) struct Engine {
    _daemon: Option<Daemon>,
}

pub(crate) fn engine(sh: &Shell, state_dir: &Path) -> anyhow::Result<Engine> {
    if is_up(sh) {
        return Ok(Engine { _daemon: None });
    }
    provision::ensure(sh, &[DOCKERD])?;
    if !provision::is_root() {
        bail!(
            "no Docker engine is running and starting one needs root: run `sudo dockerd --exec-opt native.cgroupdriver=cgroupfs &`"
        );
    }
    let dockerd = provision::find_program("dockerd").context("dockerd not found")?;
    let args = [
        "--exec-opt".to_owned(),
        "native.cgroupdriver=cgroupfs".to_owned(),
    ];
    let daemon = Daemon::start(sh, state_dir, "dockerd", &dockerd, &args)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !is_up(sh) {
        if Instant::now() > deadline {
            bail!(
                "dockerd did not come up within 60 s; its log ends:\n{}",
                daemon.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(Engine {
        _daemon: Some(daemon),
    })
}

fn is_up(sh: &Shell) -> bool {
    let format = "{{.ServerVersion}}";
    cmd!(sh, "docker info --format {format}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok()
}
