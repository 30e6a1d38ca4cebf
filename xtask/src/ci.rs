//! `cargo xtask ci`: every check CI runs, in order. The steps stop at the first failure;
//! the push step is a suite of named checks (`ci/suite.rs`) that all run and are all
//! reported. `--only NAME` runs one step or one check (and what it needs).

mod base_images;
mod browser;
mod images;
mod migrations;
mod push_checks;
mod reproducible;
mod stack;
mod suite;

use anyhow::bail;
use xshell::{Shell, cmd};

use crate::{flags, image, project::cargo, provision, steps::Steps};

/// The steps `--only` can name, in the order they run, with the title each prints.
const STEPS: &[(&str, &str)] = &[
    ("fmt", "cargo fmt --check"),
    ("clippy", "cargo clippy"),
    ("migrations", "migrations: squawk, expand and contract"),
    ("test", "cargo test"),
    ("npm-ci", "npm ci"),
    ("frontend-lint", "frontend lint"),
    ("frontend-typecheck", "frontend type-check"),
    ("frontend-test", "frontend unit tests"),
    ("frontend-build", "frontend build"),
    ("browser", "browser: Chromium signs in, clocks, signs out"),
    (
        "stack",
        "the stack's checks (compose, promtool, actionlint, yaml and json)",
    ),
    ("build-images", "build images"),
    ("images-layouts", "images: skopeo and umoci"),
    ("images-containers", "images: docker load and run"),
    ("base-images", "images: registry base, dynamic linking"),
    ("push", "push: real registry"),
    ("reproducible", "images: reproducible from a second clone"),
];

/// The frontend steps and the npm script each runs (`None`: `npm ci`).
const FRONTEND_STEPS: &[(&str, Option<&str>)] = &[
    ("npm-ci", None),
    ("frontend-lint", Some("lint")),
    ("frontend-typecheck", Some("typecheck")),
    ("frontend-test", Some("test")),
    ("frontend-build", Some("build")),
];

/// The steps that check the built images, so need `build-images` first.
const IMAGE_STEPS: &[&str] = &[
    "images-layouts",
    "images-containers",
    "base-images",
    "push",
    "reproducible",
];

/// What a step prints as it runs.
fn title(step: &str) -> &'static str {
    STEPS
        .iter()
        .find(|(name, _)| *name == step)
        .map_or("unknown step", |(_, title)| title)
}

/// The suites whose checks `--only STEP/CHECK` can name one by one.
fn suite_names(step: &str) -> Option<Vec<String>> {
    match step {
        "push" => Some(push_checks::names()),
        _ => None,
    }
}

impl flags::Ci {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let only = Only::parse(&self.only)?;
        let rust = |step: &str| !self.skip_rust && only.step(step);
        let frontend = |step: &str| !self.skip_frontend && only.step(step);
        let images = |step: &str| !self.skip_images && only.step(step);
        let mut steps = Steps::default();
        steps.run("provision", || {
            let mut needs = Vec::new();
            if rust("test") {
                // The tests use PostgreSQL and shellcheck; a missing tool fails them.
                needs.extend([provision::POSTGRES, provision::SHELLCHECK]);
            }
            if FRONTEND_STEPS.iter().any(|(step, _)| frontend(step)) {
                needs.push(provision::NPM);
            }
            provision::ensure(sh, &needs)?;
            if rust("test") || only.step("migrations") {
                // The migrations step and its tests lint with the pinned squawk.
                migrations::squawk_path(sh)?;
            }
            Ok(())
        })?;
        let cargo = cargo(sh);
        if rust("fmt") {
            steps.run(title("fmt"), || {
                Ok(cmd!(sh, "{cargo} fmt --all -- --check").run()?)
            })?;
        }
        if rust("clippy") {
            steps.run(title("clippy"), || {
                Ok(cmd!(
                    sh,
                    "{cargo} clippy --workspace --all-targets --locked -- -D warnings"
                )
                .run()?)
            })?;
        }
        if only.step("migrations") {
            steps.run(title("migrations"), || migrations::check(sh))?;
        }
        if rust("test") {
            steps.run(title("test"), || rust_tests(sh, &cargo))?;
        }
        for &(step, script) in FRONTEND_STEPS.iter().filter(|(step, _)| frontend(step)) {
            let _dir = sh.push_dir("frontend");
            steps.run(title(step), || match script {
                None => Ok(cmd!(sh, "npm ci --no-audit --no-fund").run()?),
                Some("test") => Ok(cmd!(sh, "npm test").run()?),
                Some(script) => Ok(cmd!(sh, "npm run {script}").run()?),
            })?;
        }
        if !self.skip_frontend && only.step("browser") {
            steps.run(title("browser"), || browser::check(sh))?;
        }
        if only.step("stack") {
            stack::check(sh, &mut steps)?;
        }
        if images("build-images") || IMAGE_STEPS.iter().any(|step| images(step)) {
            image_steps(sh, &mut steps, &|step| images(step), &only)?;
        }
        steps.print_summary();
        Ok(())
    }
}

fn rust_tests(sh: &Shell, cargo: &str) -> anyhow::Result<()> {
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
}

/// Builds both images, then checks them with skopeo, umoci and a real Docker engine,
/// and rebuilds them from a second clone to prove they are reproducible.
fn image_steps(
    sh: &Shell,
    steps: &mut Steps,
    selected: &dyn Fn(&str) -> bool,
    only: &Only,
) -> anyhow::Result<()> {
    let scratch = image::images_dir().join(".ci");
    std::fs::create_dir_all(&scratch)?;
    let report = steps.run(title("build-images"), || image::build(sh, &[]))?;
    if selected("images-layouts") {
        steps.run(title("images-layouts"), || {
            images::check_layouts(sh, &report, &scratch)
        })?;
    }
    if selected("images-containers") {
        steps.run(title("images-containers"), || {
            images::check_containers(sh, &report, &scratch)
        })?;
    }
    if selected("base-images") {
        steps.run(title("base-images"), || {
            base_images::check(sh, &scratch, report.revision.epoch)
        })?;
    }
    if selected("push") {
        let checks = only.checks("push");
        steps.run(title("push"), || {
            push_checks::check(sh, &report, &scratch, checks.as_deref())
        })?;
    }
    if selected("reproducible") {
        steps.run(title("reproducible"), || {
            reproducible::check(sh, &report, &scratch)
        })?;
    }
    Ok(())
}

/// What `--only` selected: whole steps (`push`) and single checks of a suite
/// (`push/fault-retry-500`). Empty: everything.
struct Only {
    names: Vec<String>,
}

impl Only {
    /// Checks every name, so a typo fails instead of running nothing.
    fn parse(names: &[String]) -> anyhow::Result<Only> {
        for name in names {
            let known = match name.split_once('/') {
                None => STEPS.iter().any(|(step, _)| step == name),
                Some((step, check)) => {
                    suite_names(step).is_some_and(|checks| checks.iter().any(|c| c == check))
                }
            };
            if !known {
                bail!(
                    "`--only {name}` names no ci step or check; valid names:\n  {}",
                    valid_names().join("\n  ")
                );
            }
        }
        Ok(Only {
            names: names.to_vec(),
        })
    }

    /// Whether `step` runs at all (whole, or some of its checks).
    fn step(&self, step: &str) -> bool {
        self.names.is_empty()
            || self.names.iter().any(|name| {
                name == step || name.split_once('/').is_some_and(|(group, _)| group == step)
            })
    }

    /// The checks of `step`'s suite to run; `None`: all of them.
    fn checks(&self, step: &str) -> Option<Vec<String>> {
        if self.names.is_empty() || self.names.iter().any(|name| name == step) {
            return None;
        }
        Some(
            self.names
                .iter()
                .filter_map(|name| name.strip_prefix(step)?.strip_prefix('/'))
                .map(str::to_owned)
                .collect(),
        )
    }
}

/// Every name `--only` takes, each step with what it runs.
fn valid_names() -> Vec<String> {
    let mut names = Vec::new();
    for (step, title) in STEPS {
        names.push(format!("{step:<20} {title}"));
        for check in suite_names(step).unwrap_or_default() {
            names.push(format!("{step}/{check}"));
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(names: &[&str]) -> anyhow::Result<Only> {
        Only::parse(&names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn only_selects_steps_and_single_checks() {
        let all = only(&[]).unwrap();
        assert!(all.step("fmt") && all.step("push") && all.checks("push").is_none());

        let push = only(&["push"]).unwrap();
        assert!(push.step("push") && !push.step("fmt") && push.checks("push").is_none());

        let one = only(&["push/fault-retry-500", "clippy"]).unwrap();
        assert!(one.step("push") && one.step("clippy") && !one.step("test"));
        assert_eq!(one.checks("push").unwrap(), ["fault-retry-500"]);
    }

    #[test]
    fn unknown_names_fail_and_list_the_valid_ones() {
        for name in ["pussh", "push/nope", "fmt/anything", "push/"] {
            let err = only(&[name]).err().unwrap().to_string();
            assert!(err.contains(&format!("`--only {name}`")), "{err}");
            assert!(
                err.contains("\n  fmt ") && err.contains("\n  push/cold-push-token"),
                "{err}"
            );
        }
    }

    #[test]
    fn every_step_is_named_once() {
        let mut names: Vec<&str> = STEPS.iter().map(|(step, _)| *step).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), STEPS.len());
        for step in IMAGE_STEPS
            .iter()
            .chain(FRONTEND_STEPS.iter().map(|(step, _)| step))
        {
            assert!(names.contains(step), "{step}");
        }
        let checks = push_checks::names();
        let mut unique = checks.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), checks.len(), "{checks:?}");
    }
}
