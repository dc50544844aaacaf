//! Configuration shared by both binaries: clap arguments, each with its `MSGCONTACT_*` variable.

use std::time::Duration;

use crate::domain::SupportedCountries;

/// Where state lives: database and broker.
#[derive(clap::Args, Debug, Clone)]
pub struct InfraConfig {
    /// Database URL: a SQLite file (WAL) by default, `postgres://…` in production (its password
    /// is not shown here).
    #[arg(
        long,
        env = "MSGCONTACT_DATABASE_URL",
        default_value = "sqlite://data/msgcontact.db?mode=rwc",
        hide_env_values = true
    )]
    pub database_url: String,
    /// RabbitMQ URL (its password is not shown here).
    #[arg(
        long,
        env = "MSGCONTACT_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub amqp_url: String,
    /// Prefix of every queue name (one per deployment, or per test).
    #[arg(long, env = "MSGCONTACT_QUEUE_PREFIX", default_value = "msgcontact")]
    pub queue_prefix: String,
    /// Ready jobs in the work queue beyond which publishes are refused (API answers 503).
    #[arg(long, env = "MSGCONTACT_QUEUE_MAX_LENGTH", default_value_t = 100_000)]
    pub queue_max_length: u32,
    /// Retry schedule: delays in seconds before the 2nd, 3rd, … delivery attempt.
    #[arg(long, env = "MSGCONTACT_RETRY_DELAYS_SECS", default_value = "5,30,120,600", value_parser = parse_delays)]
    pub retry_delays_secs: RetryDelays,
    /// Database connection pool size per process.
    #[arg(long, env = "MSGCONTACT_DATABASE_POOL", default_value_t = 16)]
    pub database_pool: u32,
    #[command(flatten)]
    pub secrets: crate::secrets::SecretsConfig,
    /// Log format: `pretty` for terminals, `json` for production.
    #[arg(long, env = "MSGCONTACT_LOG_FORMAT", default_value = "pretty")]
    pub log_format: String,
    /// How long a lost broker connection is re-established before the process gives up (reports
    /// not ready and exits non-zero, for its supervisor to restart it).
    #[arg(
        long,
        env = "MSGCONTACT_BROKER_RECOVERY_TIMEOUT_SECS",
        default_value_t = 300
    )]
    pub broker_recovery_timeout_secs: u64,
}

/// The retry schedule as data: one delay per retry level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryDelays(pub Vec<Duration>);

fn parse_delays(s: &str) -> Result<RetryDelays, String> {
    let delays = s
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            let secs: f64 = d.parse().map_err(|_| format!("bad delay {d:?}"))?;
            if !(0.05..=86_400.0).contains(&secs) {
                return Err(format!("delay {d} s out of range (0.05 to 86400)"));
            }
            Ok(Duration::from_secs_f64(secs))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if delays.len() > 20 {
        return Err("at most 20 retry levels".into());
    }
    Ok(RetryDelays(delays))
}

impl InfraConfig {
    pub fn broker_recovery_timeout(&self) -> Duration {
        Duration::from_secs(self.broker_recovery_timeout_secs)
    }

    pub fn topology(&self) -> crate::job::Topology {
        crate::job::Topology::new(
            &self.queue_prefix,
            self.queue_max_length,
            self.retry_delays_secs.0.clone(),
        )
    }
}

impl std::str::FromStr for RetryDelays {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_delays(s)
    }
}

/// Verification policy: what may be sent, how often, and how codes behave.
#[derive(clap::Args, Debug, Clone)]
pub struct PolicyConfig {
    /// Country calling codes accepted in phone numbers, comma separated.
    #[arg(long, env = "MSGCONTACT_SUPPORTED_COUNTRY_CODES", default_value = "86", value_parser = SupportedCountries::parse_list)]
    pub supported_country_codes: SupportedCountries,
    /// Verification sends per account per UTC day (an account's own limit overrides it).
    #[arg(long, env = "MSGCONTACT_DAILY_LIMIT", default_value_t = 100)]
    pub daily_limit: u32,
    /// Minimum seconds between two sends to one contact.
    #[arg(long, env = "MSGCONTACT_RESEND_COOLDOWN_SECS", default_value_t = 60)]
    pub resend_cooldown_secs: u64,
    /// Lifetime of a verification code in seconds.
    #[arg(long, env = "MSGCONTACT_CODE_TTL_SECS", default_value_t = 600)]
    pub code_ttl_secs: u64,
    /// Wrong checks allowed per code before it is locked.
    #[arg(long, env = "MSGCONTACT_CODE_MAX_ATTEMPTS", default_value_t = 5)]
    pub code_max_attempts: u32,
}

impl PolicyConfig {
    pub fn cooldown(&self) -> Duration {
        Duration::from_secs(self.resend_cooldown_secs)
    }

    pub fn code_ttl(&self) -> Duration {
        Duration::from_secs(self.code_ttl_secs)
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            supported_country_codes: SupportedCountries::default(),
            daily_limit: 100,
            resend_cooldown_secs: 60,
            code_ttl_secs: 600,
            code_max_attempts: 5,
        }
    }
}
