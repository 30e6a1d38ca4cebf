//! Named checks run as one suite: every selected check runs, every failure is printed and
//! summed up at the end, and the suite fails if any check did.
//!
//! A check may build on what others leave behind (a registry they pushed to); it names
//! them in `needs`, they run first even when `--only` did not select them, and it is
//! skipped when one of them failed.

use std::time::Instant;

use anyhow::bail;

/// A check's body: runs against the shared fixture and says what it showed.
type CheckFn<F> = Box<dyn Fn(&F) -> anyhow::Result<String>>;

/// One check against a fixture `F` that the suite's checks share.
pub(crate) struct Check<F> {
    /// What `--only GROUP/NAME` takes: lower case and dashes.
    pub(crate) name: String,
    /// What the check prints when it runs.
    pub(crate) title: String,
    /// Checks whose results this one builds on.
    pub(crate) needs: Vec<String>,
    pub(crate) run: CheckFn<F>,
}

impl<F> Check<F> {
    pub(crate) fn new(
        name: impl Into<String>,
        title: impl Into<String>,
        run: impl Fn(&F) -> anyhow::Result<String> + 'static,
    ) -> Check<F> {
        Check {
            name: name.into(),
            title: title.into(),
            needs: Vec::new(),
            run: Box::new(run),
        }
    }

    pub(crate) fn needs(mut self, name: impl Into<String>) -> Check<F> {
        self.needs.push(name.into());
        self
    }
}

/// How one check ended.
enum Verdict {
    Passed,
    Failed(anyhow::Error),
    Skipped(String),
}

/// Runs the checks `only` names (all of them when `None`) and those they need, in the
/// order of `checks`; prints each result and a summary, and fails if any check failed.
pub(crate) fn run<F>(
    group: &str,
    checks: &[Check<F>],
    only: Option<&[String]>,
    fixture: &F,
) -> anyhow::Result<()> {
    let selected = select(checks, only)?;
    let mut verdicts: Vec<(&Check<F>, Verdict)> = Vec::new();
    for check in checks.iter().filter(|c| selected.contains(&c.name)) {
        let failed_need = check.needs.iter().find(|need| {
            verdicts
                .iter()
                .any(|(c, v)| &c.name == *need && !matches!(v, Verdict::Passed))
        });
        let verdict = match failed_need {
            Some(need) => {
                let reason = format!("needs `{group}/{need}`, which did not pass");
                eprintln!("  skipped  {}: {reason}", check.title);
                Verdict::Skipped(reason)
            }
            None => {
                let start = Instant::now();
                let res = (check.run)(fixture);
                let secs = start.elapsed().as_secs_f64();
                match res {
                    Ok(detail) => {
                        eprintln!("  ok  {} ({secs:.1} s): {detail}", check.title);
                        Verdict::Passed
                    }
                    Err(err) => {
                        eprintln!("  FAILED  {} ({secs:.1} s): {err:#}", check.title);
                        Verdict::Failed(err)
                    }
                }
            }
        };
        verdicts.push((check, verdict));
    }
    summarize(group, &verdicts)
}

fn summarize<F>(group: &str, verdicts: &[(&Check<F>, Verdict)]) -> anyhow::Result<()> {
    let count = |f: fn(&Verdict) -> bool| verdicts.iter().filter(|(_, v)| f(v)).count();
    let passed = count(|v| matches!(v, Verdict::Passed));
    let failed = count(|v| matches!(v, Verdict::Failed(_)));
    let skipped = count(|v| matches!(v, Verdict::Skipped(_)));
    eprintln!("{group} checks: {passed} passed, {failed} failed, {skipped} skipped");
    let width = verdicts
        .iter()
        .map(|(c, _)| c.name.len())
        .max()
        .unwrap_or(0)
        + group.len()
        + 1;
    for (check, verdict) in verdicts {
        let status = match verdict {
            Verdict::Passed => "ok",
            Verdict::Failed(_) => "FAILED",
            Verdict::Skipped(_) => "skipped",
        };
        let name = format!("{group}/{}", check.name);
        eprintln!("  {status:<7}  {name:<width$}  {}", check.title);
    }
    let problems: Vec<String> = verdicts
        .iter()
        .filter_map(|(check, verdict)| match verdict {
            Verdict::Passed => None,
            Verdict::Failed(err) => Some(format!("{group}/{}: {err:#}", check.name)),
            Verdict::Skipped(reason) => Some(format!("{group}/{}: {reason}", check.name)),
        })
        .collect();
    if !problems.is_empty() {
        bail!(
            "{} of {} {group} checks did not pass:\n  {}",
            problems.len(),
            verdicts.len(),
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// The names to run: those `only` gives plus, transitively, what they need.
fn select<F>(checks: &[Check<F>], only: Option<&[String]>) -> anyhow::Result<Vec<String>> {
    let Some(only) = only else {
        return Ok(checks.iter().map(|c| c.name.clone()).collect());
    };
    let mut selected: Vec<String> = Vec::new();
    let mut queue: Vec<String> = only.to_vec();
    while let Some(name) = queue.pop() {
        if selected.contains(&name) {
            continue;
        }
        let Some(check) = checks.iter().find(|c| c.name == name) else {
            let known: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
            bail!("unknown check `{name}`; known: {}", known.join(", "));
        };
        queue.extend(check.needs.iter().cloned());
        selected.push(name);
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// Records which checks ran, in order.
    type Log = RefCell<Vec<&'static str>>;

    fn checks() -> Vec<Check<Log>> {
        let ok = |name: &'static str| {
            move |log: &Log| {
                log.borrow_mut().push(name);
                Ok(format!("{name} done"))
            }
        };
        vec![
            Check::new("setup", "set up", ok("setup")),
            Check::new("broken", "fails", |log: &Log| {
                log.borrow_mut().push("broken");
                bail!("boom")
            }),
            Check::new("uses-setup", "uses the setup", ok("uses-setup")).needs("setup"),
            Check::new("uses-broken", "uses the broken one", ok("uses-broken")).needs("broken"),
            Check::new("alone", "independent", ok("alone")),
        ]
    }

    #[test]
    fn every_check_runs_and_every_failure_is_reported() {
        let log = Log::default();
        let err = run("t", &checks(), None, &log).unwrap_err();
        assert_eq!(*log.borrow(), ["setup", "broken", "uses-setup", "alone"]);
        assert_eq!(
            format!("{err:#}"),
            "2 of 5 t checks did not pass:\n  t/broken: boom\n  t/uses-broken: needs `t/broken`, which did not pass"
        );
    }

    #[test]
    fn only_runs_the_named_checks_and_what_they_need() {
        let log = Log::default();
        let only = ["uses-setup".to_owned()];
        run("t", &checks(), Some(&only), &log).unwrap();
        assert_eq!(*log.borrow(), ["setup", "uses-setup"]);
    }

    #[test]
    fn an_unknown_name_is_an_error_listing_the_known_ones() {
        let log = Log::default();
        let only = ["nope".to_owned()];
        let err = run("t", &checks(), Some(&only), &log).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown check `nope`; known: setup, broken, uses-setup, uses-broken, alone"
        );
        assert!(log.borrow().is_empty());
    }
}
