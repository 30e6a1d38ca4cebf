//! Users endpoints: creation, validation, uniqueness, listing and lookup.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::json;

use crate::pg::TestDb;
use crate::support::{App, app, call, create_user, get, post, send};

#[tokio::test]
async fn create_get_and_list_users() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;

    let reply = post(
        &app,
        "/users",
        Some(json!({ "username": "  alice ", "email": "alice@example.com" })),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let created = reply.json();
    let initial = created["initial_password"].as_str().unwrap();
    assert!(initial.len() >= 12, "{created}");
    let alice = created["user"].clone();
    assert_eq!(alice["role"], "employee");
    assert_eq!(alice["team_id"], serde_json::Value::Null);
    assert_eq!(alice["username"], "alice", "input is trimmed");
    assert_eq!(alice["email"], "alice@example.com");
    let id = alice["id"].as_i64().unwrap();
    let created_at = alice["created_at"].as_str().unwrap();
    time::OffsetDateTime::parse(created_at, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("created_at {created_at:?} is not RFC 3339: {e}"));
    assert_eq!(alice.as_object().unwrap().len(), 6, "{alice}");

    let fetched = get(&app, &format!("/users/{id}")).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.json(), alice);

    let bob = create_user(&app, "bob").await;
    let list = get(&app, "/users").await;
    assert_eq!(list.status, StatusCode::OK);
    let ids: Vec<i64> = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [app.user_id, id, bob]);

    let page = get(&app, "/users?limit=1&offset=2").await.json();
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["id"], bob);

    assert!(
        get(&app, "/users?limit=0")
            .await
            .error(StatusCode::BAD_REQUEST)
            .contains("limit")
    );
    assert!(
        get(&app, "/users?limit=1001")
            .await
            .error(StatusCode::BAD_REQUEST)
            .contains("limit")
    );
    assert!(
        get(&app, "/users?offset=-1")
            .await
            .error(StatusCode::BAD_REQUEST)
            .contains("offset")
    );
}

#[tokio::test]
async fn duplicate_username_or_email_is_409_regardless_of_case() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    create_user(&app, "carol").await;

    let same_name = post(
        &app,
        "/users",
        Some(json!({ "username": "Carol", "email": "other@example.com" })),
    )
    .await;
    assert!(same_name.error(StatusCode::CONFLICT).contains("username"));

    let same_email = post(
        &app,
        "/users",
        Some(json!({ "username": "carol2", "email": "CAROL@example.com" })),
    )
    .await;
    assert!(same_email.error(StatusCode::CONFLICT).contains("email"));

    assert_eq!(
        get(&app, "/users").await.json().as_array().unwrap().len(),
        2,
        "the admin and carol"
    );
}

#[tokio::test]
async fn invalid_user_input_is_a_json_4xx_naming_the_field() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;

    let cases = [
        (
            json!({ "email": "x@example.com" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "username",
        ),
        (
            json!({ "username": "dave" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "email",
        ),
        (
            json!({ "username": 5, "email": "x@example.com" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "username",
        ),
        (
            json!({ "username": "ab", "email": "x@example.com" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "username",
        ),
        (
            json!({ "username": "has space", "email": "x@example.com" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "username",
        ),
        (
            json!({ "username": "dave", "email": "not-an-email" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "email",
        ),
        (
            json!([1, 2]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid request body",
        ),
    ];
    for (body, status, needle) in cases {
        let message = post(&app, "/users", Some(body.clone())).await.error(status);
        assert!(message.contains(needle), "{body} -> {message}");
    }

    // Malformed JSON, wrong content type, empty body.
    let raw = |content_type: Option<&str>, body: &'static str| {
        let mut builder = Request::builder().method(Method::POST).uri("/users");
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        builder.body(Body::from(body)).unwrap()
    };
    let message = send(&app, raw(Some("application/json"), "{\"username\": \"x\","))
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("not valid JSON"), "{message}");
    let message = send(&app, raw(Some("text/plain"), "{}"))
        .await
        .error(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(message.contains("application/json"), "{message}");
    send(&app, raw(None, ""))
        .await
        .error(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    send(&app, raw(Some("application/json"), ""))
        .await
        .error(StatusCode::BAD_REQUEST);

    assert_eq!(
        get(&app, "/users").await.json().as_array().unwrap().len(),
        1,
        "nothing was created but the admin"
    );
}

#[tokio::test]
async fn unknown_or_malformed_ids_and_routes_are_json_errors() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;

    assert_eq!(
        get(&app, "/users/999").await.error(StatusCode::NOT_FOUND),
        "user 999 not found"
    );
    for bad in ["abc", "0", "-3", "1.5", "99999999999999999999"] {
        let message = get(&app, &format!("/users/{bad}"))
            .await
            .error(StatusCode::BAD_REQUEST);
        assert!(
            message.starts_with("id must be a positive integer"),
            "{bad}: {message}"
        );
    }
    assert_eq!(
        get(&app, "/nope").await.error(StatusCode::NOT_FOUND),
        "not found"
    );
    assert_eq!(
        call(&app, Method::DELETE, "/users", None)
            .await
            .error(StatusCode::METHOD_NOT_ALLOWED),
        "method not allowed"
    );
}

#[tokio::test]
async fn database_errors_are_500_without_details() {
    // No migrations: every query fails with "relation does not exist", the session
    // lookup first.
    let db = TestDb::empty().await;
    let mut app = App::from(timemanager_backend::app(
        timemanager_backend::AppState::new(db.pool.clone()),
    ));
    app.token = Some("0".repeat(64));
    app.csrf = Some("x".to_owned());
    for reply in [
        get(&app, "/users").await,
        get(&app, "/users/1").await,
        post(
            &app,
            "/users",
            Some(json!({ "username": "mallory", "email": "m@example.com" })),
        )
        .await,
        post(&app, "/users/1/clock/in", None).await,
    ] {
        assert_eq!(
            reply.error(StatusCode::INTERNAL_SERVER_ERROR),
            "internal error"
        );
        assert!(!reply.text.contains("relation"), "{}", reply.text);
    }
}
