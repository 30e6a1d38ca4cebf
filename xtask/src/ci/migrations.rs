//! The `migrations` step: lints every file of `backend/migrations/` with a pinned squawk,
//! under the expand/contract rule the backend's file names carry.
//!
//! An expand migration (`<version>_expand_<what>.sql`) runs under the previous release too
//! (it keeps serving on the new schema, and a rollback starts it on that schema), so it
//! must pass squawk's backward-compatibility and locking rules with no suppression at all.
//! A contract migration (`<version>_contract_<what>.sql`) breaks the previous release on
//! purpose, so it must say which rules it breaks (`-- squawk-ignore <rule>`) and why that
//! is safe now (a `-- contract: <reason>` line); squawk still checks everything else in it.
//!
//! squawk comes from PyPI (`squawk-cli`, a wheel that ships the binary), installed into
//! the target directory on demand by [`squawk_path`], never on PATH; `ci`'s provision step
//! and this module's tests use the same function, so a test never skips for want of it.
//! Its settings (excluded rules and why, the PostgreSQL version) are in
//! `backend/.squawk.toml`, passed explicitly so no other config file is picked up.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::{Context, bail, ensure, format_err};
use xshell::{Shell, cmd};

use crate::project;

/// The PyPI package and the version it is pinned to.
const SQUAWK_PACKAGE: &str = "squawk-cli";
const SQUAWK_VERSION: &str = "2.70.0";

/// The migrations the backend embeds, relative to the workspace root.
const MIGRATIONS_DIR: &str = "backend/migrations";
/// squawk's settings. Not inside `backend/migrations/`: every file there must be a
/// migration (the backend's naming test counts them against what sqlx embeds).
const CONFIG_FILE: &str = "backend/.squawk.toml";

/// Lints `backend/migrations/` and prints each file's kind and verdict; fails naming every
/// file, rule and fix when any file does not pass.
pub(crate) fn check(sh: &Shell) -> anyhow::Result<()> {
    let squawk = squawk_path(sh)?;
    let root = project::root();
    let linted = lint_dir(
        sh,
        &squawk,
        &root.join(CONFIG_FILE),
        &root.join(MIGRATIONS_DIR),
    )?;
    let width = linted.iter().map(|file| file.name.len()).max().unwrap_or(0);
    for file in &linted {
        let verdict = match &file.verdict {
            Verdict::Passed => "ok".to_owned(),
            Verdict::Skipped(reason) => format!("skipped: {reason}"),
            Verdict::Failed(problems) if problems.len() == 1 => "FAILED (1 problem)".to_owned(),
            Verdict::Failed(problems) => format!("FAILED ({} problems)", problems.len()),
        };
        eprintln!("  {:<8}  {:<width$}  {verdict}", file.kind, file.name);
    }
    let problems: Vec<&str> = linted
        .iter()
        .filter_map(|file| match &file.verdict {
            Verdict::Failed(problems) => Some(problems),
            _ => None,
        })
        .flatten()
        .map(String::as_str)
        .collect();
    let n_failed = linted
        .iter()
        .filter(|file| matches!(file.verdict, Verdict::Failed(_)))
        .count();
    if n_failed > 0 {
        bail!(
            "{n_failed} of {} migrations failed the lint:\n  {}",
            linted.len(),
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// The pinned squawk, `<target>/tools/squawk-<version>/squawk`, installed there first when
/// missing: pip installs the wheel into a scratch virtualenv and the binary (an ELF that
/// needs nothing from the virtualenv) is renamed into place, so concurrent test processes
/// never see a half-written file.
pub(crate) fn squawk_path(sh: &Shell) -> anyhow::Result<PathBuf> {
    // Test threads of one process share the scratch directory name: one installs at a time.
    static INSTALL: Mutex<()> = Mutex::new(());
    let _guard = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());

    let tools = project::target_dir().join("tools");
    let dir = tools.join(format!("squawk-{SQUAWK_VERSION}"));
    let squawk = dir.join("squawk");
    if is_pinned(sh, &squawk) {
        return Ok(squawk);
    }
    let spec = format!("{SQUAWK_PACKAGE}=={SQUAWK_VERSION}");
    eprintln!("installing {spec} into `{}`", dir.display());
    let scratch = tools.join(format!(
        "squawk-{SQUAWK_VERSION}.tmp-{}",
        std::process::id()
    ));
    let installed = install(sh, &spec, &scratch, &squawk);
    let _ = fs::remove_dir_all(&scratch);
    installed.with_context(|| {
        format!(
            "squawk {SQUAWK_VERSION} is missing and installing it failed; \
             run `cargo xtask ci --only migrations`, or by hand: \
             `python3 -m venv /tmp/squawk-venv && /tmp/squawk-venv/bin/pip install {spec} && \
             install -D /tmp/squawk-venv/bin/squawk {}` \
             (on Debian, `python3 -m venv` needs `python3-venv`)",
            squawk.display()
        )
    })?;
    ensure!(
        is_pinned(sh, &squawk),
        "`{}` does not report squawk {SQUAWK_VERSION} after installing {spec}",
        squawk.display()
    );
    Ok(squawk)
}

fn install(sh: &Shell, spec: &str, scratch: &Path, squawk: &Path) -> anyhow::Result<()> {
    let venv = scratch.join("venv");
    let _ = fs::remove_dir_all(scratch);
    cmd!(sh, "python3 -m venv {venv}")
        .run()
        .with_context(|| format!("creating the virtualenv `{}`", venv.display()))?;
    let pip = venv.join("bin/pip");
    cmd!(
        sh,
        "{pip} install --disable-pip-version-check --no-input --quiet {spec}"
    )
    .run()
    .with_context(|| format!("pip install {spec}"))?;
    let dir = squawk.parent().context("squawk's path has no parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating `{}`", dir.display()))?;
    let staged = scratch.join("squawk");
    fs::copy(venv.join("bin/squawk"), &staged)
        .with_context(|| format!("`{spec}` left no `bin/squawk` in the virtualenv"))?;
    fs::rename(&staged, squawk)
        .with_context(|| format!("moving squawk to `{}`", squawk.display()))?;
    Ok(())
}

/// Whether `path` runs and is the pinned version.
fn is_pinned(sh: &Shell, path: &Path) -> bool {
    path.is_file()
        && cmd!(sh, "{path} --version")
            .quiet()
            .ignore_stderr()
            .read()
            .is_ok_and(|out| out.trim() == format!("squawk {SQUAWK_VERSION}"))
}

/// One migration file and what the lint made of it.
#[derive(Debug)]
pub(crate) struct Linted {
    pub(crate) name: String,
    /// `expand`, `contract`, `down` or `unknown`, from the file name.
    pub(crate) kind: &'static str,
    pub(crate) verdict: Verdict,
}

#[derive(Debug)]
pub(crate) enum Verdict {
    Passed,
    Skipped(&'static str),
    /// Each problem names the file (and line and rule where there is one) and the fix.
    Failed(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Expand,
    Contract,
}

/// Lints every `.sql` file of `dir`, in name (so version) order. An error means squawk
/// itself could not run; what the lint found is in each file's verdict.
pub(crate) fn lint_dir(
    sh: &Shell,
    squawk: &Path,
    config: &Path,
    dir: &Path,
) -> anyhow::Result<Vec<Linted>> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing `{}`", dir.display()))?
        .map(|entry| Ok(entry?.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("listing `{}`", dir.display()))?;
    paths.retain(|path| path.extension().is_some_and(|ext| ext == "sql"));
    paths.sort();
    ensure!(
        !paths.is_empty(),
        "no `.sql` migrations in `{}`",
        dir.display()
    );
    paths
        .iter()
        .map(|path| lint_file(sh, squawk, config, path))
        .collect()
}

fn lint_file(sh: &Shell, squawk: &Path, config: &Path, path: &Path) -> anyhow::Result<Linted> {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.ends_with(".down.sql") {
        return Ok(Linted {
            name,
            kind: "down",
            verdict: Verdict::Skipped("a down migration runs only on an explicit undo"),
        });
    }
    let Some(kind) = kind_of(&name) else {
        return Ok(Linted {
            verdict: Verdict::Failed(vec![format!(
                "{name}: the name must say `expand` or `contract` after the version \
                 (`<version>_expand_<what>.sql` or `<version>_contract_<what>.sql`), so the \
                 lint and a rollback know what it does"
            )]),
            name,
            kind: "unknown",
        });
    };
    let sql = fs::read_to_string(path).with_context(|| format!("reading `{}`", path.display()))?;
    let mut problems = match kind {
        Kind::Expand => expand_problems(&name, &sql),
        Kind::Contract => contract_problems(&name, &sql),
    };
    for violation in run_squawk(sh, squawk, config, path, &sql)? {
        problems.push(violation.problem(&name, kind));
    }
    let kind_name = match kind {
        Kind::Expand => "expand",
        Kind::Contract => "contract",
    };
    let verdict = if problems.is_empty() {
        Verdict::Passed
    } else {
        Verdict::Failed(problems)
    };
    Ok(Linted {
        name,
        kind: kind_name,
        verdict,
    })
}

/// The kind a file name says, as the backend reads it: `<version>_expand_…` or
/// `<version>_contract_…`.
fn kind_of(file_name: &str) -> Option<Kind> {
    let (version, rest) = file_name.split_once('_')?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if rest.starts_with("expand_") {
        Some(Kind::Expand)
    } else if rest.starts_with("contract_") {
        Some(Kind::Contract)
    } else {
        None
    }
}

/// An expand migration carries no suppression: everything squawk knows must hold for it.
fn expand_problems(name: &str, sql: &str) -> Vec<String> {
    sql.lines()
        .enumerate()
        .filter(|(_, line)| line.to_ascii_lowercase().contains("squawk-ignore"))
        .map(|(idx, _)| {
            format!(
                "{name}:{}: expand migrations must be safe, so they suppress no squawk rule: \
                 the previous release keeps running on this schema, and a rollback relies on \
                 it; make the change additive, or move the breaking part to a \
                 `<version>_contract_<what>.sql` migration in a later release",
                idx + 1
            )
        })
        .collect()
}

/// A contract migration names the rules it breaks and says why breaking them is safe now.
fn contract_problems(name: &str, sql: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut n_suppressions = 0;
    let mut has_reason = false;
    for (idx, line) in sql.lines().enumerate() {
        let Some(comment) = line.trim_start().strip_prefix("--") else {
            continue;
        };
        let comment = comment.trim();
        if let Some(reason) = comment.strip_prefix("contract:") {
            has_reason |= !reason.trim().is_empty();
        }
        let Some(rules) = comment
            .strip_prefix("squawk-ignore-file")
            .or_else(|| comment.strip_prefix("squawk-ignore"))
        else {
            continue;
        };
        if rules.split([',', ' ']).all(|rule| rule.trim().is_empty()) {
            problems.push(format!(
                "{name}:{}: a `squawk-ignore` must name the rules it suppresses \
                 (`-- squawk-ignore ban-drop-column`), so nothing else slips through",
                idx + 1
            ));
        } else {
            n_suppressions += 1;
        }
    }
    if n_suppressions == 0 {
        problems.push(format!(
            "{name}: a contract migration names the squawk rules it breaks on purpose: put \
             `-- squawk-ignore <rule>` on the line above each breaking statement (squawk \
             reports the rule); if squawk finds nothing to break, it is an expand migration"
        ));
    }
    if !has_reason {
        problems.push(format!(
            "{name}: a contract migration says why it is safe to run now, in a line \
             `-- contract: <reason>` (which release stopped using the column or table, e.g. \
             `-- contract: since 1.4 nothing reads users.nickname`)"
        ));
    }
    problems
}

/// One finding of squawk's JSON reporter.
#[derive(Debug)]
struct Violation {
    /// Zero-based.
    line: u64,
    rule_name: String,
    message: String,
    help: Option<String>,
}

impl Violation {
    /// The findings of `--reporter json`: an array of objects; `None` when it is not one.
    fn parse_all(json: &str) -> Option<Vec<Violation>> {
        let value: serde_json::Value = serde_json::from_str(json).ok()?;
        let text = |finding: &serde_json::Value, field: &str| {
            finding.get(field)?.as_str().map(str::to_owned)
        };
        value
            .as_array()?
            .iter()
            .map(|finding| {
                Some(Violation {
                    line: finding.get("line")?.as_u64()?,
                    rule_name: text(finding, "rule_name")?,
                    message: text(finding, "message")?,
                    help: text(finding, "help"),
                })
            })
            .collect()
    }
}

impl Violation {
    fn problem(&self, name: &str, kind: Kind) -> String {
        let rule = &self.rule_name;
        let help = self
            .help
            .as_deref()
            .map_or_else(String::new, |help| format!(" ({help})"));
        let what_to_do = match (rule.as_str(), kind) {
            ("syntax-error", _) => "fix the SQL".to_owned(),
            ("unused-ignore", _) => "name squawk's rule exactly, as it reports it".to_owned(),
            (_, Kind::Expand) => format!(
                "expand migrations must be safe for the previous release, which keeps running \
                 on this schema: make the change additive (https://squawkhq.com/docs/{rule}), \
                 or move it to a `<version>_contract_<what>.sql` migration in a later release"
            ),
            (_, Kind::Contract) => format!(
                "if this is the break the contract is for, put `-- squawk-ignore {rule}` on \
                 the line above the statement; otherwise fix it \
                 (https://squawkhq.com/docs/{rule})"
            ),
        };
        format!(
            "{name}:{}: {rule}: {}{help}; {what_to_do}",
            self.line + 1,
            self.message.trim_end_matches('.')
        )
    }
}

/// squawk's findings on one file.
///
/// sqlx runs a migration in a transaction unless its first line is `-- no-transaction`, so
/// only the others are linted `--assume-in-transaction`; a no-transaction file is linted
/// as what it is, and squawk then asks for `IF NOT EXISTS` (`prefer-robust-stmts`), which
/// it needs: sqlx runs it again in full after a partial failure.
fn run_squawk(
    sh: &Shell,
    squawk: &Path,
    config: &Path,
    path: &Path,
    sql: &str,
) -> anyhow::Result<Vec<Violation>> {
    let in_transaction: &[&str] = if sql.starts_with("-- no-transaction") {
        &[]
    } else {
        &["--assume-in-transaction"]
    };
    let output = cmd!(
        sh,
        "{squawk} --config {config} --reporter json {in_transaction...} {path}"
    )
    .quiet()
    .ignore_status()
    .output()
    .with_context(|| format!("running `{}`", squawk.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Exit 0 is `[]`, 1 is a list of findings; a bad config or a missing file is also 1,
    // with no JSON and the reason on stderr.
    let violations: Vec<Violation> = match output.status.code() {
        Some(0 | 1) => Violation::parse_all(stdout.trim()).ok_or_else(|| {
            format_err!(
                "squawk failed on `{}`: {}{}",
                path.display(),
                stdout.trim(),
                stderr.trim()
            )
        })?,
        _ => bail!(
            "squawk failed on `{}` ({}): {}",
            path.display(),
            output.status,
            stderr.trim()
        ),
    };
    ensure!(
        output.status.success() == violations.is_empty(),
        "squawk exited with {} but reported {} findings on `{}`: {}",
        output.status,
        violations.len(),
        path.display(),
        stderr.trim()
    );
    Ok(violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lint(files: &[(&str, &str)]) -> Vec<Linted> {
        let sh = Shell::new().unwrap();
        // Installs the pinned squawk when missing; without it the test fails with the
        // install command, never skips.
        let squawk = squawk_path(&sh).unwrap_or_else(|err| panic!("{err:#}"));
        let dir = sh.create_temp_dir().unwrap();
        for (name, sql) in files {
            fs::write(dir.path().join(name), sql).unwrap();
        }
        let config = project::root().join(CONFIG_FILE);
        lint_dir(&sh, &squawk, &config, dir.path()).unwrap_or_else(|err| panic!("{err:#}"))
    }

    fn problems<'a>(linted: &'a [Linted], name: &str) -> &'a [String] {
        let file = linted.iter().find(|file| file.name == name).unwrap();
        match &file.verdict {
            Verdict::Failed(problems) => problems,
            verdict => panic!("{name}: expected a failure, got {verdict:?}"),
        }
    }

    fn passed(linted: &[Linted], name: &str) {
        let file = linted.iter().find(|file| file.name == name).unwrap();
        assert!(matches!(file.verdict, Verdict::Passed), "{file:?}");
    }

    #[test]
    fn expand_must_be_safe_and_contract_must_say_why() {
        let linted = lint(&[
            (
                "3_expand_drop_email.sql",
                "ALTER TABLE users DROP COLUMN email;\n",
            ),
            (
                "4_expand_drop_email_quietly.sql",
                "-- squawk-ignore ban-drop-column\nALTER TABLE users DROP COLUMN email;\n",
            ),
            (
                "5_contract_drop_email.sql",
                "-- contract: since release 1.4 nothing reads or writes users.email\n\
                 -- squawk-ignore ban-drop-column\n\
                 ALTER TABLE users DROP COLUMN email;\n",
            ),
            (
                "6_contract_drop_email_no_reason.sql",
                "-- squawk-ignore ban-drop-column\nALTER TABLE users DROP COLUMN email;\n",
            ),
            (
                "7_contract_drop_nickname_unsuppressed.sql",
                "-- contract: since release 1.4 nothing reads users.nickname\n\
                 ALTER TABLE users DROP COLUMN nickname;\n",
            ),
            (
                "8_expand_add_nickname.sql",
                "ALTER TABLE users ADD COLUMN nickname TEXT;\n",
            ),
            (
                "9_expand_index_nickname.sql",
                "-- no-transaction\n\
                 CREATE INDEX CONCURRENTLY IF NOT EXISTS users_nickname ON users (nickname);\n",
            ),
            (
                "10_expand_index_email.sql",
                "-- no-transaction\nCREATE INDEX CONCURRENTLY users_email ON users (email);\n",
            ),
            (
                "11_add_age.sql",
                "ALTER TABLE users ADD COLUMN age BIGINT;\n",
            ),
        ]);
        assert_eq!(linted.len(), 9);

        let dropped = problems(&linted, "3_expand_drop_email.sql");
        assert!(
            dropped.iter().any(
                |p| p.starts_with("3_expand_drop_email.sql:1: ban-drop-column:")
                    && p.contains("expand migrations must be safe")
            ),
            "{dropped:#?}"
        );

        let quiet = problems(&linted, "4_expand_drop_email_quietly.sql");
        assert!(
            quiet
                .iter()
                .any(|p| p.starts_with("4_expand_drop_email_quietly.sql:1: ")
                    && p.contains("expand migrations must be safe")
                    && p.contains("suppress no squawk rule")),
            "{quiet:#?}"
        );

        passed(&linted, "5_contract_drop_email.sql");

        let no_reason = problems(&linted, "6_contract_drop_email_no_reason.sql");
        assert_eq!(no_reason.len(), 1, "{no_reason:#?}");
        assert!(
            no_reason[0].contains("`-- contract: <reason>`"),
            "{no_reason:#?}"
        );

        let unsuppressed = problems(&linted, "7_contract_drop_nickname_unsuppressed.sql");
        assert!(
            unsuppressed
                .iter()
                .any(|p| p.contains(":2: ban-drop-column:")
                    && p.contains("`-- squawk-ignore ban-drop-column`")),
            "{unsuppressed:#?}"
        );

        passed(&linted, "8_expand_add_nickname.sql");
        // Outside a transaction, a re-run must not fail on what the first run built.
        passed(&linted, "9_expand_index_nickname.sql");
        let not_robust = problems(&linted, "10_expand_index_email.sql");
        assert!(
            not_robust
                .iter()
                .any(|p| p.contains(":2: prefer-robust-stmts:")),
            "{not_robust:#?}"
        );

        let unknown = linted.iter().find(|f| f.name == "11_add_age.sql").unwrap();
        assert_eq!(unknown.kind, "unknown");
        assert!(
            matches!(&unknown.verdict, Verdict::Failed(p) if p[0].contains("must say `expand` or `contract`"))
        );
    }

    #[test]
    fn the_backend_migrations_pass() {
        let sh = Shell::new().unwrap();
        let squawk = squawk_path(&sh).unwrap_or_else(|err| panic!("{err:#}"));
        let root = project::root();
        let linted = lint_dir(
            &sh,
            &squawk,
            &root.join(CONFIG_FILE),
            &root.join(MIGRATIONS_DIR),
        )
        .unwrap_or_else(|err| panic!("{err:#}"));
        assert!(!linted.is_empty());
        for file in &linted {
            assert!(matches!(file.verdict, Verdict::Passed), "{file:#?}");
        }
    }

    #[test]
    fn kinds_come_from_the_file_name() {
        assert_eq!(kind_of("1_expand_create_users.sql"), Some(Kind::Expand));
        assert_eq!(kind_of("20_contract_drop_x.sql"), Some(Kind::Contract));
        assert_eq!(kind_of("1_expanded_users.sql"), None);
        assert_eq!(kind_of("x_expand_users.sql"), None);
        assert_eq!(kind_of("expand_users.sql"), None);
    }

    #[test]
    fn contract_suppressions_must_name_rules() {
        let problems = contract_problems(
            "1_contract_x.sql",
            "-- contract: since 1.2 nothing reads t.c\n-- squawk-ignore\nALTER TABLE t DROP COLUMN c;\n",
        );
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].starts_with("1_contract_x.sql:2: a `squawk-ignore` must name"));
        assert!(problems[1].contains("names the squawk rules it breaks"));
        assert!(
            contract_problems(
                "1_contract_x.sql",
                "-- contract:   \n-- squawk-ignore-file ban-drop-column\n",
            )[0]
            .contains("`-- contract: <reason>`")
        );
    }
}
