//! Offline tests of the deploy plan (a snapshot of `--dry-run`) and the release bookkeeping.

use std::{collections::HashMap, time::Duration};

use super::*;
use crate::deploy::{secrets::Redactor, settings::Problems};

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

fn sample_plan(push: bool) -> Plan {
    let env: HashMap<&str, &str> = ENV.iter().copied().collect();
    let lookup = |name: &str| env.get(name).map(|v| (*v).to_owned());
    let mut problems = Problems::default();
    let mut redactor = Redactor::default();
    let release = settings::release(
        "abc1234",
        &["monitoring".to_owned()],
        None,
        &lookup,
        &mut problems,
        &mut redactor,
    );
    problems.into_result().unwrap();
    let remote = Remote {
        base: "/opt/timemanager".to_owned(),
        project: "timemanager".to_owned(),
        run_id: "0123456789abcdef".to_owned(),
    };
    let gate = Gate {
        services: vec!["backend".to_owned(), "frontend".to_owned()],
        url: release.health_url.clone(),
        timeout: Duration::from_secs(180),
    };
    let upload = Upload {
        tar: vec![0; 20480],
        n_files: 14,
    };
    deploy_plan(
        &remote,
        &release,
        &upload,
        &gate,
        push,
        "octocat (deploy of abc1234, since 2026-11-25T10:42:00Z, pid 1 on ci)",
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
            "preflight: settings",
            "preflight: images in the registry",
            "connect",
            "preflight: server",
            "lock",
            "upload release files",
            "write .env",
            "registry login and pull",
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
    let login = pull.lines().find(|l| l.contains("docker login")).unwrap();
    assert!(
        login.contains("--password-stdin") && !login.contains(" -p "),
        "{login}"
    );
    assert!(pull.contains("compose_in \"$rel\" pull --quiet backend frontend"));
    assert!(pull.contains("ghcr.io/yassine-el-gherrabi/time-manager/backend:abc1234"));
    let start = script(&plan.activate, "start");
    assert!(
        start.contains("compose --profile monitoring up -d --remove-orphans"),
        "{start}"
    );
    let env = script(&plan.prepare, "write .env");
    assert!(env.contains("IMAGE_TAG='abc1234'") && env.contains("COMPOSE_PROFILES='monitoring'"));
    assert!(env.contains("REGISTRY='ghcr.io'"));
    // Falling back starts the previous release with its own profiles, not this one's.
    let back = script(&plan.fall_back, "start the previous release");
    assert!(back.contains("compose up -d --remove-orphans"), "{back}");
    assert_eq!(plan.after_success.len(), 1);
    assert!(matches!(plan.finish[0].action, Action::Record));
}

fn sample_releases() -> ServerReleases {
    parse_releases(
        "current\tccccccc\n\
         release\taaaaaaa\t100\t110\tok\t\tghcr.io\n\
         release\tbbbbbbb\t200\t210\tok\taaaaaaa\tghcr.io\n\
         release\tddddddd\t300\t310\tfailed\tbbbbbbb\tghcr.io\n\
         release\tccccccc\t400\t410\tok\tbbbbbbb\tghcr.io\n\
         release\teeeeeee\t500\t\t\t\t\n\
         domain\ttm.example.com\n",
    )
}

#[test]
fn releases_are_read_newest_first() {
    let releases = sample_releases();
    assert_eq!(releases.current, "ccccccc");
    assert_eq!(releases.domain, "tm.example.com");
    let tags: Vec<&str> = releases.releases.iter().map(|r| r.tag.as_str()).collect();
    assert_eq!(
        tags,
        ["eeeeeee", "ccccccc", "ddddddd", "bbbbbbb", "aaaaaaa"]
    );
    assert_eq!(releases.registry_of("aaaaaaa").as_deref(), Some("ghcr.io"));
    let table = format_releases(&releases);
    assert!(table.contains("* ccccccc"), "{table}");
    assert!(
        table.contains("eeeeeee   1970-01-01T00:08:20Z  uploaded"),
        "{table}"
    );
}

#[test]
fn rollback_goes_to_the_newest_healthy_release_before_the_current_one() {
    let releases = sample_releases();
    assert_eq!(rollback_target(&releases, None).unwrap(), "bbbbbbb");
    assert_eq!(
        rollback_target(&releases, Some("aaaaaaa")).unwrap(),
        "aaaaaaa"
    );
    let err = rollback_target(&releases, Some("ccccccc"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already the current"), "{err}");
    let err = rollback_target(&releases, Some("fffffff"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not on the server") && err.contains("aaaaaaa"),
        "{err}"
    );
    let only = parse_releases("current\taaaaaaa\nrelease\taaaaaaa\t1\t2\tok\t\t\n");
    assert!(rollback_target(&only, None).is_err());
}

#[test]
fn upload_packs_the_compose_file_and_infrastructure() {
    let upload = pack(
        &project::root().join(stack::COMPOSE_FILE),
        &project::root().join("infrastructure"),
    )
    .unwrap();
    let mut archive = tar::Archive::new(upload.tar.as_slice());
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
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
    let err = pack(
        Path::new("/nonexistent/compose.yml"),
        Path::new("/nonexistent"),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("/nonexistent/compose.yml"));
}

#[test]
fn compose_file_runs_our_images_from_the_configured_registry() {
    let text = fs::read_to_string(project::root().join(stack::COMPOSE_FILE)).unwrap();
    for service in OWN_SERVICES {
        assert!(
            text.contains(&format!(
                "image: ${{REGISTRY:-ghcr.io}}/${{GITHUB_REPOSITORY}}/{service}:${{IMAGE_TAG}}"
            )),
            "{} does not run {service} from ${{REGISTRY}} under ${{IMAGE_TAG}}",
            stack::COMPOSE_FILE
        );
    }
    let e2e = crate::harness::lab::COMPOSE_TEMPLATE;
    for service in OWN_SERVICES {
        assert!(
            e2e.contains(&format!("\n  {service}:\n")),
            "the e2e compose file lacks {service}"
        );
    }
}
