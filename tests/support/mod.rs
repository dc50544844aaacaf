//! Test harness: starts the real API (and worker) code against real RabbitMQ and a fresh database.
//!
//! Each app gets its own queue prefix and its own database (a SQLite file in a temp dir, or a new
//! PostgreSQL database), so tests run in parallel without seeing each other. RabbitMQ and
//! PostgreSQL must be running: when they are not, tests fail with a message saying so.

pub mod fake_sms;
pub mod proxy;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    routing::{get, post},
};
use msgcontact::{
    config::{InfraConfig, PolicyConfig},
    domain::SupportedCountries,
    signing,
};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const API_VERSION: &str = "2022-04-19";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn amqp_url() -> String {
    std::env::var("MSGCONTACT_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn pg_admin_url() -> String {
    std::env::var("MSGCONTACT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[derive(Clone)]
pub struct Options {
    pub worker: bool,
    pub api_instances: usize,
    pub daily_limit: u32,
    pub cooldown_secs: u64,
    pub code_ttl_secs: u64,
    /// Status the fake webhook provider answers (200 = delivered).
    pub webhook_status: u16,
    /// Deliver through the fake Alibaba SMS service instead of the webhook.
    pub aliyun: bool,
    pub queue_max_length: u32,
    pub provider_timeout_ms: u64,
    pub provider_total_rate: Option<u32>,
    pub worker_count: u32,
    /// The per-phone guard; generous by default so retries in other tests are not deferred.
    pub phone_burst: u32,
    pub phone_per_minute: u32,
    /// `MSGCONTACT_RETRY_DELAYS_SECS` of API and worker (short, so retries finish quickly).
    pub retry_delays: &'static str,
    /// The broker the app talks to (a [`proxy::BrokerProxy`] to cut it); the shared one if unset.
    pub amqp_url: Option<String>,
    pub broker_recovery_timeout_secs: u64,
    /// `MSGCONTACT_MAX_CONNECTIONS` of the API.
    pub max_connections: usize,
    /// Serve `/metrics` and `/ops` on an admin address of their own.
    pub admin_listen: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            worker: true,
            api_instances: 1,
            daily_limit: 100,
            cooldown_secs: 60,
            code_ttl_secs: 600,
            webhook_status: 200,
            aliyun: false,
            queue_max_length: 100_000,
            provider_timeout_ms: 5000,
            provider_total_rate: None,
            worker_count: 1,
            phone_burst: 1000,
            phone_per_minute: 1000,
            retry_delays: "0.3,1,1",
            amqp_url: None,
            broker_recovery_timeout_secs: 300,
            max_connections: 10_000,
            admin_listen: false,
        }
    }
}

impl Options {
    /// The API alone: accepted jobs stay in the queue.
    pub fn without_worker() -> Self {
        Self {
            worker: false,
            ..Default::default()
        }
    }
}

/// SMS received by the fake webhook provider.
#[derive(Clone, Default)]
pub struct Inbox {
    pub messages: Arc<Mutex<Vec<Value>>>,
    /// When each message arrived.
    pub times: Arc<Mutex<Vec<std::time::Instant>>>,
    pub status: Arc<Mutex<u16>>,
}

impl Inbox {
    pub fn all(&self) -> Vec<Value> {
        self.messages.lock().unwrap().clone()
    }

    pub fn for_request(&self, request_id: &str) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|m| m["request_id"] == request_id)
            .collect()
    }
}

async fn start_inbox(status: u16) -> (Inbox, SocketAddr, JoinHandle<()>) {
    let inbox = Inbox {
        messages: Default::default(),
        times: Default::default(),
        status: Arc::new(Mutex::new(status)),
    };
    async fn receive(
        State(inbox): State<Inbox>,
        Json(body): Json<Value>,
    ) -> axum::http::StatusCode {
        let status = *inbox.status.lock().unwrap();
        if status == 200 {
            inbox.messages.lock().unwrap().push(body);
            inbox.times.lock().unwrap().push(std::time::Instant::now());
        }
        axum::http::StatusCode::from_u16(status).unwrap()
    }
    async fn list(State(inbox): State<Inbox>) -> Json<Value> {
        Json(Value::Array(inbox.all()))
    }
    let app = Router::new()
        .route("/sms", post(receive))
        .route("/received", get(list))
        .with_state(inbox.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (inbox, addr, handle)
}

pub struct Response {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Response {
    pub fn code(&self) -> &str {
        self.body["Code"].as_str().unwrap_or("")
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Value {
        assert_eq!(self.status, 200, "expected success, got {}", self.body);
        assert!(
            self.body["RequestId"]
                .as_str()
                .is_some_and(|r| r.len() == 36),
            "{}",
            self.body
        );
        &self.body
    }

    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "body: {}",
            self.body
        );
        for k in ["RequestId", "HostId", "Code", "Message", "Recommend"] {
            assert!(
                self.body.get(k).is_some(),
                "error body lacks {k}: {}",
                self.body
            );
        }
    }
}

#[derive(Clone)]
pub struct Key {
    pub id: String,
    pub secret: String,
    pub account: String,
}

pub struct TestApp {
    pub backend: Backend,
    pub api_addrs: Vec<SocketAddr>,
    pub db_url: String,
    pub db: DatabaseConnection,
    pub prefix: String,
    pub key: Key,
    /// The instances' admin addresses (with `Options::admin_listen`).
    pub admin_addrs: Vec<SocketAddr>,
    /// Every in-process API instance's state.
    pub states: Vec<std::sync::Arc<msgcontact_api::AppState>>,
    pub inbox: Inbox,
    pub inbox_addr: SocketAddr,
    pub options: Options,
    pub webhook_secret: String,
    pub sms: fake_sms::FakeSms,
    shutdown: CancellationToken,
    worker_shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    worker_task: Option<JoinHandle<()>>,
    extra_workers: Vec<JoinHandle<()>>,
    pub worker_addr: Option<SocketAddr>,
    leftovers: Leftovers,
    _dir: Option<TempDir>,
    http: reqwest::Client,
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a test made on the shared servers (its queues, its PostgreSQL database), removed when the
/// test ends however it ends: by [`TestApp::cleanup`], or on drop when the test failed before it
/// (`MSGCONTACT_TEST_KEEP=1` keeps a failed test's leftovers for a look and prints their names).
struct Leftovers {
    queues: Vec<String>,
    pg_database: Option<String>,
    armed: bool,
}

impl Leftovers {
    async fn remove(&mut self) {
        self.armed = false;
        if let Ok(conn) = msgcontact::amqp::connect(&amqp_url(), "test-cleanup").await
            && let Ok(ch) = conn.create_channel().await
        {
            for q in &self.queues {
                let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
            }
            let _ = conn.close(200, "bye".into()).await;
        }
        if let Some(name) = self.pg_database.take()
            && let Ok(admin) = Database::connect(pg_admin_url()).await
        {
            let _ = admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await;
        }
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if std::env::var_os("MSGCONTACT_TEST_KEEP").is_some() {
            eprintln!(
                "kept for inspection: queues {:?}, database {:?}",
                self.queues, self.pg_database
            );
            return;
        }
        // Dropped inside the test's runtime (often while a panic unwinds), which cannot be
        // blocked on: the removal runs on a runtime of its own on another thread.
        let mut this = Leftovers {
            queues: std::mem::take(&mut self.queues),
            pg_database: self.pg_database.take(),
            armed: false,
        };
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(this.remove());
            }
        })
        .join();
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        uuid::Uuid::new_v4().simple().to_string().get(..12).unwrap()
    )
}

pub fn infra(db_url: &str, prefix: &str, o: &Options) -> InfraConfig {
    InfraConfig {
        database_url: db_url.to_owned(),
        amqp_url: o.amqp_url.clone().unwrap_or_else(amqp_url),
        queue_prefix: prefix.to_owned(),
        queue_max_length: o.queue_max_length,
        database_pool: 8,
        retry_delays_secs: o.retry_delays.parse().unwrap(),
        secrets: test_secrets(prefix),
        log_format: "pretty".into(),
        broker_recovery_timeout_secs: o.broker_recovery_timeout_secs,
    }
}

/// Makes keys just created known to every API instance now (they would be within
/// `auth::KEY_REFRESH`).
pub async fn refresh_keys(states: &[std::sync::Arc<msgcontact_api::AppState>]) {
    for s in states {
        s.keys.refresh().await.unwrap();
    }
}

/// The test's secrets, derived from its queue prefix: every API instance and worker of one test
/// (in process or a child process) shares them, and no two tests do.
pub fn test_secrets(prefix: &str) -> msgcontact::secrets::SecretsConfig {
    let hex: String = prefix.bytes().map(|b| format!("{b:02x}")).collect();
    let key = format!("{:0>64}", &hex[hex.len().saturating_sub(64)..]);
    msgcontact::secrets::SecretsConfig {
        master_key: Some(key),
        code_secret: Some(format!("code-secret-{prefix}")),
        secrets_dir: std::env::temp_dir(),
        ..Default::default()
    }
}

/// The configuration of one of the test's API instances.
pub fn api_config(
    db_url: &str,
    prefix: &str,
    o: &Options,
    policy: PolicyConfig,
) -> msgcontact_api::Config {
    msgcontact_api::Config {
        infra: infra(db_url, prefix, o),
        policy,
        api: msgcontact_api::ApiOptions {
            api_listen: "127.0.0.1:0".into(),
            max_body_bytes: 64 * 1024,
            publish_confirm_timeout_ms: 5000,
            publish_channels: 2,
            write_batch_max: 128,
            max_connections: o.max_connections,
            admin_listen: o.admin_listen.then(|| "127.0.0.1:0".to_owned()),
        },
    }
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, Options::default()).await
    }

    pub async fn spawn_with(backend: Backend, options: Options) -> Self {
        // Quiet unless asked for with RUST_LOG.
        if std::env::var_os("RUST_LOG").is_some() {
            static LOG: std::sync::OnceLock<msgcontact::telemetry::LogGuard> =
                std::sync::OnceLock::new();
            LOG.get_or_init(|| msgcontact::telemetry::init("pretty"));
        }
        let prefix = unique("test-");
        let (db_url, pg_database, dir) = match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(unique("msgcontact-test-"));
                std::fs::create_dir_all(&dir).unwrap();
                (
                    format!("sqlite://{}/db.sqlite?mode=rwc", dir.display()),
                    None,
                    Some(TempDir(dir)),
                )
            }
            Backend::Postgres => {
                let name = unique("msgcontact_test_");
                let admin = Database::connect(pg_admin_url()).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL is required for this test and is not reachable at {}: {e}",
                        pg_admin_url()
                    )
                });
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .expect("create test database");
                let base = pg_admin_url();
                let root = base.rsplit_once('/').unwrap().0.to_owned();
                (format!("{root}/{name}"), Some(name), None)
            }
        };
        let topology = infra(&db_url, &prefix, &options).topology();
        let mut queues = vec![topology.work_queue(), topology.dead_letter_queue()];
        queues.extend((0..topology.retry_delays.len()).map(|l| topology.retry_queue(l)));
        let leftovers = Leftovers {
            queues,
            pg_database,
            armed: true,
        };
        let (inbox, inbox_addr, inbox_task) = start_inbox(options.webhook_status).await;
        let policy = PolicyConfig {
            supported_country_codes: SupportedCountries::new(vec![86]),
            daily_limit: options.daily_limit,
            resend_cooldown_secs: options.cooldown_secs,
            code_ttl_secs: options.code_ttl_secs,
            code_max_attempts: 5,
        };
        let shutdown = CancellationToken::new();
        let mut tasks = vec![inbox_task];
        let mut api_addrs = Vec::new();
        let mut states = Vec::new();
        let mut admin_addrs = Vec::new();
        for _ in 0..options.api_instances {
            let app = msgcontact_api::Application::build(api_config(
                &db_url,
                &prefix,
                &options,
                policy.clone(),
            ))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "API failed to start (are RabbitMQ at {} and the database up?): {e}",
                    amqp_url()
                )
            });
            api_addrs.push(app.local_addr());
            states.push(app.state());
            admin_addrs.extend(app.admin_addr());
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                app.run_until_stopped(stop).await.unwrap();
            }));
        }
        let db = states[0].db.clone();
        let master = test_secrets(&prefix).master_key().unwrap();
        let created =
            msgcontact_api::admin_cli::create_key(&db, &master, "1234567890123456", None, None)
                .await
                .unwrap();
        refresh_keys(&states).await;
        let key = Key {
            id: created["AccessKeyId"].as_str().unwrap().into(),
            secret: created["AccessKeySecret"].as_str().unwrap().into(),
            account: "1234567890123456".into(),
        };
        let mut app = Self {
            backend,
            api_addrs,
            db_url,
            db,
            prefix,
            key,
            admin_addrs,
            states,
            inbox,
            inbox_addr,
            options: options.clone(),
            webhook_secret: "whsec-test".into(),
            sms: fake_sms::FakeSms::start().await,
            shutdown,
            worker_shutdown: CancellationToken::new(),
            tasks,
            worker_task: None,
            extra_workers: Vec::new(),
            worker_addr: None,
            leftovers,
            _dir: dir,
            http: http_client(),
        };
        if options.worker {
            app.start_worker().await;
        }
        app
    }

    /// The master key this test's processes seal access key secrets with.
    pub fn master(&self) -> msgcontact::secrets::MasterKey {
        test_secrets(&self.prefix).master_key().unwrap()
    }

    pub fn policy(&self) -> PolicyConfig {
        PolicyConfig {
            supported_country_codes: SupportedCountries::new(vec![86]),
            daily_limit: self.options.daily_limit,
            resend_cooldown_secs: self.options.cooldown_secs,
            code_ttl_secs: self.options.code_ttl_secs,
            code_max_attempts: 5,
        }
    }

    pub async fn start_worker(&mut self) {
        assert!(self.worker_task.is_none(), "worker already running");
        self.worker_shutdown = CancellationToken::new();
        let worker = self.build_worker().await;
        self.worker_addr = Some(worker.local_addr());
        let stop = self.worker_shutdown.clone();
        self.worker_task = Some(tokio::spawn(async move {
            worker.run_until_stopped(stop).await.unwrap();
        }));
    }

    /// The environment that makes a `msgcontact-worker` process equal to `build_worker`'s worker.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        let o = &self.options;
        [
            ("MSGCONTACT_DATABASE_URL", self.db_url.clone()),
            (
                "MSGCONTACT_AMQP_URL",
                o.amqp_url.clone().unwrap_or_else(amqp_url),
            ),
            (
                "MSGCONTACT_BROKER_RECOVERY_TIMEOUT_SECS",
                o.broker_recovery_timeout_secs.to_string(),
            ),
            ("MSGCONTACT_QUEUE_PREFIX", self.prefix.clone()),
            (
                "MSGCONTACT_QUEUE_MAX_LENGTH",
                o.queue_max_length.to_string(),
            ),
            ("MSGCONTACT_RETRY_DELAYS_SECS", o.retry_delays.into()),
            ("MSGCONTACT_DATABASE_POOL", "8".into()),
            ("MSGCONTACT_SUPPORTED_COUNTRY_CODES", "86".into()),
            ("MSGCONTACT_DAILY_LIMIT", o.daily_limit.to_string()),
            (
                "MSGCONTACT_RESEND_COOLDOWN_SECS",
                o.cooldown_secs.to_string(),
            ),
            ("MSGCONTACT_CODE_TTL_SECS", o.code_ttl_secs.to_string()),
            ("MSGCONTACT_WORKER_LISTEN", "127.0.0.1:0".into()),
            (
                "MSGCONTACT_SMS_PROVIDER",
                if o.aliyun { "aliyun" } else { "webhook" }.into(),
            ),
            (
                "MSGCONTACT_WEBHOOK_URL",
                format!("http://{}/sms", self.inbox_addr),
            ),
            ("MSGCONTACT_WEBHOOK_SECRET", self.webhook_secret.clone()),
            ("MSGCONTACT_ALIYUN_SMS_ENDPOINT", self.sms.addr.to_string()),
            ("MSGCONTACT_ALIYUN_SMS_PROTOCOL", "http".into()),
            (
                "MSGCONTACT_ALIYUN_ACCESS_KEY_ID",
                fake_sms::ACCESS_KEY_ID.into(),
            ),
            (
                "MSGCONTACT_ALIYUN_ACCESS_KEY_SECRET",
                fake_sms::ACCESS_KEY_SECRET.into(),
            ),
            ("MSGCONTACT_ALIYUN_SMS_SIGN_NAME", "msgcontact".into()),
            ("MSGCONTACT_ALIYUN_SMS_TEMPLATE_CODE", "SMS_0001".into()),
            ("MSGCONTACT_PROVIDER_RATE", "1000".into()),
            ("MSGCONTACT_PHONE_BURST", o.phone_burst.to_string()),
            (
                "MSGCONTACT_PHONE_PER_MINUTE",
                o.phone_per_minute.to_string(),
            ),
            (
                "MSGCONTACT_PROVIDER_TIMEOUT_MS",
                o.provider_timeout_ms.to_string(),
            ),
            ("MSGCONTACT_LOG_FORMAT", "json".into()),
            (
                "MSGCONTACT_MASTER_KEY",
                test_secrets(&self.prefix).master_key.unwrap(),
            ),
            (
                "MSGCONTACT_CODE_SECRET",
                test_secrets(&self.prefix).code_secret.unwrap(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Starts the real worker binary as a child process (so it can be SIGKILLed), with
    /// `extra` overriding the environment.
    pub fn spawn_worker_process(
        &self,
        binary: &str,
        extra: &[(&str, &str)],
    ) -> std::process::Child {
        let mut cmd = std::process::Command::new(binary);
        cmd.envs(self.worker_env());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.stderr(std::process::Stdio::null());
        }
        cmd.stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the worker binary")
    }

    /// Like [`Self::spawn_worker_process`], with everything it prints (at `debug`) in `log`.
    pub fn spawn_worker_process_logged(
        &self,
        binary: &str,
        extra: &[(&str, &str)],
        log: &std::path::Path,
    ) -> std::process::Child {
        let out = std::fs::File::create(log).expect("create the log file");
        std::process::Command::new(binary)
            .envs(self.worker_env())
            .envs(extra.iter().copied())
            .env("RUST_LOG", "debug")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start the worker binary")
    }

    /// The environment giving a process this test's secrets.
    pub fn secrets_env(&self) -> [(&'static str, String); 2] {
        let s = test_secrets(&self.prefix);
        [
            ("MSGCONTACT_MASTER_KEY", s.master_key.unwrap()),
            ("MSGCONTACT_CODE_SECRET", s.code_secret.unwrap()),
        ]
    }

    /// One more worker process (the same code and configuration), stopped with the first one.
    pub async fn start_extra_worker(&mut self) {
        let worker = self.build_worker().await;
        let stop = self.worker_shutdown.clone();
        self.extra_workers.push(tokio::spawn(async move {
            worker.run_until_stopped(stop).await.unwrap();
        }));
    }

    async fn build_worker(&self) -> msgcontact_worker::Application {
        msgcontact_worker::Application::build(msgcontact_worker::Config {
            infra: self.infra(),
            policy: self.policy(),
            worker: msgcontact_worker::WorkerOptions {
                worker_listen: "127.0.0.1:0".into(),
                sms_provider: if self.options.aliyun {
                    "aliyun"
                } else {
                    "webhook"
                }
                .into(),
                log_provider_file: "unused".into(),
                webhook_url: Some(format!("http://{}/sms", self.inbox_addr)),
                webhook_secret: Some(self.webhook_secret.clone()),
                webhook_allow_http: false,
                aliyun_sms_endpoint: self.sms.addr.to_string(),
                aliyun_sms_protocol: "http".into(),
                aliyun_access_key_id: Some(fake_sms::ACCESS_KEY_ID.into()),
                aliyun_access_key_secret: Some(fake_sms::ACCESS_KEY_SECRET.into()),
                aliyun_sms_sign_name: Some("msgcontact".into()),
                aliyun_sms_template_code: Some("SMS_0001".into()),
                provider_rate: 1000,
                provider_total_rate: self.options.provider_total_rate,
                worker_count: self.options.worker_count,
                phone_burst: self.options.phone_burst,
                phone_per_minute: self.options.phone_per_minute,
                prefetch: 16,
                provider_timeout_ms: self.options.provider_timeout_ms,
            },
        })
        .await
        .expect("worker failed to start")
    }

    pub async fn stop_worker(&mut self) {
        self.worker_shutdown.cancel();
        if let Some(t) = self.worker_task.take() {
            t.await.unwrap();
        }
        for t in self.extra_workers.drain(..) {
            t.await.unwrap();
        }
    }

    pub fn work_queue(&self) -> String {
        format!("{}.send", self.prefix)
    }

    pub async fn new_key(&self, account: &str) -> Key {
        let created =
            msgcontact_api::admin_cli::create_key(&self.db, &self.master(), account, None, None)
                .await
                .unwrap();
        refresh_keys(&self.states).await;
        Key {
            id: created["AccessKeyId"].as_str().unwrap().into(),
            secret: created["AccessKeySecret"].as_str().unwrap().into(),
            account: account.into(),
        }
    }

    pub async fn call(&self, action: &str, params: &[(&str, &str)]) -> Response {
        self.call_with(&self.key, 0, action, params).await
    }

    /// An ACS3-signed call, parameters in the query string, as the official SDKs send it.
    pub async fn call_with(
        &self,
        key: &Key,
        instance: usize,
        action: &str,
        params: &[(&str, &str)],
    ) -> Response {
        let query: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let headers = signing::OutboundCall {
            host: &self.api_addrs[instance].to_string(),
            action,
            version: API_VERSION,
            query: &query,
            form_body: None,
        }
        .sign(&key.id, &key.secret, &now_stamp(), &nonce());
        self.send_raw(
            instance,
            "POST",
            &format!("/?{}", signing::canonical_query(&query)),
            &headers,
            Vec::new(),
        )
        .await
    }

    /// ACS3 headers for a call to the first API instance; parameters in the query, or in a form body.
    pub fn sign(
        &self,
        key: &Key,
        action: &str,
        query: &[(String, String)],
        form_body: Option<&[u8]>,
        date: &str,
        nonce: &str,
    ) -> Vec<(String, String)> {
        signing::OutboundCall {
            host: &self.api_addrs[0].to_string(),
            action,
            version: API_VERSION,
            query,
            form_body,
        }
        .sign(&key.id, &key.secret, date, nonce)
    }

    /// A v1 (HMAC-SHA1) signed call, as older SDKs and the CLI send it.
    pub async fn call_v1(
        &self,
        key: &Key,
        action: &str,
        params: &[(&str, &str)],
        timestamp: &str,
        nonce: &str,
    ) -> Response {
        let mut all: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, v) in [
            ("Action", action),
            ("Version", API_VERSION),
            ("Format", "JSON"),
            ("AccessKeyId", key.id.as_str()),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureVersion", "1.0"),
            ("SignatureNonce", nonce),
            ("Timestamp", timestamp),
        ] {
            all.push((k.into(), v.into()));
        }
        let sig = signing::v1_signature(&key.secret, &signing::v1_string_to_sign("POST", &all));
        all.push(("Signature".into(), sig));
        self.send_raw(
            0,
            "POST",
            &format!("/?{}", signing::canonical_query(&all)),
            &[],
            Vec::new(),
        )
        .await
    }

    pub async fn send_raw(
        &self,
        instance: usize,
        method: &str,
        path_and_query: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Response {
        let url = format!("http://{}{}", self.api_addrs[instance], path_and_query);
        let mut req = self.http.request(method.parse().unwrap(), url).body(body);
        for (k, v) in headers {
            if k != "host" {
                req = req.header(k, v);
            }
        }
        let resp = tokio::time::timeout(Duration::from_secs(30), req.send())
            .await
            .expect("API answered within 30 s")
            .expect("HTTP request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("non-JSON answer ({status}): {text}"));
        Response {
            status,
            body,
            headers,
        }
    }

    pub async fn add_contact(&self, name: &str, phone: Option<&str>) -> String {
        let mut p = vec![
            ("Name", name),
            ("EmailAddress", "ops@example.com"),
            ("Title", "CEO"),
            ("MessageTypes.1", "ServiceMessage"),
        ];
        if let Some(ph) = phone {
            p.push(("PhoneNumber", ph));
        }
        let r = self.call("AddMessageContact", &p).await;
        r.assert_ok()["Contact"]["ContactId"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The code the webhook inbox received for a send (waits up to 10 s).
    pub async fn code_for(&self, request_id: &str) -> String {
        for _ in 0..200 {
            if let Some(m) = self.inbox.for_request(request_id).first() {
                return m["code"].as_str().unwrap().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no SMS received for {request_id}");
    }

    /// Every row of every table, as text, one per line (`table:row`).
    pub async fn all_rows(&self) -> String {
        use sea_orm::{DbBackend, Statement};
        let backend = self.db.get_database_backend();
        let tables_sql = match backend {
            DbBackend::Sqlite => {
                "SELECT name AS t FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            }
            _ => "SELECT tablename::text AS t FROM pg_tables WHERE schemaname = 'public'",
        };
        let query = |sql: String| self.db.query_all_raw(Statement::from_string(backend, sql));
        let mut out = String::new();
        for row in query(tables_sql.to_owned()).await.unwrap() {
            let table: String = row.try_get("", "t").unwrap();
            let sql = match backend {
                DbBackend::Sqlite => {
                    // Every column cast to text and joined: the row as a reader of the file sees it.
                    let cols = query(format!("SELECT name FROM pragma_table_info('{table}')"))
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|c| {
                            let n: String = c.try_get("", "name").unwrap();
                            format!("COALESCE(CAST(\"{n}\" AS TEXT), '')")
                        })
                        .collect::<Vec<_>>()
                        .join(" || '|' || ");
                    format!("SELECT {cols} AS r FROM \"{table}\"")
                }
                _ => format!("SELECT t::text AS r FROM \"{table}\" t"),
            };
            for r in query(sql).await.unwrap() {
                let text: String = r.try_get("", "r").unwrap();
                out.push_str(&format!("{table}:{text}\n"));
            }
        }
        out
    }

    /// Waits until the send request reaches `status` (or panics after `secs`).
    pub async fn wait_status(&self, request_id: &str, status: &str, secs: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self
                .call("GetVerificationRequest", &[("RequestId", request_id)])
                .await;
            let body = r.assert_ok().clone();
            if body["Request"]["Status"] == status {
                return body["Request"].clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "request {request_id} stuck at {}",
                body["Request"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The infrastructure settings this test's API and workers run with.
    pub fn infra(&self) -> InfraConfig {
        infra(&self.db_url, &self.prefix, &self.options)
    }

    /// This test's queue names and retry levels.
    pub fn topology(&self) -> msgcontact::job::Topology {
        self.infra().topology()
    }

    /// Stops everything and removes the test's queues and database.
    pub async fn cleanup(mut self) {
        self.stop_worker().await;
        self.shutdown.cancel();
        for t in self.tasks.drain(..).skip(1) {
            let _ = t.await;
        }
        self.db.clone().close().await.ok();
        self.leftovers.remove().await;
    }
}

/// SPEC §7 over the history of a scenario: every accepted request terminal exactly once, at most
/// one SMS per request (two only after an ambiguous attempt), the quota equal to what was accepted,
/// and nothing left in the work or retry queues.
pub async fn assert_invariants(app: &TestApp, accepted: &[String]) {
    use msgcontact::entities::{daily_counter, send_request};
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows = send_request::Entity::find().all(&app.db).await.unwrap();
        let live: Vec<_> = rows
            .iter()
            .filter(|r| {
                !msgcontact::status::SendStatus::parse(&r.status)
                    .unwrap()
                    .is_terminal()
            })
            .collect();
        if live.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests stuck: {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = send_request::Entity::find().all(&app.db).await.unwrap();
    for id in accepted {
        let r = rows
            .iter()
            .find(|r| &r.request_id == id)
            .unwrap_or_else(|| panic!("accepted {id} lost"));
        let delivered = app.sms.delivered(id) + app.inbox.for_request(id).len();
        let allowed = if r.ambiguous_attempts > 0 { 2 } else { 1 };
        assert!(
            delivered <= allowed,
            "{id}: {delivered} SMS (ambiguous attempts {})",
            r.ambiguous_attempts
        );
        if r.status == "Sent" {
            assert!(
                delivered >= 1,
                "{id} is Sent but the provider never delivered it"
            );
        }
    }
    let counted: i32 = daily_counter::Entity::find()
        .filter(daily_counter::Column::AccountId.eq(app.key.account.as_str()))
        .all(&app.db)
        .await
        .unwrap()
        .iter()
        .map(|c| c.count)
        .sum();
    let publish_failed = rows
        .iter()
        .filter(|r| r.failure_code.as_deref() == Some("PublishFailed"))
        .count();
    assert_eq!(
        counted as usize,
        rows.len() - publish_failed,
        "quota conservation"
    );
    assert!(
        app.sms.received().iter().all(|r| r.signature_ok),
        "every provider call is correctly signed"
    );
    assert_eq!(depth(&app.work_queue()).await, 0, "work queue drained");
    for l in 0..app.options.retry_delays.split(',').count() {
        assert_eq!(
            depth(&format!("{}.send.retry.{l}", app.prefix)).await,
            0,
            "retry level {l} drained"
        );
    }
}

/// Sends `signal` (e.g. `-TERM`) to a child process.
pub fn signal(child: &std::process::Child, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {signal} failed");
}

/// Waits up to `secs` for a child process to exit and returns its status.
pub async fn wait_for_exit(
    child: &mut std::process::Child,
    secs: u64,
    what: &str,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not exit within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ready messages in a queue (0 if it does not exist), read the way the worker's report reads it.
pub async fn depth(queue: &str) -> u32 {
    let conn = msgcontact::amqp::connect(&amqp_url(), "test-probe")
        .await
        .unwrap();
    let n = msgcontact::monitor::queue_depth(&conn, queue)
        .await
        .unwrap()
        .map(|d| d.0)
        .unwrap_or(0);
    let _ = conn.close(200, "bye".into()).await;
    n
}

/// The queue's depth once it reads `expected`, or what it reads after `within`. A message a
/// consumer gives back by closing its channel is re-queued by the quorum queue a moment after the
/// close is confirmed, so a depth read at once can miss it.
pub async fn depth_settled(queue: &str, expected: u32, within: Duration) -> u32 {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = depth(queue).await;
        if n == expected || tokio::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs each named `async fn(Backend)` once per database backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident;)*) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Postgres).await })*
        }
    };
}

/// An HTTP client (the process's TLS provider installed first: the client brings none of its own).
pub fn http_client() -> reqwest::Client {
    msgcontact::tls::install_crypto_provider();
    reqwest::Client::new()
}

/// A GET with a fresh client, as `reqwest::get` does.
pub async fn http_get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http_client().get(url).send().await
}

pub fn now_stamp() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
