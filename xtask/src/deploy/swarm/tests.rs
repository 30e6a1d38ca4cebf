//! Offline tests of swarm mode: the stack file against docker-compose.prod.yml, shellcheck,
//! secrets only in here-documents, content-named secrets, the plan.

use std::time::Duration;

use super::*;
use crate::{
    deploy::{
        compose::COMPOSE_FILE,
        health::Reach,
        settings::{ComposeChoice, EnvLine, EnvValue},
    },
    project,
};

const PASSWORD: &str = "pg secret #1 $HOME `x`";
const REGISTRY_PASSWORD: &str = "ghp_registrytoken123";

fn remote() -> ServerScripts {
    ServerScripts {
        base: "/opt/timemanager".to_owned(),
        project: "timemanager".to_owned(),
        run_id: "0123456789abcdef".to_owned(),
        compose: ComposeChoice::Detect,
    }
}

fn release() -> ReleaseSettings {
    let plain = |name: &'static str, value: &str| EnvLine {
        name,
        value: EnvValue::Plain(value.to_owned()),
    };
    ReleaseSettings {
        tag: "abc1234".to_owned(),
        registry: "ghcr.io".to_owned(),
        repository: "o/r".to_owned(),
        env: vec![
            plain("DOMAIN", "tm.example.com"),
            plain("POSTGRES_USER", "tm"),
            EnvLine {
                name: "POSTGRES_PASSWORD",
                value: EnvValue::Secret(Secret::new(PASSWORD)),
            },
            plain("IMAGE_TAG", "abc1234"),
        ],
        credentials: Some(Credentials::new("octocat", REGISTRY_PASSWORD, "the test")),
        profiles: Vec::new(),
        health_url: "https://tm.example.com/api/health".to_owned(),
    }
}

fn gate() -> Gate {
    Gate {
        services: Vec::new(),
        url: "https://tm.example.com/api/health".to_owned(),
        timeout: Duration::from_secs(180),
        reach: Reach::default(),
    }
}

fn plan() -> Plan {
    let upload = Upload {
        tar: vec![0; 10],
        n_files: 2,
        has_override: false,
    };
    deploy_plan(
        &remote(),
        &release(),
        &upload,
        "version: \"3.8\"\nservices: {}\n",
        &gate(),
        &DeployOptions {
            push: true,
            insecure_registries: &[],
            holder: "me",
            keep_snapshots: 10,
        },
        2,
    )
}

/// Every script swarm mode can send, as the server gets it.
fn all_scripts() -> Vec<(String, Script)> {
    let r = remote();
    let mut scripts: Vec<(String, Script)> = Vec::new();
    let plan = plan();
    for step in plan
        .prepare
        .iter()
        .chain(&plan.activate)
        .chain(&plan.fall_back)
        .chain(&plan.after_success)
    {
        if let Action::Remote(script) = &step.action {
            scripts.push((step.name.clone(), script.clone()));
        }
    }
    scripts.push(("status".to_owned(), r.swarm_status()));
    scripts.push(("logs".to_owned(), r.swarm_logs("backend", 10, true)));
    let token = Secret::new("SWMTKN-1-secrettoken");
    scripts.push((
        "init".to_owned(),
        init_script("10.0.0.1", &["10.0.0.2".to_owned()]),
    ));
    scripts.push((
        "join".to_owned(),
        join_script("10.0.0.1", "", &token, &["10.0.0.1".to_owned()], "TM_EOF_x"),
    ));
    scripts.push(("label".to_owned(), label_script("self")));
    scripts
}

#[test]
fn every_swarm_script_passes_shellcheck() {
    crate::deploy::scripts::tests::shellcheck(FILES, &all_scripts());
}

#[test]
fn secrets_are_only_inside_here_documents_and_masked_for_display() {
    let secrets = stack_secrets(&release());
    let url = secrets[1].value.expose().to_owned();
    assert!(url.contains(PASSWORD), "the URL is made from the password");
    for (name, script) in all_scripts() {
        crate::deploy::scripts::tests::assert_secrets_only_in_heredocs(
            &name,
            &script,
            &[
                PASSWORD,
                REGISTRY_PASSWORD,
                url.as_str(),
                "SWMTKN-1-secrettoken",
            ],
        );
    }
}

#[test]
fn secrets_are_named_by_their_content() {
    let a = StackSecret::new("postgres_password", "V", Secret::new("one"));
    let b = StackSecret::new("postgres_password", "V", Secret::new("one"));
    let c = StackSecret::new("postgres_password", "V", Secret::new("two"));
    let d = StackSecret::new("database_url", "V", Secret::new("one"));
    assert_eq!(a.name, b.name);
    assert_ne!(a.name, c.name);
    assert_ne!(a.name.split('_').next_back(), d.name.split('_').next_back());
    assert!(a.name.starts_with("postgres_password_"));
    assert_eq!(a.name.len(), "postgres_password_".len() + 12);
    // Docker secret names: letters, digits, `_`, `-`, `.`, at most 64 characters.
    assert!(
        a.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    );
    let secrets = stack_secrets(&release());
    assert_eq!(
        secrets[1].value.expose(),
        format!("postgres://tm:{PASSWORD}@postgres:5432/timemanager")
    );
}

#[test]
fn the_env_of_a_swarm_release_has_no_secret() {
    let lines = stack_env(&release(), "/opt/timemanager", 3);
    assert!(
        lines
            .iter()
            .all(|line| matches!(line.value, EnvValue::Plain(_)))
    );
    let names: Vec<&str> = lines.iter().map(|line| line.name).collect();
    assert!(names.contains(&"TM_BASE") && names.contains(&"SWARM_REPLICAS"));
    assert!(!names.contains(&"POSTGRES_PASSWORD"));
}

#[test]
fn mode_from_flag_then_deploy_mode() {
    let env = |value: Option<&'static str>| {
        move |name: &str| -> Option<String> { (name == "DEPLOY_MODE").then_some(value?.to_owned()) }
    };
    assert_eq!(mode(None, &env(None)).unwrap(), Mode::Compose);
    assert_eq!(mode(None, &env(Some("swarm"))).unwrap(), Mode::Swarm);
    assert_eq!(
        mode(Some(Mode::Compose), &env(Some("swarm"))).unwrap(),
        Mode::Compose
    );
    let err = mode(None, &env(Some("k8s"))).unwrap_err().to_string();
    assert!(err.contains("DEPLOY_MODE"), "{err}");
}

#[test]
fn the_plan_deploys_the_stack_and_waits_without_trusting_the_cli() {
    let text = plan().describe();
    for expected in [
        "docker stack deploy --with-registry-auth --prune --resolve-image always",
        "rollback_completed",
        "docker secret create",
        "swarm-secrets.env",
        "timeout=180",
        "mapfile -t services",
        "<secret postgres_password>",
    ] {
        assert!(text.contains(expected), "the plan lacks `{expected}`");
    }
    assert!(!text.contains(PASSWORD));
}

/// The services of a compose-format file: `name -> its lines`, by indentation.
fn services(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() && !line.starts_with('#') {
            inside = line == "services:";
            continue;
        }
        if !inside || line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix("  ").filter(|l| !l.starts_with(' ')) {
            out.push((name.trim_end_matches(':').to_owned(), Vec::new()));
        } else if let Some((_, lines)) = out.last_mut() {
            lines.push(line.trim().to_owned());
        }
    }
    out
}

fn service<'a>(all: &'a [(String, Vec<String>)], name: &str) -> &'a [String] {
    &all.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no service {name}"))
        .1
}

/// The value of `key: value` lines (first match).
fn value<'a>(lines: &'a [String], key: &str) -> Option<&'a str> {
    lines
        .iter()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(": "))
}

#[test]
fn the_stack_keeps_in_step_with_the_compose_file() {
    let root = project::root();
    let compose = std::fs::read_to_string(root.join(COMPOSE_FILE)).unwrap();
    let stack = std::fs::read_to_string(root.join(STACK_FILE)).unwrap();
    let compose = services(&compose);
    let stack = services(&stack);
    let stack_names: Vec<&str> = stack.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(stack_names, SERVICES, "the services the deploy waits for");
    for name in SERVICES {
        let (c, s) = (service(&compose, name), service(&stack, name));
        assert!(
            !c.iter().any(|l| l == "profiles: [\"monitoring\"]"),
            "{name} is a monitoring service"
        );
        assert_eq!(value(c, "image"), value(s, "image"), "{name}: image");
        assert_eq!(value(c, "test"), value(s, "test"), "{name}: health check");
        // Every environment variable, except those that became secret files.
        for line in c {
            let Some((key, _)) = line.split_once(": ") else {
                continue;
            };
            let is_env = key.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_');
            if !is_env || matches!(key, "DATABASE_URL" | "POSTGRES_PASSWORD" | "SMTP_PASSWORD") {
                continue;
            }
            // Tracing goes to Tempo, which only the compose monitoring profile runs; the
            // drain is off in compose mode only (containers are recreated in place there).
            if key.starts_with("OTEL_") || key == "SHUTDOWN_DRAIN_SECONDS" {
                continue;
            }
            assert_eq!(
                value(c, key),
                value(s, key),
                "{name}: environment {key} differs"
            );
        }
        for secret in ["DATABASE_URL", "POSTGRES_PASSWORD"] {
            if value(c, secret).is_some() {
                assert!(
                    value(s, &format!("{secret}_FILE")).is_some(),
                    "{name}: {secret} must come from a secret file"
                );
                assert!(value(s, secret).is_none(), "{name}: {secret} in the spec");
            }
        }
        // Traefik's labels, under deploy.labels, with the swarm provider's network label.
        for line in c.iter().filter(|l| l.starts_with("traefik.")) {
            let Some((key, v)) = line.split_once(": ") else {
                continue;
            };
            let (key, v) = match key {
                "traefik.docker.network" => ("traefik.swarm.network", v),
                k if k.ends_with("healthcheck.interval") => (k, "2s"),
                k => (k, v),
            };
            assert_eq!(value(s, key), Some(v), "{name}: label {key}");
        }
        // Traefik's static flags, with the swarm provider instead of the docker provider.
        for flag in c.iter().filter(|l| l.starts_with("- --")) {
            let flag = flag.replace("--providers.docker", "--providers.swarm");
            assert!(s.contains(&flag), "{name}: {flag} is missing");
        }
    }
    for name in ["backend", "frontend"] {
        let s = service(&stack, name);
        for line in [
            "order: start-first",
            "failure_action: rollback",
            "endpoint_mode: dnsrr",
            "replicas: ${SWARM_REPLICAS:-2}",
        ] {
            assert!(s.iter().any(|l| l == line), "{name}: `{line}`");
        }
        // The grace period must cover the drain.
        let drain: u64 = value(s, "SHUTDOWN_DRAIN_SECONDS")
            .unwrap()
            .trim_matches('"')
            .parse()
            .unwrap();
        let grace: u64 = value(s, "stop_grace_period")
            .unwrap()
            .trim_end_matches('s')
            .parse()
            .unwrap();
        assert!(grace > drain + 8, "{name}: stop_grace_period {grace}s");
    }
    assert!(
        service(&stack, "postgres")
            .iter()
            .any(|l| l == "- node.labels.timemanager.db == true")
    );
    assert!(
        service(&stack, "traefik")
            .iter()
            .filter(|l| *l == "mode: host")
            .count()
            == 2,
        "Traefik's ports in host mode"
    );
}

/// A swarm deploy asked for GRAFANA_PASSWORD, which its stack never reads (no Grafana).
#[test]
fn a_swarm_deploy_asks_only_for_the_variables_its_stack_reads() {
    let stack = std::fs::read_to_string(project::root().join(STACK_FILE)).unwrap();
    let mut read: std::collections::BTreeSet<&str> = stack
        .split("${")
        .skip(1)
        .map(|rest| {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        // The deploy's own: the base directory, the replicas and the secrets' names.
        .filter(|name| !name.starts_with("TM_") && *name != "SWARM_REPLICAS")
        .collect();
    read.insert("POSTGRES_PASSWORD");
    let listed: std::collections::BTreeSet<&str> = STACK_VARS.iter().copied().collect();
    assert_eq!(
        read, listed,
        "{STACK_FILE} reads (left), STACK_VARS (right)"
    );

    let env = |name: &str| match name {
        "DOMAIN" => Some("tm.example.com".to_owned()),
        "ACME_EMAIL" => Some("ops@example.com".to_owned()),
        "GITHUB_REPOSITORY" => Some("o/r".to_owned()),
        "POSTGRES_PASSWORD" => Some("pg-secret".to_owned()),
        "REGISTRY_USERNAME" => Some("octocat".to_owned()),
        "REGISTRY_PASSWORD" => Some(REGISTRY_PASSWORD.to_owned()),
        _ => None,
    };
    let mut problems = settings::Problems::default();
    let release = settings::release(
        &stack_vars(),
        "abc1234",
        &[],
        None,
        &env,
        &mut problems,
        &mut Redactor::default(),
    );
    problems.into_result().unwrap();
    assert!(
        release
            .env
            .iter()
            .all(|line| !line.name.starts_with("GRAFANA"))
    );
}
