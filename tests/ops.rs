//! What operators see: Prometheus metrics on the API and the worker, queue depth gauges that follow
//! the broker, and health endpoints.

use msgcontact_tests as common;

use std::time::Duration;

use common::{Backend, Options, TestApp};
use msgcontact::entities::send_request;
use msgcontact::monitor::Census;
use sea_orm::{EntityTrait, Set};

async fn get(url: &str) -> (u16, String) {
    let r = common::http_get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of the first sample of `metric` whose labels contain every `labels` pair.
fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_queue_depth() {
    let mut app = TestApp::spawn_with(
        Backend::Sqlite,
        Options {
            cooldown_secs: 0,
            ..Default::default()
        },
    )
    .await;
    let api = format!("http://{}", app.api_addrs[0]);
    let worker = format!("http://{}", app.worker_addr.unwrap());
    for base in [&api, &worker] {
        assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
        let (status, body) = get(&format!("{base}/readyz")).await;
        assert_eq!(
            (status, body.contains("\"database\":true")),
            (200, true),
            "{body}"
        );
    }
    let id = app.add_contact("metrics", Some("86-13912341234")).await;
    let params = [
        ("ContactId", id.as_str()),
        ("PhoneNumber", "86-13912341234"),
    ];
    let rid = app
        .call("SendPhoneVerificationForMessageContact", &params)
        .await
        .assert_ok()["RequestId"]
        .as_str()
        .unwrap()
        .to_owned();
    app.wait_status(&rid, "Sent", 10).await;
    app.call("GetMessageContact", &[("ContactId", "c-0000000000000000")])
        .await;

    let (_, text) = get(&format!("{api}/metrics")).await;
    let ok = sample(
        &text,
        "msgcontact_api_requests_total",
        &[
            ("action", "SendPhoneVerificationForMessageContact"),
            ("code", "OK"),
        ],
    );
    assert!(ok.is_some_and(|n| n >= 1.0), "{text}");
    assert!(
        sample(
            &text,
            "msgcontact_api_requests_total",
            &[
                ("action", "GetMessageContact"),
                ("code", "EntityNotExists.Contact")
            ]
        )
        .is_some()
    );
    assert!(
        sample(
            &text,
            "msgcontact_publish_confirms_total",
            &[("result", "ack")]
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert!(
        text.contains("msgcontact_api_request_duration_seconds_bucket{"),
        "histogram, not summary"
    );
    // The SPEC's label set, exactly: dashboards select on it.
    assert!(
        text.lines().any(|l| l.starts_with(
            "msgcontact_api_request_duration_seconds_count{action=\"SendPhoneVerificationForMessageContact\"} "
        )),
        "{text}"
    );
    // Latency by status: the accepted send and the refused lookup are counted apart.
    for (action, status) in [
        ("SendPhoneVerificationForMessageContact", "200"),
        ("GetMessageContact", "404"),
    ] {
        assert!(
            sample(
                &text,
                "msgcontact_api_request_duration_by_status_seconds_count",
                &[("action", action), ("status", status)]
            )
            .is_some_and(|n| n >= 1.0),
            "{action} {status}: {text}"
        );
    }
    // The stages of an accepted send, so an operator can tell where its latency went.
    for stage in [
        "msgcontact_write_wait_seconds",
        "msgcontact_write_batch_duration_seconds",
        "msgcontact_publish_duration_seconds",
    ] {
        assert!(
            sample(&text, &format!("{stage}_count"), &[]).is_some_and(|n| n >= 1.0),
            "{stage}: {text}"
        );
        assert!(text.contains(&format!("{stage}_bucket{{")), "{stage}");
    }
    let (_, text) = get(&format!("{worker}/metrics")).await;
    assert!(
        sample(&text, "msgcontact_jobs_total", &[("outcome", "Sent")]).is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(text.contains("msgcontact_provider_request_duration_seconds_bucket{"));

    // With the worker stopped, the depth gauge follows the queue up, then down to 0 after a drain.
    app.stop_worker().await;
    for _ in 0..3 {
        app.call("SendPhoneVerificationForMessageContact", &params)
            .await
            .assert_ok();
    }
    let queue = app.work_queue();
    let wait_for = |want: f64| {
        let (api, queue) = (api.clone(), queue.clone());
        async move {
            for _ in 0..100 {
                let (_, text) = get(&format!("{api}/metrics")).await;
                if sample(
                    &text,
                    "msgcontact_queue_messages_ready",
                    &[("queue", &queue)],
                ) == Some(want)
                {
                    return text;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            panic!("depth gauge of {queue} never reached {want}");
        }
    };
    let text = wait_for(3.0).await;
    // The ops page is self-contained and its data endpoint agrees with the broker.
    let (status, page) = get(&format!("{api}/ops")).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<svg") && !page.contains("http://") && !page.contains("https://"),
        "no external assets"
    );
    let (_, data) = get(&format!("{api}/ops/data")).await;
    let data: serde_json::Value = serde_json::from_str(&data).unwrap();
    let last = data["series"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["work"], 3, "{data}");
    let queued = data["latest"]["report"]["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[0] == "Queued")
        .unwrap()[1]
        .clone();
    assert_eq!(queued, 3);
    assert!(
        sample(&text, "msgcontact_oldest_queued_request_age_seconds", &[]).is_some_and(|s| s > 0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "msgcontact_queue_consumers", &[("queue", &queue)]),
        Some(0.0)
    );
    app.start_worker().await;
    wait_for(0.0).await;
    app.cleanup().await;
}

/// Ready messages of `queue` as `rabbitmqctl list_queues` reports them (the broker's own view,
/// independent of our passive declares).
fn rabbitmqctl_ready(queue: &str) -> u64 {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "messages_ready"])
        .output()
        .expect("rabbitmqctl is required for this test");
    assert!(out.status.success(), "rabbitmqctl list_queues failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next()?.parse::<u64>().ok()?))
        })
        .find(|(name, _)| *name == queue)
        .map(|(_, n)| n)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_gauge_follows_rabbitmqctl_during_a_throttled_burst() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Options {
            cooldown_secs: 0,
            daily_limit: 1000,
            // The worker delivers 5 SMS/s while the burst offers about 12/s: the queue must grow.
            provider_total_rate: Some(5),
            ..Default::default()
        },
    )
    .await;
    let api = format!("http://{}", app.api_addrs[0]);
    let queue = app.work_queue();
    let n = 100;
    let mut targets = Vec::new();
    for i in 0..n {
        let phone = format!("86-139{:08}", 30_000 + i);
        let name = format!(
            "burst{}{}",
            (b'a' + (i / 26) as u8) as char,
            (b'a' + (i % 26) as u8) as char
        );
        targets.push((app.add_contact(&name, Some(&phone)).await, phone));
    }
    let app = std::sync::Arc::new(app);
    let burst = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(80));
            for (id, phone) in targets {
                tick.tick().await;
                app.call(
                    "SendPhoneVerificationForMessageContact",
                    &[("ContactId", &id), ("PhoneNumber", &phone)],
                )
                .await
                .assert_ok();
            }
        })
    };

    // Sample both views about once a second until the queue is empty again.
    let t0 = std::time::Instant::now();
    let mut broker: Vec<(f64, u64)> = Vec::new();
    let mut gauge: Vec<(f64, u64)> = Vec::new();
    loop {
        let q = queue.clone();
        let r = tokio::task::spawn_blocking(move || rabbitmqctl_ready(&q))
            .await
            .unwrap();
        broker.push((t0.elapsed().as_secs_f64(), r));
        let (_, text) = get(&format!("{api}/metrics")).await;
        let g = sample(
            &text,
            "msgcontact_queue_messages_ready",
            &[("queue", &queue)],
        )
        .expect("the work queue's depth gauge") as u64;
        gauge.push((t0.elapsed().as_secs_f64(), g));
        let peaked = gauge.iter().any(|(_, g)| *g >= 20);
        if burst.is_finished() && peaked && g == 0 && r == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "never drained: broker {broker:?}, gauge {gauge:?}"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    burst.await.unwrap();
    eprintln!("rabbitmqctl: {broker:?}\ngauge: {gauge:?}");

    // rabbitmqctl's numbers are themselves the broker's statistics, emitted every 5 s, so both
    // views are snapshots up to one interval old with their own phase: every gauge reading lies
    // within what rabbitmqctl reported one interval either side of it (plus the 1.5 s a sample
    // takes); the drain moves 5 messages a second, so allow that.
    let window = msgcontact::monitor::POLL_INTERVAL.as_secs_f64() + 1.5;
    for &(t, g) in &gauge {
        let seen: Vec<u64> = broker
            .iter()
            .filter(|(tb, _)| *tb >= t - window && *tb <= t + window)
            .map(|(_, r)| *r)
            .collect();
        let (lo, hi) = (*seen.iter().min().unwrap(), *seen.iter().max().unwrap());
        assert!(
            g + 5 >= lo && g <= hi + 5,
            "gauge {g} at {t:.1} s is outside what rabbitmqctl reported in the last poll interval ({lo}..={hi})"
        );
    }
    // It rose, then fell to 0 as the worker drained.
    let peak = gauge.iter().map(|(_, g)| *g).max().unwrap();
    let at_peak = gauge.iter().position(|(_, g)| *g == peak).unwrap();
    assert!(
        gauge[..at_peak].iter().any(|(_, g)| *g > 0 && *g < peak),
        "the gauge rose through intermediate values: {gauge:?}"
    );
    assert!(
        gauge[at_peak..].iter().any(|(_, g)| *g > 0 && *g < peak),
        "the gauge fell through intermediate values: {gauge:?}"
    );
    assert_eq!(gauge.last().unwrap().1, 0);
    std::sync::Arc::try_unwrap(app)
        .unwrap_or_else(|_| panic!("app still shared"))
        .cleanup()
        .await;
}

/// A request row accepted at `accepted_ms`, with an id minted in that millisecond (`k` tells
/// rows of one millisecond apart).
fn request_row(accepted_ms: i64, k: u64, status: &str) -> send_request::ActiveModel {
    send_request::ActiveModel {
        request_id: Set(format!(
            "{:08X}-{:04X}-7000-8000-{k:012X}",
            accepted_ms >> 16,
            accepted_ms & 0xFFFF
        )),
        account_id: Set("1234567890123456".into()),
        contact_id: Set(format!("c-{k}")),
        phone: Set("86-13900001234".into()),
        status: Set(status.into()),
        attempts: Set(0),
        ambiguous_attempts: Set(0),
        failure_code: Set(None),
        failure_message: Set(None),
        provider_message_id: Set(None),
        verification_id: Set(None),
        day: Set("2026-12-02".into()),
        accepted_ms: Set(accepted_ms),
        sent_ms: Set((status == "Sent").then_some(accepted_ms + 500)),
        updated_ms: Set(accepted_ms),
    }
}

async fn census_counts(backend: Backend) {
    let app = TestApp::spawn_with(backend, Options::without_worker()).await;
    let db = &app.db;
    let t = msgcontact::time::now_ms();
    let min = 60_000;
    let mut rows = Vec::new();
    for k in 0..5 {
        rows.push(request_row(t - 30 * min, k, "Sent"));
    }
    rows.push(request_row(t - 30 * min, 5, "Failed"));
    rows.push(request_row(t - 29 * min, 6, "Superseded"));
    for k in 7..10 {
        rows.push(request_row(t - 10 * min, k, "Queued"));
    }
    rows.push(request_row(t - 9 * min, 10, "Sending"));
    rows.push(request_row(t - 8 * min, 11, "Retrying"));
    send_request::Entity::insert_many(rows)
        .exec(db)
        .await
        .unwrap();

    let mut census = Census::default();
    // [Queued, Sending, Retrying, Sent, Failed, Superseded]
    let c = census.poll_at(db, t).await.unwrap();
    assert_eq!(c.by_status, [3, 1, 1, 5, 1, 1]);
    assert_eq!(c.oldest_queued_ms, Some(t - 10 * min));
    assert_eq!(
        c.send_rate_per_second, 0.0,
        "nothing was sent in the last minute"
    );

    // The second poll settles what lies well below the oldest live request; from then on the
    // census no longer reads those rows (what keeps a poll cheap on a large table): a change
    // made to them behind its back, which the service never makes, goes unseen.
    let c = census.poll_at(db, t + 5_000).await.unwrap();
    assert_eq!(c.by_status, [3, 1, 1, 5, 1, 1]);
    sea_orm::ConnectionTrait::execute_unprepared(
        db,
        &format!(
            "UPDATE send_requests SET status = 'Failed' WHERE accepted_ms < {}",
            t - 20 * min
        ),
    )
    .await
    .unwrap();
    let c = census.poll_at(db, t + 10_000).await.unwrap();
    assert_eq!(c.by_status, [3, 1, 1, 5, 1, 1]);

    // Live requests move on: the counts follow, and so does the oldest Queued age.
    let mut newer = vec![request_row(t + 11_000, 12, "Queued")];
    newer.push(request_row(t + 11_000, 13, "Queued"));
    send_request::Entity::insert_many(newer)
        .exec(db)
        .await
        .unwrap();
    sea_orm::ConnectionTrait::execute_unprepared(
        db,
        &format!(
            "UPDATE send_requests SET status = 'Sent', sent_ms = {} \
             WHERE status IN ('Queued', 'Sending') AND accepted_ms < {t}",
            t + 20_000
        ),
    )
    .await
    .unwrap();
    let c = census.poll_at(db, t + 30_000).await.unwrap();
    assert_eq!(c.by_status, [2, 0, 1, 9, 1, 1]);
    assert_eq!(c.oldest_queued_ms, Some(t + 11_000));
    // Until it has a minute of history, the rate is what the rows it reads say.
    assert!((c.send_rate_per_second - 4.0 / 60.0).abs() < 1e-9, "{c:?}");

    // With a minute of history, the rate is the Sent total's rise over the last minute: it
    // still counts requests that have dropped below the watermark since they were sent.
    sea_orm::ConnectionTrait::execute_unprepared(
        db,
        &format!(
            "UPDATE send_requests SET status = 'Sent', sent_ms = {} \
             WHERE status IN ('Queued', 'Sending', 'Retrying')",
            t + 65_000
        ),
    )
    .await
    .unwrap();
    let c = census.poll_at(db, t + 70_000).await.unwrap();
    assert_eq!(c.by_status, [0, 0, 0, 12, 1, 1]);
    assert_eq!(c.oldest_queued_ms, None);
    let rate = c.send_rate_per_second;
    assert!(
        (rate - 7.0 / 60.0).abs() < 1e-9,
        "7 sent since the poll at t+10s: {rate}"
    );
    // The three Queued at t-10m (sent at t+20s) now lie below the watermark.
    let c = census.poll_at(db, t + 75_000).await.unwrap();
    assert_eq!(c.by_status, [0, 0, 0, 12, 1, 1]);
    let rate = c.send_rate_per_second;
    assert!(
        (rate - 7.0 / 65.0).abs() < 1e-9,
        "7 sent in the 65 s since t+10s: {rate}"
    );

    // A fresh census (the one-shot `queues` report) reads the table whole: it agrees, apart from
    // the rows changed behind the first one's back.
    let c = Census::default().poll_at(db, t + 75_000).await.unwrap();
    assert_eq!(c.by_status, [0, 0, 0, 7, 7, 0]);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn census_counts_statuses_on_sqlite() {
    census_counts(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn census_counts_statuses_on_postgres() {
    census_counts(Backend::Postgres).await;
}

/// The planner's figure for a table, as `ANALYZE` last left it (-1: never analyzed).
async fn planner_rows(db: &sea_orm::DatabaseConnection, table: &str) -> f64 {
    use sea_orm::ConnectionTrait;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT reltuples::float8 AS n FROM pg_class WHERE relname = '{table}'"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

/// Inserts requests `from..to` in one transaction: an analyze sees all of them or none.
async fn insert_requests(db: &sea_orm::DatabaseConnection, from: u64, to: u64) {
    use sea_orm::TransactionTrait;
    let t = msgcontact::time::now_ms();
    let txn = db.begin().await.unwrap();
    for chunk in (from..to).collect::<Vec<_>>().chunks(500) {
        let rows: Vec<_> = chunk.iter().map(|&k| request_row(t, k, "Queued")).collect();
        send_request::Entity::insert_many(rows)
            .exec(&txn)
            .await
            .unwrap();
    }
    txn.commit().await.unwrap();
}

async fn wait_planner_rows(db: &sea_orm::DatabaseConnection, at_least: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = planner_rows(db, "send_requests").await;
        if n >= at_least {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "send_requests still planned as {n} rows, {at_least} expected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A table that grows from empty is analyzed again as it doubles, by the running API itself:
/// prepared statements planned while it was small are planned again (autovacuum is switched off
/// for the table here, so nothing else can analyze it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planner_statistics_follow_a_growing_table_on_postgres() {
    use sea_orm::ConnectionTrait;
    let app = TestApp::spawn_with(Backend::Postgres, Options::without_worker()).await;
    let db = &app.db;
    db.execute_unprepared("ALTER TABLE send_requests SET (autovacuum_enabled = false)")
        .await
        .unwrap();
    assert!(planner_rows(db, "send_requests").await < 1.0);

    insert_requests(db, 0, 2_000).await;
    wait_planner_rows(db, 2_000.0).await;
    // Counted now: not stale again until it doubles.
    insert_requests(db, 2_000, 3_000).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(planner_rows(db, "send_requests").await, 2_000.0);

    insert_requests(db, 3_000, 6_000).await;
    wait_planner_rows(db, 6_000.0).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planner_statistics_are_left_alone_on_sqlite() {
    let app = TestApp::spawn_with(Backend::Sqlite, Options::without_worker()).await;
    insert_requests(&app.db, 0, 2_000).await;
    assert!(
        msgcontact::db::refresh_statistics(&app.db)
            .await
            .unwrap()
            .is_empty()
    );
    app.cleanup().await;
}
