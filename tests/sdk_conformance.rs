//! The official Alibaba Cloud Python SDK against the running service: the whole flow, every seed
//! error code, both signature schemes. Needs the SDK in a virtualenv (`.venv/`, or the interpreter
//! named by `MSGCONTACT_TEST_PYTHON`); fails, never skips, when it is missing.

use msgcontact_tests as common;

use common::{Backend, Options, TestApp};

fn python() -> String {
    if let Ok(p) = std::env::var("MSGCONTACT_TEST_PYTHON") {
        return p;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python");
    assert!(
        std::path::Path::new(venv).exists(),
        "the SDK conformance test needs a virtualenv with the official SDK: \
         python3 -m venv .venv && .venv/bin/pip install alibabacloud-resourcedirectorymaster20220419 \
         (or set MSGCONTACT_TEST_PYTHON)"
    );
    venv.to_owned()
}

async fn conformance(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        Options {
            cooldown_secs: 60,
            ..Default::default()
        },
    )
    .await;
    let limited = app.new_key("2000000000000002").await;
    msgcontact_api::admin_cli::account(
        &app.db,
        msgcontact_api::admin_cli::AccountCommand::SetDailyLimit {
            account_id: limited.account.clone(),
            limit: 1,
        },
    )
    .await
    .unwrap();
    let env = serde_json::json!({
        "endpoint": app.api_addrs[0].to_string(),
        "ak": app.key.id, "secret": app.key.secret,
        "ak_limited": limited.id, "secret_limited": limited.secret,
        "inbox": format!("http://{}/received", app.inbox_addr),
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/sdk/conformance.py");
    let out = tokio::process::Command::new(python())
        .arg(script)
        .arg(env.to_string())
        .output()
        .await
        .expect("run the SDK conformance script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK conformance failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
    println!("{backend:?}: {stdout}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdk_on_sqlite() {
    conformance(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdk_on_postgres() {
    conformance(Backend::Postgres).await;
}
