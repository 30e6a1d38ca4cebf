//! ARCHITECTURE.md's "Lab vs production" table stays true: one row per service of
//! `docker-compose.prod.yml`, and what the lab's overrides keep from running says so.

use std::{collections::BTreeSet, fs};

use crate::{
    deploy::compose::COMPOSE_FILE,
    harness::lab::{LAB_MONITORING_OVERRIDE, LAB_OVERRIDE},
    project,
};

/// The services whose images this repository builds (the deploy's `OWN_SERVICES`).
const OWN_SERVICES: [&str; 2] = ["backend", "frontend"];

/// The service names of a compose file: the keys indented by two spaces under `services:`.
fn services(compose: &str) -> Vec<String> {
    compose
        .split_once("\nservices:\n")
        .expect("a top-level `services:`")
        .1
        .lines()
        .take_while(|line| line.is_empty() || line.starts_with([' ', '#']))
        .filter_map(|line| {
            let key = line.strip_prefix("  ")?.strip_suffix(':')?;
            let is_name = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            is_name.then(|| key.to_owned())
        })
        .collect()
}

/// The services an override puts under the `lab-unavailable` profile.
fn not_run(override_file: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut service = None;
    for line in override_file.lines() {
        if let Some(key) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && !key.starts_with(' ')
        {
            service = Some(key.to_owned());
        } else if line.contains("profiles:")
            && line.contains("\"lab-unavailable\"")
            && let Some(service) = &service
        {
            found.insert(service.clone());
        }
    }
    found
}

/// The rows of the table: service and the "lab" column.
fn table_rows(architecture: &str) -> Vec<(String, String)> {
    let section = architecture
        .split_once("\n## Lab vs production\n")
        .expect("ARCHITECTURE.md has a `## Lab vs production` section")
        .1;
    let section = section.split("\n## ").next().unwrap_or_default();
    section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.strip_prefix('|')?.split('|').map(str::trim).collect();
            let service = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
            Some((service.to_owned(), (*cells.get(2)?).to_owned()))
        })
        .collect()
}

#[test]
fn the_lab_table_has_one_row_per_production_service() {
    let compose = fs::read_to_string(project::root().join(COMPOSE_FILE)).unwrap();
    let architecture = fs::read_to_string(project::root().join("ARCHITECTURE.md")).unwrap();
    let services = services(&compose);
    assert!(
        services.len() >= 10 && services.iter().any(|s| s == "traefik"),
        "{services:?}"
    );
    let rows = table_rows(&architecture);
    let listed: Vec<&str> = rows.iter().map(|(service, _)| service.as_str()).collect();
    let in_compose: BTreeSet<&str> = services.iter().map(String::as_str).collect();
    let in_table: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(in_table.len(), listed.len(), "a service has two rows");
    assert_eq!(
        in_compose, in_table,
        "the services of {COMPOSE_FILE} (left) and the rows of ARCHITECTURE.md's `Lab vs production` (right) differ"
    );
}

#[test]
fn the_table_says_which_services_the_overrides_keep_from_running() {
    let architecture = fs::read_to_string(project::root().join("ARCHITECTURE.md")).unwrap();
    let compose = fs::read_to_string(project::root().join(COMPOSE_FILE)).unwrap();
    let rows = table_rows(&architecture);
    let said_not_run: BTreeSet<String> = rows
        .iter()
        .filter(|(_, lab)| lab.starts_with("not run"))
        .map(|(service, _)| service.clone())
        .collect();
    let base = not_run(LAB_OVERRIDE);
    let monitoring = not_run(LAB_MONITORING_OVERRIDE);
    assert!(base.contains("postgres-backup"), "{base:?}");
    assert!(
        base.is_subset(&monitoring),
        "the monitoring override must keep what the base override keeps from running: {base:?} {monitoring:?}"
    );
    assert_eq!(
        monitoring, said_not_run,
        "services the lab does not run (left) and rows whose lab column starts with `not run` (right) differ"
    );
    let all = services(&compose);
    for file in [LAB_OVERRIDE, LAB_MONITORING_OVERRIDE] {
        for service in services(&format!("\n{file}")) {
            assert!(
                all.contains(&service),
                "the lab overrides `{service}`, which {COMPOSE_FILE} does not have"
            );
            assert!(
                !OWN_SERVICES.contains(&service.as_str()),
                "the lab overrides `{service}`: our own services run as in production"
            );
        }
    }
}

#[test]
fn reads_services_and_profiles() {
    let compose = "x: 1\nservices:\n  a:\n    image: x\n  # comment\n  b-c:\n    environment:\n      D: e\n\nvolumes:\n  v:\n";
    assert_eq!(services(compose), ["a", "b-c"]);
    let file =
        "services:\n  a:\n    profiles: !override [\"lab-unavailable\"]\n  b:\n    image: y\n";
    assert_eq!(not_run(file), BTreeSet::from(["a".to_owned()]));
}
