//! Data-safe releases (issue 11): an older release starts on a newer expand schema,
//! `migrate` runs once under a lock, failures leave the schema as it was, and the
//! old file names stay valid after the expand/contract rename.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::migrate::{Migrate as _, Migrator};
use sqlx::postgres::PgConnectOptions;
use timemanager_backend::MIGRATOR;
use timemanager_backend::migrations::{self, Kind, Timeouts};
use xshell::{Shell, cmd};

use crate::pg::{TestDb, wait_until};
use crate::support::{BIN, Backend, TempDir, http_get};

/// A migration only "release B" has: additive, so release A keeps working on it.
const RELEASE_B_EXPAND: (&str, &str) = (
    "20991231000001_expand_add_users_nickname.sql",
    "ALTER TABLE users ADD COLUMN IF NOT EXISTS nickname TEXT;\n",
);

fn repo_migrations() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations")
}

/// A migrations directory holding this release's files plus `extra` ones.
fn migrations_dir_with(extra: &[(&str, &str)]) -> TempDir {
    let dir = TempDir::new("migrations");
    for entry in std::fs::read_dir(repo_migrations()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.0.join(path.file_name().unwrap())).unwrap();
    }
    for (name, sql) in extra {
        std::fs::write(dir.0.join(name), sql).unwrap();
    }
    dir
}

async fn migrator_from(dir: &TempDir) -> Migrator {
    Migrator::new(dir.0.clone()).await.unwrap()
}

// Regression test for issue 11: release B added a migration, a rollback re-upped
// release A, and A's start-up migration refused to run ("migration 20991231000001 was
// previously applied but is missing in the resolved migrations"), so A never served.
#[tokio::test]
async fn older_release_starts_on_a_schema_with_newer_expand_migrations() {
    let db = TestDb::empty().await;
    let release_b = migrations_dir_with(&[RELEASE_B_EXPAND]);
    migrator_from(&release_b).await.run(&db.pool).await.unwrap();

    // Release A is this binary: it does not know 20991231000001.
    let backend = Backend::start(&db.url, &[]).await;
    let client = reqwest::Client::new();
    let health = format!("{}/health", backend.base_url());
    wait_until("release A healthy", Duration::from_secs(20), || async {
        http_get(&client, &health)
            .await
            .is_some_and(|(status, _)| status == 200)
    })
    .await;
    let [(_, cookie), (_, csrf)] = crate::support::http_session(&db, "root").await;
    let created = client
        .post(format!("{}/users", backend.base_url()))
        .header("cookie", cookie)
        .header("x-csrf-token", csrf)
        .json(&serde_json::json!({"username": "after_rollback", "email": "a@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);

    // Release B's column is still there: nothing was undone behind the operator's back.
    let nickname: Option<String> =
        sqlx::query_scalar("SELECT nickname FROM users WHERE username = 'after_rollback'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(nickname, None);
}

/// Runs `timemanager-backend <args>` with only `env` (plus `PATH`): (exit code, stdout, stderr).
fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let sh = Shell::new().unwrap();
    let mut command = cmd!(sh, "{BIN} {args...}")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .quiet()
        .ignore_status();
    for (key, value) in env {
        command = command.env(key, value);
    }
    let output = command.output().unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn options(db: &TestDb) -> PgConnectOptions {
    db.url.parse().unwrap()
}

const TIMEOUTS: Timeouts = Timeouts {
    lock: Duration::from_secs(5),
    statement: Duration::from_secs(60),
};

/// Columns and indexes of the public schema, enough to tell any two states apart here.
async fn schema(db: &TestDb) -> String {
    let columns: Option<String> = sqlx::query_scalar(
        "SELECT string_agg(table_name || '.' || column_name || ' ' || data_type || ' ' \
         || is_nullable, ', ' ORDER BY table_name, column_name) \
         FROM information_schema.columns WHERE table_schema = 'public'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let indexes: Option<String> = sqlx::query_scalar(
        "SELECT string_agg(indexdef, '; ' ORDER BY indexname) FROM pg_indexes \
         WHERE schemaname = 'public'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    format!(
        "{}\n{}",
        columns.unwrap_or_default(),
        indexes.unwrap_or_default()
    )
}

/// (version, description, success) of every `_sqlx_migrations` row.
async fn migration_rows(db: &TestDb) -> Vec<(i64, String, bool)> {
    sqlx::query_as("SELECT version, description, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

fn embedded_versions() -> Vec<i64> {
    MIGRATOR.iter().map(|m| m.version).collect()
}

#[tokio::test]
async fn start_up_path_tolerates_newer_migrations_that_strict_sqlx_refuses() {
    let db = TestDb::empty().await;
    let release_b = migrations_dir_with(&[RELEASE_B_EXPAND]);
    migrator_from(&release_b).await.run(&db.pool).await.unwrap();

    // What the server did before issue 11 was fixed, and why it refused to start. On its
    // own connection: a failed run keeps sqlx's session lock until the session ends.
    let mut conn = sqlx::PgConnection::connect_with(&options(&db))
        .await
        .unwrap();
    let err = MIGRATOR.run(&mut conn).await.unwrap_err();
    conn.close().await.unwrap();
    assert!(
        err.to_string()
            .contains("20991231000001 was previously applied but is missing"),
        "{err}"
    );
    migrations::run_at_startup(&db.pool).await.unwrap();

    let outcome = migrations::migrate(&options(&db), &migrations::migrator(), TIMEOUTS)
        .await
        .unwrap();
    assert!(outcome.applied.is_empty());
    assert_eq!(outcome.already_applied, MIGRATOR.iter().count());
    assert_eq!(outcome.newer.len(), 1);
    assert_eq!(outcome.newer[0].version, 20_991_231_000_001);
    assert_eq!(outcome.newer[0].description, "expand add users nickname");
}

#[tokio::test]
async fn migrate_subcommand_applies_pending_migrations_once_and_says_which() {
    let db = TestDb::empty().await;
    let env = [("DATABASE_URL", db.url.as_str())];

    let (code, stdout, stderr) = run_binary(&["migrate"], &env);
    assert_eq!(code, Some(0), "{stderr}");
    let applied: Vec<&str> = stdout.lines().collect();
    assert_eq!(applied.len(), MIGRATOR.iter().count(), "{stdout}");
    for (line, migration) in applied.iter().zip(MIGRATOR.iter()) {
        let prefix = format!("applied {} {} (", migration.version, migration.description);
        assert!(line.starts_with(&prefix), "{line}");
    }
    let rows = migration_rows(&db).await;
    let versions: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(versions, embedded_versions());

    let (code, stdout, _) = run_binary(&["migrate"], &env);
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout,
        format!(
            "no pending migrations ({} already applied)\n",
            MIGRATOR.iter().count()
        )
    );

    // The server then starts on the migrated database without migrating anything.
    let backend = Backend::start(&db.url, &[]).await;
    drop(backend);
    assert_eq!(migration_rows(&db).await, rows);
}

#[tokio::test]
async fn migrate_subcommand_fails_clearly() {
    let (code, stdout, stderr) = run_binary(&["migrate"], &[]);
    assert_eq!((code, stdout.as_str()), (Some(2), ""));
    assert!(
        stderr.starts_with("error: DATABASE_URL is required"),
        "{stderr}"
    );

    let (code, _, stderr) = run_binary(
        &["migrate"],
        &[
            ("DATABASE_URL", "postgres://u@127.0.0.1/db"),
            ("MIGRATE_LOCK_TIMEOUT", "5"),
        ],
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.starts_with("error: MIGRATE_LOCK_TIMEOUT must be a duration"),
        "{stderr}"
    );

    // A database that does not exist: not worth waiting for, exit 1 at once.
    let db = TestDb::empty().await;
    let missing = db.url.replace(&db.name, "tm_no_such_database");
    let (code, stdout, stderr) = run_binary(&["migrate"], &[("DATABASE_URL", &missing)]);
    assert_eq!((code, stdout.as_str()), (Some(1), ""));
    assert!(
        stderr.starts_with("error: database ") && stderr.contains("tm_no_such_database"),
        "{stderr}"
    );
}

#[tokio::test]
async fn migrations_subcommand_prints_the_embedded_list_as_json_lines() {
    let (code, stdout, stderr) = run_binary(&["migrations"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), MIGRATOR.iter().count());
    for (line, migration) in lines.iter().zip(MIGRATOR.iter()) {
        assert_eq!(line["version"], migration.version, "{line}");
        assert_eq!(line["kind"], "expand", "{line}");
        assert_eq!(line["description"], *migration.description, "{line}");
        assert_eq!(
            line["checksum"],
            migrations::hex(&migration.checksum),
            "{line}"
        );
        assert_eq!(line["no_transaction"], migration.no_tx, "{line}");
    }
}

/// The expand/contract rename changed only file names. sqlx compares applied migrations
/// by version and checksum (SHA-384 of the content), never by description, so databases
/// migrated by releases that had the old names keep working.
#[tokio::test]
async fn database_migrated_under_the_old_file_names_still_starts_and_migrates() {
    let old_names = TempDir::new("old-names");
    for entry in std::fs::read_dir(repo_migrations()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let (version, rest) = name.split_once('_').unwrap();
        let what = rest.strip_prefix("expand_").unwrap();
        std::fs::copy(&path, old_names.0.join(format!("{version}_{what}"))).unwrap();
    }
    let db = TestDb::empty().await;
    migrator_from(&old_names).await.run(&db.pool).await.unwrap();
    let before = migration_rows(&db).await;
    assert_eq!(before[0].1, "create users", "the old binary's description");

    let (code, stdout, stderr) = run_binary(&["migrate"], &[("DATABASE_URL", &db.url)]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("no pending migrations"), "{stdout}");
    let backend = Backend::start(&db.url, &[]).await;
    drop(backend);
    // Nothing rewrote the rows: the database keeps the old descriptions for those versions.
    assert_eq!(migration_rows(&db).await, before);
}

#[tokio::test]
async fn two_migrate_runs_at_once_migrate_exactly_once_without_deadlock() {
    let db = TestDb::empty().await;
    // Hold sqlx's migration lock so that both runs are provably waiting at once.
    let mut holder = sqlx::PgConnection::connect_with(&options(&db))
        .await
        .unwrap();
    holder.lock().await.unwrap();

    let url = db.url.clone();
    let spawn = |url: String| {
        tokio::task::spawn_blocking(move || run_binary(&["migrate"], &[("DATABASE_URL", &url)]))
    };
    let first = spawn(url.clone());
    let second = spawn(url);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let locks: Vec<(bool, Option<String>)> = sqlx::query_as(
            "SELECT l.granted, d.datname::text FROM pg_locks l \
             LEFT JOIN pg_database d ON d.oid = l.database WHERE l.locktype = 'advisory'",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let waiting = locks
            .iter()
            .filter(|(granted, datname)| !granted && datname.as_deref() == Some(&db.name))
            .count();
        if waiting == 2 {
            break;
        }
        for task in [&first, &second] {
            assert!(
                !task.is_finished(),
                "a migrate run ended while the lock was held"
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both migrate runs should be waiting for the lock: {locks:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    holder.unlock().await.unwrap();
    holder.close().await.unwrap();

    let outputs = [
        tokio::time::timeout(Duration::from_secs(30), first)
            .await
            .unwrap()
            .unwrap(),
        tokio::time::timeout(Duration::from_secs(30), second)
            .await
            .unwrap()
            .unwrap(),
    ];
    for (code, _, stderr) in &outputs {
        assert_eq!(*code, Some(0), "{stderr}");
    }
    let n = MIGRATOR.iter().count();
    let mut applied_counts: Vec<usize> = outputs
        .iter()
        .map(|(_, stdout, _)| stdout.lines().filter(|l| l.starts_with("applied ")).count())
        .collect();
    applied_counts.sort_unstable();
    assert_eq!(applied_counts, [0, n], "{outputs:?}");
    assert!(
        outputs
            .iter()
            .any(|(_, stdout, _)| stdout
                == &format!("no pending migrations ({n} already applied)\n")),
        "{outputs:?}"
    );
    let rows = migration_rows(&db).await;
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        embedded_versions()
    );
    assert!(rows.iter().all(|r| r.2), "{rows:?}");
}

#[tokio::test]
async fn migration_failing_on_its_third_statement_leaves_the_schema_unchanged() {
    let db = TestDb::migrated().await;
    sqlx::query("INSERT INTO users (username, email) VALUES ('kept', 'kept@example.com')")
        .execute(&db.pool)
        .await
        .unwrap();
    let before = schema(&db).await;
    let rows_before = migration_rows(&db).await;

    let dir = migrations_dir_with(&[(
        "20991231000002_expand_three_statements.sql",
        "CREATE TABLE audit_log (id BIGSERIAL PRIMARY KEY, note TEXT);\n\
         ALTER TABLE users ADD COLUMN IF NOT EXISTS nickname TEXT;\n\
         DO $$ BEGIN RAISE EXCEPTION 'the third statement fails'; END $$;\n",
    )]);
    let err = migrations::migrate(&options(&db), &migrator_from(&dir).await, TIMEOUTS)
        .await
        .unwrap_err();
    assert!(
        err.starts_with(
            "migration 20991231000002 (expand three statements) failed; it was rolled back: \
             the schema is unchanged"
        ) && err.contains("the third statement fails"),
        "{err}"
    );

    assert_eq!(schema(&db).await, before);
    assert_eq!(
        migration_rows(&db).await,
        rows_before,
        "no row, and no success = false row"
    );
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE username = 'kept'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(kept, 1);
    // The lock went with the failed run's connection: the next run is not blocked.
    assert_next_migrate_runs_at_once(&db).await;
}

#[tokio::test]
async fn migrate_gives_up_on_a_busy_table_and_a_slow_statement_and_changes_nothing() {
    let db = TestDb::migrated().await;
    let before = schema(&db).await;
    let rows_before = migration_rows(&db).await;
    let timeouts = Timeouts {
        lock: Duration::from_millis(200),
        statement: Duration::from_millis(500),
    };

    // A long read holds a lock that ALTER TABLE must wait for.
    let mut reader = sqlx::PgConnection::connect_with(&options(&db))
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut reader).await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS SHARE MODE")
        .execute(&mut reader)
        .await
        .unwrap();
    let release_b = migrator_from(&migrations_dir_with(&[RELEASE_B_EXPAND])).await;
    let err = migrations::migrate(&options(&db), &release_b, timeouts)
        .await
        .unwrap_err();
    assert!(
        err.contains("it was rolled back")
            && err.ends_with("a lock was not granted within MIGRATE_LOCK_TIMEOUT (200 ms)"),
        "{err}"
    );
    assert_eq!(schema(&db).await, before);
    sqlx::query("COMMIT").execute(&mut reader).await.unwrap();
    reader.close().await.unwrap();

    let slow = migrator_from(&migrations_dir_with(&[(
        "20991231000003_expand_slow.sql",
        "CREATE TABLE slow (id BIGINT);\nSELECT pg_sleep(5);\n",
    )]))
    .await;
    let err = migrations::migrate(&options(&db), &slow, timeouts)
        .await
        .unwrap_err();
    assert!(
        err.ends_with("a statement ran longer than MIGRATE_STATEMENT_TIMEOUT (500 ms)"),
        "{err}"
    );
    assert_eq!(schema(&db).await, before);
    assert_eq!(migration_rows(&db).await, rows_before);

    // Once the table is free, the same migration goes through.
    let outcome = migrations::migrate(&options(&db), &release_b, timeouts)
        .await
        .unwrap();
    assert_eq!(outcome.applied.len(), 1);
    assert_eq!(
        Kind::of(&outcome.applied[0].0.description),
        Some(Kind::Expand)
    );
}

// What a PostgreSQL restart does to a running migration, for the one connection that
// migrates: the server ends it mid-transaction (`pg_terminate_backend`, as a restart
// would, without stopping the PostgreSQL the other tests share).
#[tokio::test]
async fn migration_cut_off_by_the_server_leaves_the_schema_unchanged_and_a_rerun_works() {
    let db = TestDb::migrated().await;
    let before = schema(&db).await;
    let rows_before = migration_rows(&db).await;
    let dir = migrations_dir_with(&[(
        "20991231000003_expand_slow.sql",
        "CREATE TABLE half_done (id BIGINT);\nSELECT pg_sleep(60);\n",
    )]);
    let migrator = migrator_from(&dir).await;
    let opts = options(&db);
    let kill = async {
        let mut pid = None;
        for _ in 0..400 {
            pid = sqlx::query_scalar::<_, i32>(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND state = 'active' AND query LIKE 'CREATE TABLE half_done%'",
            )
            .fetch_optional(&db.pool)
            .await
            .unwrap();
            if pid.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid.expect("the slow migration never ran"))
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert!(killed);
    };
    let (result, ()) = tokio::time::timeout(Duration::from_secs(40), async {
        tokio::join!(migrations::migrate(&opts, &migrator, TIMEOUTS), kill)
    })
    .await
    .expect("the cut-off migration ended");
    let err = result.unwrap_err();
    assert!(err.contains("20991231000003"), "{err}");
    assert_eq!(schema(&db).await, before, "half_done must not exist");
    assert_eq!(
        migration_rows(&db).await,
        rows_before,
        "no row, no success = false row"
    );
    // The lock died with the connection: the release's own migrate runs at once.
    assert_next_migrate_runs_at_once(&db).await;
}

/// The release's own `migrate` is not blocked by a lock and finds nothing to do.
async fn assert_next_migrate_runs_at_once(db: &TestDb) {
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        migrations::migrate(&options(db), &migrations::migrator(), TIMEOUTS),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(outcome.applied.is_empty());
}
