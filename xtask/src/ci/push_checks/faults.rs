//! Push checks through the fault proxy in front of the no-auth registry: each retried fault
//! still ends with the right digest, and endless faults fail within the bound with no tag.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};

use crate::{
    ci::{
        push_checks::{Mode, PushLab, options, path_of},
        suite::Check,
    },
    harness::fault_proxy::{Fault, FaultKind},
    registry::RetryPolicy,
};

/// Faults from a proxy in front of the no-auth registry: each push completes with the
/// right digest and reports its retries; endless faults fail within the bound with no tag.
pub(super) fn checks<'a>() -> Vec<Check<PushLab<'a>>> {
    let blob_put = |kind, times| Fault {
        method: "PUT",
        path: "/blobs/uploads/",
        kind,
        times,
    };
    let slow_timeout = Duration::from_secs(2);
    let retried = [
        (
            "fault-retry-500",
            "500 on blob PUT",
            blob_put(FaultKind::Status(500), Some(2)),
            None,
        ),
        (
            "fault-retry-503",
            "503 on blob PUT",
            blob_put(FaultKind::Status(503), Some(2)),
            None,
        ),
        (
            "fault-retry-429",
            "429 with Retry-After on blob PUT",
            blob_put(
                FaultKind::TooManyRequests {
                    retry_after_secs: 1,
                },
                Some(1),
            ),
            None,
        ),
        (
            "fault-retry-reset",
            "connection reset mid-upload",
            blob_put(FaultKind::ResetMidBody, Some(1)),
            None,
        ),
        (
            "fault-retry-slow",
            "slow response past the timeout",
            blob_put(
                FaultKind::Slow(slow_timeout + Duration::from_secs(1)),
                Some(1),
            ),
            Some(slow_timeout),
        ),
    ];
    let mut checks = Vec::new();
    for (idx, (name, title, fault, timeout)) in retried.into_iter().enumerate() {
        let namespace = format!("faults/s{idx}");
        checks.push(Check::new(
            name,
            format!("fault: {title}"),
            move |lab: &PushLab<'a>| lab.retried_fault(&fault, timeout, &namespace),
        ));
    }
    for (name, title, path, namespace) in [
        (
            "fault-endless-blob-put",
            "endless 503 on blob PUT",
            "/blobs/uploads/",
            "faults/endless-blob",
        ),
        (
            "fault-endless-manifest-put",
            "endless 503 on manifest PUT",
            "/manifests/",
            "faults/endless-manifest",
        ),
    ] {
        checks.push(Check::new(
            name,
            format!("fault: {title}"),
            move |lab: &PushLab<'a>| lab.endless_fault(path, namespace),
        ));
    }
    checks
}

impl PushLab<'_> {
    /// A fault that clears after `fault.times` requests: the push completes with the right
    /// digest and reports at least as many retries.
    fn retried_fault(
        &self,
        fault: &Fault,
        timeout: Option<Duration>,
        namespace: &str,
    ) -> anyhow::Result<String> {
        let proxy = self.proxy()?;
        let registry = self.registry(Mode::NoAuth)?;
        let backend = self.backend()?;
        let times = fault.times.unwrap_or(0);
        proxy.set_schedule(vec![fault.clone()]);
        let injected_before = proxy.injected();
        let mut opts = options(&proxy.host(), None, namespace);
        if let Some(timeout) = timeout {
            opts.client.timeout = timeout;
        }
        let start = Instant::now();
        let pushed = self.push(&opts, std::slice::from_ref(backend))?;
        let image = &pushed[0];
        let injected = proxy.injected() - injected_before;
        ensure!(
            image.digest == backend.blobs.manifest.digest,
            "pushed {} through faults, built {}",
            image.digest,
            backend.blobs.manifest.digest
        );
        ensure!(
            injected == times,
            "{injected} faults injected, {times} scheduled"
        );
        ensure!(
            image.retries >= injected as u64,
            "{injected} faults but {} retries reported",
            image.retries
        );
        self.expect_tags(registry, path_of(&image.repository), &image.digest, true)?;
        Ok(format!(
            "{injected} injected, {} retries, same digest, {:.1} s",
            image.retries,
            start.elapsed().as_secs_f64()
        ))
    }

    /// 503 on every PUT matching `path`: the push fails within the retry bound, with a
    /// one-line error, and writes no tag.
    fn endless_fault(&self, path: &'static str, namespace: &str) -> anyhow::Result<String> {
        let endless = RetryPolicy {
            max_attempts: 4,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(5),
        };
        let proxy = self.proxy()?;
        let registry = self.registry(Mode::NoAuth)?;
        let backend = self.backend()?;
        proxy.set_schedule(vec![Fault {
            method: "PUT",
            path,
            kind: FaultKind::Status(503),
            times: None,
        }]);
        let mut opts = options(&proxy.host(), None, namespace);
        opts.client.retry = endless;
        let start = Instant::now();
        let err = match self.push(&opts, std::slice::from_ref(backend)) {
            Ok(_) => bail!("a push through endless faults succeeded"),
            Err(err) => err,
        };
        let elapsed = start.elapsed();
        let message = format!("{err:#}");
        let bound = endless.max_elapsed + opts.client.timeout;
        ensure!(
            elapsed < bound,
            "gave up after {elapsed:?}, bound {bound:?}"
        );
        ensure!(
            message.contains("503")
                && message.contains("gave up after")
                && message.contains("backend"),
            "unclear error: {message}"
        );
        ensure!(!message.contains('\n'), "error spans lines: {message}");
        self.expect_tags(
            registry,
            &format!("{namespace}/backend"),
            &backend.blobs.manifest.digest,
            false,
        )?;
        Ok(format!(
            "failed in {:.1} s, no tag: {message}",
            elapsed.as_secs_f64()
        ))
    }
}
