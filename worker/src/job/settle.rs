//! Settling a delivery: ack, requeue, dead-letter with a reason, or park in a retry queue.

use std::time::Duration;

use lapin::{
    BasicProperties,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use msgcontact::{job, retry};

use super::context::{Disposition, Shared};

/// Acknowledges, requeues, dead-letters or parks a delivery as its job decided.
pub(super) async fn settle(shared: &Shared, delivery: &Delivery, disposition: Disposition) {
    let result = match disposition {
        Disposition::Ack => delivery.ack(BasicAckOptions::default()).await,
        Disposition::Requeue => {
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        }
        Disposition::DeadLetter(reason) => {
            tracing::warn!(%reason, "dead-lettering message");
            metrics::counter!(msgcontact::metrics::JOBS, "outcome" => "DeadLettered").increment(1);
            match republish(
                shared,
                delivery,
                &shared.topology.dead_letter_queue(),
                |h| {
                    h.insert(
                        job::HEADER_DEAD_REASON.into(),
                        AMQPValue::LongString(LongString::from(reason.as_str())),
                    );
                },
                None,
            )
            .await
            {
                Ok(()) => delivery.ack(BasicAckOptions::default()).await,
                // Could not park it with a reason: let the broker dead-letter it (x-death says why).
                Err(_) => {
                    delivery
                        .nack(BasicNackOptions {
                            requeue: false,
                            ..Default::default()
                        })
                        .await
                }
            }
        }
        Disposition::Retry {
            attempt,
            level,
            delay,
        } => {
            let queue = shared.topology.retry_queue(level);
            tracing::info!(next_attempt = attempt, ?delay, %queue, "scheduling a retry");
            // After a provider failure the request is recorded Retrying, so its next attempt
            // exists only once this publish is confirmed. Giving the delivery back instead
            // would lose it: a redelivered copy of this attempt finds the request Retrying and
            // is dropped as a duplicate. So keep trying, on the fresh session the supervisor
            // builds after a broker loss.
            let mut waits = retry::BROKER.delays();
            loop {
                let sent = republish(
                    shared,
                    delivery,
                    &queue,
                    |h| {
                        h.insert(job::HEADER_ATTEMPT.into(), AMQPValue::LongUInt(attempt));
                    },
                    Some(delay),
                )
                .await;
                match sent {
                    Ok(()) => break delivery.ack(BasicAckOptions::default()).await,
                    Err(e) if shared.shutdown.is_cancelled() => {
                        tracing::error!(error = %e, "stopping before the retry could be scheduled; requeueing");
                        break delivery
                            .nack(BasicNackOptions {
                                requeue: true,
                                ..Default::default()
                            })
                            .await;
                    }
                    Err(e) => {
                        let wait = waits.next().unwrap_or(retry::BROKER.max);
                        tracing::warn!(error = %e, ?wait, "could not schedule the retry yet; will try again");
                        // Woken by a stop, it tries once more: an ack beats giving the delivery back.
                        tokio::select! {
                            _ = shared.shutdown.cancelled() => {}
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not settle delivery; the broker will redeliver it");
    }
}

/// Publishes a copy of a delivery (confirmed) to another queue, with edited headers and an
/// optional per-message expiration.
async fn republish(
    shared: &Shared,
    delivery: &Delivery,
    queue: &str,
    edit: impl FnOnce(&mut FieldTable),
    expiration: Option<Duration>,
) -> Result<(), lapin::Error> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    edit(&mut headers);
    let mut props: BasicProperties = delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    if let Some(e) = expiration {
        props = props.with_expiration(e.as_millis().to_string().as_str().into());
    }
    let Some(channel) = shared.publish_channel() else {
        return Err(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
            lapin::ChannelState::Closed,
            "no broker session (reconnecting)",
        )));
    };
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &delivery.data,
            props,
        )
        .await?
        .await?;
    if confirm.is_ack() && confirm.take_message().is_none() {
        Ok(())
    } else {
        Err(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
            lapin::ChannelState::Error,
            "republish refused by the broker",
        )))
    }
}
