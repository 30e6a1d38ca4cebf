//! What the e2e watches while it deploys: `/health` downtime ([`Poller`]), secrets in any
//! process's argv ([`Scanner`]), and what is left behind once the lab is gone.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Polls `/health` every 50 ms in a bounded thread and measures the time it did not answer 200.
pub(crate) struct Poller {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Duration>,
}

impl Poller {
    pub(crate) fn start(url: String) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_millis(500)))
                .build()
                .into();
            let mut down_since: Option<Instant> = None;
            let mut longest = Duration::ZERO;
            // Bounded: a forgotten poller stops by itself.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let up = agent
                    .get(&url)
                    .call()
                    .is_ok_and(|res| res.status().as_u16() == 200);
                match (up, down_since) {
                    (false, None) => down_since = Some(Instant::now()),
                    (true, Some(since)) => {
                        longest = longest.max(since.elapsed());
                        down_since = None;
                    }
                    _ => {}
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Some(since) = down_since {
                longest = longest.max(since.elapsed());
            }
            longest
        });
        Poller { stop, handle }
    }

    /// The longest window during which `/health` did not answer 200.
    pub(crate) fn stop(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(Duration::MAX)
    }
}

/// Reads every process's argv over and over, looking for secret values.
pub(crate) struct Scanner {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<ScanReport>,
}

pub(crate) struct ScanReport {
    pub(crate) scans: usize,
    pub(crate) processes: usize,
    pub(crate) hits: Vec<String>,
}

impl Scanner {
    pub(crate) fn start(secrets: Vec<String>, running: Arc<AtomicBool>) -> Scanner {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let hits = Mutex::new(Vec::new());
            let processes = AtomicUsize::new(0);
            let mut scans = 0;
            let own = std::process::id().to_string();
            let deadline = Instant::now() + Duration::from_secs(3600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                if !running.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                scans += 1;
                let Ok(entries) = fs::read_dir("/proc") else {
                    break;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let Some(pid) = name
                        .to_str()
                        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                    else {
                        continue;
                    };
                    if pid == own {
                        continue;
                    }
                    let Ok(argv) = fs::read(entry.path().join("cmdline")) else {
                        continue;
                    };
                    processes.fetch_add(1, Ordering::Relaxed);
                    let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
                    for secret in &secrets {
                        if argv.contains(secret.as_str()) {
                            let shown = argv.replace(secret.as_str(), "<SECRET>");
                            let mut hits = hits
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            if hits.len() < 20 {
                                hits.push(format!("pid {pid}: {}", &shown[..shown.len().min(300)]));
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            ScanReport {
                scans,
                processes: processes.into_inner(),
                hits: hits
                    .into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            }
        });
        Scanner { stop, handle }
    }

    pub(crate) fn stop(self) -> ScanReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(ScanReport {
            scans: 0,
            processes: 0,
            hits: vec!["the scanner thread panicked".to_owned()],
        })
    }
}

/// Processes whose command line names something this test started.
pub(crate) fn leftover_processes(markers: &[String]) -> Vec<String> {
    // Daemons stop asynchronously after their TERM: give them a moment.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut found = Vec::new();
        let own = std::process::id().to_string();
        if let Ok(entries) = fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == own || !name.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let Ok(argv) = fs::read(entry.path().join("cmdline")) else {
                    continue;
                };
                let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
                if markers.iter().any(|m| argv.contains(m.as_str())) {
                    found.push(format!("pid {name}: {}", &argv[..argv.len().min(200)]));
                }
            }
        }
        if found.is_empty() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The deploy's private ssh directories (`tm-ssh-*`) of processes that no longer run.
pub(crate) fn leftover_ssh_dirs() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix("tm-ssh-")?.split('-').next()?.to_owned();
            (!Path::new("/proc").join(pid).exists()).then(|| entry.path())
        })
        .collect()
}
