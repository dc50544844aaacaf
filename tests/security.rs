//! Attacks on the promise that a code reaches only its phone, each against the real API and worker
//! on SQLite and PostgreSQL (SPEC §11): racing guesses past the attempt cap, replaying a v1
//! request as another action, slow and idle sockets, a flood of unknown access keys, reading the
//! database for secrets, a provider redirecting the code elsewhere, tenants reading the
//! operators' pages. (Provider failures echoing the code: `worker/tests/code_leaks.rs`.)

use msgcontact_tests::{self as common, on_both_backends};

use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use common::{Backend, Key, Options, TestApp, fake_sms::Step, nonce, now_stamp};
use msgcontact::signing;
use sea_orm::EntityTrait;

on_both_backends! {
    concurrent_guesses_never_pass_the_attempt_cap;
    a_v1_request_cannot_be_replayed_as_another_action;
    slow_and_idle_sockets_are_cut_and_do_not_block_callers;
    connections_past_the_cap_are_closed_at_once;
    unknown_access_keys_cost_no_database_reads;
    the_database_holds_no_secret_and_no_code;
    a_provider_redirect_reaches_no_one;
    operators_pages_move_to_the_admin_address;
}

const PHONE: &str = "86-13912341234";

async fn send(app: &TestApp, contact: &str, phone: &str) -> String {
    app.call(
        "SendPhoneVerificationForMessageContact",
        &[("ContactId", contact), ("PhoneNumber", phone)],
    )
    .await
    .assert_ok()["RequestId"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn check(app: &TestApp, contact: &str, code: &str) -> common::Response {
    check_phone(app, contact, PHONE, code).await
}

async fn check_phone(app: &TestApp, contact: &str, phone: &str, code: &str) -> common::Response {
    app.call(
        "CheckPhoneVerificationForMessageContact",
        &[
            ("ContactId", contact),
            ("PhoneNumber", phone),
            ("VerificationCode", code),
        ],
    )
    .await
}

/// 300 guesses at once, each a different code, the right one at `right_at` if any: how many
/// were compared and missed, refused at the cap, and verified.
async fn race(
    app: &TestApp,
    contact: &str,
    phone: &str,
    code: &str,
    right_at: Option<usize>,
) -> (usize, usize, usize) {
    let guesses: Vec<String> = (0..300)
        .map(|i| {
            if Some(i) == right_at {
                code.to_owned()
            } else {
                let n = (code.parse::<u32>().unwrap() + 1 + i as u32) % 1_000_000;
                format!("{n:06}")
            }
        })
        .collect();
    let answers =
        futures::future::join_all(guesses.iter().map(|g| check_phone(app, contact, phone, g)))
            .await;
    let count = |c: &str| answers.iter().filter(|r| r.code() == c).count();
    let missed = count("InvalidVerificationCode");
    // Refused without a comparison: at the cap, or after the code was used.
    let refused =
        count("VerificationCodeAttemptsExceeded") + count("EntityNotExists.Contact.Verification");
    let verified = answers.iter().filter(|r| r.status == 200).count();
    assert_eq!(missed + refused + verified, 300, "every guess answered");
    (missed, refused, verified)
}

async fn concurrent_guesses_never_pass_the_attempt_cap(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        Options {
            cooldown_secs: 0,
            ..Default::default()
        },
    )
    .await;
    // 300 wrong guesses at once: each one compared takes an attempt first, so 5 are compared, and
    // the fifth locks the code in the same statement. (With a stale read, every guess that read
    // the code before the misses were counted was compared, and the lock was decided on the
    // stale count: the code stayed Pending, live for the worker.)
    let id = app.add_contact("race", Some(PHONE)).await;
    let rid = send(&app, &id, PHONE).await;
    let code = app.code_for(&rid).await;
    let (missed, _, verified) = race(&app, &id, PHONE, &code, None).await;
    assert_eq!((missed, verified), (5, 0), "5 guesses compared");
    // Locked: the right code is refused now too, and the lock holds in the database.
    check(&app, &id, &code)
        .await
        .assert_error(400, "VerificationCodeAttemptsExceeded");
    let v = msgcontact::entities::verification::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].failed_attempts, 5);
    assert_eq!(
        v[0].status,
        msgcontact::status::VerificationStatus::Locked.as_str()
    );

    // A new send issues a new code, which verifies.
    let rid2 = send(&app, &id, PHONE).await;
    let code2 = app.code_for(&rid2).await;
    assert_ne!(rid2, rid);
    let ok = check(&app, &id, &code2).await;
    assert_eq!(ok.assert_ok()["Status"], "Active", "{}", ok.body);

    // The right code among the racing guesses, early: it gets through only if it is one of the
    // five compared, never as a sixth.
    let other = "86-13912345678";
    let id2 = app.add_contact("raceb", Some(other)).await;
    let rid3 = send(&app, &id2, other).await;
    let code3 = app.code_for(&rid3).await;
    let (missed, _, verified) = race(&app, &id2, other, &code3, Some(3)).await;
    assert!(
        missed + verified <= 5,
        "{missed} wrong and {verified} right guesses were compared: more than the 5 attempts"
    );
    app.cleanup().await;
}

/// A v1-signed call with one header added after signing.
async fn v1_with_header(
    app: &TestApp,
    action: &str,
    params: &[(&str, &str)],
    header: (&str, &str),
) -> common::Response {
    let mut all: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (stamp, nonce) = (now_stamp(), nonce());
    for (k, v) in [
        ("Action", action),
        ("Version", msgcontact_api::API_VERSION),
        ("Format", "JSON"),
        ("AccessKeyId", app.key.id.as_str()),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("SignatureNonce", nonce.as_str()),
        ("Timestamp", stamp.as_str()),
    ] {
        all.push((k.into(), v.into()));
    }
    let sig = signing::v1_signature(&app.key.secret, &signing::v1_string_to_sign("POST", &all));
    all.push(("Signature".into(), sig));
    app.send_raw(
        0,
        "POST",
        &format!("/?{}", signing::canonical_query(&all)),
        &[(header.0.to_owned(), header.1.to_owned())],
        Vec::new(),
    )
    .await
}

async fn a_v1_request_cannot_be_replayed_as_another_action(backend: Backend) {
    let app = TestApp::spawn_with(backend, Options::without_worker()).await;
    let id = app.add_contact("keep", Some(PHONE)).await;
    // Signed as a harmless read, sent as a deletion.
    v1_with_header(
        &app,
        "GetMessageContact",
        &[("ContactId", &id)],
        ("x-acs-action", "DeleteMessageContact"),
    )
    .await
    .assert_error(400, "SignatureDoesNotMatch");
    v1_with_header(
        &app,
        "GetMessageContact",
        &[("ContactId", &id)],
        ("x-acs-version", "2017-01-01"),
    )
    .await
    .assert_error(400, "SignatureDoesNotMatch");
    // Nothing changed; the same call with the header saying what the signature says works.
    let got = app.call("GetMessageContact", &[("ContactId", &id)]).await;
    assert_eq!(got.assert_ok()["Contact"]["ContactId"], id.as_str());
    v1_with_header(
        &app,
        "GetMessageContact",
        &[("ContactId", &id)],
        ("x-acs-action", "GetMessageContact"),
    )
    .await
    .assert_ok();
    app.call("GetMessageContactDeletionStatus", &[("ContactId", &id)])
        .await
        .assert_error(404, "EntityNotExists.Contact.Deletion");
    app.cleanup().await;
}

/// Whether the server closed `stream` (reads EOF or an error) within `within`.
fn closed_within(stream: &mut std::net::TcpStream, within: Duration) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

async fn slow_and_idle_sockets_are_cut_and_do_not_block_callers(backend: Backend) {
    let app = TestApp::spawn_with(backend, Options::without_worker()).await;
    let addr = app.api_addrs[0];
    let idle: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // A client trickling its headers, a byte a second.
    let started = Instant::now();
    let slow = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        let head =
            b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let mut buf = [0u8; 64];
        for b in head {
            if s.write_all(&[*b]).is_err() {
                return started.elapsed();
            }
            match s.read(&mut buf) {
                Ok(0) => return started.elapsed(),
                Err(e)
                    if e.kind() != std::io::ErrorKind::WouldBlock
                        && e.kind() != std::io::ErrorKind::TimedOut =>
                {
                    return started.elapsed();
                }
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(990));
        }
        Duration::MAX
    });
    // Meanwhile a normal call is served as usual.
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.call("ListMessageContacts", &[("PageSize", "10")])
        .await
        .assert_ok();
    let cut_after = tokio::task::spawn_blocking(move || slow.join().unwrap())
        .await
        .unwrap();
    assert!(
        cut_after >= Duration::from_secs(9) && cut_after <= Duration::from_secs(13),
        "the trickling client was cut after {cut_after:?} (header deadline 10 s)"
    );
    // The idle sockets never sent a byte: they were cut on the same deadline from their accept.
    let idle_cut = tokio::task::spawn_blocking(move || {
        idle.into_iter()
            .filter_map(|mut s| closed_within(&mut s, Duration::from_secs(3)).then_some(()))
            .count()
    })
    .await
    .unwrap();
    assert_eq!(idle_cut, 200, "every silent connection was closed");
    app.call("ListMessageContacts", &[("PageSize", "10")])
        .await
        .assert_ok();
    app.cleanup().await;
}

async fn connections_past_the_cap_are_closed_at_once(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        Options {
            worker: false,
            max_connections: 20,
            ..Default::default()
        },
    )
    .await;
    let addr = app.api_addrs[0];
    let held: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // Let the server accept them all before the one too many.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let over = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        closed_within(&mut s, Duration::from_secs(2))
    })
    .await
    .unwrap();
    assert!(over, "the 21st connection was closed on accept");
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.call("ListMessageContacts", &[("PageSize", "10")])
        .await
        .assert_ok();
    app.cleanup().await;
}

async fn unknown_access_keys_cost_no_database_reads(backend: Backend) {
    let app = TestApp::spawn_with(backend, Options::without_worker()).await;
    let keys = &app.states[0].keys;
    let started = Instant::now();
    let reads_before = keys.reads();
    let strangers: Vec<Key> = (0..300)
        .map(|i| Key {
            id: format!("LTAIunknown{i:05}"),
            secret: "whatever-secret-000".into(),
            account: app.key.account.clone(),
        })
        .collect();
    let answers = futures::future::join_all(
        strangers
            .iter()
            .map(|k| app.call_with(k, 0, "ListMessageContacts", &[("PageSize", "10")])),
    )
    .await;
    for a in &answers {
        a.assert_error(404, "InvalidAccessKeyId.NotFound");
    }
    let reads = keys.reads() - reads_before;
    // Only the periodic refresh reads keys: one read per KEY_REFRESH, however many requests.
    let ticks = started.elapsed().as_secs_f64() / msgcontact_api::auth::KEY_REFRESH.as_secs_f64();
    assert!(
        reads as f64 <= ticks + 2.0,
        "{reads} key reads for 300 unknown-key requests in {:?}",
        started.elapsed()
    );
    // The timestamp is checked before the key: an expired request from an unknown key is told so.
    let stale = "2020-01-01T00:00:00Z";
    let headers = signing::OutboundCall {
        host: &app.api_addrs[0].to_string(),
        action: "ListMessageContacts",
        version: msgcontact_api::API_VERSION,
        query: &[],
        form_body: None,
    }
    .sign("LTAIunknown99999", "whatever-secret-000", stale, &nonce());
    app.send_raw(0, "POST", "/", &headers, Vec::new())
        .await
        .assert_error(400, "InvalidTimeStamp.Expired");
    // A key created with the CLI (no refresh asked for) works within the refresh period.
    let created =
        msgcontact_api::admin_cli::create_key(&app.db, &app.master(), &app.key.account, None, None)
            .await
            .unwrap();
    let fresh = Key {
        id: created["AccessKeyId"].as_str().unwrap().into(),
        secret: created["AccessKeySecret"].as_str().unwrap().into(),
        account: app.key.account.clone(),
    };
    let made = Instant::now();
    loop {
        let r = app
            .call_with(&fresh, 0, "ListMessageContacts", &[("PageSize", "10")])
            .await;
        if r.status == 200 {
            break;
        }
        r.assert_error(404, "InvalidAccessKeyId.NotFound");
        assert!(
            made.elapsed() < msgcontact_api::auth::KEY_REFRESH * 2,
            "the new key is still unknown after {:?}",
            made.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.cleanup().await;
}

/// The raw bytes of the database: the SQLite file and its WAL, or PostgreSQL's rows as text.
async fn database_bytes(app: &TestApp) -> Vec<u8> {
    match app.backend {
        Backend::Sqlite => {
            let path = app
                .db_url
                .trim_start_matches("sqlite://")
                .split('?')
                .next()
                .unwrap()
                .to_owned();
            let mut all = std::fs::read(&path).unwrap();
            if let Ok(wal) = std::fs::read(format!("{path}-wal")) {
                all.extend(wal);
            }
            all
        }
        Backend::Postgres => app.all_rows().await.into_bytes(),
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

async fn the_database_holds_no_secret_and_no_code(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        Options {
            cooldown_secs: 0,
            ..Default::default()
        },
    )
    .await;
    let id = app.add_contact("vault", Some(PHONE)).await;
    let rid = send(&app, &id, PHONE).await;
    let code = app.code_for(&rid).await;
    // A second, live code not yet used.
    let id2 = app.add_contact("vaultb", Some("86-13912345678")).await;
    let rid2 = send(&app, &id2, "86-13912345678").await;
    let live = app.code_for(&rid2).await;
    check(&app, &id, &code).await.assert_ok();
    let bytes = database_bytes(&app).await;
    assert!(
        contains(&bytes, &app.key.id),
        "the scan reads the key table"
    );
    assert!(
        !contains(&bytes, &app.key.secret),
        "the access key secret is in the database"
    );
    let secrets = common::test_secrets(&app.prefix);
    assert!(!contains(&bytes, secrets.code_secret.as_deref().unwrap()));
    for c in [&code, &live] {
        // Bounded by non-digits: six digits turn up by chance inside longer numbers.
        let hit = bytes
            .windows(8)
            .any(|w| !w[0].is_ascii_digit() && !w[7].is_ascii_digit() && &w[1..7] == c.as_bytes());
        assert!(!hit, "the code {c} is in the database");
    }
    // The stored secret is sealed, bound to its row, and opens with the master key only.
    let row = msgcontact::entities::access_key::Entity::find_by_id(app.key.id.clone())
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert!(row.secret.starts_with("enc1:"), "{}", row.secret);
    assert_eq!(
        app.master().open(&row.secret, &app.key.id).unwrap(),
        app.key.secret
    );
    assert!(
        msgcontact::secrets::MasterKey::random()
            .open(&row.secret, &app.key.id)
            .is_err()
    );
    // No code secret in the settings table either.
    let settings = msgcontact::entities::setting::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    assert!(settings.iter().all(|s| s.key != "code_secret"));
    app.cleanup().await;
}

async fn a_provider_redirect_reaches_no_one(backend: Backend) {
    // Where the redirect points: it must never see a connection.
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = elsewhere.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let trap = tokio::spawn(async move {
        while let Ok((_s, _)) = elsewhere.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let app = TestApp::spawn_with(
        backend,
        Options {
            aliyun: true,
            cooldown_secs: 0,
            provider_timeout_ms: 1000,
            ..Default::default()
        },
    )
    .await;
    let location = format!("http://{target}/?Action=SendSms");
    app.sms.script([
        Step::Redirect(307, location.clone()),
        Step::Redirect(308, location.clone()),
        Step::Redirect(302, location),
    ]);
    let mut rids = Vec::new();
    for (i, phone) in ["86-13912340001", "86-13912340002", "86-13912340003"]
        .iter()
        .enumerate()
    {
        let id = app
            .add_contact(&format!("redir{}", (b'a' + i as u8) as char), Some(phone))
            .await;
        let rid = send(&app, &id, phone).await;
        let req = app.wait_status(&rid, "Failed", 15).await;
        assert!(
            req["FailureCode"]
                .as_str()
                .is_some_and(|c| c.starts_with("Http30")),
            "{req}"
        );
        assert_eq!(req["Attempts"], 1, "a redirect is not retried: {req}");
        rids.push(rid);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a redirect was followed"
    );
    trap.abort();
    app.cleanup().await;
}

async fn operators_pages_move_to_the_admin_address(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        Options {
            worker: false,
            admin_listen: true,
            ..Default::default()
        },
    )
    .await;
    let admin = *app.admin_addrs.first().expect("admin address");
    let http = common::http_client();
    for path in ["/metrics", "/ops", "/ops/data"] {
        let public = http
            .get(format!("http://{}{path}", app.api_addrs[0]))
            .send()
            .await
            .unwrap();
        let status = public.status().as_u16();
        let body = public.text().await.unwrap();
        assert_ne!(status, 200, "{path} is still public: {body}");
        assert!(!body.contains("msgcontact_api_requests_total"));
        let private = http
            .get(format!("http://{admin}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            private.status().as_u16(),
            200,
            "{path} on the admin address"
        );
    }
    // Health checks stay on the API address for load balancers.
    let health = http
        .get(format!("http://{}/healthz", app.api_addrs[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    app.cleanup().await;
}
