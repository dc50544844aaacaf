//! Restarts of the shared services under load: the RabbitMQ application (`rabbitmqctl stop_app` /
//! `start_app`) and the PostgreSQL server. They disturb every other test using those services, so
//! they are `#[ignore]`d in the parallel run and run on their own, one at a time:
//!
//! ```sh
//! cargo test --test disruptive -- --ignored --test-threads=1
//! ```
//!
//! After each restart the SPEC §7 invariants are checked: every accepted request terminal, at most
//! one SMS each (two after an ambiguous attempt), the quota equal to what was accepted (a 503 gave
//! its reservation back), and a fresh send works end to end.

use msgcontact_tests as common;

use std::{
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{Backend, Options, TestApp, assert_invariants};

fn options() -> Options {
    Options {
        aliyun: true,
        cooldown_secs: 0,
        daily_limit: 100_000,
        provider_timeout_ms: 2000,
        ..Default::default()
    }
}

fn run(cmd: &str, args: &[&str]) {
    let status = Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{cmd} is required for this test: {e}"));
    assert!(status.success(), "{cmd} {args:?} failed");
}

fn postgres_cluster() -> String {
    std::fs::read_dir("/etc/postgresql")
        .expect("a Debian PostgreSQL cluster (pg_ctlcluster) is required for this test")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
        .expect("a PostgreSQL version directory")
}

fn name(i: usize) -> String {
    let a = (b'a' + (i / 26) as u8) as char;
    let b = (b'a' + (i % 26) as u8) as char;
    format!("load{a}{b}")
}

/// Sends at about `per_sec` to `contacts` round robin until `stop`; returns (status, RequestId).
async fn load(
    app: Arc<TestApp>,
    contacts: Vec<(String, String)>,
    per_sec: u64,
    duration: Duration,
) -> Vec<(u16, String)> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    let mut i = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_sec));
    while started.elapsed() < duration {
        tick.tick().await;
        let (app, out, (id, phone)) = (
            app.clone(),
            out.clone(),
            contacts[i % contacts.len()].clone(),
        );
        i += 1;
        tasks.push(tokio::spawn(async move {
            let r = app
                .call(
                    "SendPhoneVerificationForMessageContact",
                    &[("ContactId", &id), ("PhoneNumber", &phone)],
                )
                .await;
            let rid = r.body["RequestId"].as_str().unwrap_or_default().to_owned();
            out.lock().unwrap().push((r.status, rid));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(out).unwrap().into_inner().unwrap()
}

async fn restart_under_load(backend: Backend, restart: impl FnOnce() + Send + 'static) {
    let app = TestApp::spawn_with(backend, options()).await;
    let mut contacts = Vec::new();
    for i in 0..40 {
        let phone = format!("86-139{:08}", 7000 + i);
        contacts.push((app.add_contact(&name(i), Some(&phone)).await, phone));
    }
    let app = Arc::new(app);
    let load = tokio::spawn(load(
        app.clone(),
        contacts.clone(),
        40,
        Duration::from_secs(14),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::spawn_blocking(restart).await.unwrap();
    let results = load.await.unwrap();
    let accepted: Vec<String> = results
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, r)| r.clone())
        .collect();
    let unavailable = results.iter().filter(|(s, _)| *s == 503).count();
    let other: Vec<_> = results
        .iter()
        .filter(|(s, _)| *s != 200 && *s != 503)
        .collect();
    eprintln!(
        "{backend:?}: {} sends, {} accepted, {unavailable} answered 503",
        results.len(),
        accepted.len()
    );
    assert!(
        other.is_empty(),
        "only 200 or 503 during a restart: {other:?}"
    );
    assert!(
        accepted.len() > 100,
        "the API kept accepting around the restart"
    );
    // Everything accepted ends terminal; a new send after the restart goes all the way.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let fresh = loop {
        let r = app
            .call(
                "SendPhoneVerificationForMessageContact",
                &[
                    ("ContactId", &contacts[0].0),
                    ("PhoneNumber", &contacts[0].1),
                ],
            )
            .await;
        if r.status == 200 {
            break r.body["RequestId"].as_str().unwrap().to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovery: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    app.wait_status(&fresh, "Sent", 60).await;
    let mut all = accepted;
    all.push(fresh);
    assert_invariants(&app, &all).await;
    Arc::try_unwrap(app)
        .unwrap_or_else(|_| panic!("load tasks still hold the app"))
        .cleanup()
        .await;
}

async fn broker_restart_under_load(backend: Backend) {
    restart_under_load(backend, || {
        run("rabbitmqctl", &["stop_app"]);
        std::thread::sleep(Duration::from_secs(3));
        run("rabbitmqctl", &["start_app"]);
    })
    .await;
}

async fn postgres_restart_under_load(backend: Backend) {
    assert_eq!(backend, Backend::Postgres);
    restart_under_load(backend, || {
        let v = postgres_cluster();
        run(
            "pg_ctlcluster",
            &[
                "--skip-systemctl-redirect",
                &v,
                "main",
                "stop",
                "-m",
                "fast",
            ],
        );
        std::thread::sleep(Duration::from_secs(3));
        run(
            "pg_ctlcluster",
            &["--skip-systemctl-redirect", &v, "main", "start"],
        );
    })
    .await;
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "restarts the shared RabbitMQ; run alone with --ignored --test-threads=1"]
    async fn broker_restart_under_load() {
        super::broker_restart_under_load(super::Backend::Sqlite).await
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "restarts the shared RabbitMQ; run alone with --ignored --test-threads=1"]
    async fn broker_restart_under_load() {
        super::broker_restart_under_load(super::Backend::Postgres).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "restarts the shared PostgreSQL; run alone with --ignored --test-threads=1"]
    async fn postgres_restart_under_load() {
        super::postgres_restart_under_load(super::Backend::Postgres).await
    }
}
