//! RabbitMQ connection with lapin's automatic recovery.

use lapin::{Connection, ConnectionProperties};

/// Connects with topology and consumer recovery enabled: after a broker restart lapin reconnects
/// and re-declares what this connection declared.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default()
        .with_connection_name(name.into())
        .enable_auto_recover();
    Connection::connect(url, props).await
}
