//! The release upload: `docker-compose.prod.yml` and `infrastructure/` (and, in test labs
//! only, `docker-compose.override.yml`) as one tar, written by the image layer's deterministic
//! tar writer and unpacked on the server by the upload step.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};

use crate::image::layer::{self, Entry, Source};

/// Every entry's mtime: the server compares releases by content (`diff -r`), and the same
/// files must give the same upload whenever they are packed.
const MTIME: u64 = 0;

/// The override's name in a release: every compose command on the server adds it with `-f`
/// when the release has it (`compose_in` in `scripts/prelude.sh`).
pub(crate) const OVERRIDE_FILE: &str = "docker-compose.override.yml";

/// `docker-compose.prod.yml` and `infrastructure/` as one tar, unpacked by the upload step.
#[derive(Debug, Default)]
pub(crate) struct Upload {
    pub(crate) tar: Vec<u8>,
    pub(crate) n_files: usize,
    /// The tar has `docker-compose.override.yml` (`deploy --compose-override`, labs only).
    pub(crate) has_override: bool,
}

/// Packs the release's files; `compose_override` is a lab's override file, never production's.
pub(crate) fn pack(
    compose_file: &Path,
    infrastructure: &Path,
    compose_override: Option<&Path>,
) -> anyhow::Result<Upload> {
    let mut entries = vec![file_entry(compose_file, "docker-compose.prod.yml")?];
    if let Some(path) = compose_override {
        entries.push(file_entry(path, OVERRIDE_FILE)?);
    }
    if !infrastructure.is_dir() {
        bail!("`{}` is not a directory", infrastructure.display());
    }
    let mut stack = vec![(
        infrastructure.to_path_buf(),
        PathBuf::from("infrastructure"),
    )];
    while let Some((dir, name)) = stack.pop() {
        entries.push(Entry::dir(&name.display().to_string(), 0o755));
        let children = fs::read_dir(&dir)
            .with_context(|| format!("reading `{}`", dir.display()))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()?;
        for path in children {
            let child = name.join(path.file_name().context("entry without a name")?);
            let meta = fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                stack.push((path, child));
            } else if meta.is_file() {
                entries.push(file_entry(&path, &child.display().to_string())?);
            } else {
                bail!(
                    "`{}` is neither a file nor a directory: the release upload takes plain files only",
                    path.display()
                );
            }
        }
    }
    let n_files = entries
        .iter()
        .filter(|entry| matches!(entry.kind, layer::EntryKind::File(_)))
        .count();
    let entries = layer::normalize(entries)?;
    let tar = layer::write_tar(&entries, MTIME, Vec::new()).context("packing the upload")?;
    Ok(Upload {
        tar,
        n_files,
        has_override: compose_override.is_some(),
    })
}

fn file_entry(path: &Path, name: &str) -> anyhow::Result<Entry> {
    let meta = fs::metadata(path).with_context(|| format!("reading `{}`", path.display()))?;
    let mode = if meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    };
    Ok(Entry::file(name, mode, Source::Path(path.to_path_buf())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{deploy::compose, project};

    fn entry_names(upload: &Upload) -> Vec<String> {
        let mut archive = tar::Archive::new(upload.tar.as_slice());
        archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn upload_packs_the_compose_file_and_infrastructure() {
        let upload = pack(
            &project::root().join(compose::COMPOSE_FILE),
            &project::root().join("infrastructure"),
            None,
        )
        .unwrap();
        let names = entry_names(&upload);
        assert_eq!(names[0], "docker-compose.prod.yml");
        assert!(
            names.contains(&"infrastructure/prometheus/alerts.yml".to_owned()),
            "{names:?}"
        );
        assert_eq!(
            upload.n_files,
            names
                .iter()
                .filter(|n| !n.ends_with('/') && n.contains('.'))
                .count()
        );
        assert!(!upload.has_override && !names.contains(&OVERRIDE_FILE.to_owned()));
        let again = pack(
            &project::root().join(compose::COMPOSE_FILE),
            &project::root().join("infrastructure"),
            None,
        )
        .unwrap();
        assert!(
            again.tar == upload.tar,
            "the same files packed twice differ"
        );
        let err = pack(
            std::path::Path::new("/nonexistent/compose.yml"),
            std::path::Path::new("/nonexistent"),
            None,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/compose.yml"));
    }

    #[test]
    fn a_lab_override_is_packed_under_its_fixed_name() {
        let upload = pack(
            &project::root().join(compose::COMPOSE_FILE),
            &project::root().join("infrastructure"),
            Some(&project::root().join(compose::COMPOSE_FILE)),
        )
        .unwrap();
        let names = entry_names(&upload);
        assert!(upload.has_override);
        assert!(names.contains(&OVERRIDE_FILE.to_owned()), "{names:?}");
        let err = pack(
            &project::root().join(compose::COMPOSE_FILE),
            &project::root().join("infrastructure"),
            Some(std::path::Path::new("/nonexistent/override.yml")),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/override.yml"));
    }
}
