//! The ops page in a real browser (headless Chromium from the Debian `chromium` package): during a
//! small burst, the numbers the page renders match its JSON endpoint and the chart has a line; after
//! the drain a screenshot of the whole burst, up and back down, is saved to `target/tmp/ops-page.png`.
//! Fails, never skips, when Chromium is missing.

use msgcontact_tests as common;

use std::time::Duration;

use common::{Backend, Options, TestApp};

fn chromium() -> String {
    let path =
        std::env::var("MSGCONTACT_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&path).exists(),
        "the ops page test needs headless Chromium: apt-get install chromium (or set MSGCONTACT_TEST_CHROMIUM)"
    );
    path
}

async fn run_chromium(args: &[&str], url: &str) -> String {
    let profile = std::env::temp_dir().join(format!(
        "msgcontact-chromium-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let out = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=960,620",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .await
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text_of(dom: &str, marker: &str) -> String {
    let start = dom
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not rendered"))
        + marker.len();
    dom[start..].split('<').next().unwrap().trim().to_owned()
}

async fn ops_data(base: &str) -> serde_json::Value {
    common::http_get(format!("{base}/ops/data"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until the poller's latest point has `work` ready jobs.
async fn wait_for_work(base: &str, want: u64) -> serde_json::Value {
    let mut data = serde_json::Value::Null;
    for _ in 0..120 {
        data = ops_data(base).await;
        if data["series"]
            .as_array()
            .and_then(|s| s.last())
            .is_some_and(|p| p["work"] == want)
        {
            return data;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the ops data never showed {want} ready jobs: {data}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_page_renders_the_burst() {
    let mut app = TestApp::spawn_with(
        Backend::Sqlite,
        Options {
            worker: false,
            cooldown_secs: 0,
            ..Default::default()
        },
    )
    .await;
    let id = app.add_contact("browser", Some("86-13912341234")).await;
    let send = || async {
        app.call(
            "SendPhoneVerificationForMessageContact",
            &[("ContactId", &id), ("PhoneNumber", "86-13912341234")],
        )
        .await
        .assert_ok();
    };
    let base = format!("http://{}", app.api_addrs[0]);
    // The burst arrives in two waves, each seen by a poll, with no worker to drain it.
    for _ in 0..4 {
        send().await;
    }
    wait_for_work(&base, 4).await;
    for _ in 0..8 {
        send().await;
    }
    wait_for_work(&base, 12).await;

    let dom = run_chromium(&["--dump-dom"], &format!("{base}/ops")).await;
    assert_eq!(
        text_of(&dom, "id=\"work\">"),
        "12",
        "rendered work depth matches /ops/data"
    );
    assert_eq!(text_of(&dom, "id=\"dead\">"), "0");
    assert_eq!(text_of(&dom, "data-state=\"Queued\">"), "12");
    assert!(
        dom.contains("data-series=\"work\""),
        "the chart has a work line"
    );
    assert!(dom.contains("updated "), "the refresh ran");

    // Then a worker drains it; the page shows the whole burst, up and back down.
    app.start_worker().await;
    let data = wait_for_work(&base, 0).await;
    let work: Vec<u64> = data["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["work"].as_u64().unwrap())
        .collect();
    assert!(
        work.contains(&4) && work.contains(&12) && work.last() == Some(&0),
        "{work:?}"
    );
    let dom = run_chromium(&["--dump-dom"], &format!("{base}/ops")).await;
    assert_eq!(text_of(&dom, "id=\"work\">"), "0");
    // Cargo's scratch directory for integration tests: it exists wherever the target dir is.
    let shot = concat!(env!("CARGO_TARGET_TMPDIR"), "/ops-page.png");
    run_chromium(&[&format!("--screenshot={shot}")], &format!("{base}/ops")).await;
    assert!(
        std::fs::metadata(shot)
            .map(|m| m.len() > 5_000)
            .unwrap_or(false),
        "screenshot written"
    );
    app.cleanup().await;
}
