//! Offline tests of the deploy plan (a snapshot of `--dry-run`) and the release bookkeeping.

use std::{collections::HashMap, fs, time::Duration};

use super::*;
use crate::deploy::{
    plan::{Plan, Step},
    secrets::Redactor,
    settings::Problems,
};

/// `UPDATE_SNAPSHOTS=1 cargo test -p xtask` rewrites the snapshot after a deliberate change.
fn check_snapshot(name: &str, actual: &str) {
    let path = project::root()
        .join("xtask/src/deploy/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, actual).unwrap();
        return;
    }
    let expected = fs::read_to_string(&path).unwrap_or_default();
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(e, a)| e != a)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "`{}` differs from the plan at line {}:\n  expected: {:?}\n  actual:   {:?}\nrun `UPDATE_SNAPSHOTS=1 cargo test -p xtask` if the change is intended",
            path.display(),
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first)
        );
    }
}

const ENV: &[(&str, &str)] = &[
    ("DOMAIN", "tm.example.com"),
    ("ACME_EMAIL", "ops@example.com"),
    ("GITHUB_REPOSITORY", "Yassine-El-Gherrabi/Time-Manager"),
    ("POSTGRES_PASSWORD", "pg-secret-value"),
    ("GRAFANA_PASSWORD", "grafana-secret-value"),
    ("SMTP_PASSWORD", "smtp-secret-value"),
    ("GITHUB_ACTOR", "octocat"),
    ("GHCR_TOKEN", "ghcr-token-value"),
];

pub(crate) fn sample_plan(push: bool) -> Plan {
    let env: HashMap<&str, &str> = ENV.iter().copied().collect();
    let lookup = |name: &str| env.get(name).map(|v| (*v).to_owned());
    let mut problems = Problems::default();
    let mut redactor = Redactor::default();
    let release = settings::release(
        compose::ENV_VARS,
        "abc1234",
        &["monitoring".to_owned()],
        None,
        &lookup,
        &mut problems,
        &mut redactor,
    );
    problems.into_result().unwrap();
    let scripts = ServerScripts {
        base: "/opt/timemanager".to_owned(),
        project: "timemanager".to_owned(),
        run_id: "0123456789abcdef".to_owned(),
        compose: settings::ComposeChoice::Detect,
    };
    let gate = Gate {
        services: vec!["backend".to_owned(), "frontend".to_owned()],
        url: release.health_url.clone(),
        timeout: Duration::from_secs(180),
        reach: health::Reach::default(),
    };
    let upload = Upload {
        tar: vec![0; 20480],
        n_files: 14,
        has_override: false,
    };
    plan::deploy_plan(
        &scripts,
        &release,
        &upload,
        &gate,
        &plan::DeployOptions {
            push,
            insecure_registries: &[],
            holder: "octocat (deploy of abc1234, since 2026-11-25T10:42:00Z, pid 1 on ci)",
            keep_snapshots: 10,
        },
    )
}

#[test]
fn dry_run_plan_snapshot() {
    let plan = sample_plan(true);
    let text = plan.describe();
    for secret in [
        "pg-secret-value",
        "grafana-secret-value",
        "smtp-secret-value",
        "ghcr-token-value",
    ] {
        assert!(!text.contains(secret), "the dry run shows {secret}");
    }
    check_snapshot("deploy-plan.txt", &text);
}

#[test]
fn plan_has_the_issue_steps_in_order() {
    let plan = sample_plan(false);
    let names: Vec<&str> = plan
        .prepare
        .iter()
        .chain(&plan.activate)
        .map(|step| step.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "preflight: images in the registry",
            "connect",
            "preflight: server",
            "lock",
            "upload release files",
            "write .env",
            "registry login and pull",
            "migrations",
            "snapshot",
            "migrate",
            "switch current",
            "start",
            "health gate",
        ]
    );
    let script = |steps: &[Step], name: &str| -> String {
        match &steps.iter().find(|s| s.name == name).unwrap().action {
            Action::Remote(script) | Action::Lock(script) => script.masked(),
            other => panic!("{name}: {other:?}"),
        }
    };
    let pull = script(&plan.prepare, "registry login and pull");
    let login = pull
        .lines()
        .find(|l| l.contains("docker login \"$registry\""))
        .unwrap();
    assert!(
        login.contains("--password-stdin") && !login.contains(" -p "),
        "{login}"
    );
    assert!(pull.contains("services=(backend frontend)\n"), "{pull}");
    assert!(pull.contains("compose_in \"$rel\" pull --quiet \"${services[@]}\""));
    assert!(pull.contains("ghcr.io/yassine-el-gherrabi/time-manager/backend:abc1234"));
    let start = script(&plan.activate, "start");
    assert!(
        start.contains("profile_args=(--profile monitoring)\n")
            && start.contains("compose \"${profile_args[@]}\" up -d --remove-orphans"),
        "{start}"
    );
    let env = script(&plan.prepare, "write .env");
    assert!(env.contains("IMAGE_TAG='abc1234'") && env.contains("COMPOSE_PROFILES='monitoring'"));
    assert!(env.contains("n_variables=14\n"), "{env}");
    assert!(env.contains("REGISTRY='ghcr.io'"));
    // Falling back starts the previous release with its own profiles, not this one's.
    let back = script(&plan.fall_back, "start the previous release");
    assert!(back.contains("profile_args=()\n"), "{back}");
    assert_eq!(plan.after_success.len(), 1);
    assert!(matches!(
        &plan.finish[0].action,
        Action::Record { kind: "deploy", tag } if tag == "abc1234"
    ));
}

#[test]
fn compose_file_runs_our_images_from_the_configured_registry() {
    let text = fs::read_to_string(project::root().join(compose::COMPOSE_FILE)).unwrap();
    for service in OWN_SERVICES {
        assert!(
            text.contains(&format!(
                "image: ${{REGISTRY:-ghcr.io}}/${{GITHUB_REPOSITORY}}/{service}:${{IMAGE_TAG}}"
            )),
            "{} does not run {service} from ${{REGISTRY}} under ${{IMAGE_TAG}}",
            compose::COMPOSE_FILE
        );
    }
}

#[test]
fn admin_password_is_the_first_line_of_stdin_and_never_from_a_terminal() {
    let secret = read_admin_password(&b"long enough passphrase\r\nrest\n"[..], false).unwrap();
    assert_eq!(secret.expose(), "long enough passphrase");
    let err = read_admin_password(&b""[..], false).unwrap_err();
    assert!(format!("{err:#}").contains("no password"), "{err:#}");
    let err = read_admin_password(&b"x\n"[..], true).unwrap_err();
    assert!(format!("{err:#}").contains("pipe the password"), "{err:#}");
}
