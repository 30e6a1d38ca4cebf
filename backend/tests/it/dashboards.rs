//! The Grafana dashboard and the Prometheus alert rules query only metrics this backend exports.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::pg::TestDb;
use crate::support::{app, get};

/// Metric names selected with `job="backend"` in a PromQL text, e.g. `rate(x_total{job="backend"}[5m])`.
fn backend_selectors(promql: &str) -> BTreeSet<String> {
    let mut acc = BTreeSet::new();
    let bytes = promql.as_bytes();
    let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    for (open, _) in promql.match_indices('{') {
        let Some(len) = promql[open..].find('}') else {
            continue;
        };
        let matchers = &promql[open + 1..open + len];
        let start = (0..open).rev().take_while(|&i| is_name(bytes[i])).last();
        let Some(start) = start else { continue };
        let name = &promql[start..open];
        // `up` is made by Prometheus itself, not exported by the target.
        if matchers.contains(r#"job="backend""#) && name != "up" {
            acc.insert(name.to_owned());
        }
    }
    acc
}

fn collect_exprs(value: &Value, acc: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => acc.push(expr.clone()),
                    _ => collect_exprs(value, acc),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_exprs(item, acc)),
        _ => (),
    }
}

fn repo_file(rel: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

#[test]
fn selector_scanner_finds_backend_metrics_only() {
    let found = backend_selectors(
        r#"sum(rate(a_total{job="backend", status=~"5.."}[5m])) / up{job="backend"} + b{job="node"}"#,
    );
    assert_eq!(found.into_iter().collect::<Vec<_>>(), ["a_total"]);
}

#[tokio::test]
async fn dashboard_and_alerts_name_metrics_the_backend_exports() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    get(&app, "/users").await;
    let exported: BTreeSet<String> = get(&app, "/metrics")
        .await
        .text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();

    let dashboard: Value = serde_json::from_str(&repo_file(
        "infrastructure/grafana/dashboards/timemanager.json",
    ))
    .unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    exprs.push(repo_file("infrastructure/prometheus/alerts.yml"));

    let queried: BTreeSet<String> = exprs
        .iter()
        .flat_map(|expr| backend_selectors(expr))
        .collect();
    assert!(
        queried.len() >= 4,
        "expected the dashboard to query the backend's metrics, found {queried:?}"
    );
    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\nexported: {exported:?}"
    );
}
