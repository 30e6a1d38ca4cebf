//! Stopping without failing a request: drain, then graceful shutdown, bounded in time.
//!
//! On the first SIGTERM (container stop) or SIGINT (Ctrl-C) the server keeps serving
//! every request and accepting connections, but `/health` answers 503 for the drain
//! period, so a load balancer probing it (Traefik's health check) takes this instance
//! out of rotation while it still answers. Only then does it stop accepting, let
//! in-flight requests finish for at most [`SHUTDOWN_GRACE`] and close idle keep-alive
//! connections (axum's graceful shutdown does both). A second signal ends the drain at
//! once, so Ctrl-C twice stops a local server without waiting.
//!
//! Both server binaries (`timemanager-backend`, `timemanager-frontend-server`) use this
//! crate: each answers `/health` from its own [`Drain`] and reads its drain period with
//! [`parse_drain_seconds`] from `SHUTDOWN_DRAIN_SECONDS`.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// How long in-flight requests may take to finish once the drain is over. The
/// container's stop timeout must cover the drain period plus this plus what the binary
/// does after it (the backend closes its database pool and flushes traces).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// Drain period when `SHUTDOWN_DRAIN_SECONDS` is unset: long enough for a load balancer
/// probing `/health` every 10 s to see the first 503, plus 2 s for the probe's round trip
/// and the route update. Production sets its own value in `docker-compose.prod.yml`, above
/// Traefik's `loadbalancer.healthcheck` interval + timeout there (a test of the deploy's
/// compose contract checks it).
pub const DEFAULT_SHUTDOWN_DRAIN: Duration = Duration::from_secs(12);

/// Longest accepted drain: the container's stop timeout has to cover it, and a larger
/// value is more likely milliseconds typed as seconds than a real wish.
const MAX_SHUTDOWN_DRAIN_SECONDS: f64 = 300.0;

/// Parses a drain period (`SHUTDOWN_DRAIN_SECONDS`) such as `12` or `0.5`, from 0 to 300
/// seconds. Only digits and one dot are accepted: `f64` parsing alone would also take
/// `inf`, `1e3` or `+5`. Unset and empty values are the caller's to map to
/// [`DEFAULT_SHUTDOWN_DRAIN`], as is trimming.
///
/// # Errors
/// `raw` is not such a number.
pub fn parse_drain_seconds(raw: &str) -> Result<Duration, InvalidDrainSeconds> {
    let plain = !raw.is_empty()
        && raw.chars().all(|c| c.is_ascii_digit() || c == '.')
        && raw.chars().filter(|&c| c == '.').count() <= 1;
    match raw.parse::<f64>() {
        Ok(seconds) if plain && (0.0..=MAX_SHUTDOWN_DRAIN_SECONDS).contains(&seconds) => {
            Ok(Duration::from_secs_f64(seconds))
        }
        _ => Err(InvalidDrainSeconds),
    }
}

/// A drain period that [`parse_drain_seconds`] refused. Each binary words its own
/// configuration error around [`InvalidDrainSeconds::EXPECTED`] and the value it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidDrainSeconds;

impl InvalidDrainSeconds {
    /// What a valid drain period looks like.
    pub const EXPECTED: &str = "a number of seconds from 0 to 300 such as 12 or 0.5";
}

impl fmt::Display for InvalidDrainSeconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "must be {}", Self::EXPECTED)
    }
}

impl std::error::Error for InvalidDrainSeconds {}

/// Whether the server is draining: shared by the `/health` handler and [`serve_and_drain`].
#[derive(Clone, Debug, Default)]
pub struct Drain(Arc<AtomicBool>);

impl Drain {
    /// Makes `/health` answer 503 from now on.
    pub fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// SIGTERM (container stop) or SIGINT (Ctrl-C).
pub struct ShutdownSignal {
    terminate: Signal,
    interrupt: Signal,
}

impl ShutdownSignal {
    /// Installs the handlers; signals that arrive from now on are not lost. As PID 1 in
    /// a container, a signal without a handler would be ignored.
    ///
    /// # Errors
    /// The handlers cannot be installed.
    pub fn register() -> io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next signal and logs its name.
    pub async fn recv(&mut self) {
        let name = tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "signal received");
    }
}

/// Serves `router` on `listener` until a signal, then drains for `drain_period`, stops
/// accepting and waits for in-flight requests (at most [`SHUTDOWN_GRACE`]). Requests
/// still running when the grace expires are dropped, and that is still `Ok`.
///
/// # Errors
/// The accept loop fails.
pub async fn serve_and_drain(
    listener: TcpListener,
    router: Router,
    drain: Drain,
    drain_period: Duration,
    mut signal: ShutdownSignal,
) -> io::Result<()> {
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    // With the peer address, which the backend's sign-in limiter counts by.
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(listener, service).with_graceful_shutdown(async move {
        signal.recv().await;
        drain.start();
        tracing::info!(
            drain_s = drain_period.as_secs_f64(),
            "shutdown requested: /health answers 503 while every other request is still served"
        );
        tokio::select! {
            () = tokio::time::sleep(drain_period) => {}
            () = signal.recv() => {
                tracing::info!("second signal: ending the drain early");
            }
        }
        tracing::info!(
            "drain over: refusing new connections, finishing in-flight requests, closing idle connections"
        );
        let _ = stopping_tx.send(());
    });
    let grace_expired = async {
        // Only starts counting once the drain is over; pending forever otherwise.
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };

    tokio::select! {
        result = server => result,
        () = grace_expired => {
            tracing::warn!(
                grace_s = SHUTDOWN_GRACE.as_secs(),
                "in-flight requests did not finish in time; closing them"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    // The signal handling and the drain itself are tested against each binary
    // (`tests/it/drain.rs` in both).
    use super::*;

    #[test]
    fn drain_seconds_accepts_plain_numbers_up_to_300() {
        for (raw, expected) in [
            ("0", Duration::ZERO),
            ("0.3", Duration::from_millis(300)),
            ("12", Duration::from_secs(12)),
            ("0.5", Duration::from_millis(500)),
            ("300", Duration::from_secs(300)),
            ("300.0", Duration::from_secs(300)),
        ] {
            assert_eq!(parse_drain_seconds(raw), Ok(expected), "{raw:?}");
        }
    }

    #[test]
    fn drain_seconds_refuses_everything_else() {
        for bad in [
            "", "abc", "-1", "300.5", "301", "12s", "1e3", "inf", "NaN", "+5", "1.2.3", ".", " 1",
            "1 ",
        ] {
            assert_eq!(
                parse_drain_seconds(bad),
                Err(InvalidDrainSeconds),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn invalid_drain_seconds_says_what_is_expected() {
        assert_eq!(
            InvalidDrainSeconds.to_string(),
            "must be a number of seconds from 0 to 300 such as 12 or 0.5"
        );
    }

    #[test]
    fn drain_starts_once_for_every_clone() {
        let drain = Drain::default();
        let seen_by_health = drain.clone();
        assert!(!seen_by_health.is_draining());
        drain.start();
        assert!(seen_by_health.is_draining());
        assert!(drain.is_draining());
        drain.start();
        assert!(seen_by_health.is_draining());
    }
}
