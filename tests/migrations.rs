//! Opening the database: two processes starting at once against a fresh database both migrate it
//! successfully, and the API's single writer leaves SQLite's checkpoints to the checkpoint task.

use msgcontact_tests as common;

use sea_orm::{ConnectionTrait, Database};

async fn migrate_concurrently(url: &str) {
    let (a, b, c) = tokio::join!(
        msgcontact::db::connect(url, 2),
        msgcontact::db::connect(url, 2),
        msgcontact::db::connect(url, 2)
    );
    let db = a.expect("first migrator");
    b.expect("second migrator");
    c.expect("third migrator");
    // The schema is complete and usable.
    let master = msgcontact::secrets::MasterKey::random();
    msgcontact_api::admin_cli::create_key(&db, &master, "1234567890123456", None, None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_startup_on_postgres() {
    let name = format!(
        "msgcontact_test_mig_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let admin = Database::connect(common::pg_admin_url())
        .await
        .expect("PostgreSQL is required for this test");
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap();
    let root = common::pg_admin_url()
        .rsplit_once('/')
        .unwrap()
        .0
        .to_owned();
    migrate_concurrently(&format!("{root}/{name}")).await;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_startup_on_sqlite() {
    let dir = common::TempDir(
        std::env::temp_dir().join(format!("msgcontact-mig-{}", uuid::Uuid::new_v4().simple())),
    );
    migrate_concurrently(&format!(
        "sqlite://{}/nested/db.sqlite?mode=rwc",
        dir.0.display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_single_writer_leaves_checkpoints_to_the_checkpoint_task() {
    let dir = common::TempDir(
        std::env::temp_dir().join(format!("msgcontact-ckpt-{}", uuid::Uuid::new_v4().simple())),
    );
    let url = format!("sqlite://{}/db.sqlite?mode=rwc", dir.0.display());
    let pool = msgcontact::db::connect(&url, 2).await.unwrap();
    let writer = msgcontact::db::connect_single(&url).await.unwrap();
    // Every row fills a page of its own: 1,500 commits write well past SQLite's usual automatic
    // checkpoint threshold of 1,000 pages (the writer's backstop is at 10,000).
    for i in 0..1500 {
        writer
            .execute_unprepared(&format!(
                "INSERT INTO settings (key, value) VALUES ('k{i}', hex(zeroblob(2000)))"
            ))
            .await
            .unwrap();
    }
    assert_eq!(scalar(&writer, "PRAGMA wal_autocheckpoint").await, 10_000);
    let (frames, copied) = msgcontact::db::checkpoint(&pool).await.unwrap().unwrap();
    assert!(
        frames >= 1500,
        "the writer checkpointed by itself: only {frames} frames in the WAL"
    );
    assert_eq!(
        copied, frames,
        "a passive checkpoint with no reader copies it all"
    );
    // The next write starts the WAL over: it stays small while the task keeps up.
    writer
        .execute_unprepared("INSERT INTO settings (key, value) VALUES ('last', 'x')")
        .await
        .unwrap();
    let (frames, _) = msgcontact::db::checkpoint(&pool).await.unwrap().unwrap();
    assert!(frames < 10, "the WAL did not start over: {frames} frames");
    // Everything written is there.
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM settings WHERE key LIKE 'k%'").await,
        1500
    );
}

async fn scalar(db: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            sql,
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index(0).unwrap()
}
