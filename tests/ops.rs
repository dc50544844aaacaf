//! What operators see: Prometheus metrics on the API and the worker, queue depth gauges that follow
//! the broker, and health endpoints.

mod common;

use std::time::Duration;

use common::{Backend, Options, TestApp};

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
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
