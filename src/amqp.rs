//! RabbitMQ connections: a bounded connect, and the reconnect loop both binaries' supervisors use
//! after a broker restart or a lost connection.
//!
//! lapin's own auto-recovery is not used. Under a broker restart with load on a small machine it
//! was seen to give up half way (a channel left in `Closing` after the reconnect, a consumer that
//! never came back, publish channels stuck in `Reconnecting`), silently. Instead each binary owns
//! its session (connection, channels, consumer): a lost connection ends the session, and the
//! supervisor builds a fresh one with [`reconnect`], re-declaring the topology, for as long as the
//! recovery deadline allows; past it the process reports not ready and exits non-zero.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties, uri::AMQPUri};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::retry;

/// A broker that accepts TCP but never finishes the handshake must not hang startup.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The largest frame we ask the broker for, unless the URL names its own (`?frame_max=`).
///
/// lapin keeps a receive and a send ring of 32 frames per connection, each allocated at the
/// negotiated size: at RabbitMQ's default of 128 KiB that is 8 MiB per connection (the worker's
/// RSS fell by ~10 MiB with this), for jobs of a few hundred bytes (a body larger than a frame is
/// simply split). 16 KiB leaves room for the headers a dead-lettered message gathers (`x-death`).
pub const DEFAULT_FRAME_MAX: u32 = 16 * 1024;

/// Connects once, within [`CONNECT_TIMEOUT`], asking for [`DEFAULT_FRAME_MAX`] unless the URL
/// names a `frame_max`.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|e: String| lapin::Error::from(std::io::Error::other(e)))?;
    uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
    let props = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, props))
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

/// Why [`reconnect`] stopped without a session.
#[derive(Debug, thiserror::Error)]
pub enum ReconnectError {
    #[error("the broker stayed unreachable past the recovery deadline: {0}")]
    GaveUp(lapin::Error),
    #[error("stopping")]
    Stopped,
}

/// Builds a session with `open` (connect, declare, open channels), retrying on the
/// [`retry::BROKER`] schedule until it succeeds, `deadline` passes, or `stop` fires.
pub async fn reconnect<T, F, Fut>(
    what: &str,
    deadline: Instant,
    stop: &CancellationToken,
    mut open: F,
) -> Result<T, ReconnectError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, lapin::Error>>,
{
    let mut waits = retry::BROKER.delays();
    let mut tries = 0u32;
    loop {
        tries += 1;
        let result = tokio::select! {
            _ = stop.cancelled() => return Err(ReconnectError::Stopped),
            r = open() => r,
        };
        let backoff = waits.next().unwrap_or(retry::BROKER.max);
        match result {
            Ok(session) => {
                tracing::info!(%what, tries, "broker session established");
                return Ok(session);
            }
            Err(e) if Instant::now() + backoff >= deadline => {
                tracing::error!(%what, tries, error = %e, "broker unreachable past the recovery deadline");
                return Err(ReconnectError::GaveUp(e));
            }
            Err(e) => {
                tracing::warn!(%what, tries, error = %e, ?backoff, "broker not reachable yet; retrying");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Err(ReconnectError::Stopped),
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}
