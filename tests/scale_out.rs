//! Scale-out: two API processes and two workers on one PostgreSQL and one RabbitMQ. The daily
//! quota and the cooldown stay exact under the grouped writes, nothing is delivered twice, and the
//! provider's total rate is split between the workers.

use msgcontact_tests as common;

use std::{collections::HashMap, time::Duration};

use common::{Backend, Options, TestApp, assert_invariants};
use futures::future::join_all;

fn name(i: usize) -> String {
    // Contact names are letters only.
    let a = (b'a' + (i / 26) as u8) as char;
    let b = (b'a' + (i % 26) as u8) as char;
    format!("scale{a}{b}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_apis_two_workers_keep_quota_cooldown_and_rate_exact() {
    let mut app = TestApp::spawn_with(
        Backend::Postgres,
        Options {
            worker: false,
            api_instances: 2,
            daily_limit: 50,
            cooldown_secs: 60,
            provider_total_rate: Some(20),
            worker_count: 2,
            ..Default::default()
        },
    )
    .await;
    let mut contacts = Vec::new();
    for i in 0..60 {
        let phone = format!("86-139{:08}", 1000 + i);
        contacts.push((app.add_contact(&name(i), Some(&phone)).await, phone));
    }
    // 60 contacts × 3 concurrent sends, alternating between the two API processes: the cooldown
    // admits at most one per contact, the quota exactly 50 in total.
    let calls = (0..180).map(|i| {
        let (app, (id, phone)) = (&app, contacts[i % contacts.len()].clone());
        async move {
            let r = app
                .call_with(
                    &app.key,
                    i % 2,
                    "SendPhoneVerificationForMessageContact",
                    &[("ContactId", &id), ("PhoneNumber", &phone)],
                )
                .await;
            (id, r)
        }
    });
    let results = join_all(calls).await;
    let mut per_contact: HashMap<&str, usize> = HashMap::new();
    let mut accepted = Vec::new();
    let (mut quota, mut cooldown) = (0, 0);
    for (id, r) in &results {
        match (r.status, r.code()) {
            (200, _) => {
                *per_contact.entry(id.as_str()).or_default() += 1;
                accepted.push(r.body["RequestId"].as_str().unwrap().to_owned());
            }
            (409, "SendValidateCodeExceedsLimitForAccount") => quota += 1,
            (429, "Throttling.Contact") => cooldown += 1,
            _ => panic!("unexpected answer {} {}", r.status, r.body),
        }
    }
    assert_eq!(accepted.len(), 50, "the daily quota admits exactly 50");
    assert!(
        per_contact.values().all(|&n| n == 1),
        "the cooldown admits one send per contact: {per_contact:?}"
    );
    assert_eq!(quota + cooldown, 130);
    assert_eq!(common::depth(&app.work_queue()).await, 50);

    // Two workers share the queue and the provider's 20/s.
    app.start_worker().await;
    app.start_extra_worker().await;
    assert_invariants(&app, &accepted).await;
    let sms = app.inbox.all();
    assert_eq!(sms.len(), 50, "every accepted request delivered once");
    let mut ids: Vec<&str> = sms
        .iter()
        .map(|m| m["request_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50, "no request delivered by both workers");
    // Each worker runs at 10/s with a one-second burst: 50 SMS need at least (50 − 20) / 20 s.
    let times = app.inbox.times.lock().unwrap().clone();
    let spread = *times.iter().max().unwrap() - *times.iter().min().unwrap();
    assert!(
        spread >= Duration::from_millis(1400),
        "50 SMS went out in {spread:?}: the total rate of 20/s was not held"
    );
    app.cleanup().await;
}
