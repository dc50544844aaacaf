//! Faults that need the worker as a real process: SIGKILL with a full prefetch, and SIGKILL
//! between the provider accepting an SMS and the outcome's commit. The API runs in-process (the
//! shared harness); the worker is this crate's binary, killed with SIGKILL and started again.

use msgcontact_tests::{self as common, on_both_backends};

use std::{process::Child, time::Duration};

use common::{Backend, Options, TestApp, assert_invariants, fake_sms::Step};

const WORKER: &str = env!("CARGO_BIN_EXE_msgcontact-worker");

on_both_backends! {
    sigkill_with_a_full_prefetch_loses_nothing;
    sigkill_between_provider_accept_and_commit;
    sigterm_finishes_the_job_in_flight_and_exits_0;
}

fn options() -> Options {
    Options {
        worker: false,
        aliyun: true,
        cooldown_secs: 0,
        provider_timeout_ms: 20_000,
        ..Default::default()
    }
}

fn name(i: usize) -> String {
    let a = (b'a' + (i / 26) as u8) as char;
    let b = (b'a' + (i % 26) as u8) as char;
    format!("kill{a}{b}")
}

async fn send_to_new_contacts(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let phone = format!("86-139{:08}", 5000 + i);
        let contact = app.add_contact(&name(i), Some(&phone)).await;
        let r = app
            .call(
                "SendPhoneVerificationForMessageContact",
                &[("ContactId", &contact), ("PhoneNumber", &phone)],
            )
            .await;
        ids.push(r.assert_ok()["RequestId"].as_str().unwrap().to_owned());
    }
    ids
}

fn sigkill(child: &mut Child) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let _ = child.wait();
}

async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sigkill_with_a_full_prefetch_loses_nothing(backend: Backend) {
    let app = TestApp::spawn_with(backend, options()).await;
    let accepted = send_to_new_contacts(&app, 40).await;
    // Two SMS a second: the worker fills its prefetch of 16 and holds most of it in the limiter.
    let mut worker = app.spawn_worker_process(
        WORKER,
        &[
            ("MSGCONTACT_PROVIDER_RATE", "2"),
            ("MSGCONTACT_PREFETCH", "16"),
        ],
    );
    wait_until("the first SMS", 30, || !app.sms.received().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    sigkill(&mut worker);
    let before = app.sms.received().len();
    assert!(
        before < 40,
        "the kill came too late to test anything ({before} sent)"
    );
    // The broker gives the unacked deliveries back; a new worker finishes the job.
    let mut worker = app.spawn_worker_process(WORKER, &[]);
    assert_invariants(&app, &accepted).await;
    for id in &accepted {
        app.wait_status(id, "Sent", 30).await;
    }
    let _ = worker.kill();
    let _ = worker.wait();
    app.cleanup().await;
}

async fn sigkill_between_provider_accept_and_commit(backend: Backend) {
    let app = TestApp::spawn_with(backend, options()).await;
    // The provider takes the SMS and then sits on its answer.
    app.sms.script([Step::Hang(Duration::from_secs(30))]);
    let accepted = send_to_new_contacts(&app, 1).await;
    let rid = accepted[0].clone();
    let mut worker = app.spawn_worker_process(WORKER, &[]);
    wait_until("the provider to accept", 30, || {
        app.sms.delivered(&rid) == 1
    })
    .await;
    sigkill(&mut worker);
    // Nothing was committed: the request is still Sending, and the delivery goes back to the queue.
    let r = app.wait_status(&rid, "Sending", 5).await;
    assert_eq!(r["Attempts"], 1);
    let mut worker = app.spawn_worker_process(WORKER, &[]);
    // The outcome of the first attempt is unknown: exactly one more attempt, then Sent.
    let r = app.wait_status(&rid, "Sent", 30).await;
    assert_eq!(r["Attempts"], 2, "{r}");
    assert_eq!(
        app.sms.delivered(&rid),
        2,
        "the ambiguity rule allows one more SMS, no more"
    );
    assert_invariants(&app, &accepted).await;
    let _ = worker.kill();
    let _ = worker.wait();
    app.cleanup().await;
}

/// The worker binary behind a cut-able proxy: a short broker loss makes it not ready and then it
/// delivers again; a loss past its recovery deadline makes it exit with a non-zero status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_binary_rides_out_a_broker_loss_and_exits_non_zero_past_the_deadline() {
    let app = TestApp::spawn_with(Backend::Sqlite, options()).await;
    let proxy = common::proxy::BrokerProxy::start().await;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = proxy.url();
    let mut worker = app.spawn_worker_process(
        WORKER,
        &[
            ("MSGCONTACT_AMQP_URL", &url),
            ("MSGCONTACT_BROKER_RECOVERY_TIMEOUT_SECS", "3"),
            ("MSGCONTACT_WORKER_LISTEN", &listen.to_string()),
        ],
    );
    let ready = || async move {
        match common::http_get(format!("http://{listen}/readyz")).await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    };
    let wait_ready = |want: u16| async move {
        for _ in 0..200 {
            if ready().await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the worker's /readyz never answered {want}");
    };
    wait_ready(200).await;
    let mut accepted = send_to_new_contacts(&app, 1).await;
    app.wait_status(&accepted[0], "Sent", 20).await;

    proxy.cut();
    wait_ready(503).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.restore();
    wait_ready(200).await;
    let phone = "86-13900009999";
    let contact = app.add_contact("afterloss", Some(phone)).await;
    let r = app
        .call(
            "SendPhoneVerificationForMessageContact",
            &[("ContactId", &contact), ("PhoneNumber", phone)],
        )
        .await;
    accepted.push(r.assert_ok()["RequestId"].as_str().unwrap().to_owned());
    app.wait_status(&accepted[1], "Sent", 20).await;
    assert_invariants(&app, &accepted).await;
    assert!(
        worker.try_wait().unwrap().is_none(),
        "still running after a short loss"
    );

    proxy.cut();
    let status = common::wait_for_exit(
        &mut worker,
        60,
        "the worker with the broker gone past its recovery deadline",
    )
    .await;
    assert!(!status.success(), "exit status {status}");
    app.cleanup().await;
}

async fn sigterm_finishes_the_job_in_flight_and_exits_0(backend: Backend) {
    let app = TestApp::spawn_with(backend, options()).await;
    // The provider takes two seconds to answer: SIGTERM arrives while the call is in flight.
    app.sms.script([Step::Hang(Duration::from_secs(2))]);
    let accepted = send_to_new_contacts(&app, 1).await;
    let mut worker = app.spawn_worker_process(WORKER, &[]);
    wait_until("the provider call", 30, || !app.sms.received().is_empty()).await;
    common::signal(&worker, "-TERM");
    let status = common::wait_for_exit(&mut worker, 40, "the worker after SIGTERM").await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    // The job in flight was finished and recorded before the exit: one SMS, Sent, acknowledged.
    let r = app.wait_status(&accepted[0], "Sent", 1).await;
    assert_eq!(r["Attempts"], 1);
    assert_eq!(app.sms.delivered(&accepted[0]), 1);
    assert_invariants(&app, &accepted).await;
    app.cleanup().await;
}
