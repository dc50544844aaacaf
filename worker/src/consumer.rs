//! The broker side of the worker: one session (connection, consume and publish channels) at a time,
//! rebuilt after a loss until the recovery deadline, each delivery handed to its own job task.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use lapin::{
    Channel,
    options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions},
    types::FieldTable,
};
use msgcontact::job::Topology;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::job::{self, Shared};

/// One broker connection with the worker's two channels.
pub(crate) struct Session {
    conn: lapin::Connection,
    consume: Channel,
    publish: Channel,
}

impl Session {
    pub(crate) async fn open(
        url: &str,
        topology: &Topology,
        prefetch: u16,
    ) -> Result<Self, lapin::Error> {
        let conn = msgcontact::amqp::connect(url, "msgcontact-worker").await?;
        let consume = conn.create_channel().await?;
        // Declared on every (re)connect, so a broker that lost its definitions gets them back.
        topology.declare(&consume).await?;
        // A small prefetch bounds in-flight work and keeps a crashed worker's redeliveries few.
        consume
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            conn,
            consume,
            publish,
        })
    }
}

/// Where and how to open a new session after a loss.
pub(crate) struct Reconnect {
    pub url: String,
    pub prefetch: u16,
    /// Past this without a session the worker gives up (not ready, exit non-zero).
    pub recovery_timeout: Duration,
}

/// Consumes until `shutdown` fires (then lets in-flight jobs finish) or the broker stays lost past
/// the recovery deadline, which it returns. `broker_ready` says whether a session is consuming.
///
/// The supervisor: one pass per broker session. A session ends when its connection or consumer
/// is lost; a new one is built (and the topology re-declared) until the recovery deadline, after
/// which the worker reports not ready and stops with an error.
pub(crate) async fn run(
    shared: Arc<Shared>,
    first: Session,
    reconnect: Reconnect,
    broker_ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> Option<msgcontact::amqp::ReconnectError> {
    let tracker = TaskTracker::new();
    let queue = shared.topology.work_queue();
    let mut next_session = Some(first);
    let mut lost = None;
    'sessions: loop {
        let session = match next_session.take() {
            Some(s) => s,
            None => {
                let deadline = tokio::time::Instant::now() + reconnect.recovery_timeout;
                let topology = shared.topology.clone();
                let (url, prefetch) = (reconnect.url.clone(), reconnect.prefetch);
                match msgcontact::amqp::reconnect("worker", deadline, &shutdown, || {
                    Session::open(&url, &topology, prefetch)
                })
                .await
                {
                    Ok(s) => s,
                    Err(msgcontact::amqp::ReconnectError::Stopped) => break 'sessions,
                    Err(e) => {
                        lost = Some(e);
                        break 'sessions;
                    }
                }
            }
        };
        let consumer = session
            .consume
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        let mut consumer = match consumer {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not start consuming; reconnecting");
                let _ = session.conn.close(200, "reconnecting".into()).await;
                continue 'sessions;
            }
        };
        shared.set_publish_channel(Some(session.publish.clone()));
        broker_ready.store(true, Ordering::Relaxed);
        tracing::info!(%queue, prefetch = reconnect.prefetch, provider = shared.provider.name(), "worker consuming");
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        let stopping = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break true,
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let shared = shared.clone();
                        tracker.spawn(async move { job::handle_delivery(&shared, delivery).await });
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "consumer failed; reconnecting");
                        break false;
                    }
                    None => {
                        tracing::warn!("consumer stream ended; reconnecting");
                        break false;
                    }
                },
                // A connection that died without failing the consumer stream still ends
                // the session.
                _ = watchdog.tick() => {
                    let ok = session.conn.status().connected()
                        && session.consume.status().connected()
                        && session.publish.status().connected();
                    if !ok {
                        tracing::warn!("broker session lost; reconnecting");
                        break false;
                    }
                }
            }
        };
        broker_ready.store(false, Ordering::Relaxed);
        if stopping {
            tracing::info!("stopping: finishing in-flight jobs");
            // Jobs waiting out a database outage give their delivery back instead of
            // holding it.
            shared.shutdown.cancel();
            let _ = session
                .consume
                .basic_cancel(consumer.tag(), Default::default())
                .await;
            tracker.close();
            if tokio::time::timeout(Duration::from_secs(30), tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    "in-flight jobs did not finish in time; the broker will redeliver them"
                );
            }
            shared.set_publish_channel(None);
            let _ = session.conn.close(200, "shutdown".into()).await;
            break 'sessions;
        }
        // The broker requeues this session's unacknowledged deliveries; jobs still running
        // on it finish their database work, and their acks fail harmlessly.
        shared.set_publish_channel(None);
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            session.conn.close(200, "reconnecting".into()),
        )
        .await;
    }
    if lost.is_some() {
        shutdown.cancel();
    }
    // Jobs of a session lost while stopping finish (or give their delivery back) too.
    shared.shutdown.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(30), tracker.wait()).await;
    lost
}
