//! msgcontact-bench: drives the real `msgcontact-api` and `msgcontact-worker` binaries with signed
//! sends against the real RabbitMQ and database, and measures the same things for two minimal
//! baselines on the same broker and database in the same run, so the figures are ratios, not
//! absolute claims about a machine.
//!
//! `run`  — accept path at fixed concurrencies, latency at half our max rate, end-to-end drain,
//!          accept→Sent latency, /metrics scrape cost; baselines (a) publish-with-confirm handler and
//!          (b) consume → insert → POST → ack pipeline.
//! `held` — held load: an offered rate above the provider's for minutes; per-minute p99, RSS and
//!          queue depth, 503 latency at the queue's max length, then the drain.
//!
//! Build everything first (`cargo build --release --workspace`): the binaries under test are taken
//! from the directory of this executable.

/// The same allocator as the binaries under test, so the baselines it serves are not handicapped.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
mod args;
mod baseline;
mod disk;
mod fake_provider;
mod held;
mod leftovers;
mod load;
mod metrics_text;
mod procstat;
mod report;
mod run;
mod scrape;
mod stack;

use clap::Parser;

use args::Cmd;

fn main() -> anyhow::Result<()> {
    let cmd = Cmd::parse();
    msgcontact::tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let measured = match cmd {
            // The baselines' child processes: what they use belongs to the run that started them.
            Cmd::BaselinePublish(a) => return baseline::serve_publish(a).await,
            Cmd::BaselinePipeline(a) => return baseline::run_pipeline(a).await,
            // Stops itself on a signal (in a load minute or in the drain); stopped in the drain it
            // still prints the outcomes so far.
            Cmd::Held(a) => held::held(a).await,
            Cmd::Run(a) => until_stopped(run::run(a)).await,
            Cmd::Scrape(a) => until_stopped(scrape::scrape(a)).await,
            Cmd::E2e(a) => until_stopped(run::e2e(a)).await,
        };
        // Whatever ended the run (an error, a signal), nothing it made stays behind. Dropping a
        // stopped run's future killed its child processes first (`kill_on_drop`).
        leftovers::remove_all().await;
        measured
    })
}

/// Runs a measurement until it ends or Ctrl-C / SIGTERM arrives.
async fn until_stopped(run: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::select! {
        r = run => r,
        _ = msgcontact::signal::shutdown() => {
            eprintln!("interrupted: removing this run's queues, database and files");
            // Not a success: a script or a timeout that stopped the run sees it did not finish.
            Err(anyhow::anyhow!("interrupted before the run finished"))
        }
    }
}
