//! Sign-in attempt limiter: failed attempts counted per account and per client address
//! in fixed windows, in maps of bounded size.
//!
//! Only failures count, and a success clears its account's count, so a user who mistypes
//! once is not punished later. The check comes before the password hash is computed, so
//! a limited client costs no Argon2 work either. Traefik's per-address rate limit stays
//! the outer layer; this one also sees attacks spread over many addresses on one account.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How many failures a key may have in one window, and how long the window lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub max_failures: u32,
    pub window: Duration,
}

/// Per account: five wrong passwords, then a quarter of an hour's wait (OWASP's
/// Authentication Cheat Sheet suggests a lockout of this order).
pub const PER_ACCOUNT: Policy = Policy {
    max_failures: 5,
    window: Duration::from_secs(15 * 60),
};
/// Per client address: more, as several people may share one address (an office NAT).
pub const PER_ADDRESS: Policy = Policy {
    max_failures: 20,
    window: Duration::from_secs(15 * 60),
};
/// Keys remembered per map. At 10,000 entries of under 300 bytes each, a few MB at most.
pub const CAPACITY: usize = 10_000;
/// Longest account key kept: emails are at most 254 characters.
const KEY_MAX: usize = 254;

#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Failure counts for one kind of key.
struct Counts {
    policy: Policy,
    capacity: usize,
    windows: HashMap<String, Window>,
}

impl Counts {
    fn new(policy: Policy, capacity: usize) -> Self {
        Self {
            policy,
            capacity,
            windows: HashMap::new(),
        }
    }

    /// How long `key` must wait, if it is over the limit.
    fn retry_after(&self, key: &str, now: Instant) -> Option<Duration> {
        let window = self.windows.get(key)?;
        let ends = window.started + self.policy.window;
        (window.failures >= self.policy.max_failures && ends > now).then(|| ends - now)
    }

    fn fail(&mut self, key: &str, now: Instant) {
        if let Some(window) = self.windows.get_mut(key) {
            if window.started + self.policy.window <= now {
                *window = Window {
                    started: now,
                    failures: 0,
                };
            }
            window.failures = window.failures.saturating_add(1);
            return;
        }
        if self.windows.len() >= self.capacity {
            let window = self.policy.window;
            self.windows.retain(|_, w| w.started + window > now);
        }
        if self.windows.len() >= self.capacity {
            // Still full of live windows: forget the oldest, whose wait ends soonest.
            if let Some(oldest) = self
                .windows
                .iter()
                .min_by_key(|(_, w)| w.started)
                .map(|(k, _)| k.clone())
            {
                self.windows.remove(&oldest);
            }
        }
        self.windows.insert(
            key.to_owned(),
            Window {
                started: now,
                failures: 1,
            },
        );
    }
}

/// The limiter shared by every sign-in request.
pub struct Limiter {
    inner: Mutex<(Counts, Counts)>,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new(PER_ACCOUNT, PER_ADDRESS, CAPACITY)
    }
}

impl Limiter {
    pub fn new(per_account: Policy, per_address: Policy, capacity: usize) -> Self {
        Self {
            inner: Mutex::new((
                Counts::new(per_account, capacity),
                Counts::new(per_address, capacity),
            )),
        }
    }

    /// `Err(wait)` if the account or the address is over its limit.
    pub fn check(&self, account: &str, address: &str, now: Instant) -> Result<(), Duration> {
        let guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (accounts, addresses) = &*guard;
        let wait = [
            accounts.retry_after(&account_key(account), now),
            addresses.retry_after(address, now),
        ]
        .into_iter()
        .flatten()
        .max();
        wait.map_or(Ok(()), Err)
    }

    pub fn failure(&self, account: &str, address: &str, now: Instant) {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (accounts, addresses) = &mut *guard;
        accounts.fail(&account_key(account), now);
        addresses.fail(address, now);
    }

    /// A correct password clears its account's failures (not its address's: one
    /// attacker's own account must not reset the count of the address it attacks from).
    pub fn success(&self, account: &str) {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        guard.0.windows.remove(&account_key(account));
    }

    /// Keys held, per account and per address (for tests of the bound).
    pub fn len(&self) -> (usize, usize) {
        let guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (guard.0.windows.len(), guard.1.windows.len())
    }
}

fn account_key(account: &str) -> String {
    account
        .trim()
        .to_lowercase()
        .chars()
        .take(KEY_MAX)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        max_failures: 3,
        window: Duration::from_secs(60),
    };

    #[test]
    fn limits_per_account_and_per_address_until_the_window_ends() {
        let limiter = Limiter::new(POLICY, POLICY, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check("Ann@x.co", "10.0.0.1", t0).is_ok());
            limiter.failure("Ann@x.co", "10.0.0.1", t0);
        }
        let wait = limiter.check("ann@x.co ", "10.0.0.9", t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(60));
        assert!(
            limiter.check("bob@x.co", "10.0.0.1", t0).is_err(),
            "address"
        );
        assert!(limiter.check("bob@x.co", "10.0.0.2", t0).is_ok());
        let later = t0 + Duration::from_secs(61);
        assert!(limiter.check("ann@x.co", "10.0.0.1", later).is_ok());
        limiter.failure("ann@x.co", "10.0.0.1", later);
        assert!(
            limiter.check("ann@x.co", "10.0.0.1", later).is_ok(),
            "new window"
        );
    }

    #[test]
    fn success_clears_the_account_only() {
        let limiter = Limiter::new(POLICY, POLICY, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.failure("ann@x.co", "10.0.0.1", t0);
        }
        limiter.success("ann@x.co");
        assert!(limiter.check("ann@x.co", "10.0.0.2", t0).is_ok());
        assert!(limiter.check("ann@x.co", "10.0.0.1", t0).is_err());
    }

    #[test]
    fn memory_is_bounded() {
        let limiter = Limiter::new(POLICY, POLICY, 50);
        let t0 = Instant::now();
        for i in 0..1_000u32 {
            limiter.failure(
                &format!("user{i}@x.co"),
                &format!("10.0.{}.{}", i / 256, i % 256),
                t0,
            );
        }
        assert_eq!(limiter.len(), (50, 50));
    }
}
