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
    let window = msgcontact_worker::admin::POLL_INTERVAL.as_secs_f64() + 1.5;
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
