//! Logging: tracing with a pretty or JSON formatter on stderr (stdout stays clean for the CLI's
//! JSON output), filtered by `RUST_LOG` (default `info`, database driver notices at `warn`).
//!
//! Lines are written by a background thread (tracing-appender): a request or job that logs only
//! queues its line, instead of taking the stderr lock and making a write system call on the
//! request path.

pub use tracing_appender::non_blocking::WorkerGuard as LogGuard;
use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber once; later calls (tests starting several apps) are no-ops.
/// Keep the guard until the process ends: dropping it flushes the lines still queued.
pub fn init(format: &str) -> LogGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm_migration=warn"));
    // Not lossy: past the queue's bound (128 Ki lines) a logging task waits for the writer rather
    // than a line being dropped.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let _ = if format == "json" {
        fmt()
            .with_writer(writer)
            .json()
            .with_current_span(true)
            .with_env_filter(filter)
            .try_init()
    } else {
        fmt().with_writer(writer).with_env_filter(filter).try_init()
    };
    guard
}
