//! Schema migrations: the embedded list, the explicit `migrate` step and the start-up
//! safety net, and the expand/contract naming rule.
//!
//! A deploy runs `timemanager-backend migrate` once, with the new image, before the new
//! release takes traffic. The server still migrates at start, which is then a no-op,
//! and tolerates migrations newer than itself, so a rolled-back release starts on the
//! schema a newer release left behind. That is only safe when every newer migration is
//! backward compatible, which is why each file says what it is in its name:
//! `<version>_expand_<what>.sql` (additive) or `<version>_contract_<what>.sql`
//! (drops, renames, type changes). sqlx stores the name (as the description, with `_`
//! turned into spaces) in `_sqlx_migrations`, so the database itself records the kind
//! of every migration that ran, even of versions an older binary has never seen;
//! the rollback rule (crate `timemanager-migration-rule`, shared with the deploy) decides
//! from that.
//!
//! sqlx checks an applied migration by version and checksum (SHA-384 of the SQL) only,
//! never by description, so renaming a file keeps databases migrated under the old
//! name valid, as long as its content is untouched.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use sqlx::migrate::{Migrate as _, MigrateError, Migrator};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgConnection, PgPool};

use crate::config::MigrateConfig;
use crate::error::error_chain;
pub use timemanager_migration_rule::{Kind, Record};

/// This binary's migrations, embedded at compile time from `backend/migrations/`.
///
/// It keeps sqlx's strict defaults: running it directly refuses a database with
/// migrations it does not know. The server and `migrate` run [`migrator`] instead.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// SQLSTATE `lock_not_available`: `lock_timeout` expired.
const LOCK_NOT_AVAILABLE: &str = "55P03";
/// SQLSTATE `query_canceled`: `statement_timeout` expired (or a cancel request).
const QUERY_CANCELED: &str = "57014";

/// The embedded migrations as the server and `migrate` run them: applied versions this
/// binary does not know are tolerated (an older release on a newer schema), and sqlx's
/// advisory lock (the default) keeps two migrators from running at once.
pub fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!();
    migrator.set_ignore_missing(true);
    migrator.set_locking(true);
    migrator
}

/// One line of `timemanager-backend migrations`: what a release knows, so a deploy can
/// record it and a later rollback can compare it with the database.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub version: i64,
    /// `expand`, `contract`, or `null` for a name without a kind.
    pub kind: Option<&'static str>,
    pub description: String,
    /// SHA-384 of the SQL, lowercase hex, as sqlx stores it in `_sqlx_migrations`.
    pub checksum: String,
    pub no_transaction: bool,
}

/// The up migrations of `migrator`, in version order (down files are not applied by
/// `run` and so are not part of what a release knows).
pub fn list(migrator: &Migrator) -> Vec<Listed> {
    migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| Listed {
            version: m.version,
            kind: Kind::of(&m.description).map(Kind::as_str),
            description: m.description.to_string(),
            checksum: hex(&m.checksum),
            no_transaction: m.no_tx,
        })
        .collect()
}

/// `timemanager-backend migrations`: the embedded list as JSON lines on stdout.
pub fn print_list() -> ExitCode {
    let mut out = String::new();
    for listed in list(&MIGRATOR) {
        match serde_json::to_string(&listed) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
            }
            Err(err) => {
                eprintln!("error: cannot encode migration {}: {err}", listed.version);
                return ExitCode::FAILURE;
            }
        }
    }
    // `migrations | head -1` closes the pipe early; that is not a failure, and print!
    // would panic on it.
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: cannot write the migration list: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Lowercase hex, the form checksums take in the listing and in [`Record`].
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// Start-up safety net: applies what `migrate` has not (a no-op after a deploy that
/// migrated), tolerating newer migrations, and logs those so an operator sees that an
/// older release runs on a newer schema.
///
/// On error the pooled connection that ran it may still hold sqlx's advisory lock (sqlx
/// only releases it on success), so the caller must close the pool, as start-up does.
pub async fn run_at_startup(pool: &PgPool) -> Result<(), MigrateError> {
    let migrator = migrator();
    migrator.run(pool).await?;
    let mut conn = pool.acquire().await?;
    let newer = newer_than(&migrator, &applied(&mut conn).await?);
    if !newer.is_empty() {
        tracing::warn!(
            migrations = %describe(&newer),
            "the database has migrations newer than this release; running on that schema"
        );
    }
    Ok(())
}

/// Timeouts of the explicit `migrate` step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// How long one statement may wait for a table lock (`lock_timeout`): a migration
    /// queued behind a long query would otherwise block every query queued behind it.
    pub lock: Duration,
    /// How long one statement may run (`statement_timeout`), including the wait for
    /// another migrator's advisory lock. Zero disables it.
    pub statement: Duration,
}

/// What one `migrate` run did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Migrations this run applied, with their execution time.
    pub applied: Vec<(Record, Duration)>,
    /// Migrations of this binary that were already applied.
    pub already_applied: usize,
    /// Applied migrations this binary does not know (a newer release ran them).
    pub newer: Vec<Record>,
}

/// Applies the pending migrations of `migrator` over one dedicated connection.
///
/// The connection first takes sqlx's advisory lock, waiting (at most the statement
/// timeout) for any other migrator to finish; only then is `lock_timeout` set, so it
/// bounds the waits for table locks inside migrations and not the wait for another
/// migrator. Holding the lock across the whole run makes the report exact: versions
/// applied by someone else cannot slip in between the two reads. sqlx's own lock inside
/// `run` is the same session lock again (advisory locks are re-entrant). Closing the
/// connection releases the lock on every path, including errors.
pub async fn migrate(
    options: &PgConnectOptions,
    migrator: &Migrator,
    timeouts: Timeouts,
) -> Result<Outcome, String> {
    let mut conn = options
        .connect()
        .await
        .map_err(|err| format!("cannot connect to the database: {}", error_chain(&err)))?;
    let result = migrate_locked(&mut conn, migrator, timeouts).await;
    // Closing (or, if that fails, dropping) ends the session and its advisory lock.
    let _ = conn.close().await;
    result
}

async fn migrate_locked(
    conn: &mut PgConnection,
    migrator: &Migrator,
    timeouts: Timeouts,
) -> Result<Outcome, String> {
    let statement_ms = timeouts.statement.as_millis();
    sqlx::query(&format!("SET statement_timeout = {statement_ms}"))
        .execute(&mut *conn)
        .await
        .map_err(|err| format!("cannot set statement_timeout: {}", error_chain(&err)))?;
    conn.lock().await.map_err(|err| {
        explain(
            &err,
            "waiting for another migrator to release the migration lock",
            timeouts,
        )
    })?;
    let lock_ms = timeouts.lock.as_millis();
    sqlx::query(&format!("SET lock_timeout = {lock_ms}"))
        .execute(&mut *conn)
        .await
        .map_err(|err| format!("cannot set lock_timeout: {}", error_chain(&err)))?;

    conn.ensure_migrations_table()
        .await
        .map_err(|err| explain(&err, "creating _sqlx_migrations", timeouts))?;
    let before = applied(conn)
        .await
        .map_err(|err| explain(&err, "reading _sqlx_migrations", timeouts))?;

    if let Err(err) = migrator.run(&mut *conn).await {
        return Err(explain_run(&err, migrator, timeouts));
    }

    let after = applied(conn)
        .await
        .map_err(|err| explain(&err, "reading _sqlx_migrations", timeouts))?;
    let before_versions: BTreeSet<i64> = before.iter().map(|r| r.version).collect();
    let applied_now = after
        .iter()
        .filter(|r| !before_versions.contains(&r.version))
        .map(|r| (r.record(), r.execution_time))
        .collect();
    let newer = newer_than(migrator, &after);
    let known: BTreeSet<i64> = migrator.iter().map(|m| m.version).collect();
    Ok(Outcome {
        applied: applied_now,
        already_applied: before.iter().filter(|r| known.contains(&r.version)).count(),
        newer,
    })
}

/// `timemanager-backend migrate`: applies pending migrations, prints what it did, and
/// returns the exit code (0 done or nothing to do, 1 failed).
pub async fn migrate_command(config: MigrateConfig) -> ExitCode {
    let timeouts = config.timeouts;
    let options = config.database.connect_options();
    if let Err(err) = crate::wait_for_database(&options).await {
        eprintln!(
            "error: database {} unavailable: {}",
            config.database,
            error_chain(&err)
        );
        return ExitCode::FAILURE;
    }
    match migrate(&options, &migrator(), timeouts).await {
        Ok(outcome) => {
            print!("{}", report(&outcome));
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The lines `migrate` prints on success.
pub fn report(outcome: &Outcome) -> String {
    let mut out = String::new();
    for (record, elapsed) in &outcome.applied {
        let _ = writeln!(
            out,
            "applied {} {} ({} ms)",
            record.version,
            record.description,
            elapsed.as_millis()
        );
    }
    if outcome.applied.is_empty() {
        let _ = writeln!(
            out,
            "no pending migrations ({} already applied)",
            outcome.already_applied
        );
    }
    if !outcome.newer.is_empty() {
        let _ = writeln!(
            out,
            "the database also has migrations newer than this release: {}",
            describe(&outcome.newer)
        );
    }
    out
}

/// A row of `_sqlx_migrations` that succeeded.
struct AppliedRow {
    version: i64,
    description: String,
    checksum: Vec<u8>,
    execution_time: Duration,
}

impl AppliedRow {
    fn record(&self) -> Record {
        Record {
            version: self.version,
            description: self.description.clone(),
            checksum: hex(&self.checksum),
        }
    }
}

async fn applied(conn: &mut PgConnection) -> Result<Vec<AppliedRow>, MigrateError> {
    let rows: Vec<(i64, String, Vec<u8>, i64)> = sqlx::query_as(
        "SELECT version, description, checksum, execution_time FROM _sqlx_migrations \
         WHERE success ORDER BY version",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(version, description, checksum, execution_ns)| AppliedRow {
                version,
                description,
                checksum,
                // -1 while sqlx has not recorded it yet; report that as zero.
                execution_time: Duration::from_nanos(u64::try_from(execution_ns).unwrap_or(0)),
            },
        )
        .collect())
}

fn newer_than(migrator: &Migrator, applied: &[AppliedRow]) -> Vec<Record> {
    applied
        .iter()
        .filter(|row| !migrator.version_exists(row.version))
        .map(AppliedRow::record)
        .collect()
}

fn describe(records: &[Record]) -> String {
    records
        .iter()
        .map(|r| format!("{} {}", r.version, r.description))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An error of a `migrate` step, with what the timeouts mean when one expired.
fn explain(err: &MigrateError, doing: &str, timeouts: Timeouts) -> String {
    let hint = match sqlstate(err).as_deref() {
        Some(LOCK_NOT_AVAILABLE) => format!(
            "; a lock was not granted within MIGRATE_LOCK_TIMEOUT ({} ms)",
            timeouts.lock.as_millis()
        ),
        Some(QUERY_CANCELED) => format!(
            "; a statement ran longer than MIGRATE_STATEMENT_TIMEOUT ({} ms)",
            timeouts.statement.as_millis()
        ),
        _ => String::new(),
    };
    format!("{doing}: {}{hint}", error_chain(err))
}

/// A failed `Migrator::run`, naming the migration and what state it left.
fn explain_run(err: &MigrateError, migrator: &Migrator, timeouts: Timeouts) -> String {
    match err {
        MigrateError::ExecuteMigration(_, version) => {
            let migration = migrator.iter().find(|m| m.version == *version);
            let name = migration.map_or_else(String::new, |m| format!(" ({})", m.description));
            let state = if migration.is_some_and(|m| m.no_tx) {
                "it ran outside a transaction (`-- no-transaction`), so it may be partly \
                 applied and will run again in full next time; nothing was recorded"
            } else {
                "it was rolled back: the schema is unchanged and nothing was recorded"
            };
            explain(
                err,
                &format!("migration {version}{name} failed; {state}"),
                timeouts,
            )
        }
        MigrateError::VersionMismatch(version) => format!(
            "migration {version} was changed after it was applied (checksum differs); \
             restore the released file and add a new migration instead"
        ),
        MigrateError::Dirty(version) => format!(
            "migration {version} is marked as failed in _sqlx_migrations; \
             repair the schema by hand, then delete that row"
        ),
        _ => explain(err, "migrating", timeouts),
    }
}

fn sqlstate(err: &MigrateError) -> Option<String> {
    let sqlx_err = match err {
        MigrateError::Execute(err) | MigrateError::ExecuteMigration(err, _) => err,
        _ => return None,
    };
    match sqlx_err {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    }
}

/// Checks one file of `backend/migrations/` against the naming rule: the kind in the
/// name, and `-- no-transaction` only where it is needed (an expand migration building
/// an index `CONCURRENTLY`, which PostgreSQL refuses inside a transaction).
pub fn check_file(file_name: &str, sql: &str) -> Result<(), String> {
    let stem = file_name
        .strip_suffix(".up.sql")
        .or_else(|| file_name.strip_suffix(".down.sql"))
        .or_else(|| file_name.strip_suffix(".sql"))
        .ok_or_else(|| format!("{file_name}: not a `.sql` file"))?;
    let (version, rest) = stem
        .split_once('_')
        .ok_or_else(|| format!("{file_name}: expected `<version>_expand_<what>.sql`"))?;
    if version.parse::<i64>().map_or(true, |v| v <= 0) {
        return Err(format!(
            "{file_name}: the version `{version}` must be a positive integer"
        ));
    }
    let kind = Kind::of(rest).ok_or_else(|| {
        format!(
            "{file_name}: the name must say `expand` (additive, the previous release runs \
             on it) or `contract` (breaks the previous release): \
             `{version}_expand_{rest}.sql` or `{version}_contract_{rest}.sql`"
        )
    })?;
    let what = &rest[kind.as_str().len()..];
    let what_ok = what.strip_prefix('_').is_some_and(|what| {
        !what.is_empty()
            && what
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    });
    if !what_ok {
        return Err(format!(
            "{file_name}: after `{}` comes `_<what>` in lowercase letters, digits and `_`",
            kind.as_str()
        ));
    }

    // sqlx honours the marker only on the very first line.
    let no_transaction = sql.starts_with("-- no-transaction");
    // `REFRESH MATERIALIZED VIEW CONCURRENTLY` is the one concurrent form allowed in
    // a transaction; every other one (index builds, drops, reindex, detach) is not.
    let upper = sql
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_uppercase();
    let concurrently = upper
        .replace("MATERIALIZED VIEW CONCURRENTLY", "")
        .contains("CONCURRENTLY");
    if !no_transaction && sql.contains("-- no-transaction") {
        return Err(format!(
            "{file_name}: `-- no-transaction` only counts as the first line of the file"
        ));
    }
    match (no_transaction, kind, concurrently) {
        (true, Kind::Expand, true) | (false, _, false) => Ok(()),
        (true, Kind::Contract, _) => Err(format!(
            "{file_name}: a contract migration must run in a transaction, so that a failure \
             leaves the schema unchanged; drop `-- no-transaction`"
        )),
        (true, Kind::Expand, false) => Err(format!(
            "{file_name}: `-- no-transaction` is only for building indexes CONCURRENTLY; \
             without it a failure leaves the schema unchanged"
        )),
        (false, _, true) => Err(format!(
            "{file_name}: CONCURRENTLY cannot run inside a transaction; put it alone in an \
             expand migration whose first line is `-- no-transaction`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn every_migration_file_says_expand_or_contract() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut problems = Vec::new();
        let mut n_files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let sql = std::fs::read_to_string(&path).unwrap();
            n_files += 1;
            if let Err(problem) = check_file(&name, &sql) {
                problems.push(problem);
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        // Every file is one sqlx embeds: none is silently skipped for its name.
        assert_eq!(n_files, MIGRATOR.iter().count());
        for migration in MIGRATOR.iter() {
            assert!(
                Kind::of(&migration.description).is_some(),
                "{}",
                migration.description
            );
        }
    }

    /// Checksums of migrations that have shipped. sqlx refuses to start on a database
    /// where a migration ran with other content, so a released file is never edited
    /// (only renamed, as the expand/contract rename did); add a line when one ships.
    const RELEASED: &[(i64, &str)] = &[
        (
            20251125000001,
            "0c820b53eef81285662046426b4ad94c84b9308f075b0914cf66a3419b04b7ea7728affc0155767f68d80af392820197",
        ),
        (
            20251125000002,
            "581949980b5b2bc25a6d59b3052865d477bf0fa3f88d63757a88e339c182d2713b1a6d513d2b8686d84e9877179279df",
        ),
        (
            20251201000001,
            "6d3a298ff072e4934a8f86d884a0af6092009e4831cf9ee0e9bf0ba6bfba737f264e00f1e92b8a50760b799e3b72b100",
        ),
    ];

    #[test]
    fn released_migrations_are_never_edited() {
        for (version, checksum) in RELEASED {
            let migration = MIGRATOR
                .iter()
                .find(|m| m.version == *version)
                .unwrap_or_else(|| panic!("released migration {version} was removed"));
            assert_eq!(
                hex(&migration.checksum),
                *checksum,
                "migration {version} ({}) was edited after it shipped; restore it and add a new migration",
                migration.description
            );
        }
    }

    #[test]
    fn naming_rule() {
        let ok = |name: &str, sql: &str| assert_eq!(check_file(name, sql), Ok(()), "{name}");
        let bad = |name: &str, sql: &str, needle: &str| {
            let err = check_file(name, sql).unwrap_err();
            assert!(err.contains(needle), "{name}: {err}");
        };
        ok("1_expand_create_users.sql", "CREATE TABLE users ();");
        ok(
            "20251125000002_contract_drop_users_email.sql",
            "ALTER TABLE users DROP COLUMN email;",
        );
        ok("3_contract_rename_x.up.sql", "ALTER TABLE a RENAME b TO c;");
        ok(
            "3_contract_rename_x.down.sql",
            "ALTER TABLE a RENAME c TO b;",
        );
        ok(
            "4_expand_index_users_email.sql",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS i ON users (email);",
        );

        bad("1_create_users.sql", "", "must say `expand`");
        bad("1_expanded_users.sql", "", "must say `expand`");
        bad("1_expand.sql", "", "`_<what>`");
        bad("1_expand_Users.sql", "", "`_<what>`");
        bad("x_expand_users.sql", "", "positive integer");
        bad("0_expand_users.sql", "", "positive integer");
        bad("expand_users.sql", "", "positive integer");
        bad("1_expand_users.txt", "", "not a `.sql` file");
        bad(
            "1_expand_users.sql",
            "-- no-transaction\nALTER TABLE a ADD b int;",
            "only for building indexes",
        );
        bad(
            "1_contract_index.sql",
            "-- no-transaction\nDROP INDEX CONCURRENTLY i;",
            "must run in a transaction",
        );
        bad(
            "1_expand_index.sql",
            "CREATE INDEX CONCURRENTLY i ON t (c);",
            "cannot run inside a transaction",
        );
        bad(
            "1_expand_index.sql",
            "-- why\n-- no-transaction\nCREATE INDEX CONCURRENTLY i ON t (c);",
            "first line",
        );
    }

    #[test]
    fn kind_from_description_or_file_name() {
        assert_eq!(Kind::of("expand create users"), Some(Kind::Expand));
        assert_eq!(Kind::of("contract drop users email"), Some(Kind::Contract));
        assert_eq!(Kind::of("12_expand_x.sql"), Some(Kind::Expand));
        assert_eq!(Kind::of("create users"), None);
        assert_eq!(Kind::of("expanded users"), None);
    }

    #[test]
    fn listing_matches_the_embedded_migrations() {
        let listed = list(&MIGRATOR);
        assert_eq!(listed.len(), MIGRATOR.iter().count());
        let first = &listed[0];
        assert_eq!(first.kind, Some("expand"));
        assert_eq!(first.checksum.len(), 96, "SHA-384 in hex");
        let line = serde_json::to_string(first).unwrap();
        assert!(
            line.starts_with(&format!(
                "{{\"version\":{},\"kind\":\"expand\",\"description\":\"expand ",
                first.version
            )),
            "{line}"
        );
    }

    #[test]
    fn report_lines() {
        let record = |version, description: &str| Record {
            version,
            description: description.to_owned(),
            checksum: String::new(),
        };
        let outcome = Outcome {
            applied: vec![(record(1, "expand create users"), Duration::from_millis(12))],
            already_applied: 0,
            newer: vec![],
        };
        assert_eq!(report(&outcome), "applied 1 expand create users (12 ms)\n");
        let outcome = Outcome {
            applied: vec![],
            already_applied: 2,
            newer: vec![record(9, "expand add nickname")],
        };
        assert_eq!(
            report(&outcome),
            "no pending migrations (2 already applied)\n\
             the database also has migrations newer than this release: 9 expand add nickname\n"
        );
    }
}
