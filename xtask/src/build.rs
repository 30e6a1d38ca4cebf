//! `cargo xtask build`: builds the images and reports digests, sizes and stage times.

use std::io::Write;

use anyhow::Context;
use xshell::Shell;

use crate::{flags, image, steps::format_duration};

impl flags::Build {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let report = image::build(sh, &self.images)?;
        if let Ok(path) = sh.var("GITHUB_OUTPUT") {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .with_context(|| format!("opening GITHUB_OUTPUT `{path}`"))?;
            for image in &report.images {
                writeln!(
                    file,
                    "{}-digest={}",
                    image.name, image.blobs.manifest.digest
                )?;
            }
        }
        if self.json {
            println!("{}", report.to_json());
            return Ok(());
        }
        if report.inputs_unchanged {
            eprintln!(
                "{}: inputs unchanged since the last build, nothing compiled",
                report.revision.version
            );
        } else {
            eprintln!(
                "compiled {} (cargo {}, npm {})",
                report.revision.version,
                format_duration(report.compile.cargo),
                format_duration(report.compile.npm)
            );
        }
        for image in &report.images {
            let t = &image.times;
            eprintln!(
                "{name}: {digest}\n  {size:.2} MB compressed, {n} layers ({cached} cached)\n  layers {l}, config+layout {o}, archive {a}, sbom {s}\n  {layout}, {archive}",
                name = image.name,
                digest = image.blobs.manifest.digest,
                size = image.compressed_size() as f64 / 1e6,
                n = image.blobs.layers.len(),
                cached = image.n_cached_layers,
                l = format_duration(t.layers),
                o = format_duration(t.layout),
                a = format_duration(t.archive),
                s = format_duration(t.sbom),
                layout = image.layout.display(),
                archive = image.archive.display(),
            );
        }
        Ok(())
    }
}
