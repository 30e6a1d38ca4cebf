//! Turns a layer definition and the compiled artifacts into the entries of a layer.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, format_err};
use flate2::{Compression, GzBuilder};

use crate::image::{
    definitions::{Contents, Link, NONROOT},
    layer::{Entry, EntryKind, Source},
};

/// What the compile stage produced, by the name the definitions use.
#[derive(Debug, Default)]
pub(crate) struct Artifacts {
    pub(crate) binaries: BTreeMap<(&'static str, Link), PathBuf>,
    pub(crate) vite_dist: Option<PathBuf>,
}

pub(crate) fn entries(contents: Contents, artifacts: &Artifacts) -> anyhow::Result<Vec<Entry>> {
    match contents {
        Contents::Runtime => Ok(runtime()),
        Contents::CargoBinary {
            package,
            dest,
            link,
        } => {
            let path = artifacts
                .binaries
                .get(&(package, link))
                .ok_or_else(|| format_err!("binary of `{package}` was not compiled"))?;
            Ok(vec![Entry::file(dest, 0o555, Source::Path(path.clone()))])
        }
        Contents::ViteDist { dest } => {
            let dist = artifacts
                .vite_dist
                .as_deref()
                .ok_or_else(|| format_err!("frontend was not built"))?;
            static_tree(dist, dest)
        }
    }
}

/// The minimal file system a static binary needs to run as `nonroot`.
pub(crate) fn runtime() -> Vec<Entry> {
    let passwd = "root:x:0:0:root:/root:/sbin/nologin\n\
                  nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
    let group = "root:x:0:\nnonroot:x:65532:\n";
    // Static glibc resolves names through these two sources only.
    let nsswitch = "hosts: files dns\n";
    let text = |s: &str| Source::Bytes(s.as_bytes().to_vec());
    vec![
        Entry::dir("app", 0o755),
        Entry::file("etc/group", 0o644, text(group)),
        Entry::file("etc/nsswitch.conf", 0o644, text(nsswitch)),
        Entry::file("etc/passwd", 0o644, text(passwd)),
        Entry::file(
            "etc/ssl/certs/ca-certificates.crt",
            0o644,
            Source::Bytes(ca_bundle()),
        ),
        Entry::dir("home/nonroot", 0o755).owned_by(NONROOT, NONROOT),
        Entry::dir("tmp", 0o1777),
    ]
}

/// Mozilla's roots as a PEM bundle, from the Cargo.lock-pinned `webpki-root-certs`.
pub(crate) fn ca_bundle() -> Vec<u8> {
    let mut pem = Vec::new();
    for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in crate::digest::base64::encode(cert).as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    pem
}

/// Read-only copy of a directory tree, plus a `.gz` twin for each compressible file.
fn static_tree(root: &Path, dest: &str) -> anyhow::Result<Vec<Entry>> {
    let mut acc = vec![Entry::dir(dest, 0o555)];
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let listing = fs::read_dir(&dir).with_context(|| format!("reading `{}`", dir.display()))?;
        for item in listing {
            let path = item?.path();
            let rel = path
                .strip_prefix(root)?
                .to_str()
                .ok_or_else(|| format_err!("non-UTF-8 file name under `{}`", root.display()))?;
            let in_image = format!("{dest}/{rel}");
            let meta = fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                acc.push(Entry::dir(&in_image, 0o555));
                stack.push(path);
            } else if meta.is_symlink() {
                let target = fs::read_link(&path)?;
                let target = target
                    .to_str()
                    .ok_or_else(|| format_err!("non-UTF-8 link `{rel}`"))?;
                acc.push(Entry {
                    path: in_image,
                    kind: EntryKind::Symlink(target.to_owned()),
                    mode: 0o777,
                    uid: 0,
                    gid: 0,
                });
            } else {
                if is_compressible(&path) {
                    let gz = gzip(&fs::read(&path)?)?;
                    if gz.len() < meta.len() as usize {
                        acc.push(Entry::file(
                            &format!("{in_image}.gz"),
                            0o444,
                            Source::Bytes(gz),
                        ));
                    }
                }
                acc.push(Entry::file(&in_image, 0o444, Source::Path(path)));
            }
        }
    }
    Ok(acc)
}

fn is_compressible(path: &Path) -> bool {
    let ext = path.extension().and_then(|ext| ext.to_str()).unwrap_or("");
    matches!(
        ext,
        "js" | "mjs" | "css" | "html" | "svg" | "json" | "txt" | "xml" | "webmanifest" | "map"
    )
}

/// Same bytes for the same input, on every machine: no name, mtime 0, fixed level.
fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::best());
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_bundle_holds_every_pinned_root() {
        let pem = String::from_utf8(ca_bundle()).unwrap();
        let n_certs = pem.matches("-----BEGIN CERTIFICATE-----").count();
        assert_eq!(n_certs, webpki_root_certs::TLS_SERVER_ROOT_CERTS.len());
        assert!(n_certs > 100, "suspiciously few roots: {n_certs}");
    }

    #[test]
    fn static_tree_adds_gzip_twins_only_when_smaller() {
        let dir = tempdir("static-tree");
        fs::create_dir_all(dir.join("assets")).unwrap();
        fs::write(dir.join("index.html"), "<html>".repeat(200)).unwrap();
        fs::write(dir.join("assets/app-1234.js"), "x").unwrap();
        fs::write(dir.join("assets/logo.png"), [0u8; 2048]).unwrap();
        let mut paths: Vec<String> = static_tree(&dir, "app/public")
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "app/public",
                "app/public/assets",
                "app/public/assets/app-1234.js",
                "app/public/assets/logo.png",
                "app/public/index.html",
                "app/public/index.html.gz",
            ]
        );
        fs::remove_dir_all(dir).unwrap();
    }

    pub(crate) fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
