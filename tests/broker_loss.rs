//! Losing the broker: each test puts a TCP proxy between its app and the shared RabbitMQ and cuts
//! it, so the outage is this app's alone and the tests run beside the others. A short loss is
//! ridden out (not ready, 503 with retry-after, then a fresh session and delivery again); a loss
//! past `MSGCONTACT_BROKER_RECOVERY_TIMEOUT_SECS` stops the process with an error.

use msgcontact_tests as common;

use std::time::Duration;

use common::{Backend, Options, TestApp, assert_invariants, fake_sms::Step, proxy::BrokerProxy};
use tokio_util::sync::CancellationToken;

const PHONE: &str = "86-13912341234";

async fn ready(addr: std::net::SocketAddr) -> u16 {
    match common::http_get(format!("http://{addr}/readyz")).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn wait_ready(addr: std::net::SocketAddr, want: u16, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let got = ready(addr).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr}/readyz answered {got}, not {want}, for {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn send(app: &TestApp, contact: &str) -> common::Response {
    app.call(
        "SendPhoneVerificationForMessageContact",
        &[("ContactId", contact), ("PhoneNumber", PHONE)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_broker_loss_is_ridden_out() {
    let proxy = BrokerProxy::start().await;
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Options {
            cooldown_secs: 0,
            amqp_url: Some(proxy.url()),
            ..Default::default()
        },
    )
    .await;
    let (api, worker) = (app.api_addrs[0], app.worker_addr.unwrap());
    wait_ready(api, 200, 5).await;
    wait_ready(worker, 200, 5).await;
    let contact = app.add_contact("outage", Some(PHONE)).await;
    let first = send(&app, &contact).await.assert_ok()["RequestId"]
        .as_str()
        .unwrap()
        .to_owned();
    app.wait_status(&first, "Sent", 10).await;

    proxy.cut();
    wait_ready(api, 503, 10).await;
    wait_ready(worker, 503, 10).await;
    // During the loss a send is refused at once with retry-after, and gives its quota back.
    let refused = send(&app, &contact).await;
    refused.assert_error(503, "ServiceUnavailable");
    assert!(refused.headers.contains_key("x-acs-retry-after"));
    assert!(refused.headers.contains_key("retry-after"));

    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    wait_ready(api, 200, 20).await;
    wait_ready(worker, 200, 20).await;
    let second = send(&app, &contact).await.assert_ok()["RequestId"]
        .as_str()
        .unwrap()
        .to_owned();
    app.wait_status(&second, "Sent", 20).await;
    assert_invariants(&app, &[first, second]).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_recovery_deadline_the_api_stops_with_an_error() {
    let app = TestApp::spawn_with(Backend::Sqlite, Options::without_worker()).await;
    let proxy = BrokerProxy::start().await;
    let options = Options {
        amqp_url: Some(proxy.url()),
        broker_recovery_timeout_secs: 2,
        ..app.options.clone()
    };
    let api = msgcontact_api::Application::build(common::api_config(
        &app.db_url,
        &app.prefix,
        &options,
        app.policy(),
    ))
    .await
    .unwrap();
    let addr = api.local_addr();
    let stop = CancellationToken::new();
    let running = tokio::spawn(api.run_until_stopped(stop.clone()));
    wait_ready(addr, 200, 5).await;

    proxy.cut();
    wait_ready(addr, 503, 10).await;
    let result = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("the API stops once the recovery deadline has passed")
        .unwrap();
    assert!(
        matches!(result, Err(msgcontact_api::Error::BrokerLost(_))),
        "{result:?}"
    );
    assert!(
        stop.is_cancelled(),
        "the rest of the process is told to stop"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_decided_during_a_broker_loss_is_scheduled_on_the_new_session() {
    let proxy = BrokerProxy::start().await;
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Options {
            aliyun: true,
            cooldown_secs: 0,
            amqp_url: Some(proxy.url()),
            ..Default::default()
        },
    )
    .await;
    // The provider sits on the first attempt and then fails it (transient); the broker goes away
    // meanwhile, so the retry is decided with no session to publish it on.
    app.sms
        .script([Step::SlowStatus(Duration::from_secs(2), 503)]);
    let contact = app.add_contact("retryloss", Some(PHONE)).await;
    let rid = send(&app, &contact).await.assert_ok()["RequestId"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.sms.received().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no provider call");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut();
    app.wait_status(&rid, "Retrying", 10).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    let r = app.wait_status(&rid, "Sent", 30).await;
    assert_eq!(r["Attempts"], 2, "{r}");
    assert_eq!(app.sms.delivered(&rid), 1);
    assert_invariants(&app, &[rid]).await;
    app.cleanup().await;
}
