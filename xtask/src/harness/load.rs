//! A bounded load generator for the deploy lab: worker threads send GET requests through
//! Traefik (the lab's edge, `https://localhost`) for as long as a closure runs, and count
//! every answer that is not 2xx/3xx and every connection error.
//!
//! Ours rather than Debian's `hey`: it runs in-process around the very call that deploys, so
//! the counted window is exactly the deploy; it reads each body, so it can tell an API answer
//! from Traefik's fall-through to the SPA (a 200 that means the backend has no router) and
//! `/api/health`'s own `503 {"status":"draining"}` from a failure; and it needs no extra
//! package. It is bounded in requests and time, paces itself under the lab's shared rate
//! limit (100 requests/s per client address on `/api`), and stops with the closure, also when
//! the closure fails or panics.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::harness::lab;

/// What to send, and the bounds.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    pub(crate) workers: usize,
    /// Between one worker's requests: 4 workers, 50 ms, at most 80 requests/s in all.
    pub(crate) pause: Duration,
    pub(crate) max_requests: usize,
    pub(crate) max_time: Duration,
    /// Where the paths are: the lab's edge, `https://localhost`.
    pub(crate) base: String,
    /// Paths under `base`, sent in turn by each worker.
    pub(crate) paths: Vec<&'static str>,
    /// The `Cookie` header of a signed-in session: the API answers 401 without one.
    pub(crate) cookie: Option<String>,
}

impl Default for Load {
    fn default() -> Load {
        Load {
            workers: 4,
            pause: Duration::from_millis(50),
            max_requests: 40_000,
            max_time: Duration::from_secs(600),
            base: format!("https://{}", lab::DOMAIN),
            // The SPA, an API read that needs the database, and the backend's health.
            paths: vec!["/", "/api/users", "/api/health"],
            cookie: None,
        }
    }
}

/// What the load saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoadReport {
    pub(crate) sent: usize,
    pub(crate) failed: usize,
    /// `/api/health` answered 503 `"status":"draining"`: a stopping backend saying so, by
    /// design, until Traefik's health check takes it out of rotation. Not a failed request.
    pub(crate) draining: usize,
    /// The first failures, for the error message.
    pub(crate) failures: Vec<String>,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
    /// How long the load ran.
    pub(crate) elapsed: Duration,
    /// A bound (requests or time) stopped the load before the closure returned.
    pub(crate) cut_short: bool,
}

impl LoadReport {
    /// `N requests, F failed, p50 X ms, p99 Y ms` and the draining answers when there were any.
    pub(crate) fn summary(&self) -> String {
        let mut out = format!(
            "{} requests in {:.0} s, {} failed, p50 {} ms, p99 {} ms, max {} ms",
            self.sent,
            self.elapsed.as_secs_f64(),
            self.failed,
            self.p50.as_millis(),
            self.p99.as_millis(),
            self.max.as_millis()
        );
        if self.draining > 0 {
            out.push_str(&format!(
                " ({} /api/health answers `503 draining` from the stopping backend)",
                self.draining
            ));
        }
        out
    }
}

/// Runs `during` while the workers send requests; returns its result and what they saw.
pub(crate) fn during<T>(
    load: &Load,
    during: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, LoadReport)> {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = AtomicUsize::new(0);
    let cut_short = AtomicBool::new(false);
    let results = Mutex::new(Vec::<Outcome>::new());
    let start = Instant::now();
    let result = std::thread::scope(|scope| {
        for worker in 0..load.workers {
            let (stop, sent, cut_short, results) = (&stop, &sent, &cut_short, &results);
            scope.spawn(move || {
                let outcomes = work(load, worker, stop, sent, cut_short, start);
                results
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend(outcomes);
            });
        }
        // Stops the workers when `during` returns, fails or panics (the scope then joins them).
        let _stop = StopOnDrop(&stop);
        during()
    });
    let elapsed = start.elapsed();
    let value = result?;
    let outcomes = results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok((
        value,
        report(outcomes, elapsed, cut_short.load(Ordering::Relaxed)),
    ))
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One request's result.
struct Outcome {
    latency: Duration,
    verdict: Verdict,
}

#[derive(Debug, PartialEq)]
enum Verdict {
    Ok,
    Draining,
    Failed(String),
}

/// One worker: its own connection (keep-alive, as a browser), paths in turn, until stopped.
fn work(
    load: &Load,
    worker: usize,
    stop: &AtomicBool,
    sent: &AtomicUsize,
    cut_short: &AtomicBool,
    start: Instant,
) -> Vec<Outcome> {
    let agent = agent();
    let mut outcomes = Vec::new();
    let mut turn = worker;
    while !stop.load(Ordering::Relaxed) {
        if start.elapsed() > load.max_time
            || sent.fetch_add(1, Ordering::Relaxed) >= load.max_requests
        {
            cut_short.store(true, Ordering::Relaxed);
            break;
        }
        let path = load.paths[turn % load.paths.len()];
        turn += 1;
        let begun = Instant::now();
        let verdict = send(&agent, &load.base, path, load.cookie.as_deref());
        outcomes.push(Outcome {
            latency: begun.elapsed(),
            verdict,
        });
        std::thread::sleep(load.pause);
    }
    outcomes
}

/// As `lab::edge`, but one agent per worker so its connection is reused.
fn agent() -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .disable_verification(true)
        .build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .max_redirects(0)
        .tls_config(tls)
        .build()
        .into()
}

fn send(agent: &ureq::Agent, base: &str, path: &str, cookie: Option<&str>) -> Verdict {
    let url = format!("{base}{path}");
    let mut request = agent.get(&url);
    if let Some(cookie) = cookie {
        request = request.header("Cookie", cookie);
    }
    let mut res = match request.call() {
        Ok(res) => res,
        Err(err) => return Verdict::Failed(format!("GET {path}: {err}")),
    };
    let status = res.status().as_u16();
    let json = res
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    let body = match res
        .body_mut()
        .with_config()
        .limit(1024 * 1024)
        .read_to_vec()
    {
        Ok(body) => body,
        Err(err) => return Verdict::Failed(format!("GET {path}: {status}, body: {err}")),
    };
    judge(path, status, json, &body)
}

/// 2xx/3xx is served; an `/api` path must be answered by the backend (JSON), not by the SPA
/// Traefik falls through to when the backend has no router; `/api/health`'s 503 draining is
/// counted apart.
fn judge(path: &str, status: u16, json: bool, body: &[u8]) -> Verdict {
    let draining = || {
        serde_json::from_slice::<serde_json::Value>(body)
            .is_ok_and(|body| body["status"] == "draining")
    };
    match status {
        200..=399 if path.starts_with("/api/") && !json => Verdict::Failed(format!(
            "GET {path}: {status} from the SPA, not the backend (no backend router)"
        )),
        200..=399 => Verdict::Ok,
        503 if path == "/api/health" && draining() => Verdict::Draining,
        _ => Verdict::Failed(format!(
            "GET {path}: {status} {}",
            lab::excerpt(&String::from_utf8_lossy(body))
        )),
    }
}

fn report(outcomes: Vec<Outcome>, elapsed: Duration, cut_short: bool) -> LoadReport {
    let mut latencies: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    latencies.sort();
    let mut report = LoadReport {
        sent: outcomes.len(),
        p50: percentile(&latencies, 50),
        p99: percentile(&latencies, 99),
        max: latencies.last().copied().unwrap_or_default(),
        elapsed,
        cut_short,
        ..LoadReport::default()
    };
    for outcome in outcomes {
        match outcome.verdict {
            Verdict::Ok => {}
            Verdict::Draining => report.draining += 1,
            Verdict::Failed(why) => {
                report.failed += 1;
                if report.failures.len() < 10 {
                    report.failures.push(why);
                }
            }
        }
    }
    report
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader, Write},
        net::TcpListener,
    };

    use super::*;

    #[test]
    fn answers_are_judged_by_status_and_by_who_answered() {
        let health = br#"{"status":"draining","revision":"abc"}"#;
        assert_eq!(judge("/", 200, false, b"<html>"), Verdict::Ok);
        assert_eq!(judge("/", 308, false, b""), Verdict::Ok);
        assert_eq!(judge("/api/users", 200, true, b"[]"), Verdict::Ok);
        assert_eq!(judge("/api/health", 503, true, health), Verdict::Draining);
        for (path, status, json, body) in [
            ("/api/users", 200, false, &b"<!doctype html>"[..]),
            ("/api/users", 503, true, health),
            ("/api/health", 503, false, b"no available server"),
            ("/", 502, false, b"Bad Gateway"),
            ("/api/users", 429, false, b"Too Many Requests"),
        ] {
            assert!(
                matches!(judge(path, status, json, body), Verdict::Failed(_)),
                "{path} {status}"
            );
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let ms: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&ms, 50), Duration::from_millis(50));
        assert_eq!(percentile(&ms, 99), Duration::from_millis(99));
        assert_eq!(percentile(&ms[..1], 99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }

    /// The workers stop when the closure fails, and its error comes back; a bound stops them
    /// too and says so. (Nothing listens on port 1: every request fails.)
    #[test]
    fn workers_stop_with_the_closure_and_at_their_bounds() {
        let load = Load {
            workers: 2,
            pause: Duration::from_millis(5),
            max_requests: 1_000_000,
            max_time: Duration::from_secs(60),
            base: "http://127.0.0.1:1".to_owned(),
            paths: vec!["/"],
            cookie: None,
        };
        let err = during(&load, || -> anyhow::Result<()> {
            std::thread::sleep(Duration::from_millis(50));
            anyhow::bail!("the deploy failed")
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "the deploy failed");

        let bounded = Load {
            max_requests: 3,
            ..load
        };
        let ((), report) = during(&bounded, || {
            std::thread::sleep(Duration::from_millis(300));
            Ok(())
        })
        .unwrap();
        assert!(report.cut_short);
        assert_eq!(report.sent, 3);
        assert_eq!(report.failed, report.sent);
    }

    /// A real HTTP exchange: the report counts what a loopback server answered. (Plain HTTP
    /// here; the lab's edge is HTTPS, which `send` reaches the same way.)
    #[test]
    fn counts_what_a_server_answered() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for (n, stream) in listener.incoming().take(4).enumerate() {
                let stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                }
                let (status, body) = if n == 2 {
                    ("502 Bad Gateway", "x")
                } else {
                    ("200 OK", "ok")
                };
                write!(
                    &stream,
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
        });
        let agent = agent();
        let outcomes: Vec<Outcome> = (0..4)
            .map(|_| {
                let begun = Instant::now();
                let url = format!("http://127.0.0.1:{port}/");
                let verdict = match agent.get(&url).call() {
                    Ok(mut res) => {
                        let status = res.status().as_u16();
                        let body = res.body_mut().read_to_vec().unwrap();
                        judge("/", status, false, &body)
                    }
                    Err(err) => Verdict::Failed(err.to_string()),
                };
                Outcome {
                    latency: begun.elapsed(),
                    verdict,
                }
            })
            .collect();
        server.join().unwrap();
        let report = report(outcomes, Duration::from_secs(1), false);
        assert_eq!(
            (report.sent, report.failed),
            (4, 1),
            "{:?}",
            report.failures
        );
        assert!(report.failures[0].contains("502"), "{:?}", report.failures);
        assert!(
            report
                .summary()
                .starts_with("4 requests in 1 s, 1 failed, p50 ")
        );
    }
}
