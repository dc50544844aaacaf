//! `msgcontact-worker`: consumes send jobs and delivers verification SMS (no subcommand), or reports
//! on the queues and manages dead letters.

use anyhow::Context;
use clap::{Parser, Subcommand};
use msgcontact::monitor;
use msgcontact_worker::{Application, Config, dlq};
use tokio_util::sync::CancellationToken;

/// mimalloc: every job allocates many small, short-lived buffers; glibc malloc was a tenth of the
/// API request threads' CPU on the same pattern.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "msgcontact-worker",
    version,
    about = "msgcontact delivery worker"
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Queue depths, consumers, requests by state, oldest queued age and projected drain time.
    Queues {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Refresh every two seconds until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Subcommand, Debug)]
enum DlqCommand {
    /// Shows dead letters with their reasons (they stay in the queue).
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Moves dead letters back to the work queue.
    Replay {
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Show what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    let _log = msgcontact::telemetry::init(&args.config.infra.log_format);
    match args.command {
        None => serve(args.config).await,
        Some(cmd) => {
            let infra = &args.config.infra;
            let topology = infra.topology();
            let conn = msgcontact::amqp::connect(&infra.amqp_url, "msgcontact-admin")
                .await
                .context("broker")?;
            match cmd {
                Command::Queues { json, watch } => {
                    let db = msgcontact::db::connect(&infra.database_url, 2)
                        .await
                        .context("database")?;
                    let mut census = monitor::Census::default();
                    // Listening from the start: a Ctrl-C or SIGTERM while a report is being read
                    // ends the watch at the next pause instead of being lost.
                    let stop = msgcontact::signal::shutdown();
                    tokio::pin!(stop);
                    loop {
                        let r = monitor::report(&conn, &db, &topology, &mut census).await?;
                        if json {
                            println!("{}", serde_json::to_string(&r)?);
                        } else {
                            if watch {
                                print!("\x1b[2J\x1b[H");
                            }
                            print!("{}", monitor::render_table(&r));
                        }
                        if !watch {
                            break;
                        }
                        tokio::select! {
                            _ = &mut stop => break,
                            _ = tokio::time::sleep(monitor::WATCH_INTERVAL) => {}
                        }
                    }
                }
                Command::Dlq(DlqCommand::List { limit }) => {
                    let list = dlq::list(&conn, &topology, limit).await?;
                    println!("{}", serde_json::to_string_pretty(&list)?);
                }
                Command::Dlq(DlqCommand::Replay { limit, dry_run }) => {
                    let moved = dlq::replay(&conn, &topology, limit, dry_run).await?;
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &serde_json::json!({ "dry_run": dry_run, "count": moved.len(), "messages": moved })
                        )?
                    );
                }
            }
            let _ = conn.close(200, "done".into()).await;
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config)
        .await
        .context("starting the worker")?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = msgcontact::signal::shutdown() => {},
            _ = stop.cancelled() => {},
        }
        stop.cancel();
    });
    app.run_until_stopped(shutdown).await?;
    Ok(())
}
