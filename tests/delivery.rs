//! Delivery under faults, against real RabbitMQ, SQLite and PostgreSQL and a scripted fake of
//! Alibaba Cloud SMS: retries through the delay queues, throttling, permanent errors, provider
//! hangs and resets (ambiguous outcomes), superseding, backpressure and worker restarts. After each
//! scenario the SPEC's invariants are checked against the database, the provider log and the queues.

use msgcontact_tests::{self as common, on_both_backends};

use std::time::Duration;

use common::{Backend, Options, TestApp, assert_invariants, depth, depth_settled, fake_sms::Step};
use sea_orm::EntityTrait;

on_both_backends! {
    transient_failures_are_retried_until_sent;
    throttling_is_retried_honouring_retry_after;
    permanent_failures_are_not_retried;
    retries_stop_when_attempts_are_exhausted;
    ambiguous_outcomes_get_at_most_one_more_attempt;
    a_newer_request_supersedes_a_queued_one;
    a_full_queue_answers_503_and_releases_the_quota;
    jobs_survive_a_worker_restart_mid_batch;
    dead_letters_can_be_listed_and_replayed;
    a_request_older_than_a_code_expires_unsent;
    the_per_phone_guard_delays_without_failing;
}

const PHONE: &str = "86-13912341234";

fn aliyun() -> Options {
    Options {
        aliyun: true,
        cooldown_secs: 0,
        provider_timeout_ms: 1000,
        ..Default::default()
    }
}

async fn send(app: &TestApp, contact: &str) -> String {
    let r = app
        .call(
            "SendPhoneVerificationForMessageContact",
            &[("ContactId", contact), ("PhoneNumber", PHONE)],
        )
        .await;
    r.assert_ok()["RequestId"].as_str().unwrap().to_owned()
}

async fn transient_failures_are_retried_until_sent(backend: Backend) {
    let app = TestApp::spawn_with(backend, aliyun()).await;
    app.sms.script([
        Step::Status(503, None),
        Step::Biz("isp.SYSTEM_ERROR"),
        Step::Ok,
    ]);
    let id = app.add_contact("retry", Some(PHONE)).await;
    let rid = send(&app, &id).await;
    let mut saw_retrying = false;
    let req = loop {
        let r = app
            .call("GetVerificationRequest", &[("RequestId", &rid)])
            .await;
        let req = r.assert_ok()["Request"].clone();
        saw_retrying |= req["Status"] == "Retrying";
        if req["Status"] == "Sent" {
            break req;
        }
        assert_ne!(req["Status"], "Failed", "{req}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(saw_retrying, "Retrying is visible between attempts");
    assert_eq!(req["Attempts"], 3);
    let calls = app.sms.for_request(&rid);
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].phone_numbers, "13912341234");
    // Every attempt carried the same code, and it verifies.
    assert!(calls.iter().all(|c| c.code == calls[0].code));
    let check = app
        .call(
            "CheckPhoneVerificationForMessageContact",
            &[
                ("ContactId", &id),
                ("PhoneNumber", PHONE),
                ("VerificationCode", &calls[0].code),
            ],
        )
        .await;
    assert_eq!(check.assert_ok()["Status"], "Active");
    assert_invariants(&app, &[rid]).await;
    app.cleanup().await;
}

async fn throttling_is_retried_honouring_retry_after(backend: Backend) {
    let app = TestApp::spawn_with(backend, aliyun()).await;
    app.sms.script([
        Step::Biz("isv.BUSINESS_LIMIT_CONTROL"),
        Step::Status(429, Some(1)),
        Step::Ok,
    ]);
    let id = app.add_contact("throttle", Some(PHONE)).await;
    let started = std::time::Instant::now();
    let rid = send(&app, &id).await;
    let req = app.wait_status(&rid, "Sent", 20).await;
    assert_eq!(req["Attempts"], 3);
    // The 429 asked for 1 s: the third attempt cannot have come sooner.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_invariants(&app, &[rid]).await;
    app.cleanup().await;
}

async fn permanent_failures_are_not_retried(backend: Backend) {
    let app = TestApp::spawn_with(backend, aliyun()).await;
    app.sms.script([Step::Biz("isv.MOBILE_NUMBER_ILLEGAL")]);
    let id = app.add_contact("perm", Some(PHONE)).await;
    let rid = send(&app, &id).await;
    let req = app.wait_status(&rid, "Failed", 10).await;
    assert_eq!(
        (req["Attempts"].as_i64(), req["FailureCode"].as_str()),
        (Some(1), Some("isv.MOBILE_NUMBER_ILLEGAL"))
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        app.sms.for_request(&rid).len(),
        1,
        "no retry after a permanent error"
    );
    assert_invariants(&app, &[rid]).await;
    app.cleanup().await;
}

async fn retries_stop_when_attempts_are_exhausted(backend: Backend) {
    let app = TestApp::spawn_with(backend, aliyun()).await;
    app.sms
        .script(std::iter::repeat_n(Step::Status(503, None), 10));
    let id = app.add_contact("exhaust", Some(PHONE)).await;
    let rid = send(&app, &id).await;
    let req = app.wait_status(&rid, "Failed", 20).await;
    // Three retry levels: four attempts in all.
    assert_eq!(
        (req["Attempts"].as_i64(), req["FailureCode"].as_str()),
        (Some(4), Some("RetriesExhausted"))
    );
    assert!(
        req["FailureMessage"]
            .as_str()
            .unwrap()
            .contains("ServiceUnavailable"),
        "{req}"
    );
    assert_eq!(app.sms.for_request(&rid).len(), 4);
    assert_invariants(&app, &[rid]).await;
    app.cleanup().await;
}

async fn ambiguous_outcomes_get_at_most_one_more_attempt(backend: Backend) {
    let app = TestApp::spawn_with(backend, aliyun()).await;
    // A hang past the worker's timeout, then success: two SMS are allowed, the request is Sent.
    app.sms
        .script([Step::Hang(Duration::from_millis(1500)), Step::Ok]);
    let a = app.add_contact("hangok", Some(PHONE)).await;
    let r1 = send(&app, &a).await;
    let req = app.wait_status(&r1, "Sent", 20).await;
    assert_eq!(req["Attempts"], 2);
    // A reset mid-answer, then another hang: no third attempt.
    app.sms
        .script([Step::Reset, Step::Hang(Duration::from_millis(1500))]);
    let b = app.add_contact("hangtwice", Some(PHONE)).await;
    let r2 = send(&app, &b).await;
    let req = app.wait_status(&r2, "Failed", 20).await;
    assert_eq!(
        (req["Attempts"].as_i64(), req["FailureCode"].as_str()),
        (Some(2), Some("AmbiguousDelivery"))
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.sms.for_request(&r2).len(), 2);
    assert_invariants(&app, &[r1, r2]).await;
    app.cleanup().await;
}

async fn a_newer_request_supersedes_a_queued_one(backend: Backend) {
    let mut app = TestApp::spawn_with(
        backend,
        Options {
            worker: false,
            ..aliyun()
        },
    )
    .await;
    let id = app.add_contact("superseded", Some(PHONE)).await;
    let older = send(&app, &id).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let newer = send(&app, &id).await;
    app.start_worker().await;
    app.wait_status(&newer, "Sent", 10).await;
    app.wait_status(&older, "Superseded", 10).await;
    assert_eq!(
        app.sms.for_request(&older).len(),
        0,
        "a superseded request sends nothing"
    );
    assert_invariants(&app, &[older, newer]).await;
    app.cleanup().await;
}

async fn a_request_older_than_a_code_expires_unsent(backend: Backend) {
    let mut app = TestApp::spawn_with(
        backend,
        Options {
            worker: false,
            code_ttl_secs: 2,
            ..aliyun()
        },
    )
    .await;
    let id = app.add_contact("stale", Some(PHONE)).await;
    let rid = send(&app, &id).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    app.start_worker().await;
    let r = app.wait_status(&rid, "Failed", 10).await;
    assert_eq!(r["FailureCode"], "CodeExpired", "{r}");
    assert!(
        app.sms.for_request(&rid).is_empty(),
        "no SMS for a stale request"
    );
    assert_invariants(&app, &[rid]).await;
    app.cleanup().await;
}

async fn the_per_phone_guard_delays_without_failing(backend: Backend) {
    // One SMS at once per phone, one more every 5 s: longer than the in-process hold, so the
    // second and third sends to the same number are parked in the delay queues, not failed.
    let app = TestApp::spawn_with(
        backend,
        Options {
            phone_burst: 1,
            phone_per_minute: 12,
            ..aliyun()
        },
    )
    .await;
    let mut ids = Vec::new();
    for n in ["guarda", "guardb", "guardc"] {
        let contact = app.add_contact(n, Some(PHONE)).await;
        ids.push(send(&app, &contact).await);
    }
    let started = std::time::Instant::now();
    for rid in &ids {
        let r = app.wait_status(rid, "Sent", 30).await;
        assert_eq!(
            r["Attempts"], 1,
            "waiting for the guard is not an attempt: {r}"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "three SMS to one phone must be spread over two refills, took {:?}",
        started.elapsed()
    );
    assert_invariants(&app, &ids).await;
    app.cleanup().await;
}

async fn a_full_queue_answers_503_and_releases_the_quota(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        Options {
            worker: false,
            queue_max_length: 2,
            ..aliyun()
        },
    )
    .await;
    let id = app.add_contact("full", Some(PHONE)).await;
    // Quorum queues enforce the limit once it is exceeded (the broker reports overflow after the
    // enqueue that crossed it), so accept until the first refusal.
    let mut accepted = 0;
    let refused = loop {
        let r = app
            .call(
                "SendPhoneVerificationForMessageContact",
                &[("ContactId", &id), ("PhoneNumber", PHONE)],
            )
            .await;
        if r.status != 200 {
            r.assert_error(503, "ServiceUnavailable");
            break r;
        }
        accepted += 1;
        assert!(accepted < 10, "a queue of max length 2 kept accepting");
    };
    assert!(
        (2..=3).contains(&accepted),
        "accepted {accepted} with a max length of 2"
    );
    assert!(
        refused.headers.contains_key("x-acs-retry-after")
            && refused.headers.contains_key("retry-after")
    );
    // The refused publish was recorded and its reservation given back.
    let rid = refused.body["RequestId"].as_str().unwrap();
    let st = app
        .call("GetVerificationRequest", &[("RequestId", rid)])
        .await;
    assert_eq!(
        (
            st.body["Request"]["Status"].as_str(),
            st.body["Request"]["FailureCode"].as_str()
        ),
        (Some("Failed"), Some("PublishFailed"))
    );
    // Right after a refusal the queue is known to be full: the next sends are shed before any
    // reservation (no request row, no quota), with retry-after.
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let r = app
            .call(
                "SendPhoneVerificationForMessageContact",
                &[("ContactId", &id), ("PhoneNumber", PHONE)],
            )
            .await;
        r.assert_error(503, "ServiceUnavailable");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "sheds load fast: {:?}",
            started.elapsed()
        );
        assert!(r.headers.contains_key("x-acs-retry-after"));
    }
    // A second later one send probes the broker again (refused again: still full); the sends
    // that arrive while it finds out are shed without a reservation, like those before.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let params = [("ContactId", id.as_str()), ("PhoneNumber", PHONE)];
    let at_once = futures::future::join_all(
        (0..8).map(|_| app.call("SendPhoneVerificationForMessageContact", &params)),
    )
    .await;
    let mut probes = 0;
    for r in &at_once {
        r.assert_error(503, "ServiceUnavailable");
        let st = app
            .call(
                "GetVerificationRequest",
                &[("RequestId", r.body["RequestId"].as_str().unwrap())],
            )
            .await;
        if st.status == 200 {
            assert_eq!(
                st.body["Request"]["FailureCode"], "PublishFailed",
                "{}",
                st.body
            );
            probes += 1;
        }
    }
    assert_eq!(probes, 1, "one of 8 sends at once probes the full queue");
    let failed = msgcontact::entities::send_request::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.failure_code.as_deref() == Some("PublishFailed"))
        .count();
    assert_eq!(
        failed, 2,
        "only the refusal and the probe reached the database"
    );
    use msgcontact::entities::daily_counter;
    let count: i32 = daily_counter::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
        .iter()
        .map(|c| c.count)
        .sum();
    assert_eq!(count, accepted, "refused sends gave their quota back");
    assert_eq!(depth(&app.work_queue()).await, accepted as u32);
    app.cleanup().await;
}

async fn jobs_survive_a_worker_restart_mid_batch(backend: Backend) {
    let mut app = TestApp::spawn_with(backend, aliyun()).await;
    // Slow provider answers keep deliveries in flight when the worker stops.
    app.sms
        .script(std::iter::repeat_n(Step::Status(503, None), 5));
    let mut accepted = Vec::new();
    for i in 0..12 {
        let name = format!("batch{}", (b'a' + i) as char);
        let id = app.add_contact(&name, Some(PHONE)).await;
        accepted.push(send(&app, &id).await);
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    app.stop_worker().await;
    app.start_worker().await;
    assert_invariants(&app, &accepted).await;
    let rows = msgcontact::entities::send_request::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    assert!(
        rows.iter().all(|r| r.status == "Sent"),
        "{:?}",
        rows.iter()
            .map(|r| (&r.status, &r.failure_code))
            .collect::<Vec<_>>()
    );
    app.cleanup().await;
}

async fn dead_letters_can_be_listed_and_replayed(backend: Backend) {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    let mut app = TestApp::spawn_with(
        backend,
        Options {
            worker: false,
            ..aliyun()
        },
    )
    .await;
    let id = app.add_contact("dlq", Some(PHONE)).await;
    let rid = send(&app, &id).await;
    // Park the accepted job in the dead-letter queue, as a crash loop would.
    let conn = msgcontact::amqp::connect(&common::amqp_url(), "test-dlq")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let m = ch
        .basic_get(app.work_queue().as_str().into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    let dlq = format!("{}.send.dead", app.prefix);
    let mut headers = m.delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        msgcontact::job::HEADER_DEAD_REASON.into(),
        lapin::types::AMQPValue::LongString("crashed 10 times".into()),
    );
    ch.basic_publish(
        "".into(),
        dlq.as_str().into(),
        Default::default(),
        &m.delivery.data,
        m.delivery.properties.clone().with_headers(headers),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    let topology = app.topology();

    let listed = msgcontact_worker::dlq::list(&conn, &topology, 10)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].request_id.as_deref(), listed[0].reason.as_str()),
        (Some(rid.as_str()), "crashed 10 times")
    );
    let settle = Duration::from_secs(5);
    assert_eq!(
        depth_settled(&dlq, 1, settle).await,
        1,
        "listing leaves dead letters in place"
    );
    let dry = msgcontact_worker::dlq::replay(&conn, &topology, 10, true)
        .await
        .unwrap();
    assert_eq!(
        (
            dry.len(),
            depth_settled(&dlq, 1, settle).await,
            depth(&app.work_queue()).await
        ),
        (1, 1, 0)
    );
    let moved = msgcontact_worker::dlq::replay(&conn, &topology, 10, false)
        .await
        .unwrap();
    assert_eq!(
        (
            moved.len(),
            depth(&dlq).await,
            depth_settled(&app.work_queue(), 1, settle).await
        ),
        (1, 0, 1)
    );
    let report = msgcontact::monitor::report(&conn, &app.db, &topology, &mut Default::default())
        .await
        .unwrap();
    assert_eq!(report.queues[0].ready, Some(1));
    assert_eq!(
        report
            .requests
            .iter()
            .find(|(s, _)| s == "Queued")
            .unwrap()
            .1,
        1
    );
    assert!(report.oldest_queued_age_seconds.is_some());
    assert!(msgcontact::monitor::render_table(&report).contains(&app.work_queue()));
    let _ = conn.close(200, "bye".into()).await;
    app.start_worker().await;
    app.wait_status(&rid, "Sent", 10).await;
    assert_invariants(&app, &[rid]).await;
    app.cleanup().await;
}

/// Connections ask the broker for small frames (lapin keeps 64 frames of buffer per connection at
/// the negotiated size), and a `frame_max` the operator put in the URL wins.
#[tokio::test]
async fn broker_connections_negotiate_small_frames() {
    let url = common::amqp_url();
    let conn = msgcontact::amqp::connect(&url, "test-frames")
        .await
        .unwrap();
    assert_eq!(
        conn.configuration().frame_max(),
        msgcontact::amqp::DEFAULT_FRAME_MAX
    );
    let _ = conn.close(200, "bye".into()).await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let conn = msgcontact::amqp::connect(&format!("{url}{sep}frame_max=65536"), "test-frames")
        .await
        .unwrap();
    assert_eq!(conn.configuration().frame_max(), 65536);
    let _ = conn.close(200, "bye".into()).await;
    assert!(
        msgcontact::amqp::connect("not a url", "test-frames")
            .await
            .is_err()
    );
}
