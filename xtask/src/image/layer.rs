//! Deterministic layer tarballs: sorted entries, fixed owners, modes and mtimes, pinned gzip.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Read, Write},
    path::PathBuf,
};

use anyhow::{Context, bail};
use flate2::{Compression, GzBuilder};
use sha2::{Digest as _, Sha256};

use crate::digest::{Digest, HashingWriter, hex, sha256_file};

/// Media type of every layer this builder writes.
pub(crate) const MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Fixed deflate level: changing it changes every layer digest.
const GZIP_LEVEL: u32 = 6;

/// One file system object in a layer, with everything that ends up in its tar header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Path inside the image, relative (`app/timemanager-backend`).
    pub(crate) path: String,
    pub(crate) kind: EntryKind,
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Dir,
    File(Source),
    Symlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    Bytes(Vec<u8>),
    Path(PathBuf),
}

impl Entry {
    pub(crate) fn dir(path: &str, mode: u32) -> Entry {
        Entry {
            path: path.to_owned(),
            kind: EntryKind::Dir,
            mode,
            uid: 0,
            gid: 0,
        }
    }

    pub(crate) fn file(path: &str, mode: u32, source: Source) -> Entry {
        Entry {
            path: path.to_owned(),
            kind: EntryKind::File(source),
            mode,
            uid: 0,
            gid: 0,
        }
    }

    pub(crate) fn owned_by(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }
}

/// A written layer: the compressed blob's digest and size, and the uncompressed tar's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LayerBlob {
    pub(crate) digest: Digest,
    pub(crate) diff_id: Digest,
    pub(crate) size: u64,
}

/// Sorts entries, adds missing parent directories and rejects duplicates or unsafe paths.
pub(crate) fn normalize(entries: Vec<Entry>) -> anyhow::Result<Vec<Entry>> {
    let mut by_path: BTreeMap<String, Entry> = BTreeMap::new();
    for mut entry in entries {
        entry.path = clean_path(&entry.path)?;
        if by_path
            .get(&entry.path)
            .is_some_and(|previous| previous != &entry)
        {
            bail!(
                "layer lists `{}` twice with different contents or metadata",
                entry.path
            );
        }
        by_path.insert(entry.path.clone(), entry);
    }
    let parents: Vec<String> = by_path
        .keys()
        .flat_map(|path| {
            let mut acc = Vec::new();
            let mut rest = path.as_str();
            while let Some((parent, _)) = rest.rsplit_once('/') {
                acc.push(parent.to_owned());
                rest = parent;
            }
            acc
        })
        .collect();
    for parent in parents {
        match by_path.get(&parent) {
            Some(Entry {
                kind: EntryKind::Dir,
                ..
            }) => (),
            Some(_) => bail!("`{parent}` is used as a directory but listed as a file or symlink"),
            None => {
                by_path.insert(parent.clone(), Entry::dir(&parent, 0o755));
            }
        }
    }
    // BTreeMap orders by bytes, so a directory always comes before its contents.
    Ok(by_path.into_values().collect())
}

fn clean_path(path: &str) -> anyhow::Result<String> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    let bad = trimmed.is_empty()
        || trimmed
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        bail!("invalid path in layer: `{path}` (must be relative, without `.`, `..` or `//`)");
    }
    Ok(trimmed.to_owned())
}

/// Writes the layer as gzip-compressed tar into `out`, hashing both forms on the way.
///
/// Every header field is set explicitly: mtime is `mtime` for all entries, owners are
/// numeric only, and nothing from the build machine (atime, ctime, xattrs, user names)
/// reaches the archive.
pub(crate) fn write<W: Write>(entries: &[Entry], mtime: u64, out: W) -> anyhow::Result<LayerBlob> {
    let compressed = HashingWriter::new(out);
    let gz = GzBuilder::new()
        .mtime(0)
        .write(compressed, Compression::new(GZIP_LEVEL));
    let (gz, diff_id, _) = write_tar(entries, mtime, HashingWriter::new(gz))?.finish();
    let (mut out, digest, size) = gz.finish().context("finishing gzip stream")?.finish();
    out.flush().context("flushing layer blob")?;
    Ok(LayerBlob {
        digest,
        diff_id,
        size,
    })
}

/// Writes entries, already [`normalize`]d, as an uncompressed tar and returns the writer.
pub(crate) fn write_tar<W: Write>(entries: &[Entry], mtime: u64, out: W) -> anyhow::Result<W> {
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    builder.sparse(false);
    for entry in entries {
        append(&mut builder, entry, mtime)
            .with_context(|| format!("adding `{}` to tar", entry.path))?;
    }
    builder.into_inner().context("finishing tar")
}

fn append<W: Write>(
    builder: &mut tar::Builder<W>,
    entry: &Entry,
    mtime: u64,
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_mode(entry.mode);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mtime(mtime);
    match &entry.kind {
        EntryKind::Dir => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder.append_data(&mut header, &entry.path, io::empty())?;
        }
        EntryKind::Symlink(target) => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            builder.append_link(&mut header, &entry.path, target)?;
        }
        EntryKind::File(Source::Bytes(bytes)) => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(bytes.len() as u64);
            builder.append_data(&mut header, &entry.path, bytes.as_slice())?;
        }
        EntryKind::File(Source::Path(path)) => {
            let file =
                fs::File::open(path).with_context(|| format!("opening `{}`", path.display()))?;
            let len = file.metadata()?.len();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(len);
            // `take` guards against a file that grows while it is archived.
            builder.append_data(&mut header, &entry.path, file.take(len))?;
        }
    }
    Ok(())
}

/// Content hash of an entry list, including metadata: the cache key of a layer.
pub(crate) fn input_key(entries: &[Entry], mtime: u64) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(format!("layer-v1 gzip{GZIP_LEVEL} mtime={mtime}\n"));
    for entry in entries {
        let kind = match &entry.kind {
            EntryKind::Dir => "dir".to_owned(),
            EntryKind::Symlink(target) => format!("symlink {target}"),
            EntryKind::File(Source::Bytes(bytes)) => {
                format!("file {}", hex(&Sha256::digest(bytes)))
            }
            EntryKind::File(Source::Path(path)) => format!("file {}", sha256_file(path)?),
        };
        hasher.update(format!(
            "{} {:o} {}:{} {kind}\n",
            entry.path, entry.mode, entry.uid, entry.gid
        ));
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn sample(order_reversed: bool) -> Vec<Entry> {
        let mut entries = vec![
            Entry::file("app/bin", 0o555, Source::Bytes(b"#!binary".to_vec())),
            Entry::file(
                "etc/passwd",
                0o644,
                Source::Bytes(b"root:x:0:0::/:/sbin/nologin\n".to_vec()),
            ),
            Entry::dir("tmp", 0o1777),
            Entry::dir("home/nonroot", 0o755).owned_by(65532, 65532),
        ];
        if order_reversed {
            entries.reverse();
        }
        normalize(entries).unwrap()
    }

    fn build(entries: &[Entry]) -> (LayerBlob, Vec<u8>) {
        let mut out = Vec::new();
        let blob = write(entries, 1_700_000_000, &mut out).unwrap();
        (blob, out)
    }

    #[test]
    fn same_files_in_any_order_give_the_same_digest() {
        assert_eq!(build(&sample(false)).0, build(&sample(true)).0);
    }

    #[test]
    fn files_on_disk_with_different_mtimes_give_the_same_digest() {
        let dir = std::env::temp_dir().join(format!("xtask-layer-mtime-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("data");
        fs::write(&file, b"payload").unwrap();
        let entries =
            normalize(vec![Entry::file("data", 0o644, Source::Path(file.clone()))]).unwrap();
        let first = build(&entries).0;
        let older = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400);
        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(older)
            .unwrap();
        assert_eq!(first, build(&entries).0);
        fs::remove_dir_all(dir).unwrap();
    }

    /// Catches a silent change of deflate backend, level or tar header layout:
    /// any of them changes every layer digest the registry already has.
    #[test]
    fn golden_digest_of_a_fixed_layer() {
        let (blob, _) = build(&sample(false));
        assert_eq!(blob.diff_id, GOLDEN_DIFF_ID, "tar bytes changed");
        assert_eq!(
            blob.digest, GOLDEN_DIGEST,
            "gzip bytes changed: flate2 backend or level?"
        );
    }
    const GOLDEN_DIFF_ID: &str =
        "sha256:647e22a7bcb78d959b441acdf6373c542b8218d116b355e954ac868dca125cf3";
    const GOLDEN_DIGEST: &str =
        "sha256:98b8ba4b06db9773ff55877a5b7db136ba0313ed71b26f0740f9c7d8d01b754a";

    #[test]
    fn gzip_header_is_fixed() {
        let (_, bytes) = build(&sample(false));
        // ID1 ID2 CM FLG, MTIME=0, XFL=0 (level 6), OS=255 (unknown).
        assert_eq!(&bytes[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    }

    #[test]
    fn tar_headers_carry_only_chosen_metadata() {
        let (blob, bytes) = build(&sample(false));
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut tar_bytes)
            .unwrap();
        assert_eq!(
            format!("sha256:{}", hex(&Sha256::digest(&tar_bytes))),
            blob.diff_id
        );
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            let path = entry.path().unwrap().display().to_string();
            assert_eq!(header.mtime().unwrap(), 1_700_000_000, "{path}");
            assert_eq!(header.username().unwrap(), Some(""), "{path}");
            assert_eq!(header.groupname().unwrap(), Some(""), "{path}");
            assert!(header.as_gnu().unwrap().atime().unwrap_or(0) == 0, "{path}");
            seen.push((path, header.mode().unwrap(), header.uid().unwrap()));
        }
        let expected = [
            ("app", 0o755, 0),
            ("app/bin", 0o555, 0),
            ("etc", 0o755, 0),
            ("etc/passwd", 0o644, 0),
            ("home", 0o755, 0),
            ("home/nonroot", 0o755, 65532),
            ("tmp", 0o1777, 0),
        ];
        let expected: Vec<(String, u32, u64)> = expected
            .iter()
            .map(|(p, m, u)| (p.to_string(), *m, *u))
            .collect();
        assert_eq!(seen, expected);
        // Two zero blocks end the archive, with no padding to a 10 KiB record.
        assert!(tar_bytes.ends_with(&[0u8; 1024]));
        assert_eq!(tar_bytes.len() % 512, 0);
    }

    #[test]
    fn symlinks_are_stored_as_links_with_their_target() {
        let entries = normalize(vec![Entry {
            path: "usr/bin/app".to_owned(),
            kind: EntryKind::Symlink("/app/timemanager-backend".to_owned()),
            mode: 0o777,
            uid: 0,
            gid: 0,
        }])
        .unwrap();
        let (_, bytes) = build(&entries);
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut tar_bytes)
            .unwrap();
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let link = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().ends_with("app"))
            .unwrap();
        assert_eq!(link.header().entry_type(), tar::EntryType::Symlink);
        assert_eq!(
            link.link_name().unwrap().unwrap().to_str(),
            Some("/app/timemanager-backend")
        );
    }

    #[test]
    fn conflicting_duplicates_and_escaping_paths_are_rejected() {
        let dup = normalize(vec![
            Entry::file("a", 0o644, Source::Bytes(b"1".to_vec())),
            Entry::file("/a", 0o644, Source::Bytes(b"2".to_vec())),
        ]);
        assert!(dup.unwrap_err().to_string().contains("`a` twice"));
        let escape = normalize(vec![Entry::file(
            "../etc/shadow",
            0o644,
            Source::Bytes(Vec::new()),
        )]);
        assert!(escape.unwrap_err().to_string().contains("../etc/shadow"));
    }

    #[test]
    fn input_key_changes_with_content_and_metadata() {
        let base = sample(false);
        let key = input_key(&base, 1).unwrap();
        assert_eq!(key, input_key(&sample(true), 1).unwrap());
        assert_ne!(key, input_key(&base, 2).unwrap());
        let mut chmod = base.clone();
        chmod[1].mode = 0o755;
        assert_ne!(key, input_key(&chmod, 1).unwrap());
    }
}
