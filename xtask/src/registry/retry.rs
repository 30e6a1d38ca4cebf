//! Retrying transient failures: exponential backoff with jitter, bounded in attempts and
//! in total time, honouring `Retry-After`.

use std::{
    hash::{BuildHasher, Hasher},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::registry::error::Error;

/// How hard to try. The whole operation ends within `max_elapsed` plus one request's
/// timeout: no sleep starts that would end past `max_elapsed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Attempts in total, the first included.
    pub(crate) max_attempts: u32,
    /// Backoff before the first retry; doubles each time.
    pub(crate) initial_delay: Duration,
    /// Cap on one backoff, and on a registry's `Retry-After`.
    pub(crate) max_delay: Duration,
    /// No retry starts after this much time since the first attempt.
    pub(crate) max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based): the doubled base capped at
    /// `max_delay`, with "equal jitter" (between half and all of it) so that parallel
    /// uploads failing together do not come back together. `jitter` is in `[0, 1)`.
    pub(crate) fn backoff(&self, retry: u32, jitter: f64) -> Duration {
        let doubling = 2u32.saturating_pow(retry.saturating_sub(1));
        let base = self
            .initial_delay
            .saturating_mul(doubling)
            .min(self.max_delay);
        base / 2 + base.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
    }

    /// Runs `op` until it succeeds, fails permanently, or the bounds are reached. Each
    /// retry is counted in `retries`. `op` gets the attempt number (1-based) and must start
    /// from scratch each time (a new upload session, a reopened file).
    pub(crate) fn run<T>(
        &self,
        retries: &AtomicU64,
        mut op: impl FnMut(u32) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let start = Instant::now();
        let mut attempt = 1;
        loop {
            let err = match op(attempt) {
                Ok(value) => return Ok(value),
                Err(err) if !err.is_transient() => return Err(err),
                Err(err) => err,
            };
            let wait = match err.failure().retry_after {
                Some(wait) => wait.min(self.max_delay),
                None => self.backoff(attempt, jitter()),
            };
            let out_of_time = start.elapsed() + wait > self.max_elapsed;
            if attempt >= self.max_attempts || out_of_time {
                let mut err = err;
                err.failure_mut().gave_up = Some((attempt, start.elapsed()));
                return Err(err);
            }
            std::thread::sleep(wait);
            retries.fetch_add(1, Ordering::Relaxed);
            attempt += 1;
        }
    }
}

/// A number in `[0, 1)` from the standard library's randomly keyed hasher.
pub(crate) fn jitter() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// `Retry-After`: whole seconds, or an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = parse_http_date(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// IMF-fixdate only, the form RFC 9110 requires senders to use; seconds since 1970.
fn parse_http_date(value: &str) -> Option<u64> {
    let mut parts = value.split_whitespace();
    let _weekday = parts.next()?;
    let day: i64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut clock = parts.next()?.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (clock.next()??, clock.next()??, clock.next()??);
    if parts.next()? != "GMT" {
        return None;
    }
    // Days from civil, after Howard Hinnant's public-domain algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + m * 60 + s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::error::Failure;

    #[test]
    fn backoff_doubles_within_jitter_and_stays_under_the_cap() {
        let policy = RetryPolicy::default();
        for retry in 1..=12 {
            let base = Duration::from_millis(500)
                .saturating_mul(2u32.pow(retry - 1))
                .min(policy.max_delay);
            for jitter in [0.0, 0.3, 0.999] {
                let wait = policy.backoff(retry, jitter);
                assert!(wait >= base / 2 && wait <= base, "retry {retry}: {wait:?}");
                assert!(wait <= policy.max_delay);
            }
        }
        assert_eq!(policy.backoff(1, 0.0), Duration::from_millis(250));
        assert_eq!(policy.backoff(40, 0.0), Duration::from_secs(5));
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }

    fn transient(retry_after: Option<Duration>) -> Error {
        Error::Transient(Box::new(Failure {
            action: "PUT blob".to_owned(),
            status: Some(503),
            retry_after,
            ..Failure::default()
        }))
    }

    #[test]
    fn endless_failures_stop_at_the_attempt_bound() {
        let policy = RetryPolicy {
            max_attempts: 4,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            max_elapsed: Duration::from_secs(10),
        };
        let retries = AtomicU64::new(0);
        let mut calls = 0;
        let err = policy
            .run::<()>(&retries, |_| {
                calls += 1;
                Err(transient(None))
            })
            .unwrap_err();
        assert_eq!(calls, 4);
        assert_eq!(retries.load(Ordering::Relaxed), 3);
        assert_eq!(err.failure().gave_up.map(|g| g.0), Some(4));
        assert!(
            err.to_string().contains("gave up after 4 attempts"),
            "{err}"
        );
    }

    #[test]
    fn endless_failures_stop_at_the_time_bound_and_retry_after_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 100,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(30),
            max_elapsed: Duration::from_millis(100),
        };
        let retries = AtomicU64::new(0);
        let start = Instant::now();
        // A registry asking for an hour is waited on for `max_delay` only: the run ends
        // after minutes at the very worst on a loaded machine, never after an hour.
        let err = policy
            .run::<()>(&retries, |_| {
                Err(transient(Some(Duration::from_secs(3600))))
            })
            .unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{:?}",
            start.elapsed()
        );
        // Each wait is at least `max_delay` (30 ms) and retrying stops once 100 ms have
        // passed, so at most four retries, whatever the machine's speed.
        assert!((1..=4).contains(&retries.load(Ordering::Relaxed)));
        assert!(err.failure().gave_up.is_some());
    }

    #[test]
    fn permanent_errors_are_not_retried_and_success_stops() {
        let policy = RetryPolicy::default();
        let retries = AtomicU64::new(0);
        let err = policy
            .run::<()>(&retries, |_| {
                Err(Error::rejected("PUT manifest".to_owned(), "bad".to_owned()))
            })
            .unwrap_err();
        assert!(matches!(err, Error::Rejected(_)));
        let fast = RetryPolicy {
            initial_delay: Duration::from_millis(1),
            ..policy
        };
        let value = fast
            .run(&retries, |attempt| {
                if attempt < 3 {
                    Err(transient(None))
                } else {
                    Ok(attempt)
                }
            })
            .unwrap();
        assert_eq!(value, 3);
        assert_eq!(retries.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn retry_after_seconds_and_http_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("tomorrow", now), None);
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT"),
            Some(951_782_400)
        );
    }
}
