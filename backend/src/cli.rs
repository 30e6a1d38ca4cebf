//! The command line of `timemanager-backend`: argument dispatch and the async runtime.
//!
//! It lives in the library, not in `main.rs`, so the binary crate instantiates no generic
//! code: every future is polled by a `block_on` compiled here, and a change to the library
//! only relinks the binary (it used to recompile the whole server's futures, 15 s per image
//! build).

use std::process::ExitCode;

use crate::config::{self, Config, MigrateConfig};
use crate::{REVISION, VERSION};

const USAGE: &str =
    "usage: timemanager-backend [healthcheck | migrate | migrations | create-admin --email E [--username U] | --version | --help]

Runs the Time Manager API server (configured through APP_HOST, APP_PORT, DATABASE_URL,
RUST_LOG, CORS_ALLOWED_ORIGINS, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME,
SHUTDOWN_DRAIN_SECONDS, SESSION_IDLE_TIMEOUT (default 240min), SESSION_ABSOLUTE_TIMEOUT
(default 720min), SESSION_COOKIE_SECURE (default true; false only with a loopback APP_HOST),
TRUST_FORWARDED_FOR (default false; true behind Traefik); DATABASE_URL_FILE instead of
DATABASE_URL reads the URL from a file, e.g. a Docker Swarm secret). On SIGTERM/SIGINT /health answers 503 for SHUTDOWN_DRAIN_SECONDS
(default 12) while other requests are served, then in-flight requests finish and it exits.
`healthcheck` exits 0 if http://127.0.0.1:$APP_PORT/health answers 200 within 3 s.
`migrate` applies pending migrations once and exits (0 done or none pending, 1 failed),
under the migration lock; it reads DATABASE_URL, MIGRATE_LOCK_TIMEOUT (default 5s) and
MIGRATE_STATEMENT_TIMEOUT (default 5min), durations such as 500ms, 5s or 5min, 0 disables.
`migrations` prints this binary's migrations as JSON lines (version, kind, description,
checksum, no_transaction) and needs no database.
`create-admin` makes E an admin (a new user, or an existing one with a new password); it
reads the password from the first line of stdin, never from arguments, and DATABASE_URL.";

/// Configuration and usage errors, distinct from runtime failures (1).
const EXIT_USAGE: u8 = 2;

/// Parses the arguments and runs the command; the binary's `main` is only this call.
pub fn main() -> ExitCode {
    // args_os: std::env::args() would panic on a non-UTF-8 argument.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let words: Vec<&str> = args
        .iter()
        .map(|a| a.to_str().unwrap_or("\u{FFFD}"))
        .collect();
    // `Err` carries the exit code of a usage error already reported.
    let outcome = match words.as_slice() {
        [] => serve(),
        ["healthcheck"] => Ok(timemanager_probe::run_healthcheck(
            config::probe_addr_from_env(),
        )),
        ["migrate"] => migrate(),
        ["migrations"] => Ok(crate::migrations::print_list()),
        ["create-admin", "--email", email] => create_admin(email, None),
        ["create-admin", "--email", email, "--username", username] => {
            create_admin(email, Some(username))
        }
        ["--version" | "-V"] => {
            println!("timemanager-backend {VERSION} ({REVISION})");
            Ok(ExitCode::SUCCESS)
        }
        ["--help" | "-h"] => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => or_usage(Err(format!(
            "unexpected arguments {words:?}; {}",
            USAGE.lines().next().unwrap_or_default()
        ))),
    };
    outcome.unwrap_or_else(|usage| usage)
}

fn serve() -> Result<ExitCode, ExitCode> {
    let config = or_usage(Config::from_env())?;
    Ok(block_on(
        tokio::runtime::Builder::new_multi_thread(),
        crate::run(config),
    ))
}

fn migrate() -> Result<ExitCode, ExitCode> {
    let config = or_usage(MigrateConfig::from_env())?;
    // One connection, one task: no need for worker threads.
    Ok(block_on(
        tokio::runtime::Builder::new_current_thread(),
        crate::migrations::migrate_command(config),
    ))
}

fn create_admin(email: &str, username: Option<&str>) -> Result<ExitCode, ExitCode> {
    let config = or_usage(MigrateConfig::from_env())?;
    let password = or_usage(crate::admin::read_password(std::io::stdin().lock()))?;
    Ok(block_on(
        tokio::runtime::Builder::new_current_thread(),
        crate::admin::create_admin_command(
            config,
            email.to_owned(),
            username.map(str::to_owned),
            password,
        ),
    ))
}

/// A configuration or input error is the user's to fix: said on stderr, exit code 2.
fn or_usage<T, E: std::fmt::Display>(result: Result<T, E>) -> Result<T, ExitCode> {
    result.map_err(|err| {
        eprintln!("error: {err}");
        ExitCode::from(EXIT_USAGE)
    })
}

/// Runs `task` to completion on a runtime from `builder`.
fn block_on(
    mut builder: tokio::runtime::Builder,
    task: impl std::future::Future<Output = ExitCode>,
) -> ExitCode {
    match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(task),
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            ExitCode::FAILURE
        }
    }
}
