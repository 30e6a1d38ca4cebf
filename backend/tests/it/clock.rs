//! Clock endpoints: in/out/status flow, conflicts, history aggregation and validation.

use axum::http::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::pg::TestDb;
use crate::support::{app, create_user, get, post};

fn timestamp(value: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(
        value
            .as_str()
            .unwrap_or_else(|| panic!("not a string: {value}")),
        &Rfc3339,
    )
    .unwrap()
}

#[tokio::test]
async fn clock_in_status_out_flow() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    let id = create_user(&app, "erin").await;

    let status = get(&app, &format!("/users/{id}/clock/status")).await;
    assert_eq!(status.status, StatusCode::OK);
    assert_eq!(status.json(), json!({ "clocked_in": false, "entry": null }));

    let clock_in = post(&app, &format!("/users/{id}/clock/in"), None).await;
    assert_eq!(clock_in.status, StatusCode::CREATED, "{}", clock_in.text);
    let entry = clock_in.json();
    assert_eq!(entry["user_id"], id);
    assert_eq!(entry["clock_out"], Value::Null);
    assert_eq!(entry["duration_seconds"], Value::Null);
    timestamp(&entry["clock_in"]);
    assert_eq!(entry.as_object().unwrap().len(), 5, "{entry}");

    let again = post(&app, &format!("/users/{id}/clock/in"), None).await;
    assert!(
        again
            .error(StatusCode::CONFLICT)
            .contains("already clocked in")
    );

    let status = get(&app, &format!("/users/{id}/clock/status")).await.json();
    assert_eq!(status["clocked_in"], true);
    assert_eq!(status["entry"], entry);

    let clock_out = post(&app, &format!("/users/{id}/clock/out"), None).await;
    assert_eq!(clock_out.status, StatusCode::OK, "{}", clock_out.text);
    let closed = clock_out.json();
    assert_eq!(closed["id"], entry["id"]);
    assert!(timestamp(&closed["clock_out"]) >= timestamp(&closed["clock_in"]));
    assert_eq!(closed["duration_seconds"], 0);

    let again = post(&app, &format!("/users/{id}/clock/out"), None).await;
    assert!(again.error(StatusCode::CONFLICT).contains("not clocked in"));
    assert_eq!(
        get(&app, &format!("/users/{id}/clock/status")).await.json(),
        json!({ "clocked_in": false, "entry": null })
    );

    // A new shift can start after the previous one closed.
    assert_eq!(
        post(&app, &format!("/users/{id}/clock/in"), None)
            .await
            .status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn unknown_user_or_bad_id_on_clock_endpoints() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    for path in ["clock/in", "clock/out"] {
        let message = post(&app, &format!("/users/4242/{path}"), None)
            .await
            .error(StatusCode::NOT_FOUND);
        assert_eq!(message, "user 4242 not found");
        post(&app, &format!("/users/x/{path}"), None)
            .await
            .error(StatusCode::BAD_REQUEST);
    }
    for path in ["clock/status", "clock/history"] {
        get(&app, &format!("/users/4242/{path}"))
            .await
            .error(StatusCode::NOT_FOUND);
        get(&app, &format!("/users/x/{path}"))
            .await
            .error(StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn one_open_entry_is_enforced_by_the_database_under_concurrency() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    let id = create_user(&app, "frank").await;

    // Concurrent clock-ins: exactly one wins, the rest get 409 (never 500).
    let uri = format!("/users/{id}/clock/in");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let app = app.clone();
            let uri = uri.clone();
            tokio::spawn(async move { post(&app, &uri, None).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT),
        "{statuses:?}"
    );

    // Bypassing the API entirely still cannot create a second open entry.
    let err = sqlx::query("INSERT INTO clock_entries (user_id) VALUES ($1)")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.constraint()),
        Some("clock_entries_one_open_per_user")
    );
}

#[tokio::test]
async fn history_splits_days_at_utc_midnight_and_counts_open_entries() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    let id = create_user(&app, "grace").await;

    // Fixed past entries, inserted directly so their times are known.
    for (clock_in, clock_out) in [
        ("2024-03-01T22:00:00Z", Some("2024-03-02T01:30:00Z")), // spans midnight
        ("2024-03-02T09:00:00Z", Some("2024-03-02T10:00:00Z")),
        ("2024-02-29T08:00:00Z", Some("2024-02-29T09:00:00Z")), // before the range
        ("2024-03-04T00:00:00Z", Some("2024-03-04T00:10:00Z")), // after the range
    ] {
        sqlx::query("INSERT INTO clock_entries (user_id, clock_in, clock_out) VALUES ($1, $2::timestamptz, $3::timestamptz)")
            .bind(id)
            .bind(clock_in)
            .bind(clock_out)
            .execute(&db.pool)
            .await
            .unwrap();
    }

    let history = get(
        &app,
        &format!("/users/{id}/clock/history?from=2024-03-01&to=2024-03-03"),
    )
    .await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
    let history = history.json();
    assert_eq!(
        history["days"],
        json!([
            { "date": "2024-03-01", "worked_seconds": 7200 },
            { "date": "2024-03-02", "worked_seconds": 5400 + 3600 },
            { "date": "2024-03-03", "worked_seconds": 0 },
        ])
    );
    let entries = history["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0]["clock_in"], "2024-03-01T22:00:00Z");
    assert_eq!(entries[0]["clock_out"], "2024-03-02T01:30:00Z");
    assert_eq!(entries[0]["duration_seconds"], 12_600);

    // An open entry that started two hours ago counts up to now.
    sqlx::query(
        "INSERT INTO clock_entries (user_id, clock_in) VALUES ($1, now() - interval '2 hours')",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    let now = OffsetDateTime::now_utc();
    let history = get(&app, &format!("/users/{id}/clock/history"))
        .await
        .json();
    let days = history["days"].as_array().unwrap();
    assert_eq!(days.len(), 30, "default range is the last 30 days");
    let today = days.last().unwrap();
    assert_eq!(today["date"], now.date().to_string());
    let worked_recent: i64 = days
        .iter()
        .rev()
        .take(2)
        .map(|d| d["worked_seconds"].as_i64().unwrap())
        .sum();
    assert!((7200..7260).contains(&worked_recent), "{worked_recent}");
    let open = history["entries"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(open["clock_out"], Value::Null);
    assert_eq!(open["duration_seconds"], Value::Null);
}

#[tokio::test]
async fn history_query_validation() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    let id = create_user(&app, "heidi").await;
    let url = |query: &str| format!("/users/{id}/clock/history?{query}");

    for (query, needle) in [
        (
            "from=2024-13-01",
            "from must be a date formatted YYYY-MM-DD",
        ),
        ("to=yesterday", "to must be a date formatted YYYY-MM-DD"),
        ("from=2024-03-05&to=2024-03-01", "from must not be after to"),
        ("from=2023-01-01&to=2024-01-02", "366 days"),
    ] {
        let message = get(&app, &url(query)).await.error(StatusCode::BAD_REQUEST);
        assert!(message.contains(needle), "{query}: {message}");
    }
    // Exactly 366 days (a leap year) is accepted.
    let reply = get(&app, &url("from=2024-01-01&to=2024-12-31")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json()["days"].as_array().unwrap().len(), 366);
}
