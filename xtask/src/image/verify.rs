//! Explains why two builds of an image differ: which layer, which path, which header field.

use std::{collections::BTreeMap, fs, io::Read, path::Path};

use anyhow::Context;

/// What a tar entry looks like, field by field, for comparison.
#[derive(Debug, PartialEq, Eq)]
struct EntryFacts {
    fields: BTreeMap<&'static str, String>,
}

/// Lists the differences between two layer blobs (gzip tars); empty when equal.
pub(crate) fn diff_layers(a: &Path, b: &Path) -> anyhow::Result<Vec<String>> {
    let (a_tar, b_tar) = (gunzip(a)?, gunzip(b)?);
    if a_tar == b_tar {
        return Ok(vec![
            "tar bytes are identical: the gzip streams differ (compressor backend or level)"
                .to_owned(),
        ]);
    }
    let (a_entries, b_entries) = (entries(&a_tar)?, entries(&b_tar)?);
    let mut acc = Vec::new();
    let a_order: Vec<&String> = a_entries.iter().map(|(p, _)| p).collect();
    let b_order: Vec<&String> = b_entries.iter().map(|(p, _)| p).collect();
    let a_map: BTreeMap<_, _> = a_entries.iter().map(|(p, f)| (p, f)).collect();
    let b_map: BTreeMap<_, _> = b_entries.iter().map(|(p, f)| (p, f)).collect();
    for path in a_map.keys().filter(|p| !b_map.contains_key(*p)) {
        acc.push(format!("`{path}`: only in the first build"));
    }
    for path in b_map.keys().filter(|p| !a_map.contains_key(*p)) {
        acc.push(format!("`{path}`: only in the second build"));
    }
    for (path, a_facts) in &a_map {
        let Some(b_facts) = b_map.get(path) else {
            continue;
        };
        for (field, a_value) in &a_facts.fields {
            let b_value = b_facts.fields.get(field).map(String::as_str).unwrap_or("");
            if a_value != b_value {
                acc.push(format!(
                    "`{path}`: header field `{field}` is `{a_value}` vs `{b_value}`"
                ));
            }
        }
    }
    if acc.is_empty() && a_order != b_order {
        acc.push("same entries in a different order".to_owned());
    }
    if acc.is_empty() {
        acc.push("entries are equal field by field; the raw tar bytes differ (padding or long-name records)".to_owned());
    }
    Ok(acc)
}

fn gunzip(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file = fs::File::open(path).with_context(|| format!("opening `{}`", path.display()))?;
    let mut acc = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut acc)
        .with_context(|| format!("decompressing `{}`", path.display()))?;
    Ok(acc)
}

fn entries(tar_bytes: &[u8]) -> anyhow::Result<Vec<(String, EntryFacts)>> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut acc = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.display().to_string();
        let header = entry.header().clone();
        let mut content = Vec::new();
        entry.read_to_end(&mut content)?;
        let text = |v: Option<&str>| v.unwrap_or("").to_owned();
        let fields = BTreeMap::from([
            ("type", format!("{:?}", header.entry_type())),
            ("mode", format!("{:o}", header.mode()?)),
            ("uid", header.uid()?.to_string()),
            ("gid", header.gid()?.to_string()),
            ("uname", text(header.username().ok().flatten())),
            ("gname", text(header.groupname().ok().flatten())),
            ("mtime", header.mtime()?.to_string()),
            ("size", header.size()?.to_string()),
            (
                "link",
                header
                    .link_name()?
                    .map(|l| l.display().to_string())
                    .unwrap_or_default(),
            ),
            ("content sha256", crate::digest::sha256_hex(&content)),
        ]);
        acc.push((path, EntryFacts { fields }));
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::layer::{self, Entry, Source};

    fn write_layer(dir: &Path, name: &str, entries: Vec<Entry>, mtime: u64) -> std::path::PathBuf {
        let path = dir.join(name);
        layer::write(
            &layer::normalize(entries).unwrap(),
            mtime,
            fs::File::create(&path).unwrap(),
        )
        .unwrap();
        path
    }

    #[test]
    fn names_the_path_and_field_that_differ() {
        let dir = std::env::temp_dir().join(format!("xtask-verify-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = |mode| vec![Entry::file("app/bin", mode, Source::Bytes(b"x".to_vec()))];
        let a = write_layer(&dir, "a", file(0o555), 10);
        let b = write_layer(&dir, "b", file(0o755), 10);
        let c = write_layer(&dir, "c", file(0o555), 11);
        assert_eq!(
            diff_layers(&a, &b).unwrap(),
            ["`app/bin`: header field `mode` is `555` vs `755`"]
        );
        let mtime = diff_layers(&a, &c).unwrap();
        assert!(
            mtime.contains(&"`app/bin`: header field `mtime` is `10` vs `11`".to_owned()),
            "{mtime:?}"
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
