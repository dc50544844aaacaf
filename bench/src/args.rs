//! The bench's commands and their arguments.

use clap::Parser;

use crate::{baseline, stack::Db};

#[derive(Parser)]
#[command(
    name = "msgcontact-bench",
    about = "msgcontact benchmark and held-load run"
)]
pub enum Cmd {
    /// Accept path, end-to-end and scrape-cost figures against the baselines.
    Run(RunArgs),
    /// Held load: offered sends/s above the provider's rate, per-minute table, then the drain.
    Held(HeldArgs),
    /// The cost of scraping /metrics: many alternating unscraped/scraped closed-loop runs.
    Scrape(ScrapeArgs),
    /// End-to-end only: alternating drains of ours and baseline (b), then accept→Sent in flow.
    E2e(E2eArgs),
    /// Baseline (a): an HTTP handler that only publishes one persistent message with confirm.
    #[command(hide = true)]
    BaselinePublish(baseline::PublishArgs),
    /// Baseline (b): consume → insert one row → POST to the fake provider → ack.
    #[command(hide = true)]
    BaselinePipeline(baseline::PipelineArgs),
}

#[derive(clap::Args)]
pub struct Common {
    /// `sqlite` or `postgres`.
    #[arg(long, default_value = "sqlite")]
    pub db: Db,
    #[arg(
        long,
        env = "MSGCONTACT_BENCH_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Unacknowledged deliveries held by our worker and by baseline (b) alike (the worker's
    /// `MSGCONTACT_PREFETCH`; 64 is its default).
    #[arg(long, default_value_t = 64)]
    pub prefetch: u16,
    /// PostgreSQL server (a fresh database is created on it; its query string is kept). Without
    /// TLS by default: on the loopback it protects nothing, and the driver builds its TLS client
    /// afresh for every connection (~90 ms of CPU here), which would be charged to whichever side
    /// opens more connections.
    #[arg(
        long,
        env = "MSGCONTACT_BENCH_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
    )]
    pub pg_url: String,
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: Common,
    /// Closed-loop concurrencies of the accept-path table.
    #[arg(long, value_delimiter = ',', default_value = "8,32,128")]
    pub concurrency: Vec<usize>,
    /// Measured seconds per level (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Jobs drained in the end-to-end comparison.
    #[arg(long, default_value_t = 5000)]
    pub e2e_jobs: usize,
    /// Drains of each (ours, baseline (b)) in alternation; the target uses the median ratio.
    #[arg(long, default_value_t = 3)]
    pub e2e_rounds: usize,
    /// Only the accept path: the concurrency table and the latency at half our max rate.
    #[arg(long)]
    pub accept_only: bool,
    /// Rounds of open-loop runs at half our max rate, each ours then base(a) one after the other,
    /// then both side by side; the target uses the median p99 ratio of the rounds apart in which
    /// a probe saw no disk sync stall (side by side only when every round stalled).
    #[arg(long, default_value_t = 3)]
    pub half_rounds: usize,
}

#[derive(clap::Args)]
pub struct E2eArgs {
    #[command(flatten)]
    pub common: Common,
    /// Jobs per drain.
    #[arg(long, default_value_t = 5000)]
    pub jobs: usize,
    /// Drains of each (ours, baseline) in alternation.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds of the accept→Sent flow run.
    #[arg(long, default_value_t = 10)]
    pub flow_seconds: u64,
}

#[derive(clap::Args)]
pub struct ScrapeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Scraped runs; each sits between two unscraped ones.
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Closed-loop concurrency.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Scrapes per second during a scraped run.
    #[arg(long, default_value_t = 10)]
    pub per_second: u32,
}

#[derive(clap::Args)]
pub struct HeldArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    /// Signed sends offered per second (open loop).
    #[arg(long, default_value_t = 200)]
    pub offered: u32,
    /// SMS per second the fake provider accepts (beyond it answers 429); the worker is told the same.
    #[arg(long, default_value_t = 20)]
    pub provider_rate: u32,
    /// The work queue's max length (reached during the run, so 503s are measured).
    #[arg(long, default_value_t = 60_000)]
    pub queue_max_length: u32,
    /// Longest wait for the backlog to drain after the load stops.
    #[arg(long, default_value_t = 30)]
    pub drain_minutes: u64,
    /// API processes; the load takes turns between them.
    #[arg(long, default_value_t = 1)]
    pub apis: usize,
    /// Worker processes, sharing the provider's rate (`MSGCONTACT_PROVIDER_TOTAL_RATE` with
    /// `MSGCONTACT_WORKER_COUNT`): the provider's 429s say whether the budget held in total.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}
