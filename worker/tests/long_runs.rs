//! Long fault runs (minutes each), ignored in the normal run:
//!
//! ```sh
//! cargo test -p msgcontact-worker --test long_runs -- --ignored --test-threads=1 --nocapture
//! ```
//!
//! - a soak: 2,000 sends while the worker binary is SIGKILLed twice and RabbitMQ is restarted once;
//! - a 2-minute provider outage: the worker's CPU stays low, nothing is dead-lettered, and the
//!   backlog drains once the provider is back.
//!
//! Both end with the SPEC §7 invariant check. They restart or load the shared services, so they
//! run alone.

use msgcontact_tests as common;

use std::{
    process::Child,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Backend, Options, TestApp, assert_invariants};
use futures::future::join_all;
use msgcontact::entities::send_request;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};

const WORKER: &str = env!("CARGO_BIN_EXE_msgcontact-worker");

fn name(i: usize) -> String {
    let l = |n: usize| (b'a' + (n % 26) as u8) as char;
    format!("soak{}{}{}", l(i / 676), l(i / 26), l(i))
}

fn sigkill(child: &mut Child) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process stat");
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) counted from the state field (3).
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

async fn live(app: &TestApp) -> u64 {
    send_request::Entity::find()
        .filter(send_request::Column::Status.is_in(["Queued", "Sending", "Retrying"]))
        .count(&app.db)
        .await
        .unwrap()
}

async fn wait_drained(app: &TestApp, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while live(app).await > 0 {
        assert!(
            Instant::now() < deadline,
            "{} requests still live",
            live(app).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn contacts(app: &TestApp, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let made = join_all(chunk.iter().map(|&i| async move {
            let phone = format!("86-139{:08}", 20_000 + i);
            (app.add_contact(&name(i), Some(&phone)).await, phone)
        }))
        .await;
        out.extend(made);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long run (about a minute) that restarts the shared RabbitMQ; run alone with --ignored"]
async fn soak_2000_sends_two_worker_kills_one_broker_restart() {
    let app = TestApp::spawn_with(
        Backend::Postgres,
        Options {
            worker: false,
            aliyun: true,
            cooldown_secs: 0,
            daily_limit: 100_000,
            provider_timeout_ms: 2000,
            ..Default::default()
        },
    )
    .await;
    let targets = contacts(&app, 2000).await;
    let app = Arc::new(app);
    let worker = Arc::new(Mutex::new(
        app.spawn_worker_process(WORKER, &[("MSGCONTACT_PROVIDER_RATE", "150")]),
    ));

    // The client: every contact once, about 100 a second; a 503 is retried after its retry-after,
    // as the SDKs' callers do, until the send is accepted.
    let load = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut tasks = Vec::new();
            for (id, phone) in targets {
                tick.tick().await;
                let app = app.clone();
                tasks.push(tokio::spawn(async move {
                    let mut refused = 0;
                    loop {
                        let r = app
                            .call(
                                "SendPhoneVerificationForMessageContact",
                                &[("ContactId", &id), ("PhoneNumber", &phone)],
                            )
                            .await;
                        match r.status {
                            200 => {
                                return (r.body["RequestId"].as_str().unwrap().to_owned(), refused);
                            }
                            503 => {
                                refused += 1;
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                            _ => panic!("unexpected answer {}", r.body),
                        }
                    }
                }));
            }
            join_all(tasks)
                .await
                .into_iter()
                .map(|r| r.unwrap())
                .collect::<Vec<_>>()
        })
    };

    let started = Instant::now();
    let restart_worker = |label: &str| {
        let mut w = worker.lock().unwrap();
        sigkill(&mut w);
        *w = app.spawn_worker_process(WORKER, &[("MSGCONTACT_PROVIDER_RATE", "150")]);
        eprintln!(
            "{:>5.1} s: worker SIGKILLed ({label}) and started again",
            started.elapsed().as_secs_f64()
        );
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    restart_worker("first");
    tokio::time::sleep(Duration::from_secs(4)).await;
    eprintln!(
        "{:>5.1} s: broker stop_app",
        started.elapsed().as_secs_f64()
    );
    tokio::task::spawn_blocking(|| {
        for step in ["stop_app", "start_app"] {
            let ok = std::process::Command::new("rabbitmqctl")
                .arg(step)
                .status()
                .expect("rabbitmqctl is required")
                .success();
            assert!(ok, "rabbitmqctl {step}");
            std::thread::sleep(Duration::from_secs(2));
        }
    })
    .await
    .unwrap();
    eprintln!(
        "{:>5.1} s: broker start_app done",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    restart_worker("second");

    let results = load.await.unwrap();
    let accepted: Vec<String> = results.iter().map(|(r, _)| r.clone()).collect();
    let refused: usize = results.iter().map(|(_, n)| n).sum();
    eprintln!(
        "{:>5.1} s: load done: {} accepted, {refused} answers were 503 (retried)",
        started.elapsed().as_secs_f64(),
        accepted.len()
    );
    assert_eq!(accepted.len(), 2000);
    wait_drained(&app, 300).await;
    assert_invariants(&app, &accepted).await;

    let rows = send_request::Entity::find().all(&app.db).await.unwrap();
    let accepted_rows: Vec<_> = rows
        .iter()
        .filter(|r| accepted.contains(&r.request_id))
        .collect();
    let count = |s: &str| accepted_rows.iter().filter(|r| r.status == s).count();
    let ambiguous = accepted_rows
        .iter()
        .filter(|r| r.ambiguous_attempts > 0)
        .count();
    let sms: usize = accepted.iter().map(|id| app.sms.delivered(id)).sum();
    eprintln!(
        "terminal: Sent {} Failed {} Superseded {}; SMS {sms}; requests with an ambiguous attempt {ambiguous}",
        count("Sent"),
        count("Failed"),
        count("Superseded")
    );
    assert_eq!(
        count("Sent") + count("Failed") + count("Superseded"),
        2000,
        "0 lost"
    );
    // Every SMS beyond one per Sent request is explained by an ambiguous attempt.
    assert!(sms >= count("Sent"));
    assert!(
        sms - count("Sent") <= ambiguous,
        "{sms} SMS, {} Sent, {ambiguous} ambiguous",
        count("Sent")
    );
    sigkill(&mut worker.lock().unwrap());
    Arc::try_unwrap(app)
        .unwrap_or_else(|_| panic!("app still shared"))
        .cleanup()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run (about 4 minutes); run alone with --ignored"]
async fn two_minute_provider_outage_no_hot_loop_no_dead_letters_full_drain() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Options {
            worker: false,
            aliyun: true,
            cooldown_secs: 0,
            daily_limit: 100_000,
            provider_timeout_ms: 2000,
            // The production-like schedule: long enough to ride out a 2-minute outage.
            retry_delays: "5,30,60,120",
            ..Default::default()
        },
    )
    .await;
    let targets = contacts(&app, 200).await;
    let outage = Duration::from_secs(120);
    app.sms.outage(outage);
    let mut worker = app.spawn_worker_process(WORKER, &[]);
    let pid = worker.id();
    let cpu0 = cpu_seconds(pid);
    let started = Instant::now();
    let mut accepted = Vec::new();
    for (id, phone) in &targets {
        let r = app
            .call(
                "SendPhoneVerificationForMessageContact",
                &[("ContactId", id), ("PhoneNumber", phone)],
            )
            .await;
        accepted.push(r.assert_ok()["RequestId"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(outage.saturating_sub(started.elapsed())).await;
    let cpu = cpu_seconds(pid) - cpu0;
    let calls = app.sms.received().len();
    eprintln!(
        "outage of {:?}: worker used {cpu:.2} s CPU ({:.2} %), {calls} provider calls for 200 requests",
        started.elapsed(),
        cpu / started.elapsed().as_secs_f64() * 100.0
    );
    assert!(
        cpu < 0.05 * started.elapsed().as_secs_f64(),
        "a hot loop: {cpu:.2} s CPU"
    );
    assert!(
        calls <= 200 * 4,
        "retries follow the schedule, not a loop: {calls} calls"
    );
    assert_eq!(common::depth(&format!("{}.send.dead", app.prefix)).await, 0);
    wait_drained(&app, 240).await;
    eprintln!("drained {:?} after the start", started.elapsed());
    assert_invariants(&app, &accepted).await;
    let rows = send_request::Entity::find().all(&app.db).await.unwrap();
    assert!(
        rows.iter().all(|r| r.status == "Sent"),
        "every request delivered after the outage: {:?}",
        rows.iter()
            .filter(|r| r.status != "Sent")
            .map(|r| (&r.status, &r.failure_code))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        common::depth(&format!("{}.send.dead", app.prefix)).await,
        0,
        "no dead letters"
    );
    sigkill(&mut worker);
    app.cleanup().await;
}
