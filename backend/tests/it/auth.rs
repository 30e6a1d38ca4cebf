//! Accounts and sign-in against real PostgreSQL: who may call what, sign-in and sign-out,
//! session expiry, CSRF, the sign-in limiter, password changes and the stored hashes.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};

use crate::pg::TestDb;
use crate::support::{App, Reply, add_team, add_user, call, get, post, send, set_password};

const PASSWORD: &str = "correct horse battery staple";

fn router(db: &TestDb) -> axum::Router {
    timemanager_backend::app(timemanager_backend::AppState::new(db.pool.clone()))
}

/// The six kinds of caller of the access table, around one employee's data.
struct Cast {
    none: App,
    employee: App,
    other_employee: App,
    manager: App,
    other_manager: App,
    admin: App,
    team: i64,
}

impl Cast {
    async fn new(db: &TestDb) -> Self {
        let router = router(db);
        let team = add_team(db, "Day").await;
        let other_team = add_team(db, "Night").await;
        let employee = add_user(db, "emp", "employee", Some(team)).await;
        let other_employee = add_user(db, "other", "employee", Some(other_team)).await;
        let manager = add_user(db, "boss", "manager", Some(team)).await;
        let other_manager = add_user(db, "otherboss", "manager", Some(other_team)).await;
        let admin = add_user(db, "root", "admin", None).await;
        Self {
            none: App::anonymous(router.clone()),
            employee: App::signed_in(router.clone(), db, employee).await,
            other_employee: App::signed_in(router.clone(), db, other_employee).await,
            manager: App::signed_in(router.clone(), db, manager).await,
            other_manager: App::signed_in(router.clone(), db, other_manager).await,
            admin: App::signed_in(router, db, admin).await,
            team,
        }
    }

    fn all(&self) -> [(&'static str, &App); 6] {
        [
            ("no session", &self.none),
            ("employee", &self.employee),
            ("other employee", &self.other_employee),
            ("manager of the team", &self.manager),
            ("manager of another team", &self.other_manager),
            ("admin", &self.admin),
        ]
    }
}

/// Method, path, body, clocked in before, the status expected per caller (`Cast::all` order).
type Row = (Method, String, Option<Value>, bool, [u16; 6]);

#[tokio::test]
async fn every_route_answers_each_kind_of_caller_as_the_access_rules_say() {
    let db = TestDb::migrated().await;
    let cast = Cast::new(&db).await;
    let emp = cast.employee.user_id;
    let team = cast.team;
    let open_entry = || async {
        sqlx::query("INSERT INTO clock_entries (user_id) VALUES ($1)")
            .bind(emp)
            .execute(&db.pool)
            .await
            .unwrap();
    };
    let close_entries = || async {
        sqlx::query("DELETE FROM clock_entries WHERE user_id = $1")
            .bind(emp)
            .execute(&db.pool)
            .await
            .unwrap();
    };

    // (method, path, body, clocked in before?, expected status per caller in Cast::all order)
    let table: Vec<Row> = vec![
        (Method::GET, "/health".into(), None, false, [200; 6]),
        (Method::GET, "/metrics".into(), None, false, [200; 6]),
        (
            Method::GET,
            "/auth/me".into(),
            None,
            false,
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            format!("/users/{emp}"),
            None,
            false,
            [401, 200, 404, 200, 404, 200],
        ),
        (
            Method::GET,
            format!("/users/{emp}/clock/status"),
            None,
            false,
            [401, 200, 404, 200, 404, 200],
        ),
        (
            Method::GET,
            format!("/users/{emp}/clock/history"),
            None,
            false,
            [401, 200, 404, 200, 404, 200],
        ),
        (
            Method::POST,
            format!("/users/{emp}/clock/in"),
            None,
            false,
            [401, 201, 404, 403, 404, 201],
        ),
        (
            Method::POST,
            format!("/users/{emp}/clock/out"),
            None,
            true,
            [401, 200, 404, 403, 404, 200],
        ),
        (
            Method::GET,
            "/users".into(),
            None,
            false,
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::POST,
            "/users".into(),
            Some(json!({ "username": "newbie", "email": "newbie@example.com" })),
            false,
            [401, 403, 403, 403, 403, 201],
        ),
        (
            Method::PUT,
            format!("/users/{emp}/account"),
            Some(json!({ "role": "employee", "team_id": team })),
            false,
            [401, 403, 403, 403, 403, 200],
        ),
        (
            Method::GET,
            "/teams".into(),
            None,
            false,
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::POST,
            "/teams".into(),
            Some(json!({ "name": "Weekend" })),
            false,
            [401, 403, 403, 403, 403, 201],
        ),
        (
            Method::GET,
            format!("/teams/{team}/totals"),
            None,
            false,
            [401, 404, 404, 200, 404, 200],
        ),
        (
            Method::GET,
            "/teams/999999/totals".into(),
            None,
            false,
            [401, 404, 404, 404, 404, 404],
        ),
        (
            Method::GET,
            "/users/999999".into(),
            None,
            false,
            [401, 404, 404, 404, 404, 404],
        ),
        // Last: it ends the employee's sessions.
        (
            Method::POST,
            format!("/users/{emp}/password"),
            None,
            false,
            [401, 403, 403, 403, 403, 200],
        ),
    ];

    let mut failures = Vec::new();
    for (method, path, body, clocked_in, expected) in &table {
        for ((who, app), want) in cast.all().into_iter().zip(expected) {
            close_entries().await;
            if *clocked_in {
                open_entry().await;
            }
            let reply = call(app, method.clone(), path, body.clone()).await;
            if reply.status.as_u16() != *want {
                failures.push(format!(
                    "{method} {path} as {who}: expected {want}, got {} {}",
                    reply.status, reply.text
                ));
            } else if reply.status.is_client_error() {
                reply.error(reply.status);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Lists hold only whom the caller may see.
    let names = |reply: Reply| -> Vec<String> {
        let mut names: Vec<String> = reply
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["username"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(get(&cast.manager, "/users").await), ["boss", "emp"]);
    assert_eq!(names(get(&cast.other_employee, "/users").await), ["other"]);
    assert_eq!(
        get(&cast.admin, "/users")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        6
    );
    let teams = get(&cast.other_manager, "/teams").await.json();
    assert_eq!(teams.as_array().unwrap().len(), 1, "{teams}");
    assert_eq!(teams[0]["name"], "Night");
}

#[tokio::test]
async fn team_totals_sum_each_members_time_in_the_range() {
    let db = TestDb::migrated().await;
    let cast = Cast::new(&db).await;
    let emp = cast.employee.user_id;
    for (clock_in, clock_out) in [
        ("2024-03-01T22:00:00Z", Some("2024-03-02T01:30:00Z")), // half in the range
        ("2024-03-02T09:00:00Z", Some("2024-03-02T10:00:00Z")),
        ("2024-03-05T09:00:00Z", Some("2024-03-05T10:00:00Z")), // after it
    ] {
        sqlx::query("INSERT INTO clock_entries (user_id, clock_in, clock_out) VALUES ($1, $2::timestamptz, $3::timestamptz)")
            .bind(emp)
            .bind(clock_in)
            .bind(clock_out)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let reply = get(
        &cast.manager,
        &format!("/teams/{}/totals?from=2024-03-02&to=2024-03-03", cast.team),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let totals = reply.json();
    assert_eq!(totals["from"], "2024-03-02");
    let members = totals["members"].as_array().unwrap();
    let seconds: Vec<(&str, i64)> = members
        .iter()
        .map(|m| {
            (
                m["username"].as_str().unwrap(),
                m["worked_seconds"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seconds, [("boss", 0), ("emp", 5400 + 3600)]);
}

async fn login(app: &App, email: &str, password: &str) -> Reply {
    post(
        app,
        "/auth/login",
        Some(json!({ "email": email, "password": password })),
    )
    .await
}

/// The app signed in through a `POST /auth/login` reply.
fn session_of(router: &axum::Router, reply: &Reply) -> App {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let cookie = reply.set_cookie.as_deref().unwrap();
    let token = cookie
        .strip_prefix("tm_session=")
        .and_then(|rest| rest.split(';').next())
        .unwrap();
    let me = reply.json();
    App {
        router: router.clone(),
        user_id: me["user"]["id"].as_i64().unwrap(),
        token: Some(token.to_owned()),
        csrf: Some(me["csrf_token"].as_str().unwrap().to_owned()),
    }
}

#[tokio::test]
async fn sign_in_me_and_sign_out() {
    let db = TestDb::migrated().await;
    let router = router(&db);
    let anonymous = App::anonymous(router.clone());
    let id = add_user(&db, "dora", "employee", None).await;
    set_password(&db, id, PASSWORD).await;

    let wrong = login(&anonymous, "dora@example.com", "not the password at all").await;
    let unknown = login(&anonymous, "nobody@example.com", PASSWORD).await;
    assert_eq!(
        wrong.error(StatusCode::UNAUTHORIZED),
        "wrong email or password"
    );
    assert_eq!(
        unknown.error(StatusCode::UNAUTHORIZED),
        "wrong email or password"
    );
    assert!(wrong.set_cookie.is_none());

    let reply = login(&anonymous, " DORA@example.com", PASSWORD).await;
    let cookie = reply.set_cookie.clone().unwrap();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(
            cookie.split("; ").any(|a| a == attribute),
            "{attribute} in {cookie}"
        );
    }
    let session = session_of(&router, &reply);
    assert_eq!(session.token.as_ref().unwrap().len(), 64, "256-bit token");
    let me = get(&session, "/auth/me").await.json();
    assert_eq!(me["user"]["username"], "dora");
    assert_eq!(me["user"]["role"], "employee");
    assert_eq!(me["must_change_password"], false);

    // Only the token's hash is stored.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM sessions WHERE user_id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 32);
    assert_ne!(
        stored,
        session.token.as_ref().unwrap().as_bytes(),
        "not the token itself"
    );

    let out = post(&session, "/auth/logout", None).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.text);
    assert!(out.set_cookie.unwrap().contains("Max-Age=0"));
    get(&session, "/auth/me")
        .await
        .error(StatusCode::UNAUTHORIZED);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE user_id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "sign-out deletes the session server-side");

    // A migrated user without a password cannot sign in at all.
    add_user(&db, "legacy", "employee", None).await;
    login(&anonymous, "legacy@example.com", "")
        .await
        .error(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sessions_expire_when_idle_or_too_old() {
    let db = TestDb::migrated().await;
    let router = router(&db);
    let id = add_user(&db, "eve", "employee", None).await;
    let idle = App::signed_in(router.clone(), &db, id).await;
    let old = App::signed_in(router.clone(), &db, id).await;
    let fresh = App::signed_in(router.clone(), &db, id).await;
    let hash =
        |app: &App| timemanager_backend::auth::session::token_hash(app.token.as_ref().unwrap());
    // Default lifetimes: 4 h idle, 12 h absolute.
    sqlx::query("UPDATE sessions SET last_seen_at = now() - interval '4 hours 1 minute' WHERE token_hash = $1")
        .bind(hash(&idle))
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE sessions SET created_at = now() - interval '12 hours 1 minute' WHERE token_hash = $1")
        .bind(hash(&old))
        .execute(&db.pool)
        .await
        .unwrap();
    get(&idle, "/auth/me").await.error(StatusCode::UNAUTHORIZED);
    get(&old, "/auth/me").await.error(StatusCode::UNAUTHORIZED);
    assert_eq!(get(&fresh, "/auth/me").await.status, StatusCode::OK);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE user_id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 1, "expired sessions are deleted when met");

    // Use keeps a session alive: the idle clock restarts.
    sqlx::query(
        "UPDATE sessions SET last_seen_at = now() - interval '3 hours' WHERE token_hash = $1",
    )
    .bind(hash(&fresh))
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(get(&fresh, "/auth/me").await.status, StatusCode::OK);
    let recent: bool = sqlx::query_scalar(
        "SELECT last_seen_at > now() - interval '1 minute' FROM sessions WHERE token_hash = $1",
    )
    .bind(hash(&fresh))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(recent);
}

#[tokio::test]
async fn state_changing_requests_without_the_csrf_token_are_403() {
    let db = TestDb::migrated().await;
    let router = router(&db);
    let id = add_user(&db, "fay", "employee", None).await;
    let session = App::signed_in(router.clone(), &db, id).await;
    let no_token = session.without_csrf();
    let mut wrong = session.clone();
    wrong.csrf = Some("0".repeat(64));
    for app in [&no_token, &wrong] {
        let message = post(app, &format!("/users/{id}/clock/in"), None)
            .await
            .error(StatusCode::FORBIDDEN);
        assert!(message.contains("CSRF"), "{message}");
        post(app, "/auth/logout", None)
            .await
            .error(StatusCode::FORBIDDEN);
    }
    // Reads need none; the session is still there and the token works.
    assert_eq!(get(&no_token, "/auth/me").await.status, StatusCode::OK);
    assert_eq!(
        post(&session, &format!("/users/{id}/clock/in"), None)
            .await
            .status,
        StatusCode::CREATED
    );
    // Another session's token is no good either: tokens are bound to their session.
    let other = App::signed_in(router, &db, id).await;
    let mut crossed = session.clone();
    crossed.csrf = other.csrf.clone();
    post(&crossed, &format!("/users/{id}/clock/out"), None)
        .await
        .error(StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn failed_sign_ins_are_limited_per_account_and_per_address() {
    let db = TestDb::migrated().await;
    let state = timemanager_backend::AppState::new(db.pool.clone()).with_auth(
        timemanager_backend::auth::AuthSettings {
            trust_forwarded_for: true,
            ..Default::default()
        },
    );
    let router = timemanager_backend::app(state);
    let id = add_user(&db, "gus", "employee", None).await;
    set_password(&db, id, PASSWORD).await;
    let from = |address: &str, email: &str, password: &str| {
        Request::builder()
            .method(Method::POST)
            .uri("/auth/login")
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-forwarded-for", format!("203.0.113.99, {address}"))
            .body(Body::from(
                json!({ "email": email, "password": password }).to_string(),
            ))
            .unwrap()
    };
    let app = App::anonymous(router);

    // Per account: five failures from five addresses, then even the right password waits.
    for i in 0..5 {
        let reply = send(
            &app,
            from(
                &format!("198.51.100.{i}"),
                "gus@example.com",
                "wrong wrong wrong",
            ),
        )
        .await;
        reply.error(StatusCode::UNAUTHORIZED);
    }
    let limited = send(&app, from("198.51.100.77", "gus@example.com", PASSWORD)).await;
    limited.error(StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = limited.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=900).contains(&wait), "{wait}");

    // Per address: twenty failures on twenty accounts, then that address waits, others not.
    for i in 0..20 {
        send(
            &app,
            from(
                "192.0.2.1",
                &format!("u{i}@example.com"),
                "wrong wrong wrong",
            ),
        )
        .await
        .error(StatusCode::UNAUTHORIZED);
    }
    let limited = send(
        &app,
        from("192.0.2.1", "new@example.com", "wrong wrong wrong"),
    )
    .await;
    limited.error(StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.retry_after.is_some());
    send(
        &app,
        from("192.0.2.2", "new@example.com", "wrong wrong wrong"),
    )
    .await
    .error(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn one_time_passwords_changes_and_the_stored_hashes() {
    let db = TestDb::migrated().await;
    let router = router(&db);
    let admin_id = add_user(&db, "root", "admin", None).await;
    let admin = App::signed_in(router.clone(), &db, admin_id).await;
    let anonymous = App::anonymous(router.clone());

    let created = post(
        &admin,
        "/users",
        Some(json!({ "username": "hal", "email": "hal@example.com", "role": "manager" })),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let created = created.json();
    let initial = created["initial_password"].as_str().unwrap().to_owned();
    let hal = created["user"]["id"].as_i64().unwrap();
    assert_eq!(created["user"]["role"], "manager");

    // Argon2id with OWASP's parameters, and never the password in clear.
    let stored: String =
        sqlx::query_scalar("SELECT password_hash FROM accounts WHERE user_id = $1")
            .bind(hal)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{stored}"
    );
    assert!(!stored.contains(&initial));

    // The one-time password opens /auth/* only, until it is replaced.
    let first = session_of(
        &router,
        &login(&anonymous, "hal@example.com", &initial).await,
    );
    assert_eq!(
        get(&first, "/auth/me").await.json()["must_change_password"],
        true
    );
    get(&first, "/users").await.error(StatusCode::FORBIDDEN);
    let second = session_of(
        &router,
        &login(&anonymous, "hal@example.com", &initial).await,
    );

    let change =
        |current: &str, new: &str| json!({ "current_password": current, "new_password": new });
    post(&first, "/auth/password", Some(change("wrong", PASSWORD)))
        .await
        .error(StatusCode::FORBIDDEN);
    let message = post(&first, "/auth/password", Some(change(&initial, "short")))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("12"), "{message}");
    let message = post(
        &first,
        "/auth/password",
        Some(change(&initial, "qwerty123456")),
    )
    .await
    .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("common"), "{message}");
    let done = post(&first, "/auth/password", Some(change(&initial, PASSWORD))).await;
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{}", done.text);

    // This session goes on, unrestricted; the other one ended; the old password is dead.
    assert_eq!(get(&first, "/users").await.status, StatusCode::OK);
    get(&second, "/auth/me")
        .await
        .error(StatusCode::UNAUTHORIZED);
    login(&anonymous, "hal@example.com", &initial)
        .await
        .error(StatusCode::UNAUTHORIZED);
    session_of(
        &router,
        &login(&anonymous, "hal@example.com", PASSWORD).await,
    );

    // An admin's reset ends every session of the user and hands out a new one-time password.
    let reset = post(&admin, &format!("/users/{hal}/password"), None).await;
    assert_eq!(reset.status, StatusCode::OK, "{}", reset.text);
    get(&first, "/auth/me")
        .await
        .error(StatusCode::UNAUTHORIZED);
    let again = reset.json()["initial_password"]
        .as_str()
        .unwrap()
        .to_owned();
    let third = session_of(&router, &login(&anonymous, "hal@example.com", &again).await);
    assert_eq!(
        get(&third, "/auth/me").await.json()["must_change_password"],
        true
    );
}

#[tokio::test]
async fn create_admin_reads_stdin_then_the_admin_signs_in_and_no_secret_is_logged() {
    use std::time::Duration;

    use xshell::{Shell, cmd};

    use crate::support::{BIN, Backend};

    let db = TestDb::migrated().await;
    let sh = Shell::new().unwrap();
    let create_admin = |stdin: &str| {
        cmd!(sh, "{BIN} create-admin --email root@example.com")
            .env("DATABASE_URL", &db.url)
            .stdin(stdin)
            .quiet()
            .ignore_status()
            .output()
            .unwrap()
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

    let empty = create_admin("");
    assert_eq!(empty.status.code(), Some(2), "{}", text(&empty.stderr));
    assert!(text(&empty.stderr).contains("stdin"));
    let weak = create_admin("password\n");
    assert_eq!(weak.status.code(), Some(2));
    assert!(text(&weak.stderr).contains("12"), "{}", text(&weak.stderr));

    let created = create_admin(&format!("{PASSWORD}\n"));
    assert_eq!(created.status.code(), Some(0), "{}", text(&created.stderr));
    assert!(text(&created.stdout).starts_with("created admin root@example.com"));
    for output in [&created.stdout, &created.stderr] {
        assert!(!text(output).contains(PASSWORD));
    }

    let mut backend = Backend::start(&db.url, &[("RUST_LOG", "debug")]).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", backend.base_url());
    let signed_in = client
        .post(url("/auth/login"))
        .json(&json!({ "email": "root@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 200);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    let token = cookie
        .strip_prefix("tm_session=")
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_owned();
    let me: Value = signed_in.json().await.unwrap();
    assert_eq!(me["user"]["role"], "admin");
    let csrf = me["csrf_token"].as_str().unwrap().to_owned();
    let wrong = client
        .post(url("/auth/login"))
        .json(&json!({ "email": "root@example.com", "password": "a wrong password!" }))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let me = client
        .get(url("/auth/me"))
        .header("cookie", format!("tm_session={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);

    // Running it again sets a new password and ends the admin's sessions.
    let again = create_admin("another long passphrase\n");
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("1 session(s) ended"),
        "{}",
        text(&again.stdout)
    );
    let ended = client
        .post(url("/auth/logout"))
        .header("cookie", format!("tm_session={token}"))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 401);

    backend.terminate();
    assert!(backend.wait_exit(Duration::from_secs(15)).await.success());
    let logs = format!("{}\n{}", backend.stdout(), backend.stderr());
    assert!(
        logs.contains("signed in"),
        "the tests did capture the logs:\n{logs}"
    );
    for secret in [PASSWORD, "a wrong password!", token.as_str(), csrf.as_str()] {
        assert!(
            !logs.contains(secret),
            "{secret:?} appears in the logs:\n{logs}"
        );
    }
}
