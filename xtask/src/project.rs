//! Facts about the checkout: where it is and which commit it holds.

use std::path::{Path, PathBuf};

/// The workspace root, whatever the current directory.
pub(crate) fn root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // `xtask/` always sits directly under the workspace root.
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set, else `target/` in the workspace.
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}

/// The target directory of the scratch clones the checks build in (the reproducibility
/// check's second clone, the e2e's releases): outside every clone, so reruns are
/// incremental, and shared, so a clone reuses the dependencies another one compiled (their
/// flags do not depend on the clone's path: see `image::compile`). Never the checkout's own.
pub(crate) fn clones_target_dir() -> PathBuf {
    target_dir().join("clones")
}

/// The cargo that runs this xtask, so a pinned toolchain is used throughout.
pub(crate) fn cargo(sh: &xshell::Shell) -> String {
    sh.var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// The commit being built, as labels, tags and timestamps need it.
#[derive(Debug, Clone)]
pub(crate) struct Revision {
    /// Full commit hash (`org.opencontainers.image.revision`).
    pub(crate) commit: String,
    /// Seven-character hash, `-dirty` when the tree has changes: the image version and tag.
    pub(crate) version: String,
    /// `SOURCE_DATE_EPOCH`, else the commit time: every timestamp in an image.
    pub(crate) epoch: u64,
}

pub(crate) fn revision(sh: &xshell::Shell) -> anyhow::Result<Revision> {
    use anyhow::Context;
    let commit = xshell::cmd!(sh, "git rev-parse HEAD")
        .quiet()
        .read()
        .context("reading the current commit: images are labelled with it, so build from a git checkout with at least one commit")?;
    let dirty = !xshell::cmd!(sh, "git status --porcelain")
        .quiet()
        .read()?
        .trim()
        .is_empty();
    let epoch = match sh.var("SOURCE_DATE_EPOCH") {
        Ok(value) => parse_epoch(&value)?,
        Err(_) => parse_epoch(&xshell::cmd!(sh, "git log -1 --format=%ct").quiet().read()?)
            .context("reading the commit time")?,
    };
    let short = commit.get(..7).unwrap_or(&commit);
    let version = if dirty {
        format!("{short}-dirty")
    } else {
        short.to_owned()
    };
    Ok(Revision {
        commit,
        version,
        epoch,
    })
}

fn parse_epoch(value: &str) -> anyhow::Result<u64> {
    value.trim().parse().map_err(|_| {
        anyhow::format_err!("SOURCE_DATE_EPOCH must be whole seconds since 1970, got `{value}`")
    })
}

/// Clones HEAD into `dest` and brings the working tree's uncommitted changes along,
/// so the clone holds exactly the files of this checkout.
pub(crate) fn clone_working_tree(sh: &xshell::Shell, dest: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let root = root();
    xshell::cmd!(sh, "git clone --quiet --no-hardlinks {root} {dest}").run()?;
    let _dir = sh.push_dir(&root);
    let changed = xshell::cmd!(sh, "git ls-files --modified --others --exclude-standard")
        .quiet()
        .read()?;
    for rel in changed.lines().filter(|l| !l.is_empty()) {
        let (from, to) = (root.join(rel), dest.join(rel));
        if from.is_file() {
            std::fs::create_dir_all(to.parent().context("path without parent")?)?;
            std::fs::copy(&from, &to)
                .with_context(|| format!("copying `{rel}` into `{}`", dest.display()))?;
        }
    }
    let deleted = xshell::cmd!(sh, "git ls-files --deleted").quiet().read()?;
    for rel in deleted.lines().filter(|l| !l.is_empty()) {
        let _ = std::fs::remove_file(dest.join(rel));
    }
    Ok(())
}

/// `https://github.com/OWNER/REPO`: from `GITHUB_REPOSITORY` in CI, else the workspace manifest.
///
/// Never from the git remote: a clone's remote is a machine path, which would make
/// labels, and so digests, differ between clones.
pub(crate) fn source_url(sh: &xshell::Shell) -> String {
    match sh.var("GITHUB_REPOSITORY") {
        Ok(repo) if !repo.is_empty() => format!("https://github.com/{repo}"),
        _ => REPOSITORY_URL.to_owned(),
    }
}

/// Kept equal to `workspace.package.repository` by a test.
pub(crate) const REPOSITORY_URL: &str = "https://github.com/yassine-el-gherrabi/time-manager";

/// Formats seconds since 1970 as RFC 3339 in UTC (`2026-11-25T10:42:00Z`).
pub(crate) fn rfc3339(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    // Civil-from-days, after Howard Hinnant's public-domain algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// `https://github.com/Owner/Repo.git`, `git@github.com:Owner/Repo.git`,
/// `ssh://git@host/owner/repo` give `owner/repo`; local paths give nothing.
pub(crate) fn namespace_from_remote(url: &str) -> Option<String> {
    let url = url.trim();
    let path = if let Some((_, rest)) = url.split_once("://") {
        rest.split_once('/')?.1
    } else if let Some((host, path)) = url.split_once(':') {
        if host.contains('/') || host.is_empty() {
            return None;
        }
        path
    } else {
        return None;
    };
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [.., owner, repo] => Some(format!("{owner}/{repo}").to_ascii_lowercase()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_603_320), "2026-11-25T10:42:00Z");
    }

    #[test]
    fn malformed_source_date_epoch_is_named() {
        let err = parse_epoch("yesterday").unwrap_err().to_string();
        assert!(err.contains("SOURCE_DATE_EPOCH"), "{err}");
    }

    #[test]
    fn repository_url_matches_workspace_manifest() {
        let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains(&format!("repository = \"{REPOSITORY_URL}\"")));
    }

    #[test]
    fn namespace_from_git_remotes() {
        for (remote, expected) in [
            (
                "https://github.com/Yassine-El-Gherrabi/time-manager.git",
                Some("yassine-el-gherrabi/time-manager"),
            ),
            ("https://github.com/owner/repo", Some("owner/repo")),
            ("git@github.com:Owner/Repo.git", Some("owner/repo")),
            ("ssh://git@github.com/owner/repo.git/", Some("owner/repo")),
            (
                "https://gitlab.example/group/sub/repo.git",
                Some("sub/repo"),
            ),
            ("/home/me/time-manager", None),
            ("../time-manager", None),
            ("https://github.com/", None),
            ("", None),
        ] {
            assert_eq!(
                namespace_from_remote(remote).as_deref(),
                expected,
                "{remote}"
            );
        }
    }
}
