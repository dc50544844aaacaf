//! Two processes starting at once against a fresh database both migrate it successfully.

mod common;

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
    msgcontact_api::cli::create_key(&db, "1234567890123456", None, None)
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
