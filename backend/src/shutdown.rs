//! Stopping without failing a request: drain, then graceful shutdown, bounded in time.
//!
//! On the first SIGTERM (container stop) or SIGINT (Ctrl-C) the server keeps serving
//! every request and accepting connections, but `/health` answers 503 for the drain
//! period, so a load balancer probing it (Traefik's health check) takes this instance
//! out of rotation while it still answers. Only then does it stop accepting, let
//! in-flight requests finish for at most [`SHUTDOWN_GRACE`] and close idle keep-alive
//! connections (axum's graceful shutdown does both). A second signal ends the drain at
//! once, so Ctrl-C twice stops a local server without waiting.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

/// How long in-flight requests may take to finish once the drain is over. The
/// container's stop timeout must cover the drain period plus this plus the clean-up
/// after it (closing the pool, flushing traces).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// Whether the server is draining: shared by the `/health` handler and [`serve_and_drain`].
#[derive(Clone, Debug, Default)]
pub struct Drain(Arc<AtomicBool>);

impl Drain {
    /// Makes `/health` answer 503 from now on.
    pub fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// SIGTERM (container stop) or SIGINT (Ctrl-C).
pub struct ShutdownSignal {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    /// Installs the handlers; signals that arrive from now on are not lost.
    pub fn register() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
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
/// accepting and waits for in-flight requests (at most [`SHUTDOWN_GRACE`]).
pub async fn serve_and_drain(
    listener: TcpListener,
    router: Router,
    drain: Drain,
    drain_period: Duration,
    mut signal: ShutdownSignal,
) -> ExitCode {
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
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
        result = server => match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(error = %err, "server failed");
                ExitCode::FAILURE
            }
        },
        () = grace_expired => {
            tracing::warn!(
                grace_s = SHUTDOWN_GRACE.as_secs(),
                "in-flight requests did not finish in time; closing them"
            );
            ExitCode::SUCCESS
        }
    }
}
