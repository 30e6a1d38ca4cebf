//! The `browser` step: Debian's Chromium, driven by `playwright-core` (pinned in
//! `xtask/browser/package-lock.json`), uses the web app against the built binaries: the
//! backend on a throwaway PostgreSQL, the frontend server with the built SPA, and in
//! `xtask/browser/browser.mjs` a same-origin proxy standing in for Traefik's routers
//! (`/api/*` to the backend without the prefix). The first admin is made with the
//! backend's own `create-admin`, its password on stdin. Screenshots of every page go to
//! `target/browser/`.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::harness::daemon::Daemon;
use crate::harness::postgres::{self, Postgres};
use crate::{project, provision};

/// The browser, from Debian (a browser build of playwright's own cannot be downloaded here).
pub(crate) const CHROMIUM: provision::Need = provision::Need {
    program: "chromium",
    package: "chromium",
};

const ADMIN_EMAIL: &str = "admin@example.com";

pub(crate) fn check(sh: &Shell) -> anyhow::Result<()> {
    provision::ensure(sh, &[CHROMIUM, provision::NPM, provision::POSTGRES])?;
    let cargo = project::cargo(sh);
    cmd!(
        sh,
        "{cargo} build --locked -p timemanager-backend -p timemanager-frontend-server"
    )
    .run()?;
    {
        let _dir = sh.push_dir("frontend");
        if !project::root().join("frontend/node_modules").exists() {
            cmd!(sh, "npm ci --no-audit --no-fund").run()?;
        }
        cmd!(sh, "npm run build").run()?;
    }
    {
        let _dir = sh.push_dir("xtask/browser");
        cmd!(sh, "npm ci --no-audit --no-fund").run()?;
    }
    let target = project::target_dir();
    let bin = target.join("debug");
    let state = target.join("browser");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)?;

    let pg = Postgres::start(sh)?;
    let database_url = pg.url();
    let backend_port = postgres::free_port()?;
    let backend_sh = Shell::new()?;
    for (name, value) in [
        ("DATABASE_URL", database_url.as_str()),
        ("APP_HOST", "127.0.0.1"),
        ("APP_PORT", &backend_port.to_string()),
        ("RUST_LOG", "info"),
        // Plain HTTP on loopback, as the proxy serves it: the one place this is allowed.
        ("SESSION_COOKIE_SECURE", "false"),
        ("TRUST_FORWARDED_FOR", "true"),
    ] {
        backend_sh.set_var(name, value);
    }
    let backend_bin = bin.join("timemanager-backend");
    let backend = Daemon::start(&backend_sh, &state, "backend", &backend_bin, &[])?;
    wait_listening(backend_port, &backend)?;

    let frontend_port = postgres::free_port()?;
    let frontend_sh = Shell::new()?;
    let static_dir = project::root().join("frontend/dist");
    frontend_sh.set_var("STATIC_DIR", &static_dir);
    frontend_sh.set_var("APP_HOST", "127.0.0.1");
    frontend_sh.set_var("APP_PORT", frontend_port.to_string());
    let frontend = Daemon::start(
        &frontend_sh,
        &state,
        "frontend",
        &bin.join("timemanager-frontend-server"),
        &[],
    )?;
    wait_listening(frontend_port, &frontend)?;

    let password = random_password()?;
    cmd!(sh, "{backend_bin} create-admin --email {ADMIN_EMAIL}")
        .env("DATABASE_URL", &database_url)
        .stdin(format!("{password}\n"))
        .quiet()
        .run()
        .context("making the first admin with `timemanager-backend create-admin`")?;

    let _dir = sh.push_dir("xtask/browser");
    let started = Instant::now();
    let result = cmd!(sh, "node browser.mjs")
        .env("BACKEND_URL", format!("http://127.0.0.1:{backend_port}"))
        .env("FRONTEND_URL", format!("http://127.0.0.1:{frontend_port}"))
        .env("ADMIN_EMAIL", ADMIN_EMAIL)
        .env("ADMIN_PASSWORD", &password)
        .env("SCREENSHOTS", &state)
        .run();
    if let Err(err) = result {
        bail!(
            "{err}\nbackend log:\n{}\nscreenshots in {}",
            backend.log_tail(),
            state.display()
        );
    }
    let log = std::fs::read_to_string(&backend.log).unwrap_or_default();
    if log.contains(&password) {
        bail!("the admin's password appears in the backend's log");
    }
    eprintln!(
        "browser test: {:.1} s, screenshots in {}",
        started.elapsed().as_secs_f64(),
        state.display()
    );
    Ok(())
}

/// Waits (at most 30 s) until `port` accepts connections, or the daemon's log says why not.
fn wait_listening(port: u16, daemon: &Daemon) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "nothing listens on port {port} after 30 s:\n{}",
        daemon.log_tail()
    )
}

/// 128 random bits as hex: the admin's password for this run only.
fn random_password() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
