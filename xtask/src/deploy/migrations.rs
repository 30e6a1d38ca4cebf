//! The schema side of a release: what the server's database applied against what a release
//! knows, read from one remote step (`migration_state.sh`). A deploy takes a snapshot and
//! migrates only when migrations are pending; a rollback goes ahead only when the rule of
//! `timemanager-migration-rule` (the backend's own) says the target runs on this schema.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, bail};
use sha2::{Digest as _, Sha384};
use timemanager_migration_rule::{Record, Verdict, verdict};

/// What the migration-state step reported.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct MigrationState {
    /// The release's migrations (`timemanager-backend migrations`), in version order.
    pub(crate) known: Vec<Record>,
    /// The rows of `_sqlx_migrations`; empty before the first migration.
    pub(crate) applied: Vec<Applied>,
    /// The database's name; `None` when no PostgreSQL container runs (a first deploy).
    pub(crate) database: Option<String>,
    /// The dumps in the server's `snapshots/`, oldest first.
    pub(crate) snapshots: Vec<Snapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    pub(crate) record: Record,
    /// sqlx's `success`: false is a migration that failed outside a transaction.
    pub(crate) success: bool,
}

/// A dump in `snapshots/`: `<time>-<release>.pgdump`, or `<time>-<release>.rescue.pgdump`
/// for what a restore replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// The file name, which `db restore` and `rollback --restore` take.
    pub(crate) name: String,
    pub(crate) bytes: u64,
}

impl Snapshot {
    /// The release whose schema the dump holds (the one current when it was taken).
    pub(crate) fn release(&self) -> Option<&str> {
        release_of(&self.name)
    }

    /// `20261201T120000Z` as `2026-12-01 12:00:00 UTC`.
    pub(crate) fn time(&self) -> String {
        let t = self.name.get(..16).unwrap_or_default();
        match (
            t.get(..4),
            t.get(4..6),
            t.get(6..8),
            t.get(9..11),
            t.get(11..13),
            t.get(13..15),
        ) {
            (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(s)) => {
                format!("{y}-{mo}-{d} {h}:{mi}:{s} UTC")
            }
            _ => t.to_owned(),
        }
    }

    pub(crate) fn is_rescue(&self) -> bool {
        self.name.ends_with(".rescue.pgdump")
    }
}

/// The release in a snapshot's name `<time>-<release>[.rescue].pgdump`.
pub(crate) fn release_of(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".pgdump")?;
    let stem = stem.strip_suffix(".rescue").unwrap_or(stem);
    let (time, release) = stem.split_once('-')?;
    (time.len() == 16 && !release.is_empty()).then_some(release)
}

/// The table `db snapshots` prints, oldest first.
pub(crate) fn format_snapshots(listing: &str) -> String {
    let state = MigrationState::parse(listing).unwrap_or_default();
    if state.snapshots.is_empty() {
        return "no snapshots on the server (one is taken before each deploy that migrates, or run `cargo xtask db snapshot`)\n".to_owned();
    }
    let mut out = String::new();
    for s in &state.snapshots {
        let _ = writeln!(
            out,
            "{}  {:>10}  {:<9} {}{}",
            s.time(),
            crate::steps::human_bytes(s.bytes),
            s.release().unwrap_or("?"),
            s.name,
            if s.is_rescue() {
                "  (rescue: what a restore replaced)"
            } else {
                ""
            }
        );
    }
    out
}

/// A snapshot name as `db restore` takes it: a file name from `db snapshots`, no path.
pub(crate) fn is_snapshot_name(name: &str) -> bool {
    name.ends_with(".pgdump")
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl MigrationState {
    /// Reads the step's lines; other lines are ignored.
    pub(crate) fn parse(out: &str) -> anyhow::Result<MigrationState> {
        let mut state = MigrationState::default();
        for line in out.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                ["known", json] => state.known.push(parse_known(json)?),
                ["database", name] => {
                    state.database = Some((*name).to_owned()).filter(|n| !n.is_empty());
                }
                ["applied", version, description, success, checksum] => {
                    state.applied.push(Applied {
                        record: Record {
                            version: version.parse().with_context(|| {
                                format!("a version in _sqlx_migrations: `{version}`")
                            })?,
                            description: (*description).to_owned(),
                            checksum: (*checksum).to_owned(),
                        },
                        success: *success == "t",
                    })
                }
                ["snapshot", path, bytes] => state.snapshots.push(Snapshot {
                    name: path.rsplit('/').next().unwrap_or(path).to_owned(),
                    bytes: bytes.parse().unwrap_or_default(),
                }),
                _ => {}
            }
        }
        state.snapshots.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(state)
    }

    /// The release's migrations the database has not applied.
    pub(crate) fn pending(&self) -> Vec<&Record> {
        self.known
            .iter()
            .filter(|known| {
                !self
                    .applied
                    .iter()
                    .any(|a| a.record.version == known.version)
            })
            .collect()
    }

    /// Stops a deploy or rollback when `_sqlx_migrations` records a failure: sqlx refuses
    /// to run on it, and only a person can tell what the failed migration left behind.
    pub(crate) fn check_no_failed(&self) -> anyhow::Result<()> {
        let failed: Vec<String> = self
            .applied
            .iter()
            .filter(|a| !a.success)
            .map(|a| format!("{} {}", a.record.version, a.record.description))
            .collect();
        if !failed.is_empty() {
            bail!(
                "_sqlx_migrations records failed migrations: {}; repair the schema by hand, delete their rows, and deploy again (or restore a snapshot: `cargo xtask db snapshots`)",
                failed.join(", ")
            );
        }
        Ok(())
    }

    /// May the release whose list is `known` run on this database?
    pub(crate) fn rollback_verdict(&self) -> Verdict {
        let applied: Vec<Record> = self
            .applied
            .iter()
            .filter(|a| a.success)
            .map(|a| a.record.clone())
            .collect();
        verdict(&applied, &self.known)
    }

    /// The snapshot a refused rollback to `target` should restore: the newest one that holds
    /// `target`'s schema, else the newest one.
    pub(crate) fn snapshot_for(&self, target: &str) -> Option<&Snapshot> {
        let ordinary = || self.snapshots.iter().rev().filter(|s| !s.is_rescue());
        ordinary()
            .find(|s| s.release() == Some(target))
            .or_else(|| ordinary().next())
    }

    /// The deploy's line about its pending migrations.
    pub(crate) fn describe_pending(&self) -> String {
        let pending = self.pending();
        if pending.is_empty() {
            return format!(
                "none of the release's {} migrations is pending: no snapshot, no migration",
                self.known.len()
            );
        }
        let mut out = format!("{} pending: ", pending.len());
        out.push_str(&describe(pending.iter().copied()));
        if self.database.is_none() {
            out.push_str(" (no database yet: nothing to snapshot)");
        }
        out
    }
}

/// The rollback's refusal: the migrations it would break on, and the way out.
pub(crate) fn refusal(target: &str, state: &MigrationState) -> String {
    let mut out = String::new();
    if let Verdict::Refused { blockers, .. } = state.rollback_verdict() {
        let _ = write!(
            out,
            "{target} would break on this database's schema, so the rollback is refused: it does not know {}",
            blockers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    match state.snapshot_for(target) {
        Some(snapshot) => {
            let _ = write!(
                out,
                "; to go back with the data as it was at {} (writes since then are kept in a rescue dump, not in the database): `cargo xtask rollback --to {} --restore {}`",
                snapshot.time(),
                snapshot.release().unwrap_or(target),
                snapshot.name
            );
        }
        None => out.push_str(
            "; the server has no snapshot to restore: fix forward with a new release instead",
        ),
    }
    out
}

/// A checkout's migrations as its release's backend will list them: version, sqlx's
/// description (the name after the version, `_` as spaces) and checksum (SHA-384 of the
/// file), for `--dry-run`, which has no release image yet.
pub(crate) fn local_release(dir: &Path) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    for entry in fs_entries(dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".sql") else {
            continue;
        };
        let (version, rest) = stem
            .split_once('_')
            .with_context(|| format!("`{name}` in {} has no version", dir.display()))?;
        let sql = std::fs::read(entry.path())
            .with_context(|| format!("reading {}", entry.path().display()))?;
        records.push(Record {
            version: version
                .parse()
                .with_context(|| format!("`{name}` in {}: version `{version}`", dir.display()))?,
            description: rest.replace('_', " "),
            checksum: crate::digest::hex(&Sha384::digest(&sql)),
        });
    }
    records.sort_by_key(|r| r.version);
    Ok(records)
}

fn fs_entries(dir: &Path) -> anyhow::Result<Vec<std::fs::DirEntry>> {
    std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|entry| entry.with_context(|| format!("reading {}", dir.display())))
        .collect()
}

/// The `--dry-run` text: the release's migrations, and which are pending when the server's
/// `_sqlx_migrations` could be read (`applied` is what the read printed, or why it failed).
pub(crate) fn dry_run(known: Vec<Record>, applied: Result<String, String>) -> String {
    let mut out = String::from("\nThe release's migrations (backend/migrations/):\n");
    for r in &known {
        let _ = writeln!(out, "    {} {}", r.version, r.description);
    }
    match applied {
        Ok(text) => match MigrationState::parse(&text) {
            Ok(mut state) => {
                state.known = known;
                let _ = writeln!(
                    out,
                    "The server's database now: {}.",
                    state.describe_pending()
                );
            }
            Err(err) => {
                let _ = writeln!(
                    out,
                    "The server's _sqlx_migrations could not be read: {err:#}."
                );
            }
        },
        Err(why) => {
            let _ = writeln!(
                out,
                "Which are pending is read from the server's _sqlx_migrations, which this dry run could not reach ({why}); the deploy prints them, and runs `snapshot` and `migrate` only for pending ones."
            );
        }
    }
    out
}

fn describe<'a>(records: impl Iterator<Item = &'a Record>) -> String {
    records
        .map(|r| format!("{} {}", r.version, r.description))
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_known(json: &str) -> anyhow::Result<Record> {
    let value: serde_json::Value = serde_json::from_str(json)
        .with_context(|| format!("a line of the release's migrations.jsonl: `{json}`"))?;
    let field = |name: &str| {
        value[name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("`{name}` missing in the release's migration `{json}`"))
    };
    Ok(Record {
        version: value["version"]
            .as_i64()
            .with_context(|| format!("`version` missing in the release's migration `{json}`"))?,
        description: field("description")?,
        checksum: field("checksum")?,
    })
}

/// What a restore reported: rows per table before (the replaced database) and after (the
/// restored one), as the window of writes the restore removed.
pub(crate) fn restore_report(out: &str) -> String {
    let mut rows: Vec<(String, Option<u64>, Option<u64>)> = Vec::new();
    let mut rescue = String::new();
    for line in out.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let (phase, table, n) = match fields.as_slice() {
            [phase @ ("before" | "after"), table, n] => (*phase, *table, n.parse().ok()),
            ["rescue", path, ..] => {
                rescue = (*path).to_owned();
                continue;
            }
            _ => continue,
        };
        let at = match rows.iter().position(|r| r.0 == table) {
            Some(at) => at,
            None => {
                rows.push((table.to_owned(), None, None));
                rows.len() - 1
            }
        };
        if phase == "before" {
            rows[at].1 = n;
        } else {
            rows[at].2 = n;
        }
    }
    let show = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let mut text = String::from("rows per table, replaced database → restored snapshot:\n");
    for (table, before, after) in &rows {
        let _ = writeln!(text, "  {table}: {} → {}", show(*before), show(*after));
    }
    if !rescue.is_empty() {
        let _ = writeln!(
            text,
            "the writes made since the snapshot are not in the database; they are in the rescue dump {rescue}"
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "known\t{\"version\":1,\"kind\":\"expand\",\"description\":\"expand create users\",\"checksum\":\"aa\",\"no_transaction\":false}
known\t{\"version\":2,\"kind\":\"expand\",\"description\":\"expand add note\",\"checksum\":\"bb\",\"no_transaction\":false}
database\ttimemanager
applied\t1\texpand create users\tt\taa
snapshot\t/opt/timemanager/snapshots/20261201T120000Z-abc1234.pgdump\t4096
snapshot\t/opt/timemanager/snapshots/20261201T130000Z-def5678.rescue.pgdump\t8192
snapshot\t/opt/timemanager/snapshots/20261201T110000Z-0123456.pgdump\t2048
";

    #[test]
    fn pending_are_the_release_migrations_the_database_lacks() {
        let state = MigrationState::parse(STATE).unwrap();
        assert_eq!(state.database.as_deref(), Some("timemanager"));
        let pending: Vec<i64> = state.pending().iter().map(|r| r.version).collect();
        assert_eq!(pending, [2]);
        assert_eq!(state.describe_pending(), "1 pending: 2 expand add note");
        state.check_no_failed().unwrap();
    }

    #[test]
    fn first_deploy_has_everything_pending_and_nothing_to_snapshot() {
        let known: String = STATE.lines().take(2).map(|l| format!("{l}\n")).collect();
        let state = MigrationState::parse(&format!("{known}database\t\n")).unwrap();
        assert_eq!(state.database, None);
        assert_eq!(state.pending().len(), 2);
        assert!(
            state
                .describe_pending()
                .ends_with("(no database yet: nothing to snapshot)")
        );
    }

    #[test]
    fn a_failed_migration_row_stops_the_run_naming_it() {
        let state =
            MigrationState::parse(&format!("{STATE}applied\t3\texpand broken\tf\tcc\n")).unwrap();
        let err = state.check_no_failed().unwrap_err().to_string();
        assert!(err.contains("3 expand broken"), "{err}");
    }

    #[test]
    fn rollback_across_an_expand_migration_is_allowed() {
        // The database has 1 and 2, the target knows only 1.
        let state = MigrationState::parse(&format!(
            "{}database\tdb\napplied\t1\texpand create users\tt\taa\napplied\t2\texpand add note\tt\tbb\n",
            STATE.lines().next().unwrap()
        ))
        .unwrap();
        assert!(state.rollback_verdict().is_safe());
    }

    #[test]
    fn rollback_across_a_contract_migration_is_refused_with_the_snapshot_to_restore() {
        let state = MigrationState::parse(&format!(
            "{STATE}applied\t2\texpand add note\tt\tbb\napplied\t3\tcontract drop note\tt\tcc\n"
        ))
        .unwrap();
        assert!(!state.rollback_verdict().is_safe());
        let text = refusal("abc1234", &state);
        assert!(text.contains("3 contract drop note (contract)"), "{text}");
        assert!(
            text.contains(
                "`cargo xtask rollback --to abc1234 --restore 20261201T120000Z-abc1234.pgdump`"
            ),
            "{text}"
        );
        assert!(text.contains("2026-12-01 12:00:00 UTC"), "{text}");
        // Rescue dumps are never offered; without one for the target, the newest other one.
        let other = refusal("fff0000", &state);
        assert!(
            other.contains("--restore 20261201T120000Z-abc1234.pgdump"),
            "{other}"
        );
    }

    #[test]
    fn local_release_reads_versions_descriptions_and_checksums_like_sqlx() {
        let dir = crate::project::root().join("backend/migrations");
        let records = local_release(&dir).unwrap();
        assert!(records.len() >= 2);
        assert_eq!(records[0].version, 20251125000001);
        assert_eq!(records[0].description, "expand create users");
        assert_eq!(records[0].checksum.len(), 96);
        assert!(records.windows(2).all(|w| w[0].version < w[1].version));
    }

    #[test]
    fn dry_run_names_the_pending_migrations_or_says_why_it_cannot() {
        let known = MigrationState::parse(STATE).unwrap().known;
        let text = dry_run(
            known.clone(),
            Ok("database\ttimemanager\napplied\t1\texpand create users\tt\taa\n".to_owned()),
        );
        assert!(text.contains("    2 expand add note\n"), "{text}");
        assert!(
            text.contains("The server's database now: 1 pending: 2 expand add note."),
            "{text}"
        );
        let offline = dry_run(known, Err("no HETZNER_HOST".to_owned()));
        assert!(
            offline.contains("could not reach (no HETZNER_HOST)"),
            "{offline}"
        );
    }

    #[test]
    fn snapshot_names() {
        let s = |name: &str| Snapshot {
            name: name.to_owned(),
            bytes: 0,
        };
        assert_eq!(
            s("20261201T120000Z-abc1234.pgdump").release(),
            Some("abc1234")
        );
        assert_eq!(
            s("20261201T120000Z-abc1234.rescue.pgdump").release(),
            Some("abc1234")
        );
        assert_eq!(s("dump.pgdump").release(), None);
        assert!(is_snapshot_name("20261201T120000Z-abc1234.pgdump"));
        assert!(!is_snapshot_name("../etc/passwd.pgdump"));
        assert!(!is_snapshot_name("x.sql"));
        assert!(!is_snapshot_name(".hidden.pgdump"));
    }

    #[test]
    fn restore_report_shows_the_removed_window() {
        let report = restore_report(
            "rescue\t/opt/timemanager/snapshots/x.rescue.pgdump\t10\t20\nbefore\tusers\t12\nbefore\tclock_entries\t40\nafter\tusers\t10\nafter\tclock_entries\t31\n",
        );
        assert!(report.contains("users: 12 → 10"), "{report}");
        assert!(report.contains("clock_entries: 40 → 31"), "{report}");
        assert!(report.contains("rescue dump /opt/timemanager/snapshots/x.rescue.pgdump"));
    }
}
