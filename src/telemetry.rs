//! Logging: tracing with a pretty or JSON formatter on stderr (stdout stays clean for the CLI's
//! JSON output), filtered by `RUST_LOG` (default `info`, database driver notices at `warn`).

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber once; later calls (tests starting several apps) are no-ops.
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm_migration=warn"));
    let _ = if format == "json" {
        fmt()
            .with_writer(std::io::stderr)
            .json()
            .with_current_span(true)
            .with_env_filter(filter)
            .try_init()
    } else {
        fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .try_init()
    };
}
