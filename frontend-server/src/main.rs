//! `timemanager-frontend-server`: serves the built SPA (default) or, with `healthcheck`, probes a running instance.

use std::process::ExitCode;

use timemanager_frontend_server::{Config, ShutdownSignal, serve};

const USAGE: &str = "usage: timemanager-frontend-server [healthcheck]
  (no argument)  serve $STATIC_DIR (default /app/public) on $APP_HOST:$APP_PORT (default 0.0.0.0:3000);
                 on SIGTERM/SIGINT /health answers 503 for $SHUTDOWN_DRAIN_SECONDS (default 12)
                 while other requests are served, then in-flight requests finish and it exits
  healthcheck    exit 0 if http://127.0.0.1:$APP_PORT/health answers 200 within 3 s, else 1";

/// Exit code for unusable configuration or command line.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let command = args.next();
    if args.next().is_some() {
        eprintln!("{USAGE}");
        return ExitCode::from(EXIT_USAGE);
    }
    let Some(command) = command else {
        return run_server();
    };
    match command.to_str() {
        Some("healthcheck") => {
            timemanager_probe::run_healthcheck(Config::from_env().map(|config| config.probe_addr()))
        }
        Some("-h" | "--help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn run_server() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("timemanager-frontend-server: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(err) = init_logging(&config.log_filter) {
        eprintln!("timemanager-frontend-server: cannot initialise logging: {err}");
        return ExitCode::from(EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("timemanager-frontend-server: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // Register handlers before serving: as PID 1 in a container, a signal without a
        // handler is ignored, and SIGTERM during start-up must not be lost either.
        let signal = ShutdownSignal::register()?;
        serve(&config, signal).await
    });
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("timemanager-frontend-server: {err}");
            ExitCode::FAILURE
        }
    }
}

/// JSON lines on stdout, fields flattened (`{"timestamp":…,"level":…,"message":…,"method":…}`).
fn init_logging(filter: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = tracing_subscriber::EnvFilter::builder().parse(filter)?;
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init()
}
