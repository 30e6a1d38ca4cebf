//! The server's releases: the script that lists them, its parser, the table `releases`
//! prints, and the release `rollback` goes to.

use anyhow::{Context, bail};

use crate::{
    deploy::scripts::{KEEP_RELEASES, LIST_RELEASES, Script, ServerScripts},
    project,
};

impl ServerScripts {
    /// `current`, the releases with their times and results, and the lock holder if any, as
    /// the tab-separated lines [`parse_releases`] reads.
    pub(crate) fn list_releases(&self) -> Script {
        self.wrap(&Script::new(), LIST_RELEASES, false)
    }
}

/// What `releases` reads from the server.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ServerReleases {
    pub(crate) current: String,
    pub(crate) releases: Vec<ReleaseInfo>,
    /// Who holds the deploy lock, if anyone.
    pub(crate) lock: Option<String>,
    /// `DOMAIN` of the current release's `.env`.
    pub(crate) domain: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ReleaseInfo {
    pub(crate) tag: String,
    pub(crate) uploaded: Option<u64>,
    pub(crate) activated: Option<u64>,
    /// `ok`, `failed`, or empty when never activated to the end.
    pub(crate) result: String,
    pub(crate) previous: String,
    /// The registry its images came from.
    pub(crate) registry: String,
}

impl ServerReleases {
    pub(crate) fn registry_of(&self, tag: &str) -> Option<String> {
        self.releases
            .iter()
            .find(|r| r.tag == tag)
            .map(|r| r.registry.clone())
            .filter(|r| !r.is_empty())
    }
}

pub(crate) fn parse_releases(text: &str) -> ServerReleases {
    let mut out = ServerReleases::default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["current", current] => out.current = (*current).to_owned(),
            ["lock", holder] => out.lock = Some((*holder).to_owned()),
            ["domain", domain] => out.domain = (*domain).to_owned(),
            [
                "release",
                tag,
                uploaded,
                activated,
                result,
                previous,
                rest @ ..,
            ] => out.releases.push(ReleaseInfo {
                tag: (*tag).to_owned(),
                uploaded: uploaded.parse().ok(),
                activated: activated.parse().ok(),
                result: (*result).to_owned(),
                previous: (*previous).to_owned(),
                registry: rest.first().map(|r| (*r).to_owned()).unwrap_or_default(),
            }),
            _ => {}
        }
    }
    out.releases
        .sort_by_key(|r| std::cmp::Reverse(r.activated.or(r.uploaded).unwrap_or(0)));
    out
}

/// The release `rollback` goes to: `--to`, else the newest healthy one before the current.
pub(crate) fn rollback_target(
    releases: &ServerReleases,
    to: Option<&str>,
) -> anyhow::Result<String> {
    let known = || {
        releases
            .releases
            .iter()
            .map(|r| r.tag.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match to {
        Some(tag) if tag == releases.current => {
            bail!("{tag} is already the current release")
        }
        Some(tag) => match releases.releases.iter().find(|r| r.tag == tag) {
            Some(_) => Ok(tag.to_owned()),
            None => bail!(
                "release {tag} is not on the server (it keeps the last {} releases): {}",
                KEEP_RELEASES,
                known()
            ),
        },
        None => releases
            .releases
            .iter()
            .find(|r| r.tag != releases.current && r.result == "ok")
            .map(|r| r.tag.clone())
            .with_context(|| {
                format!(
                    "no healthy release other than the current one ({}) is on the server: {}",
                    releases.current,
                    known()
                )
            }),
    }
}

pub(crate) fn format_releases(releases: &ServerReleases) -> String {
    let mut out = String::from("  TAG       DEPLOYED              RESULT       PREVIOUS\n");
    for release in &releases.releases {
        let marker = if release.tag == releases.current {
            "*"
        } else {
            " "
        };
        let when = release
            .activated
            .or(release.uploaded)
            .map(project::rfc3339)
            .unwrap_or_default();
        let result = match (release.result.as_str(), release.activated) {
            ("", None) => "uploaded",
            ("", Some(_)) => "unfinished",
            (result, _) => result,
        };
        out.push_str(&format!(
            "{marker} {:<9} {:<21} {:<12} {}\n",
            release.tag, when, result, release.previous
        ));
    }
    if releases.releases.is_empty() {
        out.push_str("  (no releases yet)\n");
    }
    if let Some(holder) = &releases.lock {
        out.push_str(&format!("\ndeploy in progress: {holder}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use xshell::{Shell, cmd};

    use super::*;

    fn sample_releases() -> ServerReleases {
        parse_releases(
            "current\tccccccc\n\
             release\taaaaaaa\t100\t110\tok\t\tghcr.io\n\
             release\tbbbbbbb\t200\t210\tok\taaaaaaa\tghcr.io\n\
             release\tddddddd\t300\t310\tfailed\tbbbbbbb\tghcr.io\n\
             release\tccccccc\t400\t410\tok\tbbbbbbb\tghcr.io\n\
             release\teeeeeee\t500\t\t\t\t\n\
             domain\ttm.example.com\n",
        )
    }

    #[test]
    fn releases_are_read_newest_first() {
        let releases = sample_releases();
        assert_eq!(releases.current, "ccccccc");
        assert_eq!(releases.domain, "tm.example.com");
        let tags: Vec<&str> = releases.releases.iter().map(|r| r.tag.as_str()).collect();
        assert_eq!(
            tags,
            ["eeeeeee", "ccccccc", "ddddddd", "bbbbbbb", "aaaaaaa"]
        );
        assert_eq!(releases.registry_of("aaaaaaa").as_deref(), Some("ghcr.io"));
        let table = format_releases(&releases);
        assert!(table.contains("* ccccccc"), "{table}");
        assert!(
            table.contains("eeeeeee   1970-01-01T00:08:20Z  uploaded"),
            "{table}"
        );
    }

    #[test]
    fn rollback_goes_to_the_newest_healthy_release_before_the_current_one() {
        let releases = sample_releases();
        assert_eq!(rollback_target(&releases, None).unwrap(), "bbbbbbb");
        assert_eq!(
            rollback_target(&releases, Some("aaaaaaa")).unwrap(),
            "aaaaaaa"
        );
        let err = rollback_target(&releases, Some("ccccccc"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("already the current"), "{err}");
        let err = rollback_target(&releases, Some("fffffff"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not on the server") && err.contains("aaaaaaa"),
            "{err}"
        );
        let only = parse_releases("current\taaaaaaa\nrelease\taaaaaaa\t1\t2\tok\t\t\n");
        assert!(rollback_target(&only, None).is_err());
    }

    /// The listing script run for real on a release directory, read by the parser.
    #[test]
    fn the_listing_script_prints_what_the_parser_reads() {
        let dir = std::env::temp_dir().join(format!("xtask-releases-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let base = dir.join("timemanager");
        let write = |path: &str, text: &str| {
            let path = base.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("releases/aaaaaaa/.uploaded", "100\n");
        write("releases/aaaaaaa/.activated", "110\n");
        write("releases/aaaaaaa/.result", "ok\n");
        write(
            "releases/aaaaaaa/images",
            "backend\tghcr.io/o/r/backend:aaaaaaa\tsha256:1\n",
        );
        write("releases/bbbbbbb/.uploaded", "200\n");
        write("releases/bbbbbbb/.activated", "210\n");
        write("releases/bbbbbbb/.previous", "aaaaaaa\n");
        write(
            "releases/bbbbbbb/.env",
            "DOMAIN='tm.example.com'\nPOSTGRES_PASSWORD='x'\n",
        );
        write("releases/ccccccc/.uploaded", "300\n");
        std::os::unix::fs::symlink("releases/bbbbbbb", base.join("current")).unwrap();

        let scripts = crate::deploy::scripts::tests::remote(&base.display().to_string());
        let sh = Shell::new().unwrap();
        let out = cmd!(sh, "bash -s")
            .stdin(scripts.list_releases().render())
            .quiet()
            .read()
            .unwrap();
        let releases = parse_releases(&out);
        assert_eq!(releases.current, "bbbbbbb");
        assert_eq!(releases.domain, "tm.example.com");
        assert_eq!(releases.lock, None);
        let tags: Vec<&str> = releases.releases.iter().map(|r| r.tag.as_str()).collect();
        assert_eq!(tags, ["ccccccc", "bbbbbbb", "aaaaaaa"]);
        assert_eq!(
            releases.releases[2],
            ReleaseInfo {
                tag: "aaaaaaa".to_owned(),
                uploaded: Some(100),
                activated: Some(110),
                result: "ok".to_owned(),
                previous: String::new(),
                registry: "ghcr.io".to_owned(),
            }
        );
        assert_eq!(releases.releases[1].previous, "aaaaaaa");
        assert_eq!(releases.releases[0].activated, None);
        let table = format_releases(&releases);
        assert!(
            table.contains("  ccccccc   1970-01-01T00:05:00Z  uploaded"),
            "{table}"
        );
        assert!(
            table.contains("* bbbbbbb   1970-01-01T00:03:30Z  unfinished   aaaaaaa"),
            "{table}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
