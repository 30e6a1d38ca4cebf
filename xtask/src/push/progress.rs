//! Push progress on stderr: a redrawn line per image while blobs upload.

use std::{
    io::{IsTerminal, Write},
    sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

use crate::{
    push::{Outcome, PendingBlob},
    steps::human_bytes,
};

/// Per-image progress on stderr: a line redrawn in place on a terminal, one line per
/// uploaded or mounted blob otherwise (CI logs keep every line).
pub(crate) struct Progress {
    enabled: bool,
    pub(crate) tty: bool,
    name: String,
    n_blobs: usize,
    total_bytes: u64,
    n_done: AtomicUsize,
    pub(crate) sent: AtomicU64,
    pub(crate) done: AtomicBool,
}

impl Progress {
    pub(crate) fn new(name: &str, blobs: &[PendingBlob<'_>], enabled: bool) -> Progress {
        Progress {
            enabled,
            tty: enabled && std::io::stderr().is_terminal(),
            name: name.to_owned(),
            n_blobs: blobs.len(),
            total_bytes: blobs.iter().map(|b| b.size).sum(),
            n_done: AtomicUsize::new(0),
            sent: AtomicU64::new(0),
            done: AtomicBool::new(false),
        }
    }

    pub(crate) fn finished(&self, blob: &PendingBlob<'_>, outcome: &Outcome) {
        self.n_done.fetch_add(1, Ordering::Relaxed);
        if !self.enabled || self.tty {
            return;
        }
        let verb = match outcome {
            Outcome::Skipped => return,
            Outcome::Mounted => "mounted",
            Outcome::Uploaded => "uploaded",
        };
        eprintln!(
            "{}: {verb} {} {} ({})",
            self.name,
            blob.what,
            blob.digest.short(),
            human_bytes(blob.size)
        );
    }

    pub(crate) fn tick_until_done(&self) {
        let mut stderr = std::io::stderr();
        while !self.done.load(Ordering::Relaxed) {
            let _ = write!(
                stderr,
                "\r\x1b[2K{}: {}/{} blobs, {} of at most {} sent",
                self.name,
                self.n_done.load(Ordering::Relaxed),
                self.n_blobs,
                human_bytes(self.sent.load(Ordering::Relaxed)),
                human_bytes(self.total_bytes)
            );
            let _ = stderr.flush();
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = write!(stderr, "\r\x1b[2K");
    }
}
