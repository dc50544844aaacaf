//! The API end to end, on SQLite and PostgreSQL, against real RabbitMQ: every operation, every
//! seed error code, authentication, bad input, tenancy and the exact daily quota.

use msgcontact_tests::{self as common, on_both_backends};

use std::time::Duration;

use common::{Backend, Options, TestApp, nonce, now_stamp};
use futures::future::join_all;
use lapin::options::BasicGetOptions;
use serde_json::Value;

on_both_backends! {
    contact_lifecycle;
    seed_error_codes;
    send_check_and_status;
    wrong_codes_lock_the_code;
    authentication_errors;
    bad_input_gets_json_errors;
    tenants_are_isolated;
    daily_limit_is_exact_across_two_api_processes;
    concurrent_replays_of_one_signed_send_are_accepted_once;
    accepted_send_is_in_the_queue_before_the_answer;
    duplicate_deliveries_send_once;
    poison_messages_are_dead_lettered_with_a_reason;
}

const PHONE: &str = "86-13912341234";
const PHONE2: &str = "86-13800001111";

async fn contact_lifecycle(backend: Backend) {
    let app = TestApp::spawn_with(backend, Options::without_worker()).await;
    let id = app.add_contact("alice", Some(PHONE)).await;
    assert!(id.starts_with("c-") && id.len() == 18);

    let got = app.call("GetMessageContact", &[("ContactId", &id)]).await;
    let c = &got.assert_ok()["Contact"];
    assert_eq!(c["Name"], "alice");
    assert_eq!(c["Status"], "Verifying");
    assert_eq!(c["PhoneNumber"], PHONE);
    assert_eq!(c["MessageTypes"], serde_json::json!(["ServiceMessage"]));
    assert_eq!(c["Title"], "CEO");
    assert!(c["CreateDate"].as_str().unwrap().len() == 19);

    // Names are unique per account.
    let dup = app
        .call(
            "AddMessageContact",
            &[
                ("Name", "alice"),
                ("EmailAddress", "a@b.co"),
                ("Title", "CEO"),
                ("MessageTypes.1", "FaultMessage"),
            ],
        )
        .await;
    dup.assert_error(400, "InvalidParameter.Name.AlreadyUsed");
    // Field rules.
    for (params, code) in [
        (
            vec![
                ("EmailAddress", "a@b.co"),
                ("Title", "CEO"),
                ("MessageTypes.1", "FaultMessage"),
            ],
            "MissingParameter.Name",
        ),
        (
            vec![
                ("Name", "x"),
                ("EmailAddress", "a@b.co"),
                ("Title", "CEO"),
                ("MessageTypes.1", "FaultMessage"),
            ],
            "InvalidParameter.Name",
        ),
        (
            vec![
                ("Name", "bob"),
                ("EmailAddress", "nope"),
                ("Title", "CEO"),
                ("MessageTypes.1", "FaultMessage"),
            ],
            "InvalidParameter.EmailAddress",
        ),
        (
            vec![
                ("Name", "bob"),
                ("EmailAddress", "a@b.co"),
                ("Title", "Boss"),
                ("MessageTypes.1", "FaultMessage"),
            ],
            "InvalidParameter.Title",
        ),
        (
            vec![
                ("Name", "bob"),
                ("EmailAddress", "a@b.co"),
                ("Title", "CEO"),
            ],
            "MissingParameter.MessageTypes",
        ),
        (
            vec![
                ("Name", "bob"),
                ("EmailAddress", "a@b.co"),
                ("Title", "CEO"),
                ("MessageTypes.1", "Spam"),
            ],
            "InvalidParameter.MessageTypes",
        ),
        (
            vec![
                ("Name", "bob"),
                ("EmailAddress", "a@b.co"),
                ("Title", "CEO"),
                ("MessageTypes.1", "FaultMessage"),
                ("PhoneNumber", "86-1"),
            ],
            "InvalidParameter.PhoneNumber",
        ),
    ] {
        app.call("AddMessageContact", &params)
            .await
            .assert_error(400, code);
    }

    // Pending targets.
    let v = app.call("ListMessageContactVerifications", &[]).await;
    assert_eq!(v.assert_ok()["TotalCount"], 1);
    assert_eq!(v.body["ContactVerifications"][0]["Target"], PHONE);

    // Update: fields change; a new phone becomes the pending target.
    app.call(
        "UpdateMessageContact",
        &[
            ("ContactId", &id),
            ("Name", "alicia"),
            ("Title", "CEO"),
            ("MessageTypes.1", "FaultMessage"),
            ("MessageTypes.2", "SecurityMessage"),
            ("PhoneNumber", PHONE2),
        ],
    )
    .await
    .assert_ok();
    let c = app
        .call("GetMessageContact", &[("ContactId", &id)])
        .await
        .body["Contact"]
        .clone();
    assert_eq!(
        (c["Name"].as_str(), c["PhoneNumber"].as_str()),
        (Some("alicia"), Some(PHONE2))
    );
    assert_eq!(
        c["MessageTypes"],
        serde_json::json!(["FaultMessage", "SecurityMessage"])
    );

    // Cancel the pending update.
    app.call(
        "CancelMessageContactUpdate",
        &[("ContactId", &id), ("PhoneNumber", PHONE)],
    )
    .await
    .assert_error(404, "EntityNotExists.Contact.Verification");
    app.call(
        "CancelMessageContactUpdate",
        &[("ContactId", &id), ("PhoneNumber", PHONE2)],
    )
    .await
    .assert_ok();
    let c = app
        .call("GetMessageContact", &[("ContactId", &id)])
        .await
        .body["Contact"]
        .clone();
    assert_eq!(c["Status"], "Active");
    assert_eq!(
        app.call("ListMessageContactVerifications", &[]).await.body["TotalCount"],
        0
    );

    // Members.
    let m = app
        .call(
            "AssociateMembers",
            &[
                ("ContactId", &id),
                ("Members.1", "fd-abc123"),
                ("Members.2", "1234567890123456"),
            ],
        )
        .await;
    assert_eq!(m.assert_ok()["Members"].as_array().unwrap().len(), 2);
    assert_eq!(m.body["Members"][0]["ContactId"], id.as_str());
    let other = app.add_contact("bob", None).await;
    let by_member = app
        .call("ListMessageContacts", &[("Member", "fd-abc123")])
        .await;
    assert_eq!(by_member.assert_ok()["TotalCount"], 1);
    assert_eq!(by_member.body["Contacts"][0]["ContactId"], id.as_str());
    assert!(by_member.body["Contacts"][0]["AssociatedDate"].is_string());
    let all = app
        .call(
            "ListMessageContacts",
            &[("PageSize", "1"), ("PageNumber", "2")],
        )
        .await;
    assert_eq!(
        (
            all.body["TotalCount"].as_u64(),
            all.body["PageSize"].as_u64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(all.body["Contacts"][0]["ContactId"], other.as_str());
    app.call("ListMessageContacts", &[("PageSize", "1000")])
        .await
        .assert_error(400, "InvalidParameter.PageSize");
    app.call(
        "DisassociateMembers",
        &[("ContactId", &id), ("Members.1", "fd-abc123")],
    )
    .await
    .assert_ok();
    let got = app.call("GetMessageContact", &[("ContactId", &id)]).await;
    assert_eq!(
        got.body["Contact"]["Members"],
        serde_json::json!(["1234567890123456"])
    );
    app.call("AssociateMembers", &[("ContactId", &id)])
        .await
        .assert_error(400, "MissingParameter.Members");

    // Deletion.
    app.call("GetMessageContactDeletionStatus", &[("ContactId", &id)])
        .await
        .assert_error(404, "EntityNotExists.Contact.Deletion");
    app.call(
        "DeleteMessageContact",
        &[("ContactId", &id), ("RetainContactInMembers", "maybe")],
    )
    .await
    .assert_error(400, "InvalidParameter.RetainContactInMembers");
    let d = app
        .call(
            "DeleteMessageContact",
            &[("ContactId", &id), ("RetainContactInMembers", "False")],
        )
        .await;
    assert_eq!(d.assert_ok()["Status"], "Deleted");
    let s = app
        .call("GetMessageContactDeletionStatus", &[("ContactId", &id)])
        .await;
    assert_eq!(s.assert_ok()["ContactDeletionStatus"]["Status"], "Deleted");
    app.call("GetMessageContact", &[("ContactId", &id)])
        .await
        .assert_error(404, "EntityNotExists.Contact");
    app.call("DeleteMessageContact", &[("ContactId", &id)])
        .await
        .assert_error(404, "EntityNotExists.Contact");
    // The name is free again.
    app.add_contact("alicia", None).await;
    // The email channel answers a clear error until it exists.
    app.call(
        "SendEmailVerificationForMessageContact",
        &[("ContactId", &other), ("EmailAddress", "ops@example.com")],
    )
    .await
    .assert_error(400, "OperationNotSupported.EmailVerification");
    app.cleanup().await;
}

/// Every row of the seed document's error table, with its exact status, code and message.
async fn seed_error_codes(backend: Backend) {
    let app = TestApp::spawn_with(backend, Options::without_worker()).await;
    let id = app.add_contact("carol", Some(PHONE)).await;
    let send = |p: Vec<(&'static str, String)>| {
        let app = &app;
        async move {
            let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
            app.call("SendPhoneVerificationForMessageContact", &p).await
        }
    };
    type Case = (Vec<(&'static str, String)>, u16, &'static str, &'static str);
    let cases: Vec<Case> = vec![
        (
            vec![("PhoneNumber", PHONE.into())],
            400,
            "MissingParameter.ContactId",
            "You must specify ContactId.",
        ),
        (
            vec![("ContactId", "c-bad".into()), ("PhoneNumber", PHONE.into())],
            400,
            "InvalidParameter.ContactId",
            "The ContactId is invalid.",
        ),
        (
            vec![("ContactId", id.clone())],
            400,
            "MissingParameter.PhoneNumber",
            "You must specify PhoneNumber.",
        ),
        (
            vec![("ContactId", id.clone()), ("PhoneNumber", "86-12".into())],
            400,
            "InvalidParameter.PhoneNumber",
            "The PhoneNumber is invalid.",
        ),
        (
            vec![
                ("ContactId", id.clone()),
                ("PhoneNumber", "1-2015550123".into()),
            ],
            400,
            "InvalidParameter.MobileCountryCode",
            "The current site does not support the country code.",
        ),
        (
            vec![
                ("ContactId", "c-0000000000000000".into()),
                ("PhoneNumber", PHONE.into()),
            ],
            404,
            "EntityNotExists.Contact",
            "This Contact does not exist.",
        ),
        // A valid number that is not the contact's.
        (
            vec![("ContactId", id.clone()), ("PhoneNumber", PHONE2.into())],
            400,
            "InvalidParameter.PhoneNumber",
            "The PhoneNumber is invalid.",
        ),
    ];
    for (params, status, code, message) in cases {
        let r = send(params.clone()).await;
        r.assert_error(status, code);
        assert_eq!(r.body["Message"], message, "{params:?}");
    }
    // A number that is current but not pending: nothing to verify.
    let verified = app.add_contact("dave", None).await;
    app.call(
        "UpdateMessageContact",
        &[("ContactId", &verified), ("PhoneNumber", PHONE)],
    )
    .await
    .assert_ok();
    let db = &app.db;
    use sea_orm::ConnectionTrait;
    db.execute_unprepared(&format!("UPDATE contacts SET phone = pending_phone, pending_phone = NULL WHERE contact_id = '{verified}'"))
        .await
        .unwrap();
    let r = send(vec![
        ("ContactId", verified.clone()),
        ("PhoneNumber", PHONE.into()),
    ])
    .await;
    r.assert_error(404, "EntityNotExists.Contact.Verification");
    assert_eq!(
        r.body["Message"],
        "This contact verification does not exist."
    );
    // Daily limit.
    msgcontact_api::admin_cli::account(
        &app.db,
        msgcontact_api::admin_cli::AccountCommand::SetDailyLimit {
            account_id: app.key.account.clone(),
            limit: 1,
        },
    )
    .await
    .unwrap();
    send(vec![
        ("ContactId", id.clone()),
        ("PhoneNumber", PHONE.into()),
    ])
    .await
    .assert_ok();
    let other = app.add_contact("erin", Some(PHONE2)).await;
    let r = send(vec![("ContactId", other), ("PhoneNumber", PHONE2.into())]).await;
    r.assert_error(409, "SendValidateCodeExceedsLimitForAccount");
    assert_eq!(
        r.body["Message"],
        "For the same account, the number of verification codes sent exceeds the limit."
    );
    app.cleanup().await;
}

/// The webhook provider's received code for a request.
async fn send_check_and_status(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        Options {
            cooldown_secs: 1,
            ..Default::default()
        },
    )
    .await;
    let id = app.add_contact("frank", Some(PHONE)).await;
    let r = app
        .call(
            "SendPhoneVerificationForMessageContact",
            &[("ContactId", &id), ("PhoneNumber", PHONE)],
        )
        .await;
    let rid = r.assert_ok()["RequestId"].as_str().unwrap().to_owned();
    assert_eq!(
        r.body.as_object().unwrap().len(),
        1,
        "only RequestId: {}",
        r.body
    );
    let code = app.code_for(&rid).await;
    assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()));
    let sms = &app.inbox.for_request(&rid)[0];
    assert_eq!(sms["phone_number"], PHONE);
    assert!(sms["message"].as_str().unwrap().contains(&code));
    let req = app.wait_status(&rid, "Sent", 10).await;
    assert_eq!(req["PhoneNumber"], "86-139****1234");
    assert_eq!(req["Attempts"], 1);
    assert!(req["SentDate"].is_string());

    // Resend within the cooldown: 429 with retry-after in both forms.
    let t = app
        .call(
            "SendPhoneVerificationForMessageContact",
            &[("ContactId", &id), ("PhoneNumber", PHONE)],
        )
        .await;
    t.assert_error(429, "Throttling.Contact");
    let ms: u64 = t.headers["x-acs-retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1000).contains(&ms), "{ms}");
    assert_eq!(t.headers["retry-after"], "1");
    // After the cooldown, a resend delivers the same (still live) code.
    tokio::time::sleep(Duration::from_millis(ms + 50)).await;
    let r2 = app
        .call(
            "SendPhoneVerificationForMessageContact",
            &[("ContactId", &id), ("PhoneNumber", PHONE)],
        )
        .await;
    let rid2 = r2.assert_ok()["RequestId"].as_str().unwrap().to_owned();
    assert_eq!(
        app.code_for(&rid2).await,
        code,
        "a resend while the code is live sends the same code"
    );

    let check = |c: String| {
        let (app, id) = (&app, id.clone());
        async move {
            app.call(
                "CheckPhoneVerificationForMessageContact",
                &[
                    ("ContactId", &id),
                    ("PhoneNumber", PHONE),
                    ("VerificationCode", &c),
                ],
            )
            .await
        }
    };
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let w = check(wrong.into()).await;
    w.assert_error(400, "InvalidVerificationCode");
    assert!(
        w.body["Message"].as_str().unwrap().contains("4 attempt"),
        "{}",
        w.body
    );
    check("12ab56".into())
        .await
        .assert_error(400, "InvalidParameter.VerificationCode");
    let ok = check(code.clone()).await;
    assert_eq!(ok.assert_ok()["Status"], "Active");
    // Single use.
    check(code)
        .await
        .assert_error(404, "EntityNotExists.Contact.Verification");
    let c = app.call("GetMessageContact", &[("ContactId", &id)]).await;
    assert_eq!(
        (
            c.body["Contact"]["Status"].as_str(),
            c.body["Contact"]["PhoneNumber"].as_str()
        ),
        (Some("Active"), Some(PHONE))
    );
    // Verified: sending again has no pending target.
    app.call(
        "SendPhoneVerificationForMessageContact",
        &[("ContactId", &id), ("PhoneNumber", PHONE)],
    )
    .await
    .assert_error(404, "EntityNotExists.Contact.Verification");
    app.call(
        "GetVerificationRequest",
        &[("RequestId", "00000000-0000-0000-0000-000000000000")],
    )
    .await
    .assert_error(404, "EntityNotExists.VerificationRequest");
    app.cleanup().await;
}

async fn wrong_codes_lock_the_code(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let id = app.add_contact("grace", Some(PHONE)).await;
    app.call(
        "CheckPhoneVerificationForMessageContact",
        &[
            ("ContactId", &id),
            ("PhoneNumber", PHONE),
            ("VerificationCode", "123456"),
        ],
    )
    .await
    .assert_error(404, "EntityNotExists.Contact.Verification");
    let r = app
        .call(
            "SendPhoneVerificationForMessageContact",
            &[("ContactId", &id), ("PhoneNumber", PHONE)],
        )
        .await;
    let rid = r.assert_ok()["RequestId"].as_str().unwrap().to_owned();
    let code = app.code_for(&rid).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for left in (0..5).rev() {
        let w = app
            .call(
                "CheckPhoneVerificationForMessageContact",
                &[
                    ("ContactId", &id),
                    ("PhoneNumber", PHONE),
                    ("VerificationCode", wrong),
                ],
            )
            .await;
        w.assert_error(400, "InvalidVerificationCode");
        assert!(
            w.body["Message"]
                .as_str()
                .unwrap()
                .contains(&format!("{left} attempt")),
            "{}",
            w.body
        );
    }
    // Locked: even the right code is refused now.
    app.call(
        "CheckPhoneVerificationForMessageContact",
        &[
            ("ContactId", &id),
            ("PhoneNumber", PHONE),
            ("VerificationCode", &code),
        ],
    )
    .await
    .assert_error(400, "VerificationCodeAttemptsExceeded");
    app.cleanup().await;
}

async fn authentication_errors(backend: Backend) {
    let app = TestApp::spawn_with(backend, Options::without_worker()).await;
    let params = [("PageSize", "10")];
    // ACS3: a good call, then each failure.
    app.call("ListMessageContacts", &params).await.assert_ok();
    let mut wrong = app.key.clone();
    wrong.secret.push('x');
    app.call_with(&wrong, 0, "ListMessageContacts", &params)
        .await
        .assert_error(400, "SignatureDoesNotMatch");
    let mut unknown = app.key.clone();
    unknown.id = "LTAIunknownkey".into();
    app.call_with(&unknown, 0, "ListMessageContacts", &params)
        .await
        .assert_error(404, "InvalidAccessKeyId.NotFound");

    let query = vec![("PageSize".to_string(), "10".to_string())];
    let path = format!("/?{}", msgcontact::signing::canonical_query(&query));
    let stale = (chrono::Utc::now() - chrono::Duration::minutes(16))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let h = app.sign(
        &app.key,
        "ListMessageContacts",
        &query,
        None,
        &stale,
        &nonce(),
    );
    app.send_raw(0, "POST", &path, &h, vec![])
        .await
        .assert_error(400, "InvalidTimeStamp.Expired");
    let future = (chrono::Utc::now() + chrono::Duration::minutes(16))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let h = app.sign(
        &app.key,
        "ListMessageContacts",
        &query,
        None,
        &future,
        &nonce(),
    );
    app.send_raw(0, "POST", &path, &h, vec![])
        .await
        .assert_error(400, "InvalidTimeStamp.Expired");
    let n = nonce();
    let h = app.sign(
        &app.key,
        "ListMessageContacts",
        &query,
        None,
        &now_stamp(),
        &n,
    );
    app.send_raw(0, "POST", &path, &h, vec![]).await.assert_ok();
    app.send_raw(0, "POST", &path, &h, vec![])
        .await
        .assert_error(400, "SignatureNonceUsed");
    // A tampered parameter.
    app.send_raw(
        0,
        "POST",
        "/?PageSize=11",
        &app.sign(
            &app.key,
            "ListMessageContacts",
            &query,
            None,
            &now_stamp(),
            &nonce(),
        ),
        vec![],
    )
    .await
    .assert_error(400, "SignatureDoesNotMatch");
    // Missing pieces.
    let mut h = app.sign(
        &app.key,
        "ListMessageContacts",
        &query,
        None,
        &now_stamp(),
        &nonce(),
    );
    h.retain(|(k, _)| k != "x-acs-signature-nonce");
    app.send_raw(0, "POST", &path, &h, vec![])
        .await
        .assert_error(400, "IncompleteSignature");
    let h = vec![
        (
            "x-acs-action".to_string(),
            "ListMessageContacts".to_string(),
        ),
        ("x-acs-version".into(), "2022-04-19".into()),
    ];
    app.send_raw(0, "POST", &path, &h, vec![])
        .await
        .assert_error(400, "IncompleteSignature");
    let h = vec![
        (
            "x-acs-action".to_string(),
            "ListMessageContacts".to_string(),
        ),
        ("x-acs-version".into(), "2022-04-19".into()),
        ("authorization".into(), "ACS3-HMAC-SHA256 garbage".into()),
    ];
    app.send_raw(0, "POST", &path, &h, vec![])
        .await
        .assert_error(400, "IncompleteSignature");
    // Form body parameters are read and the body hash is checked.
    let body = b"PageSize=5".to_vec();
    let h = app.sign(
        &app.key,
        "ListMessageContacts",
        &[],
        Some(body.as_slice()),
        &now_stamp(),
        &nonce(),
    );
    let r = app.send_raw(0, "POST", "/", &h, body.clone()).await;
    assert_eq!(r.assert_ok()["PageSize"], 5);
    let h = app.sign(
        &app.key,
        "ListMessageContacts",
        &[],
        Some(body.as_slice()),
        &now_stamp(),
        &nonce(),
    );
    app.send_raw(0, "POST", "/", &h, b"PageSize=6".to_vec())
        .await
        .assert_error(400, "SignatureDoesNotMatch");

    // v1: good, wrong secret, stale, reused nonce.
    let good = app
        .call_v1(
            &app.key,
            "ListMessageContacts",
            &params,
            &now_stamp(),
            &nonce(),
        )
        .await;
    good.assert_ok();
    app.call_v1(
        &wrong,
        "ListMessageContacts",
        &params,
        &now_stamp(),
        &nonce(),
    )
    .await
    .assert_error(400, "SignatureDoesNotMatch");
    app.call_v1(&app.key, "ListMessageContacts", &params, &stale, &nonce())
        .await
        .assert_error(400, "InvalidTimeStamp.Expired");
    let n = nonce();
    app.call_v1(&app.key, "ListMessageContacts", &params, &now_stamp(), &n)
        .await
        .assert_ok();
    app.call_v1(&app.key, "ListMessageContacts", &params, &now_stamp(), &n)
        .await
        .assert_error(400, "SignatureNonceUsed");
    // v1 over GET, as legacy clients send it.
    let mut all: Vec<(String, String)> = [
        ("Action", "ListMessageContacts"),
        ("Version", "2022-04-19"),
        ("AccessKeyId", app.key.id.as_str()),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    all.push(("SignatureNonce".into(), nonce()));
    all.push(("Timestamp".into(), now_stamp()));
    let sig = msgcontact::signing::v1_signature(
        &app.key.secret,
        &msgcontact::signing::v1_string_to_sign("GET", &all),
    );
    all.push(("Signature".into(), sig));
    app.send_raw(
        0,
        "GET",
        &format!("/?{}", msgcontact::signing::canonical_query(&all)),
        &[],
        vec![],
    )
    .await
    .assert_ok();

    // A disabled key.
    msgcontact_api::admin_cli::access_key(
        &app.db,
        &app.master(),
        msgcontact_api::admin_cli::AccessKeyCommand::Disable {
            access_key_id: app.key.id.clone(),
        },
    )
    .await
    .unwrap();
    app.call("ListMessageContacts", &params)
        .await
        .assert_error(400, "InvalidAccessKeyId.Inactive");
    app.call_v1(
        &app.key,
        "ListMessageContacts",
        &params,
        &now_stamp(),
        &nonce(),
    )
    .await
    .assert_error(400, "InvalidAccessKeyId.Inactive");
    // A send too: the key was cached as active by the calls above, and the batch that would spend
    // its quota re-checks it.
    app.call(
        "SendPhoneVerificationForMessageContact",
        &[("ContactId", "c-0000000000000000"), ("PhoneNumber", PHONE)],
    )
    .await
    .assert_error(400, "InvalidAccessKeyId.Inactive");
    app.cleanup().await;
}

async fn bad_input_gets_json_errors(backend: Backend) {
    let app = TestApp::spawn_with(backend, Options::without_worker()).await;
    app.call("NoSuchAction", &[])
        .await
        .assert_error(404, "InvalidAction.NotFound");
    app.send_raw(0, "POST", "/", &[], vec![])
        .await
        .assert_error(400, "MissingParameter.Action");
    let h = vec![
        (
            "x-acs-action".to_string(),
            "ListMessageContacts".to_string(),
        ),
        ("x-acs-version".into(), "2019-01-01".into()),
    ];
    app.send_raw(0, "POST", "/", &h, vec![])
        .await
        .assert_error(400, "InvalidVersion");
    app.send_raw(0, "DELETE", "/", &[], vec![])
        .await
        .assert_error(405, "UnsupportedHTTPMethod");
    app.send_raw(0, "POST", "/other/path", &[], vec![])
        .await
        .assert_error(404, "InvalidAction.NotFound");
    // Oversized body.
    let big = vec![b'a'; 100 * 1024];
    let h = vec![(
        "content-type".to_string(),
        "application/x-www-form-urlencoded".to_string(),
    )];
    app.send_raw(0, "POST", "/", &h, big)
        .await
        .assert_error(413, "RequestEntityTooLarge");
    // Non-UTF-8 in the query and in the body.
    app.send_raw(0, "POST", "/?Name=%ff%fe", &[], vec![])
        .await
        .assert_error(400, "InvalidParameter.Encoding");
    app.send_raw(0, "POST", "/", &h, b"Name=%C3%28".to_vec())
        .await
        .assert_error(400, "InvalidParameter.Encoding");
    // Garbled list index and garbled numbers, signed properly.
    app.call(
        "AssociateMembers",
        &[("ContactId", "c-0000000000000000"), ("Members.x", "fd-1")],
    )
    .await
    .assert_error(400, "InvalidParameter.Members");
    app.call("ListMessageContacts", &[("PageNumber", "-1")])
        .await
        .assert_error(400, "InvalidParameter.PageNumber");
    app.call(
        "ListMessageContacts",
        &[("PageNumber", "99999999999999999999999")],
    )
    .await
    .assert_error(400, "InvalidParameter.PageNumber");
    app.call("GetVerificationRequest", &[("RequestId", "nope")])
        .await
        .assert_error(400, "InvalidParameter.RequestId");
    let long = "x".repeat(5000);
    app.call("GetMessageContact", &[("ContactId", &long)])
        .await
        .assert_error(400, "InvalidParameter.ContactId");
    app.call(
        "AddMessageContact",
        &[
            ("Name", "名字测试"),
            ("EmailAddress", "z@example.com"),
            ("Title", "CEO"),
            ("MessageTypes.1", "FaultMessage"),
        ],
    )
    .await
    .assert_ok();
    // The service still answers after all that.
    app.call("ListMessageContacts", &[]).await.assert_ok();
    app.cleanup().await;
}

async fn tenants_are_isolated(backend: Backend) {
    let app = TestApp::spawn_with(backend, Options::without_worker()).await;
    let id = app.add_contact("heidi", Some(PHONE)).await;
    let b = app.new_key("6543210987654321").await;
    for (action, params) in [
        ("GetMessageContact", vec![("ContactId", id.as_str())]),
        (
            "UpdateMessageContact",
            vec![("ContactId", id.as_str()), ("Name", "mallory")],
        ),
        ("DeleteMessageContact", vec![("ContactId", id.as_str())]),
        (
            "SendPhoneVerificationForMessageContact",
            vec![("ContactId", id.as_str()), ("PhoneNumber", PHONE)],
        ),
        (
            "AssociateMembers",
            vec![("ContactId", id.as_str()), ("Members.1", "fd-1")],
        ),
        (
            "CancelMessageContactUpdate",
            vec![("ContactId", id.as_str())],
        ),
        (
            "CheckPhoneVerificationForMessageContact",
            vec![
                ("ContactId", id.as_str()),
                ("PhoneNumber", PHONE),
                ("VerificationCode", "123456"),
            ],
        ),
    ] {
        app.call_with(&b, 0, action, &params)
            .await
            .assert_error(404, "EntityNotExists.Contact");
    }
    let list = app.call_with(&b, 0, "ListMessageContacts", &[]).await;
    assert_eq!(list.assert_ok()["TotalCount"], 0);
    assert_eq!(
        app.call_with(&b, 0, "ListMessageContactVerifications", &[])
            .await
            .body["TotalCount"],
        0
    );
    // B may use the same name in its own account.
    let r = app
        .call_with(
            &b,
            0,
            "AddMessageContact",
            &[
                ("Name", "heidi"),
                ("EmailAddress", "b@example.com"),
                ("Title", "CEO"),
                ("MessageTypes.1", "FaultMessage"),
            ],
        )
        .await;
    r.assert_ok();
    // A's contact is untouched.
    assert_eq!(
        app.call("GetMessageContact", &[("ContactId", &id)])
            .await
            .body["Contact"]["Name"],
        "heidi"
    );
    // A's send requests are invisible to B.
    let sent = app
        .call(
            "SendPhoneVerificationForMessageContact",
            &[("ContactId", &id), ("PhoneNumber", PHONE)],
        )
        .await;
    let rid = sent.assert_ok()["RequestId"].as_str().unwrap().to_owned();
    app.call_with(&b, 0, "GetVerificationRequest", &[("RequestId", &rid)])
        .await
        .assert_error(404, "EntityNotExists.VerificationRequest");
    app.cleanup().await;
}

async fn daily_limit_is_exact_across_two_api_processes(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        Options {
            worker: false,
            api_instances: 2,
            daily_limit: 100,
            cooldown_secs: 0,
            ..Default::default()
        },
    )
    .await;
    let mut contacts = Vec::new();
    for i in 0..20 {
        let name: String = format!("limit{}", (b'a' + i as u8) as char);
        contacts.push(app.add_contact(&name, Some(PHONE)).await);
    }
    let calls = (0..200).map(|i| {
        let (app, id) = (&app, contacts[i % contacts.len()].clone());
        async move {
            app.call_with(
                &app.key,
                i % 2,
                "SendPhoneVerificationForMessageContact",
                &[("ContactId", &id), ("PhoneNumber", PHONE)],
            )
            .await
        }
    });
    let results = join_all(calls).await;
    let ok = results.iter().filter(|r| r.status == 200).count();
    let limited = results
        .iter()
        .filter(|r| r.status == 409 && r.code() == "SendValidateCodeExceedsLimitForAccount")
        .count();
    let other: Vec<&Value> = results
        .iter()
        .filter(|r| r.status != 200 && r.status != 409)
        .map(|r| &r.body)
        .collect();
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    assert_eq!((ok, limited), (100, 100));
    // The broker holds exactly the accepted jobs.
    assert_eq!(common::depth(&app.work_queue()).await, 100);
    app.cleanup().await;
}

async fn accepted_send_is_in_the_queue_before_the_answer(backend: Backend) {
    let app = TestApp::spawn_with(backend, Options::without_worker()).await;
    let id = app.add_contact("ivan", Some(PHONE)).await;
    let r = app
        .call(
            "SendPhoneVerificationForMessageContact",
            &[("ContactId", &id), ("PhoneNumber", PHONE)],
        )
        .await;
    let rid = r.assert_ok()["RequestId"].as_str().unwrap().to_owned();
    assert_eq!(rid, rid.to_uppercase());
    // No consumer runs: the confirmed message must be sitting in the quorum queue right now.
    let conn = msgcontact::amqp::connect(&common::amqp_url(), "test-probe")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let msg = ch
        .basic_get(
            app.work_queue().as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
        .expect("the accepted job is in the queue");
    let props = &msg.delivery.properties;
    assert_eq!(
        props.message_id().as_ref().map(|m| m.as_str()),
        Some(rid.as_str())
    );
    assert_eq!(props.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        props.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    assert_eq!(
        msgcontact::job::header_u32(props, msgcontact::job::HEADER_ATTEMPT),
        Some(1)
    );
    assert!(
        msgcontact::job::header_str(props, "traceparent").is_some_and(|t| t.starts_with("00-"))
    );
    let job = msgcontact::job::SendJob::decode(&msg.delivery.data).unwrap();
    assert_eq!(job.request_id, rid);
    let st = app
        .call("GetVerificationRequest", &[("RequestId", &rid)])
        .await;
    assert_eq!(st.assert_ok()["Request"]["Status"], "Queued");
    let _ = conn.close(200, "bye".into()).await;
    app.cleanup().await;
}

async fn publish_raw(app: &TestApp, body: &[u8], props: lapin::BasicProperties) {
    let conn = msgcontact::amqp::connect(&common::amqp_url(), "test-publisher")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let c = ch
        .basic_publish(
            "".into(),
            app.work_queue().as_str().into(),
            Default::default(),
            body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(c.is_ack());
    let _ = conn.close(200, "bye".into()).await;
}

async fn duplicate_deliveries_send_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let id = app.add_contact("judy", Some(PHONE)).await;
    let r = app
        .call(
            "SendPhoneVerificationForMessageContact",
            &[("ContactId", &id), ("PhoneNumber", PHONE)],
        )
        .await;
    let rid = r.assert_ok()["RequestId"].as_str().unwrap().to_owned();
    app.wait_status(&rid, "Sent", 10).await;
    // The same job delivered twice more (a publisher retry, a redelivery after a lost ack).
    let job = msgcontact::job::SendJob::new(rid.clone());
    for attempt in [1, 2] {
        publish_raw(&app, &job.to_bytes(), job.properties(attempt, None)).await;
    }
    // Wait until the worker has drained the duplicates, then count SMS.
    for _ in 0..100 {
        if common::depth(&app.work_queue()).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.inbox.for_request(&rid).len(),
        1,
        "exactly one SMS for one RequestId"
    );
    let st = app
        .call("GetVerificationRequest", &[("RequestId", &rid)])
        .await;
    assert_eq!(
        (
            st.body["Request"]["Status"].as_str(),
            st.body["Request"]["Attempts"].as_i64()
        ),
        (Some("Sent"), Some(1))
    );
    common::assert_invariants(&app, &[rid]).await;
    app.cleanup().await;
}

async fn poison_messages_are_dead_lettered_with_a_reason(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    publish_raw(
        &app,
        b"{not json",
        lapin::BasicProperties::default().with_delivery_mode(2),
    )
    .await;
    publish_raw(
        &app,
        br#"{"v":7,"request_id":"X"}"#,
        lapin::BasicProperties::default(),
    )
    .await;
    publish_raw(
        &app,
        br#"{"v":1,"request_id":"00000000-0000-0000-0000-000000000000"}"#,
        lapin::BasicProperties::default(),
    )
    .await;
    // Good work keeps flowing next to the poison.
    let id = app.add_contact("kim", Some(PHONE)).await;
    let r = app
        .call(
            "SendPhoneVerificationForMessageContact",
            &[("ContactId", &id), ("PhoneNumber", PHONE)],
        )
        .await;
    let rid = r.assert_ok()["RequestId"].as_str().unwrap().to_owned();
    app.wait_status(&rid, "Sent", 10).await;

    let conn = msgcontact::amqp::connect(&common::amqp_url(), "test-probe")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let dlq = format!("{}.send.dead", app.prefix);
    let mut reasons = Vec::new();
    for _ in 0..100 {
        match ch
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(m) => reasons.push(
                msgcontact::job::header_str(
                    &m.delivery.properties,
                    msgcontact::job::HEADER_DEAD_REASON,
                )
                .unwrap_or_default(),
            ),
            None if reasons.len() >= 3 => break,
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("undecodable")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("schema version 7")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("unknown request")),
        "{reasons:?}"
    );
    let _ = conn.close(200, "bye".into()).await;
    common::assert_invariants(&app, &[rid]).await;
    app.cleanup().await;
}

async fn concurrent_replays_of_one_signed_send_are_accepted_once(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        Options {
            cooldown_secs: 0,
            ..Options::without_worker()
        },
    )
    .await;
    let id = app.add_contact("replayed", Some(PHONE)).await;
    let query = vec![
        ("ContactId".to_owned(), id.clone()),
        ("PhoneNumber".to_owned(), PHONE.to_owned()),
    ];
    let headers = app.sign(
        &app.key,
        "SendPhoneVerificationForMessageContact",
        &query,
        None,
        &now_stamp(),
        &nonce(),
    );
    let path = format!("/?{}", msgcontact::signing::canonical_query(&query));
    // The same signed request ten times at once: the copies land in the same write batch.
    let results = join_all((0..10).map(|_| app.send_raw(0, "POST", &path, &headers, vec![]))).await;
    let ok = results.iter().filter(|r| r.status == 200).count();
    let replays = results
        .iter()
        .filter(|r| r.code() == "SignatureNonceUsed")
        .count();
    assert_eq!(
        (ok, replays),
        (1, 9),
        "{:?}",
        results.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    assert_eq!(common::depth(&app.work_queue()).await, 1);
    app.cleanup().await;
}
