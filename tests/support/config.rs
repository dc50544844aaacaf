//! A test app's settings: which database, the options a test may change, and the configuration
//! the API and the worker are built from.

use msgcontact::{
    config::{InfraConfig, PolicyConfig},
    domain::SupportedCountries,
};

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

pub(crate) fn unique(prefix: &str) -> String {
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

/// The policy every process of a test runs with.
pub(crate) fn policy(o: &Options) -> PolicyConfig {
    PolicyConfig {
        supported_country_codes: SupportedCountries::new(vec![86]),
        daily_limit: o.daily_limit,
        resend_cooldown_secs: o.cooldown_secs,
        code_ttl_secs: o.code_ttl_secs,
        code_max_attempts: 5,
    }
}
