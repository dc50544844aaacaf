//! The API's settings (beside the shared infrastructure and policy settings) and its deadlines.

use std::time::Duration;

use msgcontact::config::{InfraConfig, PolicyConfig};

/// The only API version served.
pub const API_VERSION: &str = "2022-04-19";

/// API-only settings.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiOptions {
    /// Address the API listens on.
    #[arg(long, env = "MSGCONTACT_API_LISTEN", default_value = "127.0.0.1:8080")]
    pub api_listen: String,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "MSGCONTACT_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Longest wait for the broker's publish confirm before answering 503.
    #[arg(
        long,
        env = "MSGCONTACT_PUBLISH_CONFIRM_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub publish_confirm_timeout_ms: u64,
    /// Confirm-mode channels publishes rotate over.
    // One by default: its confirms already pipeline, and the broker confirms a run of them in one
    // `basic.ack`; every extra channel is another broker process and stream of acks
    // (docs/benchmark.md has the measurement).
    #[arg(long, env = "MSGCONTACT_PUBLISH_CHANNELS", default_value_t = 1)]
    pub publish_channels: usize,
    /// Most requests whose writes share one transaction (group commit).
    #[arg(long, env = "MSGCONTACT_WRITE_BATCH_MAX", default_value_t = 128)]
    pub write_batch_max: usize,
    /// Most connections served at once; more are closed on accept.
    #[arg(long, env = "MSGCONTACT_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Address for `/metrics` and `/ops` (they then leave the API address, where every caller
    /// could read all tenants' counts). Unset: both are served on the API address.
    #[arg(long, env = "MSGCONTACT_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
}

/// Longest a request may take from its headers to its answer; past it the answer is 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a request's body may take to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything `msgcontact-api` needs to serve.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    #[command(flatten)]
    pub infra: InfraConfig,
    #[command(flatten)]
    pub policy: PolicyConfig,
    #[command(flatten)]
    pub api: ApiOptions,
}
