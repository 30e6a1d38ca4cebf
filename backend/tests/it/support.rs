//! Shared helpers: in-process requests through the router and running the real binary.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::Value;
use tower::ServiceExt as _;
use xshell::{Shell, cmd};

use crate::pg::TestDb;

pub const BIN: &str = env!("CARGO_BIN_EXE_timemanager-backend");

/// The router over a migrated test database, signed in as a fresh admin.
pub async fn app(db: &TestDb) -> App {
    let router = timemanager_backend::app(timemanager_backend::AppState::new(db.pool.clone()));
    let id = add_user(db, "root", "admin", None).await;
    App::signed_in(router, db, id).await
}

/// A router and, if signed in, the session's cookie and CSRF token, sent with each request.
#[derive(Clone)]
pub struct App {
    pub router: Router,
    pub user_id: i64,
    pub token: Option<String>,
    pub csrf: Option<String>,
}

impl App {
    pub fn anonymous(router: Router) -> Self {
        Self {
            router,
            user_id: 0,
            token: None,
            csrf: None,
        }
    }

    /// A session for `user_id` made straight in the database (no password needed).
    pub async fn signed_in(router: Router, db: &TestDb, user_id: i64) -> Self {
        let (token, csrf) = timemanager_backend::auth::session::create(&db.pool, user_id)
            .await
            .unwrap();
        Self {
            router,
            user_id,
            token: Some(token),
            csrf: Some(csrf),
        }
    }

    /// The same session without its CSRF token.
    pub fn without_csrf(&self) -> Self {
        Self {
            csrf: None,
            ..self.clone()
        }
    }

    pub fn cookie(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("tm_session={t}"))
    }
}

impl From<Router> for App {
    fn from(router: Router) -> Self {
        Self::anonymous(router)
    }
}

/// Inserts a user with an account (`role`, `team`) and no password; returns its id.
pub async fn add_user(db: &TestDb, username: &str, role: &str, team: Option<i64>) -> i64 {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO users (username, email) VALUES ($1, $1 || '@example.com') RETURNING id",
    )
    .bind(username)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO accounts (user_id, role, team_id) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(role)
        .bind(team)
        .execute(&db.pool)
        .await
        .unwrap();
    id
}

/// Inserts a team; returns its id.
pub async fn add_team(db: &TestDb, name: &str) -> i64 {
    sqlx::query_scalar("INSERT INTO teams (name) VALUES ($1) RETURNING id")
        .bind(name)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Sets a password (hashed as the server does) on a user's account.
pub async fn set_password(db: &TestDb, user_id: i64, password: &str) {
    let hash = timemanager_backend::auth::password::hash(password).unwrap();
    timemanager_backend::auth::set_password(&db.pool, user_id, &hash, false)
        .await
        .unwrap();
}

/// A response reduced to what tests look at.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub set_cookie: Option<String>,
    pub retry_after: Option<String>,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {:?} {}", self.status, self.text))
    }

    /// Asserts the uniform error shape and returns the message.
    pub fn error(&self, status: StatusCode) -> String {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert!(
            self.content_type.starts_with("application/json"),
            "{self:?}"
        );
        let json = self.json();
        let message = json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {json}"));
        assert_eq!(json.as_object().unwrap().len(), 1, "{json}");
        message.to_owned()
    }
}

/// Sends one request through the router (no network).
pub async fn call(app: &App, method: Method, uri: &str, body: Option<Value>) -> Reply {
    let builder = Request::builder().method(method).uri(uri);
    let request = match body {
        Some(json) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json.to_string())),
        None => builder.body(Body::empty()),
    }
    .unwrap();
    send(app, request).await
}

/// Sends `request` with the app's cookie and CSRF token (if any).
pub async fn send(app: &App, mut request: Request<Body>) -> Reply {
    if let Some(cookie) = app.cookie() {
        request
            .headers_mut()
            .insert(header::COOKIE, cookie.parse().unwrap());
    }
    if let Some(csrf) = &app.csrf {
        request
            .headers_mut()
            .insert("x-csrf-token", csrf.parse().unwrap());
    }
    let response = app.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let headers = response.headers();
    let header_text = |name| {
        headers
            .get(name)
            .map(|v: &axum::http::HeaderValue| v.to_str().unwrap().to_owned())
    };
    let (set_cookie, retry_after) = (
        header_text(header::SET_COOKIE),
        header_text(header::RETRY_AFTER),
    );
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    Reply {
        status,
        content_type,
        set_cookie,
        retry_after,
        text: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

pub async fn get(app: &App, uri: &str) -> Reply {
    call(app, Method::GET, uri, None).await
}

pub async fn post(app: &App, uri: &str, body: Option<Value>) -> Reply {
    call(app, Method::POST, uri, body).await
}

/// Creates a user through the API (as the app's admin) and returns its id.
pub async fn create_user(app: &App, username: &str) -> i64 {
    let reply = post(
        app,
        "/users",
        Some(
            serde_json::json!({ "username": username, "email": format!("{username}@example.com") }),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.json()["user"]["id"].as_i64().unwrap()
}

/// A session for the binary's tests: a new admin and its `Cookie` and CSRF headers.
pub async fn http_session(db: &TestDb, username: &str) -> [(&'static str, String); 2] {
    let id = add_user(db, username, "admin", None).await;
    let (token, csrf) = timemanager_backend::auth::session::create(&db.pool, id)
        .await
        .unwrap();
    [
        ("cookie", format!("tm_session={token}")),
        ("x-csrf-token", csrf),
    ]
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("tm-backend-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The compiled binary running as a child process; killed on drop if still running.
pub struct Backend {
    pub child: Child,
    pub port: u16,
    logs: TempDir,
}

impl Backend {
    /// Starts the server with a clean environment plus `env`, and waits for it to listen.
    pub async fn start(database_url: &str, env: &[(&str, &str)]) -> Self {
        let port = crate::pg::free_port();
        let mut backend = Self::spawn(
            &[
                ("DATABASE_URL", database_url),
                ("APP_PORT", &port.to_string()),
                ("APP_HOST", "127.0.0.1"),
            ],
            env,
        );
        backend.port = port;
        backend.wait_listening().await;
        backend
    }

    /// Spawns without waiting; stdout/stderr go to files (pipes could fill and block it).
    pub fn spawn(base: &[(&str, &str)], extra: &[(&str, &str)]) -> Self {
        let logs = TempDir::new("logs");
        let sh = Shell::new().unwrap();
        let mut command = std::process::Command::from(cmd!(sh, "{BIN}"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (key, value) in base.iter().chain(extra) {
            command.env(key, value);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(File::create(logs.0.join("stdout")).unwrap())
            .stderr(File::create(logs.0.join("stderr")).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            port: 0,
            logs,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.logs.0.join("stdout")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.logs.0.join("stderr")).unwrap_or_default()
    }

    async fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "backend exited early ({status})\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "backend did not listen in time:\n{}",
                self.stdout()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("backend did not listen:\n{}", self.stdout());
    }

    /// Sends SIGTERM, as a container runtime does.
    pub fn terminate(&self) {
        let sh = Shell::new().unwrap();
        let pid = self.child.id().to_string();
        cmd!(sh, "kill -TERM {pid}").quiet().run().unwrap();
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        for _ in 0..10_000 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "backend did not exit within {timeout:?}:\n{}",
                self.stdout()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("backend did not exit");
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `GET base_url + path` with a short timeout, returning status and JSON body.
pub async fn http_get(client: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let response = client
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    Some((status, body))
}
