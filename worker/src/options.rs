//! The worker's settings (beside the shared infrastructure and policy settings).

use std::path::PathBuf;

use msgcontact::config::{InfraConfig, PolicyConfig};

/// Worker-only settings.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerOptions {
    /// Address of the worker's /healthz, /readyz (and metrics).
    #[arg(
        long,
        env = "MSGCONTACT_WORKER_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub worker_listen: String,
    /// SMS provider: `log` (development), `webhook`.
    #[arg(long, env = "MSGCONTACT_SMS_PROVIDER", default_value = "log")]
    pub sms_provider: String,
    /// Where the `log` provider appends each SMS as a JSON line.
    #[arg(
        long,
        env = "MSGCONTACT_LOG_PROVIDER_FILE",
        default_value = "data/sms.jsonl"
    )]
    pub log_provider_file: PathBuf,
    /// URL the `webhook` provider posts to.
    #[arg(long, env = "MSGCONTACT_WEBHOOK_URL", hide_env_values = true)]
    pub webhook_url: Option<String>,
    /// Key of the webhook's Standard Webhooks signature (`whsec_<base64>`, or any other string
    /// taken as its bytes).
    #[arg(long, env = "MSGCONTACT_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Allow `http://` webhook URLs to other hosts than this one (the code would cross the
    /// network in clear).
    #[arg(long, env = "MSGCONTACT_WEBHOOK_ALLOW_HTTP", default_value_t = false)]
    pub webhook_allow_http: bool,
    /// Alibaba Cloud SMS endpoint, `host[:port]`.
    #[arg(
        long,
        env = "MSGCONTACT_ALIYUN_SMS_ENDPOINT",
        default_value = "dysmsapi.aliyuncs.com"
    )]
    pub aliyun_sms_endpoint: String,
    /// `https` or `http` (tests point the provider at a local fake).
    #[arg(long, env = "MSGCONTACT_ALIYUN_SMS_PROTOCOL", default_value = "https")]
    pub aliyun_sms_protocol: String,
    #[arg(long, env = "MSGCONTACT_ALIYUN_ACCESS_KEY_ID")]
    pub aliyun_access_key_id: Option<String>,
    #[arg(
        long,
        env = "MSGCONTACT_ALIYUN_ACCESS_KEY_SECRET",
        hide_env_values = true
    )]
    pub aliyun_access_key_secret: Option<String>,
    /// SMS signature name registered with Alibaba Cloud.
    #[arg(long, env = "MSGCONTACT_ALIYUN_SMS_SIGN_NAME")]
    pub aliyun_sms_sign_name: Option<String>,
    /// SMS template code; the template takes one `${code}` parameter.
    #[arg(long, env = "MSGCONTACT_ALIYUN_SMS_TEMPLATE_CODE")]
    pub aliyun_sms_template_code: Option<String>,
    /// Provider requests per second from this worker process. Ignored when the provider's total
    /// rate is given.
    #[arg(long, env = "MSGCONTACT_PROVIDER_RATE", default_value_t = 50)]
    pub provider_rate: u32,
    /// The provider's total contracted rate (requests per second) shared by all workers; each
    /// worker takes its share, `total / MSGCONTACT_WORKER_COUNT`.
    #[arg(long, env = "MSGCONTACT_PROVIDER_TOTAL_RATE")]
    pub provider_total_rate: Option<u32>,
    /// Number of worker processes sharing the provider's total rate.
    #[arg(long, env = "MSGCONTACT_WORKER_COUNT", default_value_t = 1)]
    pub worker_count: u32,
    /// SMS one phone number may receive at once (the per-phone burst guard).
    #[arg(long, env = "MSGCONTACT_PHONE_BURST", default_value_t = 3)]
    pub phone_burst: u32,
    /// Refill of the per-phone guard, messages per minute.
    #[arg(long, env = "MSGCONTACT_PHONE_PER_MINUTE", default_value_t = 6)]
    pub phone_per_minute: u32,
    /// Unacknowledged deliveries this worker holds at once.
    // Enough in flight that the grouped reads and writes carry several jobs each, still small
    // against one worker's share of a queue (docs/benchmark.md has the measurement).
    #[arg(long, env = "MSGCONTACT_PREFETCH", default_value_t = 64)]
    pub prefetch: u16,
    /// Provider request timeout in milliseconds.
    #[arg(long, env = "MSGCONTACT_PROVIDER_TIMEOUT_MS", default_value_t = 10_000)]
    pub provider_timeout_ms: u64,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    #[command(flatten)]
    pub infra: InfraConfig,
    #[command(flatten)]
    pub policy: PolicyConfig,
    #[command(flatten)]
    pub worker: WorkerOptions,
}
