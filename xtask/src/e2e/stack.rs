//! What the e2e checks on the deployed production stack: Traefik's edge (TLS, redirect,
//! routers, security headers), data written and read through it, the PostgreSQL volume, and
//! Prometheus's view of the backend; also the stack's state for a failure report.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::Value;
use xshell::{Shell, cmd};

use crate::harness::lab::{self, edge, excerpt};

const API: &str = "https://localhost/api";
const ORIGIN: &str = "https://localhost";
const ALLOW_ORIGIN: &str = "access-control-allow-origin";

/// The PostgreSQL service's named volume under production's project name.
pub(crate) const POSTGRES_VOLUME: &str = "timemanager_postgres-data";

/// Every check of Traefik's edge that does not depend on the release; returns what it saw.
pub(crate) fn edge_checks(sh: &Shell) -> anyhow::Result<String> {
    let certificate = served_certificate(sh)?;
    let index = edge("GET", "https://localhost/", &[], None)?;
    ensure!(
        index.status == 200 && index.text().contains("<title>Time Manager</title>"),
        "`/` through Traefik: {} {}",
        index.status,
        excerpt(&index.text())
    );
    let deep = edge("GET", "https://localhost/clock/history", &[], None)?;
    ensure!(
        deep.status == 200 && deep.text() == index.text(),
        "the deep link `/clock/history` did not serve the SPA's index: {} {}",
        deep.status,
        excerpt(&deep.text())
    );
    for path in ["/api/metrics", "/api/metrics/anything"] {
        let res = edge("GET", &format!("https://localhost{path}"), &[], None)?;
        ensure!(
            res.status == 403,
            "`{path}` through Traefik answered {}, expected 403 (internal-only): {}",
            res.status,
            excerpt(&res.text())
        );
    }
    for path in ["/", "/api/health"] {
        let res = edge("GET", &format!("http://localhost{path}"), &[], None)?;
        let expected = format!("https://localhost{path}");
        ensure!(
            (res.status == 301 || res.status == 308) && res.header("location") == Some(&expected),
            "http://localhost{path} answered {} with Location {:?}, expected a permanent redirect to {expected}",
            res.status,
            res.header("location")
        );
    }
    let expected_headers = [
        (
            "strict-transport-security",
            "max-age=31536000; includeSubDomains; preload",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("x-xss-protection", "1; mode=block"),
        ("referrer-policy", "strict-origin-when-cross-origin"),
        (
            "permissions-policy",
            "camera=(), microphone=(), geolocation=(), payment=()",
        ),
    ];
    let health = edge("GET", lab::HEALTH_URL, &[], None)?;
    for (what, res) in [("/", &index), ("/api/health", &health)] {
        for (name, value) in expected_headers {
            ensure!(
                res.header(name) == Some(value),
                "{what} through Traefik: `{name}` is {:?}, expected `{value}` (infrastructure/traefik/dynamic/middlewares.yml)",
                res.header(name)
            );
        }
    }
    let other_host = edge("GET", "https://127.0.0.1/", &[], None)?;
    ensure!(
        other_host.status == 404,
        "a request for another host answered {}, expected 404 (no router)",
        other_host.status
    );
    Ok(format!(
        "TLS certificate `{certificate}` (no ACME in the lab: accepted by the test client only); SPA at `/` and `/clock/history`; /api/metrics 403; http:// 301 to https://; {} security headers on the SPA and the API; other hosts 404",
        expected_headers.len()
    ))
}

/// The subject of the certificate Traefik serves for `localhost`.
fn served_certificate(sh: &Shell) -> anyhow::Result<String> {
    let out = cmd!(
        sh,
        "openssl s_client -connect 127.0.0.1:443 -servername localhost"
    )
    .stdin("")
    .quiet()
    .ignore_status()
    .ignore_stderr()
    .read()?;
    let subject = out
        .lines()
        .find_map(|line| line.strip_prefix("subject="))
        .context("`openssl s_client` printed no certificate subject for localhost:443")?;
    Ok(subject.trim().to_owned())
}

/// The lab's admin, made by the backend's own `create-admin` in the running container (what
/// `cargo xtask create-admin` runs over ssh), its password on stdin only.
const LAB_ADMIN: &str = "e2e-admin@example.com";

/// A password drawn once per e2e run, never in an argument.
fn lab_admin_password() -> anyhow::Result<&'static str> {
    static PASSWORD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(password) = PASSWORD.get() {
        return Ok(password);
    }
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(PASSWORD.get_or_init(|| password))
}

/// Signs the lab's admin in through Traefik, (re)creating it first.
pub(crate) fn sign_in() -> anyhow::Result<Session> {
    let sh = Shell::new()?;
    let password = lab_admin_password()?;
    let backend = container_ids(&sh, Some("backend"))?
        .into_iter()
        .next()
        .context("no backend container runs to create the lab's admin in")?;
    cmd!(
        sh,
        "docker exec -i {backend} /app/timemanager-backend create-admin --email {LAB_ADMIN}"
    )
    .stdin(format!("{password}\n"))
    .quiet()
    .ignore_stdout()
    .run()
    .context("creating the lab's admin with `timemanager-backend create-admin`")?;
    let body = serde_json::json!({ "email": LAB_ADMIN, "password": password }).to_string();
    let login = edge(
        "POST",
        &format!("{API}/auth/login"),
        &[("Origin", ORIGIN), ("Content-Type", "application/json")],
        Some(&body),
    )?;
    ensure!(
        login.status == 200,
        "signing in through Traefik: {} {}",
        login.status,
        excerpt(&login.text())
    );
    let cookie = login
        .header("set-cookie")
        .and_then(|value| value.split(';').next())
        .context("the sign-in set no cookie")?
        .to_owned();
    let csrf = serde_json::from_str::<Value>(&login.text())?["csrf_token"]
        .as_str()
        .context("the sign-in answer has no csrf_token")?
        .to_owned();
    Ok(Session { cookie, csrf })
}

/// A signed-in session of the lab's admin: the `Cookie` header's value and the CSRF token.
pub(crate) struct Session {
    pub(crate) cookie: String,
    pub(crate) csrf: String,
}

/// Creates a user and a clock entry through Traefik the way the web app does: signed in, a
/// CORS preflight, then the calls with `Origin` and the session's CSRF token, each answered
/// with that origin allowed.
pub(crate) fn create_data() -> anyhow::Result<i64> {
    let Session { cookie, csrf } = sign_in()?;
    let preflight = edge(
        "OPTIONS",
        &format!("{API}/users"),
        &[
            ("Origin", ORIGIN),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "content-type,x-csrf-token",
            ),
        ],
        None,
    )?;
    ensure!(
        preflight.header(ALLOW_ORIGIN) == Some(ORIGIN),
        "CORS preflight from {ORIGIN}: status {}, allow-origin {:?}",
        preflight.status,
        preflight.header(ALLOW_ORIGIN)
    );
    let signed_in = [
        ("Origin", ORIGIN),
        ("Cookie", cookie.as_str()),
        ("X-CSRF-Token", csrf.as_str()),
    ];
    let user = edge(
        "POST",
        &format!("{API}/users"),
        &[
            signed_in.as_slice(),
            &[("Content-Type", "application/json")],
        ]
        .concat(),
        Some(r#"{"username":"e2e-user","email":"e2e@example.com"}"#),
    )?;
    ensure!(
        user.status == 201 && user.header(ALLOW_ORIGIN) == Some(ORIGIN),
        "creating a user through Traefik: {} {}",
        user.status,
        user.text()
    );
    let id = serde_json::from_str::<Value>(&user.text())?["user"]["id"]
        .as_i64()
        .context("no user id")?;
    let entry = edge(
        "POST",
        &format!("{API}/users/{id}/clock/in"),
        &signed_in,
        None,
    )?;
    ensure!(
        entry.status == 201,
        "clocking in through Traefik: {} {}",
        entry.status,
        entry.text()
    );
    let anonymous = edge("GET", &format!("{API}/users/{id}"), &[], None)?;
    ensure!(
        anonymous.status == 401,
        "without a session the API answered {} {}",
        anonymous.status,
        excerpt(&anonymous.text())
    );
    Ok(id)
}

/// POSTs JSON to the API through Traefik as the web app does, signed in; the status.
pub(crate) fn post_json(session: &Session, path: &str, body: &str) -> anyhow::Result<u16> {
    let res = edge(
        "POST",
        &format!("{API}{path}"),
        &[
            ("Origin", ORIGIN),
            ("Content-Type", "application/json"),
            ("Cookie", session.cookie.as_str()),
            ("X-CSRF-Token", session.csrf.as_str()),
        ],
        Some(body),
    )?;
    Ok(res.status)
}

/// The user and its open clock entry are still there, read through Traefik signed in.
pub(crate) fn check_data(id: i64) -> anyhow::Result<()> {
    let Session { cookie, .. } = sign_in()?;
    let session = [("Cookie", cookie.as_str())];
    let user = edge("GET", &format!("{API}/users/{id}"), &session, None)?;
    ensure!(
        user.status == 200 && user.text().contains("e2e-user"),
        "user {id} is gone: {} {}",
        user.status,
        excerpt(&user.text())
    );
    let status = edge(
        "GET",
        &format!("{API}/users/{id}/clock/status"),
        &session,
        None,
    )?;
    ensure!(
        status.status == 200 && status.text().contains("\"clocked_in\":true"),
        "the clock entry is gone: {} {}",
        status.status,
        excerpt(&status.text())
    );
    Ok(())
}

/// The PostgreSQL container stores its data in the project's named volume: returns the
/// cluster's system identifier (`pg_control_system()`), which `initdb` draws once per data
/// directory, so an unchanged identifier means the data is still that volume's.
pub(crate) fn postgres_cluster(sh: &Shell) -> anyhow::Result<String> {
    let format = "{{range .Mounts}}{{.Name}}:{{.Destination}} {{end}}";
    let mounts = cmd!(sh, "docker inspect --format {format} timemanager-postgres")
        .quiet()
        .read()?;
    let expected = format!("{POSTGRES_VOLUME}:/var/lib/postgresql/data");
    ensure!(
        mounts.split_whitespace().any(|mount| mount == expected),
        "timemanager-postgres mounts `{}`, expected {expected}",
        mounts.trim()
    );
    psql(sh, "SELECT system_identifier FROM pg_control_system()")
}

/// Whether the PostgreSQL volume exists (`docker volume inspect`).
pub(crate) fn volume_exists(sh: &Shell) -> bool {
    cmd!(sh, "docker volume inspect {POSTGRES_VOLUME}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok()
}

/// One value from `psql` inside the PostgreSQL container (as its user, over its socket).
pub(crate) fn psql(sh: &Shell, query: &str) -> anyhow::Result<String> {
    let out = cmd!(
        sh,
        "docker exec timemanager-postgres psql -U timemanager -d timemanager -tAc {query}"
    )
    .quiet()
    .read()
    .with_context(|| format!("psql `{query}` in timemanager-postgres"))?;
    Ok(out.trim().to_owned())
}

/// The rows of the e2e's user in the database itself, read with `psql` inside the container.
pub(crate) fn users_in_database(sh: &Shell) -> anyhow::Result<u32> {
    let out = psql(sh, "SELECT count(*) FROM users WHERE username = 'e2e-user'")?;
    out.parse().with_context(|| format!("psql printed `{out}`"))
}

/// Waits until the health URL answers the backend's JSON with `"status":"ok"`.
pub(crate) fn wait_healthy(timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let last = match edge("GET", lab::HEALTH_URL, &[], None) {
            Ok(res) => match lab::health_json(&res) {
                Some(body) if res.status == 200 && body["status"] == "ok" => {
                    return Ok(start.elapsed());
                }
                Some(body) => format!("{} {body}", res.status),
                None => format!("{} {}", res.status, excerpt(&res.text())),
            },
            Err(err) => format!("{err:#}"),
        };
        ensure!(
            start.elapsed() < timeout,
            "{} not healthy within {} s; last: {last}",
            lab::HEALTH_URL,
            timeout.as_secs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of `up{job="JOB"}` in Prometheus, queried inside its container with promtool.
pub(crate) fn prometheus_up(sh: &Shell, job: &str) -> anyhow::Result<Option<String>> {
    let query = format!("up{{job=\"{job}\"}}");
    let out = cmd!(
        sh,
        "docker exec timemanager-prometheus promtool query instant http://localhost:9090 {query}"
    )
    .quiet()
    .read()?;
    // `up{instance="backend:8080", job="backend"} => 1 @[1764582000.123]`
    Ok(out
        .lines()
        .find_map(|line| line.split_once(" => "))
        .and_then(|(_, value)| value.split_whitespace().next())
        .map(str::to_owned))
}

/// The running containers of the project, by service name.
pub(crate) fn running_services(sh: &Shell) -> anyhow::Result<Vec<String>> {
    let label = "label=com.docker.compose.project=timemanager";
    let format = "{{.Label \"com.docker.compose.service\"}}";
    let out = cmd!(sh, "docker ps --filter {label} --format {format}")
        .quiet()
        .read()?;
    let mut services: Vec<String> = out.lines().map(str::to_owned).collect();
    services.sort();
    Ok(services)
}

/// `com.docker.compose.version` of a service's container: which compose created it.
pub(crate) fn created_by(sh: &Shell, service: &str) -> anyhow::Result<String> {
    let ids = container_ids(sh, Some(service))?;
    let id = ids
        .first()
        .with_context(|| format!("no running container of service {service}"))?;
    let format = "{{index .Config.Labels \"com.docker.compose.version\"}}";
    Ok(cmd!(sh, "docker inspect --format {format} {id}")
        .quiet()
        .read()?
        .trim()
        .to_owned())
}

/// The ids of the project's running containers (of one service, or all), sorted: the app
/// services have no fixed container names, a release switch gives them new containers.
pub(crate) fn container_ids(sh: &Shell, service: Option<&str>) -> anyhow::Result<Vec<String>> {
    let project = "label=com.docker.compose.project=timemanager";
    let service = service.map(|service| format!("label=com.docker.compose.service={service}"));
    let filter = service.as_ref().map(|_| "--filter");
    let out = cmd!(
        sh,
        "docker ps -q --no-trunc --filter {project} {filter...} {service...}"
    )
    .quiet()
    .read()?;
    let mut ids: Vec<String> = out.lines().map(str::to_owned).collect();
    ids.sort();
    Ok(ids)
}

/// For a failure report: the project's containers and the last log lines of the ones that
/// decide the health gate.
pub(crate) fn state_report(sh: &Shell) -> String {
    let label = "label=com.docker.compose.project=timemanager";
    let format = "{{.Names}}\t{{.Status}}\t{{.Image}}";
    let mut out = cmd!(sh, "docker ps -a --filter {label} --format {format}")
        .quiet()
        .read()
        .unwrap_or_default();
    let backends = container_ids(sh, Some("backend")).unwrap_or_default();
    let named = ["timemanager-traefik", "timemanager-postgres"].map(str::to_owned);
    for container in backends.iter().chain(&named) {
        // Traefik logs to stdout, the backend to stderr: both, one after the other.
        let logs = cmd!(sh, "docker logs --tail 15 {container}")
            .quiet()
            .ignore_status()
            .output()
            .map(|out| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .unwrap_or_default();
        out.push_str(&format!("\n--- {container}, last lines:\n{logs}"));
    }
    out
}
