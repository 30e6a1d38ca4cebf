//! Real responses against the JSON fixtures in `fixtures/api/`: same keys and JSON types, recursively.
//!
//! The frontend's `src/api.fixtures.test.ts` feeds the same files through its API client
//! and checks them against the hand-written TypeScript types, so a field renamed, added,
//! removed or retyped here fails this test until the fixture changes, and then fails the
//! frontend's until its types follow. Values may differ (ids, timestamps); only shapes count.

use std::collections::BTreeSet;
use std::path::Path;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::pg::TestDb;
use crate::support::{Reply, app, create_user, get, post};

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../fixtures/api/",
                $name
            )),
        )
    };
}

/// Every fixture, by file name; `every_fixture_file_is_listed` keeps this equal to the folder.
const FIXTURES: &[(&str, &str)] = &[
    fixture!("clock-entry-closed.json"),
    fixture!("clock-entry-open.json"),
    fixture!("clock-history.json"),
    fixture!("clock-status-in.json"),
    fixture!("clock-status-out.json"),
    fixture!("error.json"),
    fixture!("me.json"),
    fixture!("team-list.json"),
    fixture!("team-totals.json"),
    fixture!("team.json"),
    fixture!("user-created.json"),
    fixture!("user-list.json"),
    fixture!("user.json"),
];

fn fixture(name: &str) -> Value {
    let (_, text) = FIXTURES
        .iter()
        .find(|(known, _)| *known == name)
        .unwrap_or_else(|| panic!("{name} is not in FIXTURES"));
    serde_json::from_str(text).unwrap_or_else(|err| panic!("fixtures/api/{name}: {err}"))
}

/// What a JSON value looks like with its values left out: each leaf becomes its type
/// (`"integer"` apart from `"number"`, as the backend never sends fractions), and an
/// array becomes the sorted set of its elements' shapes, so `[open, closed, closed]`
/// entries and `[closed, open]` look alike but `[]` does not.
fn shape(value: &Value) -> Value {
    match value {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("boolean"),
        Value::Number(n) if n.is_f64() => json!("number"),
        Value::Number(_) => json!("integer"),
        Value::String(_) => json!("string"),
        Value::Array(items) => {
            let mut shapes: Vec<Value> = items.iter().map(shape).collect();
            shapes.sort_by_cached_key(Value::to_string);
            shapes.dedup();
            Value::Array(shapes)
        }
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(key, value)| (key.clone(), shape(value)))
                .collect(),
        ),
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap()
}

/// Collects every mismatch instead of stopping at the first, and which fixtures were used.
#[derive(Default)]
struct Checks {
    failures: Vec<String>,
    used: BTreeSet<&'static str>,
}

impl Checks {
    fn expect(&mut self, name: &'static str, request: &str, reply: &Reply, status: StatusCode) {
        self.used.insert(name);
        if reply.status != status {
            self.failures.push(format!(
                "{request}: expected {status} for {name}, got {}: {}",
                reply.status, reply.text
            ));
            return;
        }
        let expected = shape(&fixture(name));
        let actual = shape(&reply.json());
        if expected != actual {
            self.failures.push(format!(
                "{request} does not have the shape of fixtures/api/{name}\n\
                 fixture shape: {}\nresponse shape: {}\nresponse: {}",
                pretty(&expected),
                pretty(&actual),
                reply.text
            ));
        }
    }
}

#[test]
fn every_fixture_file_is_listed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/api");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    let listed: BTreeSet<String> = FIXTURES
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();
    assert_eq!(on_disk, listed, "fixtures/api/ and FIXTURES differ");
}

#[test]
fn fixtures_show_an_element_in_every_array() {
    fn empty_arrays(value: &Value, path: &str, out: &mut Vec<String>) {
        match value {
            Value::Array(items) if items.is_empty() => out.push(path.to_owned()),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    empty_arrays(item, &format!("{path}[{i}]"), out);
                }
            }
            Value::Object(fields) => {
                for (key, item) in fields {
                    empty_arrays(item, &format!("{path}.{key}"), out);
                }
            }
            _ => {}
        }
    }
    for (name, _) in FIXTURES {
        let mut empty = Vec::new();
        empty_arrays(&fixture(name), "$", &mut empty);
        assert!(
            empty.is_empty(),
            "{name}: empty arrays show no element shape: {empty:?}"
        );
    }
}

#[test]
fn shape_keeps_keys_and_types_but_not_values() {
    let open = json!({ "id": 1, "clock_out": null });
    let closed = json!({ "id": 2, "clock_out": "2024-01-15T12:00:00Z" });
    assert_eq!(
        shape(&json!([closed, open, closed])),
        shape(&json!([open, { "id": 9, "clock_out": "x" }]))
    );
    assert_ne!(shape(&json!([open])), shape(&json!([open, closed])));
    assert_ne!(shape(&json!([open])), shape(&json!([])));
    assert_ne!(
        shape(&json!({ "id": 1 })),
        shape(&json!({ "user_id": 1 })),
        "renamed key"
    );
    assert_ne!(
        shape(&json!({ "id": 1 })),
        shape(&json!({ "id": "1" })),
        "retyped value"
    );
    assert_ne!(shape(&json!({ "s": 1 })), shape(&json!({ "s": 1.5 })));
    assert_ne!(
        shape(&json!({ "id": 1 })),
        shape(&json!({ "id": 1, "extra": true })),
        "added key"
    );
}

#[tokio::test]
async fn responses_have_the_shapes_of_the_fixtures() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    let mut checks = Checks::default();

    checks.expect(
        "me.json",
        "GET /auth/me",
        &get(&app, "/auth/me").await,
        StatusCode::OK,
    );
    let team = post(&app, "/teams", Some(json!({ "name": "Night shift" }))).await;
    checks.expect("team.json", "POST /teams", &team, StatusCode::CREATED);
    let team_id = team.json()["id"].as_i64().unwrap();
    checks.expect(
        "team-list.json",
        "GET /teams",
        &get(&app, "/teams").await,
        StatusCode::OK,
    );
    let created = post(
        &app,
        "/users",
        Some(json!({ "username": "ada", "email": "ada@example.com", "team_id": team_id })),
    )
    .await;
    checks.expect(
        "user-created.json",
        "POST /users",
        &created,
        StatusCode::CREATED,
    );
    let id = created.json()["user"]["id"].as_i64().unwrap();
    let user = format!("/users/{id}");
    checks.expect(
        "user.json",
        "GET /users/{id}",
        &get(&app, &user).await,
        StatusCode::OK,
    );
    create_user(&app, "grace").await;
    checks.expect(
        "user-list.json",
        "GET /users",
        &get(&app, "/users").await,
        StatusCode::OK,
    );

    let status = format!("{user}/clock/status");
    let (clock_in, clock_out) = (format!("{user}/clock/in"), format!("{user}/clock/out"));
    let out = get(&app, &status).await;
    checks.expect(
        "clock-status-out.json",
        "GET clock/status",
        &out,
        StatusCode::OK,
    );
    let opened = post(&app, &clock_in, None).await;
    checks.expect(
        "clock-entry-open.json",
        "POST clock/in",
        &opened,
        StatusCode::CREATED,
    );
    let clocked_in = get(&app, &status).await;
    checks.expect(
        "clock-status-in.json",
        "GET clock/status",
        &clocked_in,
        StatusCode::OK,
    );
    let closed = post(&app, &clock_out, None).await;
    checks.expect(
        "clock-entry-closed.json",
        "POST clock/out",
        &closed,
        StatusCode::OK,
    );
    // One closed and one open entry, as in the fixture.
    assert_eq!(
        post(&app, &clock_in, None).await.status,
        StatusCode::CREATED
    );
    let history = get(&app, &format!("{user}/clock/history")).await;
    checks.expect(
        "clock-history.json",
        "GET clock/history",
        &history,
        StatusCode::OK,
    );
    checks.expect(
        "team-totals.json",
        "GET /teams/{id}/totals",
        &get(&app, &format!("/teams/{team_id}/totals")).await,
        StatusCode::OK,
    );

    // Every kind of failure has the one error shape.
    for (request, reply, status) in [
        (
            "GET /users/999999",
            get(&app, "/users/999999").await,
            StatusCode::NOT_FOUND,
        ),
        (
            "GET /users/abc",
            get(&app, "/users/abc").await,
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST clock/in twice",
            post(&app, &clock_in, None).await,
            StatusCode::CONFLICT,
        ),
        (
            "POST /users with a bad email",
            post(
                &app,
                "/users",
                Some(json!({ "username": "bob", "email": "bob" })),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("GET /nope", get(&app, "/nope").await, StatusCode::NOT_FOUND),
    ] {
        checks.expect("error.json", request, &reply, status);
    }

    let listed: BTreeSet<&str> = FIXTURES.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        checks.used, listed,
        "a fixture no response is checked against"
    );
    assert!(
        checks.failures.is_empty(),
        "{}",
        checks.failures.join("\n\n")
    );
}
