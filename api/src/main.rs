//! `msgcontact-api`: serves the API (no subcommand), or administers keys, accounts and migrations.

use anyhow::Context;
use clap::{Parser, Subcommand};
use msgcontact_api::{Application, Config, cli};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// mimalloc: the request path allocates small, short-lived buffers at a high rate, where glibc
/// malloc showed up as a tenth of the request threads' CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "msgcontact-api",
    version,
    about = "msgcontact API server and administration"
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    /// Also run a worker in this process (small deployments and development).
    #[arg(long, env = "MSGCONTACT_WITH_WORKER")]
    with_worker: bool,
    #[command(flatten)]
    worker: msgcontact_worker::WorkerOptions,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Applies pending database migrations and exits.
    Migrate,
    /// Access key administration.
    #[command(subcommand)]
    AccessKey(cli::AccessKeyCommand),
    /// Account administration.
    #[command(subcommand)]
    Account(cli::AccountCommand),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    let _log = msgcontact::telemetry::init(&args.config.infra.log_format);
    let infra = &args.config.infra;
    match args.command {
        Some(cmd) => {
            let db = msgcontact::db::connect(&infra.database_url, 2)
                .await
                .context("database")?;
            let out = match cmd {
                Command::Migrate => serde_json::json!({ "migrated": true }),
                Command::AccessKey(c) => {
                    let master = infra.secrets.master_key().context("master key")?;
                    cli::access_key(&db, &master, c).await?
                }
                Command::Account(c) => cli::account(&db, c).await?,
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        None => serve(args).await,
    }
}

async fn serve(args: Cli) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    // A failed in-process worker stops the API too, and the process exits non-zero.
    let worker_failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let api = Application::build(args.config.clone())
        .await
        .context("starting the API")?;
    if args.with_worker {
        if let Some(key) = cli::ensure_dev_key(&api.state().db, &api.state().master).await? {
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
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                stop.cancel();
            }
        });
    }
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
        !worker_failed.load(std::sync::atomic::Ordering::Relaxed),
        "the in-process worker failed"
    );
    Ok(())
}
