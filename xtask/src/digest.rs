//! The bottom layer: content digests (`sha256:<hex>`), hashing helpers and base64.
//!
//! Image, registry and push all name blobs by [`Digest`], so none of them parses or
//! formats the `sha256:` prefix itself; this module depends on nothing else in the crate.

pub(crate) mod base64;

use std::{
    fmt, fs,
    io::{self, Write},
    path::Path,
    str::FromStr,
};

use anyhow::Context;
use sha2::{Digest as _, Sha256};

/// A `sha256:` digest with 64 lower-case hex digits: the only kind this project writes
/// or accepts. Compares equal to its string form, so `digest == "sha256:…"` reads as it should.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Digest(String);

const PREFIX: &str = "sha256:";

impl Digest {
    /// `sha256:<hex>` of these bytes.
    pub(crate) fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(hasher: Sha256) -> Digest {
        Digest(format!("{PREFIX}{}", hex(&hasher.finalize())))
    }

    /// Parses `sha256:` and 64 lower-case hex digits.
    pub(crate) fn parse(text: &str) -> anyhow::Result<Digest> {
        let ok = text.strip_prefix(PREFIX).is_some_and(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if !ok {
            anyhow::bail!(
                "`{text}` is not a sha256 digest: expected `sha256:` and 64 lower-case hex digits"
            );
        }
        Ok(Digest(text.to_owned()))
    }

    /// `sha256:<hex>`.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits, without the algorithm.
    pub(crate) fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }

    /// Where an OCI layout keeps this blob, relative to the layout: `blobs/sha256/<hex>`.
    pub(crate) fn blob_path(&self) -> String {
        format!("blobs/sha256/{}", self.hex())
    }

    /// `sha256:` and the first 12 hex digits, for progress lines.
    pub(crate) fn short(&self) -> &str {
        &self.0[..PREFIX.len() + 12]
    }
}

impl FromStr for Digest {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Digest> {
        Digest::parse(text)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Reads as its `sha256:<hex>` text wherever a `&str` is wanted (URLs, messages, JSON).
impl std::ops::Deref for Digest {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Digest {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_ref()
    }
}

impl From<Digest> for serde_json::Value {
    fn from(digest: Digest) -> serde_json::Value {
        serde_json::Value::String(digest.0)
    }
}

impl From<&Digest> for serde_json::Value {
    fn from(digest: &Digest) -> serde_json::Value {
        serde_json::Value::String(digest.0.clone())
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Digest {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Digest {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl PartialEq<Digest> for String {
    fn eq(&self, other: &Digest) -> bool {
        *self == other.0
    }
}

impl PartialEq<Digest> for &str {
    fn eq(&self, other: &Digest) -> bool {
        *self == other.0
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Lower-case hex of any bytes (a sha256 output, an input hash).
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut acc = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(acc, "{byte:02x}");
    }
    acc
}

/// Hex sha256 of these bytes (no `sha256:` prefix: cache keys and input hashes).
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Hex sha256 of a file's contents, streamed.
pub(crate) fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = fs::File::open(path).with_context(|| format!("opening `{}`", path.display()))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).with_context(|| format!("reading `{}`", path.display()))?;
    Ok(hex(&hasher.finalize()))
}

/// Passes bytes through while computing their sha256 and length.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> HashingWriter<W> {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Returns the inner writer, the digest of what passed through, and its length.
    pub(crate) fn finish(self) -> (W, Digest, u64) {
        (self.inner, Digest::from_hasher(self.hasher), self.len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_strictly_and_know_their_paths() {
        let text = format!("sha256:{}", "0a".repeat(32));
        let digest = Digest::parse(&text).unwrap();
        assert_eq!(digest, text.as_str());
        assert_eq!(digest.hex(), "0a".repeat(32));
        assert_eq!(
            digest.blob_path(),
            format!("blobs/sha256/{}", "0a".repeat(32))
        );
        assert_eq!(digest.short(), "sha256:0a0a0a0a0a0a");
        for bad in [
            format!("sha256:{}", "0A".repeat(32)),
            format!("sha512:{}", "0a".repeat(32)),
            "sha256:abc".to_owned(),
            "0a".repeat(32),
        ] {
            let err = Digest::parse(&bad).unwrap_err().to_string();
            assert!(err.contains("is not a sha256 digest"), "{err}");
        }
    }

    #[test]
    fn hashing_writer_agrees_with_one_shot_hashing() {
        let mut writer = HashingWriter::new(Vec::new());
        writer.write_all(b"hello ").unwrap();
        writer.write_all(b"world").unwrap();
        let (bytes, digest, len) = writer.finish();
        assert_eq!(bytes, b"hello world");
        assert_eq!(len, 11);
        assert_eq!(digest, Digest::of(b"hello world"));
        assert_eq!(
            digest,
            "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(sha256_hex(b"hello world"), digest.hex());
    }
}
