//! What a dynamically linked binary needs from its base image: shared libraries and
//! glibc symbol versions, read with binutils' `readelf`.
//!
//! A Rust binary linked on a newer host than its base fails at start with
//! "version `GLIBC_2.39' not found": the build checks this before it ships the image.

use std::{collections::BTreeSet, path::Path};

use anyhow::Context;
use xshell::{Shell, cmd};

use crate::provision::{self, Need};

pub(crate) const READELF: Need = Need {
    program: "readelf",
    package: "binutils",
};

/// A glibc symbol version such as `GLIBC_2.34`, ordered numerically.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct GlibcVersion(pub(crate) Vec<u32>);

impl GlibcVersion {
    fn parse(name: &str) -> Option<GlibcVersion> {
        let numbers = name.strip_prefix("GLIBC_")?;
        numbers
            .split('.')
            .map(|n| n.parse().ok())
            .collect::<Option<Vec<u32>>>()
            .map(GlibcVersion)
    }
}

impl std::fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u32::to_string).collect();
        write!(f, "GLIBC_{}", parts.join("."))
    }
}

/// The dynamic needs of a binary; both empty for a static one.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Needs {
    pub(crate) libraries: BTreeSet<String>,
    pub(crate) glibc: BTreeSet<GlibcVersion>,
}

pub(crate) fn needs(sh: &Shell, binary: &Path) -> anyhow::Result<Needs> {
    provision::ensure(sh, &[READELF])?;
    let dynamic = cmd!(sh, "readelf -d -W {binary}")
        .quiet()
        .read()
        .with_context(|| format!("reading `{}`", binary.display()))?;
    let versions = cmd!(sh, "readelf -V -W {binary}").quiet().read()?;
    Ok(Needs {
        libraries: parse_needed(&dynamic),
        glibc: parse_version_names(&versions, "Name: "),
    })
}

/// glibc versions a `libc.so.6` defines.
pub(crate) fn glibc_provided(sh: &Shell, libc: &Path) -> anyhow::Result<BTreeSet<GlibcVersion>> {
    provision::ensure(sh, &[READELF])?;
    let versions = cmd!(sh, "readelf -V -W {libc}")
        .quiet()
        .read()
        .with_context(|| format!("reading `{}`", libc.display()))?;
    Ok(parse_version_names(&versions, "Name: "))
}

fn parse_needed(readelf_d: &str) -> BTreeSet<String> {
    readelf_d
        .lines()
        .filter(|line| line.contains("(NEEDED)"))
        .filter_map(|line| Some(line.split_once('[')?.1.split_once(']')?.0.to_owned()))
        .collect()
}

fn parse_version_names(readelf_v: &str, marker: &str) -> BTreeSet<GlibcVersion> {
    readelf_v
        .lines()
        .filter_map(|line| line.split_once(marker))
        .filter_map(|(_, rest)| GlibcVersion::parse(rest.split_whitespace().next()?))
        .collect()
}

/// Checks a binary's needs against what the base provides; the error says what to do.
pub(crate) fn check_against_base(
    binary: &str,
    needs: &Needs,
    base: &str,
    base_files: &BTreeSet<String>,
    base_glibc: &BTreeSet<GlibcVersion>,
) -> anyhow::Result<()> {
    const LIB_DIRS: &[&str] = &[
        "lib",
        "lib64",
        "usr/lib",
        "lib/x86_64-linux-gnu",
        "usr/lib/x86_64-linux-gnu",
        "usr/lib64",
    ];
    let missing: Vec<&String> = needs
        .libraries
        .iter()
        .filter(|lib| {
            !LIB_DIRS
                .iter()
                .any(|dir| base_files.contains(&format!("{dir}/{lib}")))
        })
        .collect();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        anyhow::bail!(
            "{binary} needs shared libraries the base {base} does not have: {}\nuse a base that ships them (e.g. distroless/cc for libgcc_s), or link statically with `-C target-feature=+crt-static`",
            names.join(", ")
        );
    }
    let unsupported: Vec<String> = needs
        .glibc
        .iter()
        .filter(|v| !base_glibc.contains(v))
        .map(|v| v.to_string())
        .collect();
    if !unsupported.is_empty() {
        let newest = base_glibc
            .iter()
            .next_back()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "no glibc".to_owned());
        anyhow::bail!(
            "{binary} needs {} but the base {base} provides up to {newest}: the binary was linked against a newer glibc than the base has\nbuild on a host with an older glibc, pick a newer base, or link statically with `-C target-feature=+crt-static`",
            unsupported.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const READELF_D: &str = "
 0x0000000000000001 (NEEDED)             Shared library: [libgcc_s.so.1]
 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]
 0x000000000000000c (INIT)               0x5000
";
    const READELF_V: &str = "
Version needs section '.gnu.version_r' contains 2 entries:
  000000: Version: 1  File: libgcc_s.so.1  Cnt: 1
  0x0030:   Name: GCC_3.0  Flags: none  Version: 5
  0x0010: Version: 1  File: libc.so.6  Cnt: 3
  0x0060:   Name: GLIBC_2.2.5  Flags: none  Version: 3
  0x0070:   Name: GLIBC_2.34  Flags: none  Version: 18
  0x0080:   Name: GLIBC_2.39  Flags: none  Version: 7
";

    fn needs() -> Needs {
        Needs {
            libraries: parse_needed(READELF_D),
            glibc: parse_version_names(READELF_V, "Name: "),
        }
    }

    fn versions(names: &[&str]) -> BTreeSet<GlibcVersion> {
        names
            .iter()
            .filter_map(|n| GlibcVersion::parse(n))
            .collect()
    }

    #[test]
    fn parses_needed_libraries_and_glibc_versions() {
        let needs = needs();
        assert_eq!(
            needs.libraries.iter().collect::<Vec<_>>(),
            ["libc.so.6", "libgcc_s.so.1"]
        );
        let glibc: Vec<String> = needs.glibc.iter().map(|v| v.to_string()).collect();
        assert_eq!(glibc, ["GLIBC_2.2.5", "GLIBC_2.34", "GLIBC_2.39"]);
        assert!(GlibcVersion::parse("GLIBC_2.9") < GlibcVersion::parse("GLIBC_2.10"));
    }

    /// The classic failure: linked on Ubuntu 24.04 (glibc 2.39), run on Debian 12 (2.36).
    #[test]
    fn newer_glibc_than_the_base_is_refused_with_the_fix() {
        let files: BTreeSet<String> = [
            "lib/x86_64-linux-gnu/libc.so.6",
            "lib/x86_64-linux-gnu/libgcc_s.so.1",
        ]
        .map(String::from)
        .into();
        let base_glibc = versions(&["GLIBC_2.2.5", "GLIBC_2.34", "GLIBC_2.36"]);
        let err = check_against_base("backend", &needs(), "debian12-cc", &files, &base_glibc)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("needs GLIBC_2.39") && err.contains("provides up to GLIBC_2.36"),
            "{err}"
        );
        let ok_glibc = versions(&["GLIBC_2.2.5", "GLIBC_2.34", "GLIBC_2.39"]);
        check_against_base("backend", &needs(), "debian13-cc", &files, &ok_glibc).unwrap();
    }

    #[test]
    fn missing_shared_library_is_named() {
        let files: BTreeSet<String> = ["lib/x86_64-linux-gnu/libc.so.6"].map(String::from).into();
        let err = check_against_base(
            "backend",
            &needs(),
            "distroless-base",
            &files,
            &versions(&["GLIBC_2.39", "GLIBC_2.34", "GLIBC_2.2.5"]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("libgcc_s.so.1"), "{err}");
    }
}
