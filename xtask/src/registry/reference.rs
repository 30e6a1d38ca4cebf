//! Registry hosts, repository names, tags and digests, and the URLs built from them.
//!
//! URLs are strings: the few operations push needs (join a `Location`, append a query
//! pair, compare hosts) are written here rather than pulling in a URL crate.

use std::{fmt, net::IpAddr};

use anyhow::{Context, bail};

/// A registry host and the scheme used to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Registry {
    /// `ghcr.io`, `127.0.0.1:5000`, `[::1]:5000`: lower-cased, as typed.
    pub(crate) host: String,
    pub(crate) scheme: Scheme,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        })
    }
}

impl fmt::Display for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)
    }
}

impl Registry {
    /// Parses `--registry`. Loopback hosts use plain HTTP, as Docker does; so does any host
    /// listed in `insecure` (`--insecure-registry`); everything else uses HTTPS.
    pub(crate) fn parse(host: &str, insecure: &[String]) -> anyhow::Result<Registry> {
        let host = host.trim().to_ascii_lowercase();
        if host.contains("://") {
            bail!(
                "`--registry {host}`: give the host only (`ghcr.io`, `127.0.0.1:5000`); plain HTTP is chosen for loopback hosts and `--insecure-registry HOST`"
            );
        }
        validate_host(&host)?;
        let explicitly_insecure = insecure.iter().any(|entry| {
            let entry = entry.trim().to_ascii_lowercase();
            entry == host || entry == hostname(&host)
        });
        let scheme = if explicitly_insecure || is_loopback(&host) {
            Scheme::Http
        } else {
            Scheme::Https
        };
        Ok(Registry { host, scheme })
    }

    /// `https://ghcr.io`: no trailing slash.
    pub(crate) fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }

    pub(crate) fn is_ghcr(&self) -> bool {
        self.host == "ghcr.io"
    }

    pub(crate) fn blob_url(&self, repository: &str, digest: &str) -> String {
        format!("{}/v2/{repository}/blobs/{digest}", self.base_url())
    }

    /// Where upload sessions start; `mount` makes it a cross-repository mount request.
    pub(crate) fn uploads_url(&self, repository: &str, mount: Option<(&str, &str)>) -> String {
        let url = format!("{}/v2/{repository}/blobs/uploads/", self.base_url());
        match mount {
            Some((digest, from)) => with_query(&with_query(&url, "mount", digest), "from", from),
            None => url,
        }
    }

    /// `reference` is a tag or a digest.
    pub(crate) fn manifest_url(&self, repository: &str, reference: &str) -> String {
        format!("{}/v2/{repository}/manifests/{reference}", self.base_url())
    }

    /// Whether `url` points at this registry (credentials are only ever sent there).
    pub(crate) fn owns(&self, url: &str) -> bool {
        authority(url).is_some_and(|a| a.eq_ignore_ascii_case(&self.host))
    }
}

/// The registry host grammar: `ghcr.io`, `127.0.0.1:5000`, `[::1]:5000` (lower case).
pub(crate) fn validate_host(host: &str) -> anyhow::Result<()> {
    let valid = !host.is_empty()
        && !host.starts_with(['-', '.'])
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-:[]_".contains(&b));
    if !valid {
        bail!("`{host}` is not a registry host (expected `ghcr.io` or `HOST:PORT`)");
    }
    Ok(())
}

/// The host without its port: `[::1]:5000` gives `[::1]`, `ghcr.io:443` gives `ghcr.io`.
fn hostname(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        };
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// `localhost`, `*.localhost`, `127.0.0.0/8` and `[::1]`, with or without a port.
pub(crate) fn is_loopback(host: &str) -> bool {
    let name = hostname(host);
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    let literal = name.trim_start_matches('[').trim_end_matches(']');
    literal.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks the distribution spec's repository grammar (lower case, `/`-separated components).
pub(crate) fn validate_repository(name: &str) -> anyhow::Result<()> {
    let component_ok = |component: &str| {
        let bytes = component.as_bytes();
        let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
            return false;
        };
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !alnum(first) || !alnum(last) {
            return false;
        }
        // Separators are `.`, `_`, `__` or a run of `-`, always between alphanumerics.
        let mut previous_separator: Option<u8> = None;
        let mut run = 0;
        for b in bytes {
            if alnum(b) {
                previous_separator = None;
                run = 0;
                continue;
            }
            match (b, previous_separator) {
                (b'-', None | Some(b'-')) | (b'.', None) | (b'_', None) => (),
                (b'_', Some(b'_')) if run == 1 => (),
                _ => return false,
            }
            previous_separator = Some(*b);
            run += 1;
        }
        true
    };
    if name.len() > 255 || name.is_empty() || !name.split('/').all(component_ok) {
        bail!(
            "`{name}` is not a valid repository name: lower-case letters, digits and `._-` separators, components joined by `/`"
        );
    }
    Ok(())
}

pub(crate) fn validate_tag(tag: &str) -> anyhow::Result<()> {
    let bytes = tag.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b));
    if !ok {
        bail!(
            "`{tag}` is not a valid tag: up to 128 of `A-Za-z0-9._-`, not starting with `.` or `-`"
        );
    }
    Ok(())
}

/// `HOST/REPOSITORY:TAG`, split; Docker Hub names get their implicit host and `library/`.
/// The one image-reference parser: base images and deploy settings read references here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageReference {
    pub(crate) host: String,
    pub(crate) repository: String,
    pub(crate) tag: String,
}

impl ImageReference {
    pub(crate) fn parse(reference: &str) -> anyhow::Result<ImageReference> {
        let (name, tag) = match reference.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, tag),
            _ => (reference, "latest"),
        };
        let (host, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_owned(), rest.to_owned())
            }
            Some(_) => ("registry-1.docker.io".to_owned(), name.to_owned()),
            None => ("registry-1.docker.io".to_owned(), format!("library/{name}")),
        };
        if repository.is_empty() || tag.is_empty() {
            bail!("`{reference}` is not an image reference (expected `HOST/REPOSITORY:TAG`)");
        }
        validate_host(&host).with_context(|| format!("image reference `{reference}`"))?;
        validate_repository(&repository)
            .with_context(|| format!("image reference `{reference}`"))?;
        validate_tag(tag).with_context(|| format!("image reference `{reference}`"))?;
        Ok(ImageReference {
            host,
            repository,
            tag: tag.to_owned(),
        })
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.host, self.repository, self.tag)
    }
}

/// The `scheme://authority` part of an absolute URL, and its authority.
fn split_origin(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((&url[..scheme.len() + 3 + end], &rest[..end]))
}

fn authority(url: &str) -> Option<&str> {
    split_origin(url).map(|(_, authority)| authority)
}

/// Resolves a `Location` header against the URL of the request that returned it, as a
/// browser would: absolute, scheme-relative (`//host/path`), absolute-path and relative
/// forms all occur (distribution with `relativeurls: true` sends `/v2/...`).
pub(crate) fn resolve_location(request_url: &str, location: &str) -> anyhow::Result<String> {
    let location = location.trim();
    if location.is_empty() {
        bail!("empty `Location` header");
    }
    if split_origin(location).is_some() {
        return Ok(location.to_owned());
    }
    let Some((origin, _)) = split_origin(request_url) else {
        bail!("cannot resolve `{location}` against `{request_url}`");
    };
    if let Some(rest) = location.strip_prefix("//") {
        let scheme = &origin[..origin.find("://").unwrap_or(0)];
        return Ok(format!("{scheme}://{rest}"));
    }
    if location.starts_with('/') {
        return Ok(format!("{origin}{location}"));
    }
    // Relative path: replace the last segment of the request's path.
    let path = &request_url[origin.len()..];
    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    Ok(format!("{origin}{dir}{location}"))
}

/// Appends `key=value` with `&` when the URL already has a query (distribution's upload
/// URLs carry `_state`), else `?`. GHCR answers 404 to a URL built as `...uuid&digest=`.
pub(crate) fn with_query(url: &str, key: &str, value: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{key}={}", percent_encode(value))
}

/// Percent-encodes everything but RFC 3986 unreserved characters and `:` (digests keep
/// their usual form on the wire).
pub(crate) fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_use_http_and_others_https_unless_listed() {
        for host in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost:5000",
            "LOCALHOST",
            "registry.localhost:80",
            "[::1]:5000",
        ] {
            assert_eq!(
                Registry::parse(host, &[]).unwrap().scheme,
                Scheme::Http,
                "{host}"
            );
        }
        for host in ["ghcr.io", "10.0.0.1:5000", "example.com:5000", "[::2]:5000"] {
            assert_eq!(
                Registry::parse(host, &[]).unwrap().scheme,
                Scheme::Https,
                "{host}"
            );
        }
        let insecure = vec!["example.com".to_owned()];
        let registry = Registry::parse("example.com:5000", &insecure).unwrap();
        assert_eq!(registry.base_url(), "http://example.com:5000");
        assert!(Registry::parse("https://ghcr.io", &[]).is_err());
        assert!(Registry::parse("ghcr.io/owner", &[]).is_err());
    }

    #[test]
    fn repository_names_follow_the_spec_grammar() {
        for ok in [
            "a",
            "owner/repo/backend",
            "yassine-el-gherrabi/time-manager/backend",
            "a.b/c__d/e---f",
            "x1/2y",
        ] {
            validate_repository(ok).unwrap();
        }
        for bad in [
            "",
            "Owner/repo",
            "a//b",
            "/a",
            "a/",
            "-a",
            "a-",
            "a___b",
            "a..b",
            "a._b",
            "a b",
        ] {
            assert!(validate_repository(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tags() {
        validate_tag("abc1234").unwrap();
        validate_tag("0f2eb79-dirty").unwrap();
        validate_tag("_x.Y-1").unwrap();
        assert!(validate_tag("-x").is_err());
        assert!(validate_tag(".x").is_err());
        assert!(validate_tag(&"a".repeat(129)).is_err());
        assert!(validate_tag("a:b").is_err());
    }

    #[test]
    fn location_resolution_handles_every_form() {
        let post = "http://127.0.0.1:5000/v2/a/b/blobs/uploads/";
        assert_eq!(
            resolve_location(post, "/v2/a/b/blobs/uploads/u1?_state=x%3D").unwrap(),
            "http://127.0.0.1:5000/v2/a/b/blobs/uploads/u1?_state=x%3D"
        );
        assert_eq!(
            resolve_location(post, "https://other.example/up/u1?x=1").unwrap(),
            "https://other.example/up/u1?x=1"
        );
        assert_eq!(
            resolve_location(post, "//cdn.example/u1").unwrap(),
            "http://cdn.example/u1"
        );
        assert_eq!(
            resolve_location(post, "u2?s=1").unwrap(),
            "http://127.0.0.1:5000/v2/a/b/blobs/uploads/u2?s=1"
        );
        assert_eq!(
            resolve_location("https://ghcr.io/v2/x/manifests/t?q=1", "y").unwrap(),
            "https://ghcr.io/v2/x/manifests/y"
        );
        assert!(resolve_location(post, " ").is_err());
    }

    #[test]
    fn query_pairs_are_appended_with_the_right_separator() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            with_query(
                "http://h/v2/r/blobs/uploads/u?_state=s%3D",
                "digest",
                &digest
            ),
            format!("http://h/v2/r/blobs/uploads/u?_state=s%3D&digest={digest}")
        );
        assert_eq!(
            with_query("http://h/u", "digest", &digest),
            format!("http://h/u?digest={digest}")
        );
        assert_eq!(
            Registry::parse("ghcr.io", &[])
                .unwrap()
                .uploads_url("o/r/frontend", Some((&digest, "o/r/backend"))),
            format!(
                "https://ghcr.io/v2/o/r/frontend/blobs/uploads/?mount={digest}&from=o%2Fr%2Fbackend"
            )
        );
        assert_eq!(
            percent_encode("repository:a/b:pull,push"),
            "repository:a%2Fb:pull%2Cpush"
        );
    }

    #[test]
    fn credentials_stay_on_the_registry_host() {
        let registry = Registry::parse("127.0.0.1:5000", &[]).unwrap();
        assert!(registry.owns("http://127.0.0.1:5000/v2/x"));
        assert!(!registry.owns("http://127.0.0.1:5001/v2/x"));
        assert!(!registry.owns("https://storage.example/blob"));
        assert_eq!(hostname("[::1]:5000"), "[::1]");
        assert_eq!(hostname("ghcr.io"), "ghcr.io");
    }

    #[test]
    fn references_get_their_implicit_host_and_tag() {
        let cases = [
            (
                "gcr.io/distroless/cc-debian12:nonroot",
                ("gcr.io", "distroless/cc-debian12", "nonroot"),
            ),
            (
                "127.0.0.1:5000/test/base",
                ("127.0.0.1:5000", "test/base", "latest"),
            ),
            (
                "nginx:1.27",
                ("registry-1.docker.io", "library/nginx", "1.27"),
            ),
            (
                "bitnami/nginx:1.27",
                ("registry-1.docker.io", "bitnami/nginx", "1.27"),
            ),
        ];
        for (input, (host, repository, tag)) in cases {
            let parsed = ImageReference::parse(input).unwrap();
            assert_eq!(
                (
                    parsed.host.as_str(),
                    parsed.repository.as_str(),
                    parsed.tag.as_str()
                ),
                (host, repository, tag),
                "{input}"
            );
        }
    }
}
