//! The lab's data-safety scenarios: a migration that fails, a snapshot that does not fit, a
//! contract migration that a rollback must not cross without restoring, and a restore drill,
//! each with a background writer whose acknowledged rows must survive.
//!
//! Releases F (a migration failing on its third statement) and E (a `contract` migration)
//! are built on top of B, which carries an `expand` migration.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use xshell::{Shell, cmd};

use crate::{
    e2e::{Scenario, edit_new, stack},
    harness::lab::{Lab, Release, Server, commit},
    steps::format_duration,
};

/// B's migration: additive, so A still runs on the schema it leaves.
pub(crate) const EXPAND_FILE: &str =
    "backend/migrations/20261201000001_expand_add_clock_entries_note.sql";
pub(crate) const EXPAND_DESCRIPTION: &str = "20261201000001 expand add clock entries note";
const EXPAND_SQL: &str = "ALTER TABLE clock_entries ADD COLUMN note text;\n";
/// F's migration: two statements that work, a third that fails; one transaction.
const BROKEN_FILE: &str = "backend/migrations/20261201000002_expand_e2e_broken.sql";
const BROKEN_SQL: &str = "CREATE TABLE e2e_first (id integer);\nINSERT INTO e2e_first VALUES (1);\nALTER TABLE e2e_no_such_table ADD COLUMN third text;\n";
/// E's migration: drops B's column, which B's release would need back.
const CONTRACT_FILE: &str =
    "backend/migrations/20261201000002_contract_drop_clock_entries_note.sql";
const CONTRACT_SQL: &str = "ALTER TABLE clock_entries DROP COLUMN note;\n";
const CONTRACT_DESCRIPTION: &str = "20261201000002 contract drop clock entries note";

/// Writes B's expand migration into the clone (before B's commit).
pub(crate) fn add_expand_migration(lab: &Lab) -> anyhow::Result<()> {
    edit_new(&lab.clone.join(EXPAND_FILE), EXPAND_SQL)
}

/// A release on top of B with one more migration file.
fn build_on_b(
    sh: &Shell,
    lab: &Lab,
    b: &Release,
    label: &'static str,
    file: &str,
    sql: &str,
) -> anyhow::Result<Release> {
    let dir = sh.push_dir(&lab.clone);
    let commit_b = &b.commit;
    cmd!(sh, "git checkout --quiet --detach {commit_b}").run()?;
    edit_new(&lab.clone.join(file), sql)?;
    commit(sh, &format!("e2e: release {label}"))?;
    drop(dir);
    lab.build(sh, label)
}

/// Inserts numbered users through Traefik until stopped, as the web app would, and keeps
/// the names of those the backend acknowledged (201).
pub(crate) struct Writer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Written>,
}

#[derive(Debug, Default)]
pub(crate) struct Written {
    pub(crate) acked: Vec<String>,
    /// Refused or failed requests (a deploy that recreates the backend has a short gap).
    pub(crate) failed: usize,
}

impl Writer {
    /// At most 3000 writes or 10 minutes, one every 50 ms.
    pub(crate) fn start(prefix: &'static str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut written = Written::default();
            // Creating users is the admin's: one session for the whole run.
            let session = match stack::sign_in() {
                Ok(session) => session,
                Err(_) => {
                    written.failed += 1;
                    return written;
                }
            };
            let start = Instant::now();
            for n in 0..3000 {
                if flag.load(Ordering::Relaxed) || start.elapsed() > Duration::from_secs(600) {
                    break;
                }
                let name = format!("{prefix}-{n}");
                let body = format!(r#"{{"username":"{name}","email":"{name}@example.com"}}"#);
                match stack::post_json(&session, "/users", &body) {
                    Ok(201) => written.acked.push(name),
                    _ => written.failed += 1,
                }
                thread::sleep(Duration::from_millis(50));
            }
            written
        });
        Writer { stop, handle }
    }

    pub(crate) fn stop(self) -> anyhow::Result<Written> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::format_err!("the background writer panicked"))
    }
}

/// Every acknowledged write of `written` is in the database.
pub(crate) fn check_acked(sh: &Shell, prefix: &str, written: &Written) -> anyhow::Result<()> {
    let query = format!("SELECT username FROM users WHERE username LIKE '{prefix}-%'");
    let present: BTreeSet<String> = stack::psql(sh, &query)?
        .lines()
        .map(str::to_owned)
        .collect();
    let lost: Vec<&String> = written
        .acked
        .iter()
        .filter(|name| !present.contains(*name))
        .collect();
    ensure!(
        lost.is_empty(),
        "{} of {} acknowledged writes are not in the database: {:?}",
        lost.len(),
        written.acked.len(),
        &lost[..lost.len().min(10)]
    );
    ensure!(
        !written.acked.is_empty(),
        "the writer had no write acknowledged"
    );
    Ok(())
}

/// Count and checksum of the rows that are not the writer's, per table: what a deploy,
/// rollback or restore must leave exactly as it was.
pub(crate) fn fingerprint(sh: &Shell) -> anyhow::Result<String> {
    let users = stack::psql(
        sh,
        "SELECT count(*) || ' ' || md5(coalesce(string_agg(id || ':' || username || ':' || email || ':' || created_at, ',' ORDER BY id), '')) FROM users WHERE username NOT LIKE 'writer-%'",
    )?;
    let entries = stack::psql(
        sh,
        "SELECT count(*) || ' ' || md5(coalesce(string_agg(id || ':' || user_id || ':' || clock_in || ':' || coalesce(clock_out::text, ''), ',' ORDER BY id), '')) FROM clock_entries",
    )?;
    Ok(format!("users {users}, clock_entries {entries}"))
}

/// `pg_dump --schema-only` of the database, without the random `\restrict` key newer
/// pg_dump versions add.
pub(crate) fn schema(sh: &Shell) -> anyhow::Result<String> {
    let dump = cmd!(
        sh,
        "docker exec timemanager-postgres pg_dump --schema-only -U timemanager -d timemanager"
    )
    .quiet()
    .read()?;
    Ok(dump
        .lines()
        .filter(|line| !line.starts_with("\\restrict") && !line.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Rows of `_sqlx_migrations` marked failed: never any after a scenario.
fn check_no_failed_migrations(sh: &Shell) -> anyhow::Result<()> {
    let failed = stack::psql(
        sh,
        "SELECT count(*) FROM _sqlx_migrations WHERE NOT success",
    )?;
    ensure!(failed == "0", "_sqlx_migrations has {failed} failed rows");
    Ok(())
}

fn snapshot_files(server: &Server) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(server.base.join("snapshots"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A tmpfs over the server's `snapshots/`, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(sh: &Shell, dir: &Path, options: &str) -> anyhow::Result<SmallDisk> {
        fs::create_dir_all(dir)?;
        let options = format!("{options},mode=700");
        cmd!(sh, "mount -t tmpfs -o {options} e2e-small-disk {dir}")
            .quiet()
            .run()?;
        Ok(SmallDisk(dir.to_owned()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let Ok(sh) = Shell::new() else { return };
        let dir = &self.0;
        if cmd!(sh, "umount {dir}").quiet().run().is_err() {
            eprintln!(
                "warning: could not unmount the small disk at {}",
                dir.display()
            );
        }
    }
}

impl Scenario<'_> {
    /// The data-safety steps, on the server where B runs with its expand migration applied.
    pub(crate) fn data_safety(&mut self, b: &Release) -> anyhow::Result<Vec<String>> {
        let (sh, lab) = (self.sh, self.lab);
        let mut report = Vec::new();
        let f = self.steps.run(
            "build F (a migration failing on its third statement)",
            || build_on_b(sh, lab, b, "F", BROKEN_FILE, BROKEN_SQL),
        )?;
        report.push(self.failing_migration(b, &f)?);
        let e = self.steps.run("build E (a contract migration)", || {
            build_on_b(sh, lab, b, "E", CONTRACT_FILE, CONTRACT_SQL)
        })?;
        report.push(self.disk_full(b, &e)?);
        report.push(self.contract_and_restore(b, &e)?);
        report.push(self.restore_drill()?);
        Ok(report)
    }

    /// Data 1: the migration fails before the switch; B serves throughout, schema unchanged.
    fn failing_migration(&mut self, b: &Release, f: &Release) -> anyhow::Result<String> {
        let (sh, lab, server) = (self.sh, self.lab, &self.server);
        let before = schema(sh)?;
        let rows = fingerprint(sh)?;
        let writer = Writer::start("writer-f");
        let out = self
            .steps
            .run("data 1. deploy F (its migration fails)", || {
                lab.deploy(sh, server, f, &[])
            })?;
        let written = writer.stop()?;
        self.outputs.push(("data-1-deploy-F", out.output.clone()));
        ensure!(!out.ok, "deploy F succeeded:\n{}", out.output);
        ensure!(
            out.output.contains("the migration failed")
                && out.output.contains("stopped before switching"),
            "deploy F did not stop at its migration:\n{}",
            out.output
        );
        ensure!(
            lab.revision()? == b.commit,
            "B no longer serves after F's failed migration"
        );
        ensure!(
            schema(sh)? == before,
            "F's failed migration changed the schema"
        );
        ensure!(
            fingerprint(sh)? == rows,
            "F's deploy changed rows from before it"
        );
        check_no_failed_migrations(sh)?;
        check_acked(sh, "writer-f", &written)?;
        Ok(format!(
            "data 1. deploy F, whose migration fails on its third statement: exit non-zero before the switch in {}, B served throughout, schema unchanged (pg_dump --schema-only), {} acknowledged writes all present ({} failed requests)",
            format_duration(out.elapsed),
            written.acked.len(),
            written.failed
        ))
    }

    /// Data 2: the snapshot does not fit; the deploy stops before migrating, no `.partial`.
    fn disk_full(&mut self, b: &Release, e: &Release) -> anyhow::Result<String> {
        let (sh, lab, server) = (self.sh, self.lab, &self.server);
        let dir = server.base.join("snapshots");
        let before = schema(sh)?;
        let rows = fingerprint(sh)?;
        // Too small for the free-space check; then room enough but no file can be created,
        // so pg_dump's output fails as on a full disk.
        let disks = [
            (
                "size=64k",
                "less than twice the database's",
                "64 KiB: refused by the free-space check before pg_dump",
            ),
            (
                "size=64m,nr_inodes=1",
                "failed (disk full?)",
                "no free inode: pg_dump's output failed (ENOSPC)",
            ),
        ];
        let mut seen = Vec::new();
        for (options, message, what) in disks {
            let disk = SmallDisk::mount(sh, &dir, options)?;
            let out = self
                .steps
                .run("data 2. deploy E onto a full snapshot disk", || {
                    lab.deploy(sh, server, e, &[])
                })?;
            let partials: Vec<String> = snapshot_files(server)
                .into_iter()
                .filter(|name| name.ends_with(".partial"))
                .collect();
            drop(disk);
            self.outputs
                .push(("data-2-deploy-E-disk-full", out.output.clone()));
            ensure!(
                !out.ok,
                "deploy E succeeded with no room for its snapshot ({options})"
            );
            ensure!(
                out.output.contains(message),
                "deploy E onto {options} did not stop at the snapshot with `{message}`:\n{}",
                out.output
            );
            ensure!(partials.is_empty(), "left behind: {partials:?}");
            ensure!(
                schema(sh)? == before,
                "E's migration ran without a snapshot"
            );
            ensure!(fingerprint(sh)? == rows, "rows changed");
            ensure!(lab.revision()? == b.commit, "B no longer serves");
            seen.push(what);
        }
        Ok(format!(
            "data 2. deploy E onto a small snapshot disk, twice ({}): stopped before migrating, no .partial, schema and rows unchanged, B serves",
            seen.join("; ")
        ))
    }

    /// Data 3: E's contract migration; the rollback to B is refused, then done with
    /// `--restore`, which keeps a rescue dump and prints the window it removed.
    fn contract_and_restore(&mut self, b: &Release, e: &Release) -> anyhow::Result<String> {
        let (sh, lab, server) = (self.sh, self.lab, &self.server);
        let b_schema = schema(sh)?;
        let rows = fingerprint(sh)?;
        let dry = lab
            .deploy(sh, server, e, &["--dry-run"])?
            .expect_ok("deploy E --dry-run")?;
        ensure!(
            dry.output.contains(&format!(
                "The server's database now: 1 pending: {CONTRACT_DESCRIPTION}."
            )),
            "the dry run does not name E's pending migration:\n{}",
            dry.output
        );
        let writer = Writer::start("writer-e");
        let deploy = self
            .steps
            .run("data 3. deploy E (contract migration)", || {
                lab.deploy(sh, server, e, &[])?.expect_ok("deploy E")
            })?;
        self.outputs
            .push(("data-3-deploy-E", deploy.output.clone()));
        ensure!(lab.revision()? == e.commit, "E does not serve");
        let record = server.last_record()?;
        let snapshot = record["snapshot"]
            .as_str()
            .and_then(|path| path.rsplit('/').next())
            .context("deploy E recorded no snapshot")?
            .to_owned();
        ensure!(
            snapshot.ends_with(&format!("-{}.pgdump", b.tag)),
            "E's snapshot {snapshot} is not named after B, whose schema it holds"
        );
        let migrate = record["steps"]["migrate"].as_f64().unwrap_or_default()
            + record["steps"]["snapshot"].as_f64().unwrap_or_default()
            + record["steps"]["migrations"].as_f64().unwrap_or_default();
        let refused = self.steps.run("data 3. rollback to B (refused)", || {
            lab.rollback(sh, server, &["--to", &b.tag])
        })?;
        self.outputs
            .push(("data-3-rollback-refused", refused.output.clone()));
        ensure!(
            !refused.ok,
            "the rollback across a contract migration went ahead"
        );
        ensure!(
            refused.output.contains(CONTRACT_DESCRIPTION)
                && refused.output.contains(&format!("--restore {snapshot}")),
            "the refusal does not name the migration and the snapshot:\n{}",
            refused.output
        );
        ensure!(
            lab.revision()? == e.commit,
            "the refused rollback changed what serves"
        );
        let written = writer.stop()?;
        check_acked(sh, "writer-e", &written)?;
        let restore = self.steps.run("data 3. rollback to B --restore", || {
            lab.rollback(sh, server, &["--to", &b.tag, "--restore", &snapshot])?
                .expect_ok("rollback --restore")
        })?;
        self.outputs
            .push(("data-3-rollback-restore", restore.output.clone()));
        ensure!(
            lab.revision()? == b.commit,
            "B does not serve after the restore"
        );
        ensure!(schema(sh)? == b_schema, "the restored schema is not B's");
        ensure!(
            fingerprint(sh)? == rows,
            "the rows from before the snapshot are not back as they were"
        );
        check_no_failed_migrations(sh)?;
        ensure!(
            restore.output.contains("rows per table") && restore.output.contains("rescue dump"),
            "the restore did not print the window it removed:\n{}",
            restore.output
        );
        let rescues: Vec<String> = snapshot_files(server)
            .into_iter()
            .filter(|name| name.ends_with(".rescue.pgdump"))
            .collect();
        ensure!(rescues.len() == 1, "rescue dumps: {rescues:?}");
        // The writes after the snapshot are what the restore removes, by design; those
        // before it are back.
        let users: u32 = stack::psql(
            sh,
            "SELECT count(*) FROM users WHERE username LIKE 'writer-e-%'",
        )?
        .parse()?;
        Ok(format!(
            "data 3. `deploy --dry-run` of E names its pending contract migration; deploy E: {} (of which migrations+snapshot+migrate {migrate:.1} s); rollback to B refused naming `{CONTRACT_DESCRIPTION}` and the snapshot; `--restore {snapshot}`: {}, B serves on B's schema, rescue dump {}, {} of {} writer rows from before the snapshot kept (the rest is the printed window, in the rescue dump)",
            format_duration(deploy.elapsed),
            format_duration(restore.elapsed),
            rescues[0],
            users,
            written.acked.len()
        ))
    }

    /// Data 4: `db snapshot`, then the newest snapshot restored into a scratch database with
    /// the same row counts.
    fn restore_drill(&mut self) -> anyhow::Result<String> {
        let (sh, lab, server) = (self.sh, self.lab, &self.server);
        let taken = self.steps.run("data 4. db snapshot", || {
            lab.db(sh, server, &["snapshot"], false)?
                .expect_ok("db snapshot")
        })?;
        let newest = snapshot_files(server)
            .into_iter()
            .rfind(|name| name.ends_with(".pgdump") && !name.ends_with(".rescue.pgdump"))
            .context("no snapshot after `db snapshot`")?;
        let listing = lab
            .db(sh, server, &["snapshots"], false)?
            .expect_ok("db snapshots")?;
        ensure!(
            listing.output.contains(&newest),
            "`db snapshots` does not list {newest}"
        );
        let dump = fs::read(server.base.join("snapshots").join(&newest))?;
        let start = Instant::now();
        cmd!(
            sh,
            "docker exec timemanager-postgres createdb -U timemanager e2e_drill"
        )
        .quiet()
        .run()?;
        let restored = cmd!(sh, "docker exec -i timemanager-postgres pg_restore --exit-on-error -U timemanager -d e2e_drill")
            .stdin(dump.as_slice())
            .quiet()
            .run();
        let restore_time = start.elapsed();
        let counts = |db: &str| -> anyhow::Result<String> {
            let query = "SELECT (SELECT count(*) FROM users) || ' ' || (SELECT count(*) FROM clock_entries)";
            Ok(cmd!(
                sh,
                "docker exec timemanager-postgres psql -U timemanager -d {db} -tAc {query}"
            )
            .quiet()
            .read()?
            .trim()
            .to_owned())
        };
        let compared = restored
            .map_err(anyhow::Error::from)
            .and_then(|()| Ok((counts("timemanager")?, counts("e2e_drill")?)));
        cmd!(
            sh,
            "docker exec timemanager-postgres dropdb -U timemanager e2e_drill"
        )
        .quiet()
        .run()?;
        let (live, drill) = compared?;
        ensure!(
            live == drill,
            "rows (users, clock entries): live {live}, restored {drill}"
        );
        Ok(format!(
            "data 4. restore drill: `db snapshot` {} ({} bytes), pg_restore into a scratch database {}, rows (users clock_entries) {live} = {drill}",
            format_duration(taken.elapsed),
            dump.len(),
            format_duration(restore_time)
        ))
    }
}
