//! Named, timed steps with a summary, shared by every multi-step command, and how durations and sizes print.

use std::time::{Duration, Instant};

/// Runs steps in order, prints each with its duration, and a summary at the end.
#[derive(Default)]
pub(crate) struct Steps {
    done: Vec<Done>,
}

struct Done {
    name: String,
    elapsed: Duration,
    ok: bool,
}

impl Steps {
    /// Runs a step; a failure prints the summary, names the step and stops the caller.
    pub(crate) fn run<T>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        eprintln!("==> {name}");
        let start = Instant::now();
        let res = f();
        let elapsed = start.elapsed();
        match res {
            Ok(value) => {
                eprintln!("<== {name} ({})", format_duration(elapsed));
                self.push(name, elapsed, true);
                Ok(value)
            }
            Err(err) => {
                self.print_summary();
                eprintln!("FAILED {name} after {}", format_duration(elapsed));
                Err(err.context(format!("step `{name}` failed")))
            }
        }
    }

    /// Runs a step whose failure the caller handles (a deploy goes on to fall back): a failed
    /// step is kept in the summary, and the summary is left to the caller. The step sees the
    /// steps before it (a deploy records their durations).
    pub(crate) fn attempt<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&Steps) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        eprintln!("==> {name}");
        let start = Instant::now();
        let res = f(self);
        let elapsed = start.elapsed();
        self.push(name, elapsed, res.is_ok());
        match res {
            Ok(value) => {
                eprintln!("<== {name} ({})", format_duration(elapsed));
                Ok(value)
            }
            Err(err) => {
                eprintln!("FAILED {name} after {}", format_duration(elapsed));
                Err(err.context(format!("step `{name}`")))
            }
        }
    }

    fn push(&mut self, name: &str, elapsed: Duration, ok: bool) {
        self.done.push(Done {
            name: name.to_owned(),
            elapsed,
            ok,
        });
    }

    /// Every step run so far, failed ones included, with its duration.
    pub(crate) fn durations(&self) -> impl Iterator<Item = (&str, Duration)> {
        self.done
            .iter()
            .map(|done| (done.name.as_str(), done.elapsed))
    }

    pub(crate) fn print_summary(&self) {
        eprint!("{}", self.summary());
    }

    fn summary(&self) -> String {
        if self.done.is_empty() {
            return String::new();
        }
        let status = |done: &Done| if done.ok { "ok" } else { "FAILED" };
        let width = self.done.iter().map(|d| d.name.len()).max().unwrap_or(0);
        let status_width = self.done.iter().map(|d| status(d).len()).max().unwrap_or(0);
        let mut out = String::from("\nsummary:\n");
        let mut total = Duration::ZERO;
        for done in &self.done {
            out.push_str(&format!(
                "  {:<status_width$}  {:<width$}  {:>8}\n",
                status(done),
                done.name,
                format_duration(done.elapsed)
            ));
            total += done.elapsed;
        }
        out.push_str(&format!(
            "  {:<label_width$}  {:>8}\n",
            "total",
            format_duration(total),
            label_width = status_width + 2 + width
        ));
        out
    }
}

pub(crate) fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// `3.8 MB`, `108.4 kB`, `999 B`: decimal units, one decimal.
pub(crate) fn human_bytes(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.1} MB", n as f64 / 1e6)
    } else if n >= 1_000 {
        format!("{:.1} kB", n as f64 / 1e3)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(3_813_699), "3.8 MB");
        assert_eq!(human_bytes(108_431), "108.4 kB");
    }

    #[test]
    fn failing_step_is_named_and_stops_the_run() {
        let mut steps = Steps::default();
        steps.run("first", || Ok(())).unwrap();
        let err = steps
            .run::<()>("second", || anyhow::bail!("boom"))
            .unwrap_err();
        assert_eq!(format!("{err:#}"), "step `second` failed: boom");
        assert_eq!(steps.done.len(), 1);
    }

    #[test]
    fn attempted_steps_are_summarised_with_their_result() {
        let mut steps = Steps::default();
        steps.attempt("upload", |_| Ok(())).unwrap();
        let err = steps
            .attempt::<()>("health gate", |_| anyhow::bail!("unhealthy"))
            .unwrap_err();
        assert_eq!(format!("{err:#}"), "step `health gate`: unhealthy");
        let summary = steps.summary();
        let lines: Vec<&str> = summary.lines().collect();
        assert_eq!(lines[1], "summary:");
        assert!(lines[2].starts_with("  ok      upload       "), "{summary}");
        assert!(lines[3].starts_with("  FAILED  health gate  "), "{summary}");
        assert!(lines[4].starts_with("  total                "), "{summary}");
        assert_eq!(steps.durations().count(), 2);
    }

    #[test]
    fn a_summary_of_successes_keeps_its_columns() {
        let mut steps = Steps::default();
        steps.run("fmt", || Ok(())).unwrap();
        let summary = steps.summary();
        assert!(summary.contains("\n  ok  fmt  "), "{summary}");
        assert!(summary.contains("\n  total      "), "{summary}");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(Duration::from_millis(1234)), "1.2s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
    }
}
