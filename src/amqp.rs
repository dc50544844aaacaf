//! RabbitMQ connection with lapin's automatic recovery.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

/// A broker that accepts TCP but never finishes the handshake must not hang startup.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Connects with topology and consumer recovery enabled: after a broker restart lapin reconnects
/// and re-declares what this connection declared.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default()
        .with_connection_name(name.into())
        .enable_auto_recover();
    tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props))
        .await
        .map_err(|_| {
            lapin::Error::from(lapin::ErrorKind::IOError(std::sync::Arc::new(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "timed out connecting to the broker",
                ),
            )))
        })?
}
