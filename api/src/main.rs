//! `msgcontact-api`: serves the API (no subcommand), or administers keys, accounts and migrations.

use anyhow::Context;
use clap::{Parser, Subcommand};
use msgcontact_api::{Application, Config, admin_cli as cli};
use tokio_util::sync::CancellationToken;

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
    let api = Application::build(args.config)
        .await
        .context("starting the API")?;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = msgcontact::signal::shutdown() => stop.cancel(),
            _ = stop.cancelled() => {}
        }
    });
    api.run_until_stopped(shutdown).await?;
    Ok(())
}
