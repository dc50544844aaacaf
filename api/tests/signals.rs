//! The API binary stops gracefully on SIGTERM: it stops accepting, answers what it holds, closes
//! its broker session and exits 0; what it accepted stays in the queue.

use msgcontact_tests as common;

use std::time::Duration;

use common::{Backend, Options, TestApp};

const API: &str = env!("CARGO_BIN_EXE_msgcontact-api");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_api_binary_with_exit_0() {
    let mut app = TestApp::spawn_with(Backend::Sqlite, Options::without_worker()).await;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cmd = std::process::Command::new(API);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.stderr(std::process::Stdio::null());
    }
    let mut api = cmd
        .env("MSGCONTACT_DATABASE_URL", &app.db_url)
        .env("MSGCONTACT_AMQP_URL", common::amqp_url())
        .env("MSGCONTACT_QUEUE_PREFIX", &app.prefix)
        // The same queue arguments as the harness's apps declared.
        .env("MSGCONTACT_RETRY_DELAYS_SECS", app.options.retry_delays)
        .env("MSGCONTACT_API_LISTEN", listen.to_string())
        .env("MSGCONTACT_RESEND_COOLDOWN_SECS", "0")
        .env("MSGCONTACT_LOG_FORMAT", "json")
        .envs(app.secrets_env())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the API binary");
    let mut ready = false;
    for _ in 0..200 {
        if let Ok(r) = common::http_get(format!("http://{listen}/readyz")).await
            && r.status() == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the API binary never became ready");
    app.api_addrs.push(listen);
    let phone = "86-13912341234";
    let contact = app.add_contact("sigterm", Some(phone)).await;
    let key = app.key.clone();
    let r = app
        .call_with(
            &key,
            1,
            "SendPhoneVerificationForMessageContact",
            &[("ContactId", &contact), ("PhoneNumber", phone)],
        )
        .await;
    r.assert_ok();

    common::signal(&api, "-TERM");
    let status = common::wait_for_exit(&mut api, 30, "the API after SIGTERM").await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert_eq!(
        common::depth(&app.work_queue()).await,
        1,
        "the accepted job is still queued"
    );
    app.cleanup().await;
}
