//! Logging: tracing with a pretty or JSON formatter on stderr (stdout stays clean for the CLI's
//! JSON output), filtered by `RUST_LOG` (default `info`, database driver notices at `warn`).
//!
//! Lines are written by a background thread (tracing-appender): a request or job that logs only
//! queues its line, instead of taking the stderr lock and making a write system call on the
//! request path. That thread writes what it found queued in one system call (a buffer it flushes
//! each time the queue runs dry), not one per line.

pub use tracing_appender::non_blocking::WorkerGuard as LogGuard;
use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber once; later calls (tests starting several apps) are no-ops.
/// Keep the guard until the process ends: dropping it flushes the lines still queued.
pub fn init(format: &str) -> LogGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm_migration=warn"));
    // The appender flushes its writer whenever its queue runs dry, so a line waits for no timer;
    // under load the lines queued meanwhile leave in one write. Unbuffered stderr made a system
    // call per line, and an accepted send logs one.
    let stderr = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    // Not lossy: past the queue's bound (128 Ki lines) a logging task waits for the writer rather
    // than a line being dropped.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(stderr);
    let _ = if format == "json" {
        fmt()
            .with_writer(writer)
            .json()
            .with_current_span(true)
            // A request or job has one span (`rpc`, `job`), which `span` already carries. The
            // list repeated it on every line, and a span is serialized by parsing its stored
            // fields again: 40 % of the accepted-send line's CPU in a profile went to the two.
            .with_span_list(false)
            .with_env_filter(filter)
            .try_init()
    } else {
        fmt().with_writer(writer).with_env_filter(filter).try_init()
    };
    guard
}
