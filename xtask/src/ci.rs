//! `cargo xtask ci`: every check CI runs, in order, stopping at the first failure.

mod base_images;
mod images;
pub(crate) mod push_checks;
mod reproducible;
mod stack;

use xshell::{Shell, cmd};

use crate::{flags, image, project::cargo, provision, steps::Steps};

impl flags::Ci {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let mut steps = Steps::default();
        steps.run("provision", || {
            let mut needs = Vec::new();
            if !self.skip_rust {
                needs.push(provision::POSTGRES);
            }
            if !self.skip_frontend {
                needs.push(provision::NPM);
            }
            provision::ensure(sh, &needs)
        })?;
        if !self.skip_rust {
            rust_steps(sh, &mut steps)?;
        }
        if !self.skip_frontend {
            frontend_steps(sh, &mut steps)?;
        }
        stack::check(sh, &mut steps)?;
        if !self.skip_images {
            image_steps(sh, &mut steps)?;
        }
        steps.print_summary();
        Ok(())
    }
}

fn rust_steps(sh: &Shell, steps: &mut Steps) -> anyhow::Result<()> {
    let cargo = cargo(sh);
    steps.run("cargo fmt --check", || {
        Ok(cmd!(sh, "{cargo} fmt --all -- --check").run()?)
    })?;
    steps.run("cargo clippy", || {
        Ok(cmd!(
            sh,
            "{cargo} clippy --workspace --all-targets --locked -- -D warnings"
        )
        .run()?)
    })?;
    steps.run("cargo test", || {
        let nextest = cmd!(sh, "{cargo} nextest --version")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run();
        match nextest {
            Ok(()) => Ok(cmd!(
                sh,
                "{cargo} nextest run --workspace --locked --no-fail-fast"
            )
            .run()?),
            Err(_) => Ok(cmd!(sh, "{cargo} test --workspace --locked --no-fail-fast").run()?),
        }
    })
}

fn frontend_steps(sh: &Shell, steps: &mut Steps) -> anyhow::Result<()> {
    let _dir = sh.push_dir("frontend");
    steps.run("npm ci", || {
        Ok(cmd!(sh, "npm ci --no-audit --no-fund").run()?)
    })?;
    steps.run("frontend lint", || Ok(cmd!(sh, "npm run lint").run()?))?;
    steps.run("frontend type-check", || {
        Ok(cmd!(sh, "npm run typecheck").run()?)
    })?;
    steps.run("frontend unit tests", || Ok(cmd!(sh, "npm test").run()?))?;
    steps.run("frontend build", || Ok(cmd!(sh, "npm run build").run()?))
}

/// Builds both images, then checks them with skopeo, umoci and a real Docker engine,
/// and rebuilds them from a second clone to prove they are reproducible.
fn image_steps(sh: &Shell, steps: &mut Steps) -> anyhow::Result<()> {
    let scratch = image::images_dir().join(".ci");
    std::fs::create_dir_all(&scratch)?;
    let report = steps.run("build images", || image::build(sh, &[]))?;
    steps.run("images: skopeo and umoci", || {
        images::check_layouts(sh, &report, &scratch)
    })?;
    steps.run("images: docker load and run", || {
        images::check_containers(sh, &report, &scratch)
    })?;
    steps.run("images: registry base, dynamic linking", || {
        base_images::check(sh, &scratch, report.revision.epoch)
    })?;
    steps.run("push: real registry", || {
        push_checks::check(sh, &report, &scratch)
    })?;
    steps.run("images: reproducible from a second clone", || {
        reproducible::check(sh, &report, &scratch)
    })
}
