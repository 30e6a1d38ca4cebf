//! Named, timed steps with a summary, shared by every multi-step command.

use std::time::{Duration, Instant};

/// Runs steps in order, stops at the first failure and names it.
#[derive(Default)]
pub(crate) struct Steps {
    done: Vec<(String, Duration)>,
}

impl Steps {
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
                self.done.push((name.to_owned(), elapsed));
                Ok(value)
            }
            Err(err) => {
                self.print_summary();
                eprintln!("FAILED {name} after {}", format_duration(elapsed));
                Err(err.context(format!("step `{name}` failed")))
            }
        }
    }

    pub(crate) fn print_summary(&self) {
        if self.done.is_empty() {
            return;
        }
        eprintln!("\nsummary:");
        let width = self
            .done
            .iter()
            .map(|(name, _)| name.len())
            .max()
            .unwrap_or(0);
        let mut total = Duration::ZERO;
        for (name, elapsed) in &self.done {
            eprintln!("  ok  {name:<width$}  {:>8}", format_duration(*elapsed));
            total += *elapsed;
        }
        eprintln!(
            "  {:<width$}      {:>8}",
            "total",
            format_duration(total),
            width = width
        );
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn durations_read_naturally() {
        assert_eq!(format_duration(Duration::from_millis(1234)), "1.2s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
    }
}
