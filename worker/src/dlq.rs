//! Dead letters: inspection and replay to the work queue (the `dlq` commands).

use lapin::{
    Connection,
    options::{
        BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
        ConfirmSelectOptions,
    },
    types::AMQPValue,
};
use msgcontact::job::{self, Topology};
use serde::Serialize;

use crate::Error;

/// One dead letter, as `dlq list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub request_id: Option<String>,
    pub reason: String,
    pub body: String,
}

fn describe(d: &lapin::message::Delivery) -> DeadLetter {
    let props = &d.properties;
    let reason = job::header_str(props, job::HEADER_DEAD_REASON).or_else(|| {
        // Dead-lettered by the broker itself (delivery limit, rejection): x-death says why.
        let deaths = props.headers().as_ref()?.inner().get("x-death")?.clone();
        if let AMQPValue::FieldArray(a) = deaths
            && let Some(AMQPValue::FieldTable(t)) = a.as_slice().first()
            && let Some(AMQPValue::LongString(r)) = t.inner().get("reason")
        {
            return Some(format!("broker: {}", String::from_utf8_lossy(r.as_bytes())));
        }
        None
    });
    DeadLetter {
        request_id: props.message_id().as_ref().map(|m| m.to_string()),
        reason: reason.unwrap_or_else(|| "unknown".into()),
        body: String::from_utf8_lossy(&d.data).chars().take(200).collect(),
    }
}

/// Lists up to `limit` dead letters without removing them.
pub async fn list(
    conn: &Connection,
    topology: &Topology,
    limit: usize,
) -> Result<Vec<DeadLetter>, Error> {
    let ch = conn.create_channel().await?;
    let mut out = Vec::new();
    while out.len() < limit {
        match ch
            .basic_get(
                topology.dead_letter_queue().as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?
        {
            Some(m) => out.push(describe(&m.delivery)),
            None => break,
        }
    }
    // Closing the channel returns every message we held, unacknowledged, to the queue.
    let _ = ch.close(200, "listed".into()).await;
    Ok(out)
}

/// Moves up to `limit` dead letters back to the work queue (confirmed before each is removed).
/// With `dry_run`, only reports what would move.
pub async fn replay(
    conn: &Connection,
    topology: &Topology,
    limit: usize,
    dry_run: bool,
) -> Result<Vec<DeadLetter>, Error> {
    if dry_run {
        return list(conn, topology, limit).await;
    }
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut moved = Vec::new();
    while moved.len() < limit {
        let Some(m) = ch
            .basic_get(
                topology.dead_letter_queue().as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?
        else {
            break;
        };
        let d = m.delivery;
        let mut headers = d.properties.headers().clone().unwrap_or_default();
        let mut clean = lapin::types::FieldTable::default();
        for (k, v) in headers.inner() {
            if k.as_str() != job::HEADER_DEAD_REASON
                && !k.as_str().starts_with("x-death")
                && !k.as_str().starts_with("x-first-death")
                && !k.as_str().starts_with("x-last-death")
            {
                clean.insert(k.clone(), v.clone());
            }
        }
        headers = clean;
        let confirm = ch
            .basic_publish(
                "".into(),
                topology.work_queue().as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &d.data,
                d.properties.clone().with_headers(headers),
            )
            .await?
            .await?;
        if confirm.is_ack() && confirm.take_message().is_none() {
            moved.push(describe(&d));
            d.ack(BasicAckOptions::default()).await?;
        } else {
            d.nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await?;
            return Err(Error::Config(
                "the work queue refused a replayed message (full?)".into(),
            ));
        }
    }
    let _ = ch.close(200, "replayed".into()).await;
    Ok(moved)
}
