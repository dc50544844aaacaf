//! Attack: make the provider fail in every way that used to carry the request back (a timeout or a
//! reset, whose error text named the URL with the code in its query; an answer echoing the whole
//! request, in its status line's body, its `Code` and its `BizId`), then look for the delivered
//! codes everywhere a caller or an operator can read: every API answer about the requests, every
//! database row, the worker's log (at debug), both processes' metrics, the queues and dead letters.
//! The worker is this crate's binary, so its log is the real one.

use msgcontact_tests::{self as common, on_both_backends};

use std::time::Duration;

use common::{Backend, Options, TestApp, fake_sms::Step};

const WORKER: &str = env!("CARGO_BIN_EXE_msgcontact-worker");

on_both_backends! {
    provider_failures_never_reveal_the_code;
}

/// Whether `code` appears in `text` as a number of its own (not inside a longer run of digits, such
/// as a timestamp, where any six digits turn up by chance).
/// Percent-encoded text (a URL's query: `%22123456%22`) is read decoded as well.
fn reveals(text: &str, code: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8_lossy();
    stands_alone(text, code) || stands_alone(&decoded, code)
}

fn stands_alone(text: &str, code: &str) -> bool {
    text.match_indices(code).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + code.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// Every message left in the test's queues (taken off them: the test is over).
async fn all_queued(app: &TestApp) -> String {
    use lapin::options::BasicGetOptions;
    let conn = msgcontact::amqp::connect(&common::amqp_url(), "test-leaks")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let t = app.topology();
    let mut queues = vec![t.work_queue(), t.dead_letter_queue()];
    queues.extend((0..t.retry_delays.len()).map(|l| t.retry_queue(l)));
    let mut out = String::new();
    for q in queues {
        while let Some(m) = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push_str(&String::from_utf8_lossy(&m.delivery.data));
            out.push_str(&format!("{:?}\n", m.delivery.properties));
        }
    }
    out
}

async fn provider_failures_never_reveal_the_code(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        Options {
            worker: false,
            aliyun: true,
            cooldown_secs: 0,
            provider_timeout_ms: 800,
            retry_delays: "0.2,0.2,0.2",
            ..Default::default()
        },
    )
    .await;
    let dir = std::env::temp_dir().join(format!("msgcontact-leaks-{}", app.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("worker.log");
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut worker = app.spawn_worker_process_logged(
        WORKER,
        &[("MSGCONTACT_WORKER_LISTEN", &metrics_addr.to_string())],
        &log,
    );

    // One request per way of failing, each to its own contact and number, one at a time so each
    // meets its own script.
    let scenarios: Vec<Vec<Step>> = vec![
        vec![Step::Echo(500); 4],
        vec![Step::Echo(200)],
        vec![Step::Echo(400)],
        vec![Step::Hang(Duration::from_secs(2)); 2],
        vec![Step::Reset; 2],
    ];
    let mut requests = Vec::new();
    for (i, steps) in scenarios.into_iter().enumerate() {
        let phone = format!("86-1391234{:04}", 100 + i);
        let id = app
            .add_contact(&format!("leak{}", (b'a' + i as u8) as char), Some(&phone))
            .await;
        let before = app.sms.received().len();
        app.sms.script(steps);
        let r = app
            .call(
                "SendPhoneVerificationForMessageContact",
                &[("ContactId", &id), ("PhoneNumber", &phone)],
            )
            .await;
        let rid = r.assert_ok()["RequestId"].as_str().unwrap().to_owned();
        // Wait for the request's end: Failed after the retries the scenario allows (or Sent, for a
        // hang or reset that the worker counts as delivered).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let last = loop {
            let req = app
                .call("GetVerificationRequest", &[("RequestId", &rid)])
                .await;
            let body = req.assert_ok().clone();
            if matches!(body["Request"]["Status"].as_str(), Some("Failed" | "Sent")) {
                break body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "request {i} did not end: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            app.sms.received().len() > before,
            "scenario {i} reached the provider"
        );
        requests.push((rid, last));
    }

    let codes: std::collections::BTreeSet<String> =
        app.sms.received().into_iter().map(|r| r.code).collect();
    assert!(!codes.is_empty());
    assert!(codes.iter().all(|c| c.len() == 6));

    // Every place a caller or an operator reads.
    let mut places: Vec<(String, String)> = Vec::new();
    for (rid, last) in &requests {
        places.push((format!("answer for {rid}"), last.to_string()));
        let again = app
            .call("GetVerificationRequest", &[("RequestId", rid)])
            .await;
        places.push((format!("answer for {rid}"), again.body.to_string()));
    }
    let list = app.call("ListMessageContacts", &[("PageSize", "50")]).await;
    places.push(("contact list".into(), list.body.to_string()));
    places.push(("database".into(), app.all_rows().await));
    let api_metrics = common::http_get(format!("http://{}/metrics", app.api_addrs[0]))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    places.push(("API metrics".into(), api_metrics));
    let worker_metrics = common::http_get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        worker_metrics.contains("msgcontact_"),
        "worker metrics read"
    );
    places.push(("worker metrics".into(), worker_metrics));
    common::signal(&worker, "-TERM");
    common::wait_for_exit(&mut worker, 20, "worker").await;
    places.push(("queues".into(), all_queued(&app).await));
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("provider"),
        "the worker logged its provider calls: {}",
        &log_text[..log_text.len().min(2000)]
    );
    places.push(("worker log".into(), log_text));

    for code in &codes {
        for (place, text) in &places {
            assert!(
                !reveals(text, code),
                "the code {code} was delivered and is readable in the {place}"
            );
        }
    }
    // The failures still say what happened, in the service's own words.
    let failure_codes: Vec<_> = requests
        .iter()
        .map(|(_, b)| {
            b["Request"]["FailureCode"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(
        failure_codes,
        [
            "RetriesExhausted",
            "", // an unreadable 200 may have been delivered: one more attempt, which succeeds
            "Http400",
            "AmbiguousDelivery",
            "AmbiguousDelivery"
        ]
    );
    let first = requests[0].1["Request"]["FailureMessage"].as_str().unwrap();
    assert!(first.contains("HTTP 500"), "{first}");
    let _ = std::fs::remove_dir_all(&dir);
    app.cleanup().await;
}

#[test]
fn reveals_finds_a_code_only_as_a_number_of_its_own() {
    assert!(reveals("code=123456&x", "123456"));
    assert!(reveals("123456", "123456"));
    assert!(!reveals("1796000123456", "123456"));
    assert!(!reveals("1234567", "123456"));
    assert!(reveals(
        "TemplateParam=%7B%22code%22%3A%22123456%22%7D",
        "123456"
    ));
}
