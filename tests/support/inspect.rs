//! Looking at what a test app did: the codes it sent, every row it wrote, the queues, and the
//! delivery invariants over a whole scenario.

use std::time::Duration;

use crate::{app::TestApp, config::amqp_url};

impl TestApp {
    /// The code the webhook inbox received for a send (waits up to 10 s).
    pub async fn code_for(&self, request_id: &str) -> String {
        for _ in 0..200 {
            if let Some(m) = self.inbox.for_request(request_id).first() {
                return m["code"].as_str().unwrap().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no SMS received for {request_id}");
    }

    /// Every row of every table, as text, one per line (`table:row`).
    pub async fn all_rows(&self) -> String {
        use sea_orm::{ConnectionTrait, DbBackend, Statement};
        let backend = self.db.get_database_backend();
        let tables_sql = match backend {
            DbBackend::Sqlite => {
                "SELECT name AS t FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            }
            _ => "SELECT tablename::text AS t FROM pg_tables WHERE schemaname = 'public'",
        };
        let query = |sql: String| self.db.query_all_raw(Statement::from_string(backend, sql));
        let mut out = String::new();
        for row in query(tables_sql.to_owned()).await.unwrap() {
            let table: String = row.try_get("", "t").unwrap();
            let sql = match backend {
                DbBackend::Sqlite => {
                    // Every column cast to text and joined: the row as a reader of the file sees it.
                    let cols = query(format!("SELECT name FROM pragma_table_info('{table}')"))
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|c| {
                            let n: String = c.try_get("", "name").unwrap();
                            format!("COALESCE(CAST(\"{n}\" AS TEXT), '')")
                        })
                        .collect::<Vec<_>>()
                        .join(" || '|' || ");
                    format!("SELECT {cols} AS r FROM \"{table}\"")
                }
                _ => format!("SELECT t::text AS r FROM \"{table}\" t"),
            };
            for r in query(sql).await.unwrap() {
                let text: String = r.try_get("", "r").unwrap();
                out.push_str(&format!("{table}:{text}\n"));
            }
        }
        out
    }
}

/// SPEC §7 over the history of a scenario: every accepted request terminal exactly once, at most
/// one SMS per request (two only after an ambiguous attempt), the quota equal to what was accepted,
/// and nothing left in the work or retry queues.
pub async fn assert_invariants(app: &TestApp, accepted: &[String]) {
    use msgcontact::entities::{daily_counter, send_request};
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows = send_request::Entity::find().all(&app.db).await.unwrap();
        let live: Vec<_> = rows
            .iter()
            .filter(|r| {
                !msgcontact::status::SendStatus::parse(&r.status)
                    .unwrap()
                    .is_terminal()
            })
            .collect();
        if live.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests stuck: {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = send_request::Entity::find().all(&app.db).await.unwrap();
    for id in accepted {
        let r = rows
            .iter()
            .find(|r| &r.request_id == id)
            .unwrap_or_else(|| panic!("accepted {id} lost"));
        let delivered = app.sms.delivered(id) + app.inbox.for_request(id).len();
        let allowed = if r.ambiguous_attempts > 0 { 2 } else { 1 };
        assert!(
            delivered <= allowed,
            "{id}: {delivered} SMS (ambiguous attempts {})",
            r.ambiguous_attempts
        );
        if r.status == "Sent" {
            assert!(
                delivered >= 1,
                "{id} is Sent but the provider never delivered it"
            );
        }
    }
    let counted: i32 = daily_counter::Entity::find()
        .filter(daily_counter::Column::AccountId.eq(app.key.account.as_str()))
        .all(&app.db)
        .await
        .unwrap()
        .iter()
        .map(|c| c.count)
        .sum();
    let publish_failed = rows
        .iter()
        .filter(|r| r.failure_code.as_deref() == Some("PublishFailed"))
        .count();
    assert_eq!(
        counted as usize,
        rows.len() - publish_failed,
        "quota conservation"
    );
    assert!(
        app.sms.received().iter().all(|r| r.signature_ok),
        "every provider call is correctly signed"
    );
    assert_eq!(depth(&app.work_queue()).await, 0, "work queue drained");
    for l in 0..app.options.retry_delays.split(',').count() {
        assert_eq!(
            depth(&format!("{}.send.retry.{l}", app.prefix)).await,
            0,
            "retry level {l} drained"
        );
    }
}

/// Ready messages in a queue (0 if it does not exist), read the way the worker's report reads it.
pub async fn depth(queue: &str) -> u32 {
    let conn = msgcontact::amqp::connect(&amqp_url(), "test-probe")
        .await
        .unwrap();
    let n = msgcontact::monitor::queue_depth(&conn, queue)
        .await
        .unwrap()
        .map(|d| d.0)
        .unwrap_or(0);
    let _ = conn.close(200, "bye".into()).await;
    n
}

/// The queue's depth once it reads `expected`, or what it reads after `within`. A message a
/// consumer gives back by closing its channel is re-queued by the quorum queue a moment after the
/// close is confirmed, so a depth read at once can miss it.
pub async fn depth_settled(queue: &str, expected: u32, within: Duration) -> u32 {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = depth(queue).await;
        if n == expected || tokio::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
