//! What a migration is (expand or contract, from its name) and the rollback rule: may
//! release N-1 run on the schema release N left behind?
//!
//! Pure data in, verdict out, with no database and no sqlx, so the deploy can apply it
//! to the rows of `_sqlx_migrations` and a release's recorded list
//! (`timemanager-backend migrations`, JSON lines) without running either binary.
//!
//! Applied migrations the target release does not know ("extra") decide it: none, or
//! only `expand` ones, and the target runs on this schema (its start-up migration
//! tolerates them); any `contract` one, or one whose name says neither, and the target
//! would break, so the rollback is refused naming them. A version both know but with a
//! different checksum means a released file was edited, which the target's sqlx would
//! refuse at start, so that is refused too.

use std::collections::BTreeMap;
use std::fmt;

/// What a migration file says it does, from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Additive and backward compatible: the previous release runs on the new schema.
    Expand,
    /// Breaks the previous release (drop, rename, type change, new NOT NULL).
    Contract,
}

impl Kind {
    /// The kind recorded in a migration description (`expand create users`) or file
    /// name (`1_expand_create_users.sql`); `None` for names without one, such as those
    /// applied before the naming rule existed.
    pub fn of(description_or_file_name: &str) -> Option<Kind> {
        let rest = description_or_file_name.trim_start_matches(|c: char| c.is_ascii_digit());
        let rest = rest.strip_prefix('_').unwrap_or(rest);
        match rest.split([' ', '_']).next() {
            Some("expand") => Some(Kind::Expand),
            Some("contract") => Some(Kind::Contract),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Expand => "expand",
            Kind::Contract => "contract",
        }
    }
}

/// One migration: a row of `_sqlx_migrations` (successful ones) or a line of a release's
/// list. `description` is sqlx's (the file name after the version, `_` as spaces).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub version: i64,
    pub description: String,
    /// SHA-384 of the SQL in lowercase hex; empty when unknown (then not compared).
    pub checksum: String,
}

/// Why a rollback to the target release is unsafe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// A `contract` migration the target does not know: it breaks the target's queries.
    Contract(Record),
    /// A migration the target does not know whose name says neither expand nor contract.
    Unclassified(Record),
    /// Applied with a different checksum than the target's file of the same version.
    Modified { applied: Record, target: Record },
}

/// The answer for one rollback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The target runs on this schema. `newer_expand` lists the applied migrations it
    /// does not know, all `expand` (empty when it knows every applied one).
    Safe { newer_expand: Vec<Record> },
    /// The target would break on this schema; restore a snapshot taken before the
    /// blockers ran instead.
    Refused {
        blockers: Vec<Blocker>,
        newer_expand: Vec<Record>,
    },
}

impl Verdict {
    pub fn is_safe(&self) -> bool {
        matches!(self, Verdict::Safe { .. })
    }
}

/// Classifies a rollback to the release whose own migrations are `target`, on a database
/// where `applied` ran.
pub fn verdict(applied: &[Record], target: &[Record]) -> Verdict {
    let target: BTreeMap<i64, &Record> = target.iter().map(|r| (r.version, r)).collect();
    let mut blockers = Vec::new();
    let mut newer_expand = Vec::new();
    for record in applied {
        match target.get(&record.version) {
            Some(known) => {
                let comparable = !record.checksum.is_empty() && !known.checksum.is_empty();
                if comparable && !record.checksum.eq_ignore_ascii_case(&known.checksum) {
                    blockers.push(Blocker::Modified {
                        applied: record.clone(),
                        target: (*known).clone(),
                    });
                }
            }
            None => match Kind::of(&record.description) {
                Some(Kind::Expand) => newer_expand.push(record.clone()),
                Some(Kind::Contract) => blockers.push(Blocker::Contract(record.clone())),
                None => blockers.push(Blocker::Unclassified(record.clone())),
            },
        }
    }
    if blockers.is_empty() {
        Verdict::Safe { newer_expand }
    } else {
        Verdict::Refused {
            blockers,
            newer_expand,
        }
    }
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocker::Contract(r) => write!(f, "{} {} (contract)", r.version, r.description),
            Blocker::Unclassified(r) => write!(
                f,
                "{} {} (neither expand nor contract, so treated as contract)",
                r.version, r.description
            ),
            Blocker::Modified { applied, target } => write!(
                f,
                "{} {} (applied with checksum {}, the target release has {})",
                applied.version,
                applied.description,
                short(&applied.checksum),
                short(&target.checksum)
            ),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Safe { newer_expand } if newer_expand.is_empty() => {
                f.write_str("safe: the target release knows every applied migration")
            }
            Verdict::Safe { newer_expand } => write!(
                f,
                "safe: the target release runs on these newer expand migrations: {}",
                join(
                    newer_expand
                        .iter()
                        .map(|r| format!("{} {}", r.version, r.description))
                )
            ),
            Verdict::Refused { blockers, .. } => write!(
                f,
                "refused: the target release would break on {}",
                join(blockers.iter().map(ToString::to_string))
            ),
        }
    }
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

fn short(checksum: &str) -> &str {
    checksum.get(..12).unwrap_or(checksum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: i64, description: &str) -> Record {
        Record {
            version,
            description: description.to_owned(),
            checksum: format!("{version:02x}aa"),
        }
    }

    fn release_a() -> Vec<Record> {
        vec![
            record(1, "expand create users"),
            record(2, "expand create clock entries"),
        ]
    }

    #[test]
    fn target_knowing_every_applied_migration_is_safe() {
        let verdict = verdict(&release_a(), &release_a());
        assert_eq!(
            verdict,
            Verdict::Safe {
                newer_expand: vec![]
            }
        );
        assert_eq!(
            verdict.to_string(),
            "safe: the target release knows every applied migration"
        );
        // A target knowing more than was applied (its start-up applies the rest).
        assert!(super::verdict(&release_a()[..1], &release_a()).is_safe());
    }

    #[test]
    fn newer_expand_migrations_are_listed_and_safe() {
        let mut applied = release_a();
        applied.push(record(3, "expand add users nickname"));
        applied.push(record(4, "expand index users email"));
        let verdict = verdict(&applied, &release_a());
        assert_eq!(
            verdict,
            Verdict::Safe {
                newer_expand: applied[2..].to_vec()
            }
        );
        assert_eq!(
            verdict.to_string(),
            "safe: the target release runs on these newer expand migrations: \
             3 expand add users nickname, 4 expand index users email"
        );
    }

    #[test]
    fn any_contract_migration_refuses_naming_it() {
        let mut applied = release_a();
        applied.push(record(3, "expand add users nickname"));
        applied.push(record(4, "contract drop users email"));
        let verdict = verdict(&applied, &release_a());
        assert_eq!(
            verdict,
            Verdict::Refused {
                blockers: vec![Blocker::Contract(record(4, "contract drop users email"))],
                newer_expand: vec![record(3, "expand add users nickname")],
            }
        );
        assert_eq!(
            verdict.to_string(),
            "refused: the target release would break on 4 contract drop users email (contract)"
        );
    }

    #[test]
    fn unclassified_newer_migrations_count_as_contract() {
        let mut applied = release_a();
        applied.push(record(3, "add users nickname"));
        let verdict = verdict(&applied, &release_a());
        assert!(!verdict.is_safe());
        assert!(
            verdict
                .to_string()
                .contains("3 add users nickname (neither"),
            "{verdict}"
        );
    }

    #[test]
    fn old_descriptions_of_known_versions_do_not_matter() {
        // Rows written before the expand/contract rename keep their old description;
        // the target knows those versions, so only the checksum is compared, as sqlx does.
        let applied = vec![record(1, "create users"), record(2, "create clock entries")];
        assert!(verdict(&applied, &release_a()).is_safe());
    }

    #[test]
    fn edited_released_migration_refuses() {
        let mut applied = release_a();
        applied[1].checksum = "ffff".to_owned();
        let verdict = verdict(&applied, &release_a());
        assert_eq!(
            verdict,
            Verdict::Refused {
                blockers: vec![Blocker::Modified {
                    applied: applied[1].clone(),
                    target: release_a()[1].clone(),
                }],
                newer_expand: vec![],
            }
        );
        // Unknown checksums are not compared.
        let mut unknown = release_a();
        unknown[1].checksum.clear();
        assert!(super::verdict(&unknown, &release_a()).is_safe());
    }
}
