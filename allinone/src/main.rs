//! `msgcontact`: the API and a worker in one process (development and small deployments). The two
//! binaries' libraries meet here, so neither binary depends on the other.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use anyhow::Context;
use clap::Parser;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// mimalloc, as in both binaries (see their `main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "msgcontact",
    version,
    about = "msgcontact API and worker in one process"
)]
struct Cli {
    #[command(flatten)]
    config: msgcontact_api::Config,
    #[command(flatten)]
    worker: msgcontact_worker::WorkerOptions,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    let _log = msgcontact::telemetry::init(&args.config.infra.log_format);
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    // A failed worker stops the API too, and the process exits non-zero.
    let worker_failed = Arc::new(AtomicBool::new(false));
    let api = msgcontact_api::Application::build(args.config.clone())
        .await
        .context("starting the API")?;
    if let Some(key) =
        msgcontact_api::admin_cli::ensure_dev_key(&api.state().db, &api.state().master).await?
    {
        println!(
            "Development access key (created because the database had none):\n{}",
            serde_json::to_string_pretty(&key)?
        );
    }
    let worker = msgcontact_worker::Application::build(msgcontact_worker::Config {
        infra: args.config.infra.clone(),
        policy: args.config.policy.clone(),
        worker: args.worker.clone(),
    })
    .await
    .context("starting the worker")?;
    let (stop, failed) = (shutdown.clone(), worker_failed.clone());
    tracker.spawn(async move {
        if let Err(e) = worker.run_until_stopped(stop.clone()).await {
            tracing::error!(error = %e, "worker failed");
            failed.store(true, Ordering::Relaxed);
            stop.cancel();
        }
    });
    let stop = shutdown.clone();
    tracker.spawn(async move {
        tokio::select! {
            _ = msgcontact::signal::shutdown() => stop.cancel(),
            _ = stop.cancelled() => {}
        }
    });
    let result = api.run_until_stopped(shutdown.clone()).await;
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    result?;
    anyhow::ensure!(
        !worker_failed.load(Ordering::Relaxed),
        "the in-process worker failed"
    );
    Ok(())
}
