//! `msgcontact-worker`: consumes send jobs and delivers verification SMS.

use anyhow::Context;
use clap::Parser;
use msgcontact_worker::{Application, Config};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "msgcontact-worker",
    version,
    about = "msgcontact delivery worker"
)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    msgcontact::telemetry::init(&args.config.infra.log_format);
    let app = Application::build(args.config)
        .await
        .context("starting the worker")?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
            _ = stop.cancelled() => {},
        }
        stop.cancel();
    });
    app.run_until_stopped(shutdown).await?;
    Ok(())
}
