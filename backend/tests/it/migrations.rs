//! Migrations apply cleanly to an empty database and are idempotent.

use crate::pg::TestDb;

#[tokio::test]
async fn migrations_apply_to_an_empty_database_and_rerun_as_no_op() {
    let db = TestDb::empty().await;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(tables, 0, "database should start empty");

    let migrator = &timemanager_backend::MIGRATOR;
    migrator.run(&db.pool).await.unwrap();
    migrator.run(&db.pool).await.unwrap();

    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let expected: Vec<i64> = migrator.iter().map(|m| m.version).collect();
    assert_eq!(applied, expected);
    assert!(!expected.is_empty());

    let mut tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    tables.sort();
    assert_eq!(
        tables,
        [
            "_sqlx_migrations",
            "accounts",
            "clock_entries",
            "sessions",
            "teams",
            "users"
        ]
    );

    // The one-open-entry rule lives in the schema, not only in the handlers.
    let index: String = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'clock_entries_one_open_per_user'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        index.contains("UNIQUE") && index.contains("WHERE (clock_out IS NULL)"),
        "{index}"
    );
}
