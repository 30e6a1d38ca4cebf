//! Makes sure the programs a command needs are installed: apt-get when root, else the exact command.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

/// A program some step needs, and the Debian package that ships it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Need {
    pub(crate) program: &'static str,
    pub(crate) package: &'static str,
}

pub(crate) const POSTGRES: Need = Need {
    program: "initdb",
    package: "postgresql",
};
pub(crate) const NPM: Need = Need {
    program: "npm",
    package: "npm",
};
/// The deploy's health gate runs on the server with it (`gate.sh`); the labs' server is this
/// machine.
pub(crate) const CURL: Need = Need {
    program: "curl",
    package: "curl",
};
/// The deploy scripts' tests run it: they fail, not skip, without it.
pub(crate) const SHELLCHECK: Need = Need {
    program: "shellcheck",
    package: "shellcheck",
};

/// Installs the packages behind missing programs, or says how to.
pub(crate) fn ensure(sh: &Shell, needs: &[Need]) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = needs
        .iter()
        .filter(|need| find_program(need.program).is_none())
        .map(|need| need.package)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    // GitHub-hosted runners are not root but have passwordless sudo.
    let sudo = !is_root();
    if sudo
        && cmd!(sh, "sudo -n true")
            .quiet()
            .ignore_stderr()
            .run()
            .is_err()
    {
        bail!(
            "missing packages: {list}\nrun: sudo apt-get update && sudo apt-get install -y --no-install-recommends {list}"
        );
    }
    eprintln!("installing {list}");
    apt(sh, sudo, &["update", "-qq"])
        .run()
        .context("apt-get update")?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    apt(sh, sudo, &install)
        .run()
        .with_context(|| format!("apt-get install {list}"))?;
    if let Some(need) = needs
        .iter()
        .find(|need| find_program(need.program).is_none())
    {
        bail!(
            "`{}` is still missing after installing `{}`",
            need.program,
            need.package
        );
    }
    Ok(())
}

fn apt<'a>(sh: &'a Shell, sudo: bool, args: &[&str]) -> xshell::Cmd<'a> {
    if sudo {
        cmd!(
            sh,
            "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get {args...}"
        )
    } else {
        cmd!(sh, "apt-get {args...}").env("DEBIAN_FRONTEND", "noninteractive")
    }
}

/// Finds a program on PATH or in the versioned directories Debian uses for PostgreSQL.
pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    let on_path = env::split_paths(&path).map(|dir| dir.join(program));
    let postgres = postgres_bin_dirs().into_iter().map(|dir| dir.join(program));
    on_path
        .chain(postgres)
        .find(|candidate| is_executable(candidate))
}

/// `/usr/lib/postgresql/<version>/bin`, newest version first.
fn postgres_bin_dirs() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let mut versions: Vec<(u32, PathBuf)> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

pub(crate) fn is_root() -> bool {
    // Reading /proc avoids a libc dependency for one syscall.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("Uid:"))?;
            line.split_whitespace().nth(1).map(|uid| uid == "0")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_path_and_not_made_up_ones() {
        assert!(find_program("sh").is_some());
        assert!(find_program("definitely-not-a-program-xtask").is_none());
    }
}
