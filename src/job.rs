//! The job contract (what a queued message carries) and the RabbitMQ queue topology.
//!
//! The database is the source of truth: a job names a send request, it does not carry its state.

use lapin::{
    BasicProperties, Channel,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use serde::{Deserialize, Serialize};

/// Version of the message body below; a worker dead-letters versions it does not know.
pub const SCHEMA_VERSION: u32 = 1;
/// Header carrying the delivery attempt number (1 for the first publish).
pub const HEADER_ATTEMPT: &str = "x-msgcontact-attempt";
/// Header carrying the schema version, so it can be read without decoding the body.
pub const HEADER_SCHEMA: &str = "x-msgcontact-schema";
/// W3C trace context header.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// Header a worker sets on a message it dead-letters itself, saying why.
pub const HEADER_DEAD_REASON: &str = "x-msgcontact-dead-reason";

/// The body of a send job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendJob {
    /// Schema version of this body.
    pub v: u32,
    /// The send request this job delivers (upper-case UUID).
    pub request_id: String,
}

impl SendJob {
    pub fn new(request_id: String) -> Self {
        Self {
            v: SCHEMA_VERSION,
            request_id,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a SendJob always serializes")
    }

    /// Decodes a body; `Err` carries a reason fit for a dead-letter header.
    pub fn decode(data: &[u8]) -> Result<Self, String> {
        let job: SendJob =
            serde_json::from_slice(data).map_err(|e| format!("undecodable body: {e}"))?;
        if job.v != SCHEMA_VERSION {
            return Err(format!("unknown schema version {}", job.v));
        }
        Ok(job)
    }

    /// Message properties: persistent, JSON, `message_id` = RequestId, attempt and trace context.
    pub fn properties(&self, attempt: u32, traceparent: Option<&str>) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(HEADER_ATTEMPT.into(), AMQPValue::LongUInt(attempt));
        headers.insert(HEADER_SCHEMA.into(), AMQPValue::LongUInt(self.v));
        if let Some(tp) = traceparent {
            headers.insert(
                HEADER_TRACEPARENT.into(),
                AMQPValue::LongString(LongString::from(tp)),
            );
        }
        BasicProperties::default()
            // 2 = persistent: the broker writes the message to disk before confirming it.
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(self.request_id.as_str()))
            .with_timestamp(chrono::Utc::now().timestamp() as u64)
            .with_headers(headers)
    }
}

/// Reads a string header from a delivery's properties.
pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Reads an integer header from a delivery's properties.
pub fn header_u32(props: &BasicProperties, name: &str) -> Option<u32> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
        AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
        _ => None,
    }
}

/// Queue names and arguments, derived from the configured prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    pub prefix: String,
    /// Backpressure backstop: publishes beyond this many ready messages are nacked.
    pub max_length: u32,
    /// Deliveries of one message before the broker dead-letters it (poison backstop).
    pub delivery_limit: u32,
    /// The retry schedule: one delay queue per level, in order.
    pub retry_delays: Vec<std::time::Duration>,
}

impl Topology {
    pub fn new(prefix: &str, max_length: u32, retry_delays: Vec<std::time::Duration>) -> Self {
        Self {
            prefix: prefix.to_owned(),
            max_length,
            delivery_limit: 10,
            retry_delays,
        }
    }

    /// The delay queue of a retry level: jobs wait there for the level's delay, then the broker
    /// dead-letters them back to the work queue.
    pub fn retry_queue(&self, level: usize) -> String {
        format!("{}.send.retry.{}", self.prefix, level)
    }

    fn retry_queue_args(&self, level: usize) -> FieldTable {
        let mut args = FieldTable::default();
        // Quorum, like the work queue: a job waiting for its retry survives a node loss.
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        // Every message of this level waits the same time, so the head always expires first.
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(self.retry_delays[level].as_millis() as i64),
        );
        // Expired jobs go back to the work queue through the default exchange.
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(self.work_queue().as_str().into()),
        );
        // Dead-lettering stays at-most-once (the default): on the 3.10 brokers we run against,
        // many short-lived at-least-once queues wedged the node's dead-letter supervisor. On a
        // single node the hand-over is local and does not lose messages.
        args
    }

    /// The work queue send jobs are published to.
    pub fn work_queue(&self) -> String {
        format!("{}.send", self.prefix)
    }

    /// Where undeliverable and poison jobs end, with a reason.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.send.dead", self.prefix)
    }

    /// Arguments of the work queue. Changing any of them makes re-declaration fail
    /// (PRECONDITION_FAILED) against an existing queue, so they are part of the contract.
    pub fn work_queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        // Quorum: replicated, durable, and the only type with a delivery limit (poison backstop).
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        // A message redelivered this many times (crash loops) is dead-lettered instead of looping.
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(self.delivery_limit as i32),
        );
        // Dead letters go through the default exchange straight to our dead-letter queue.
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(self.dead_letter_queue().as_str().into()),
        );
        // Backpressure backstop: beyond this depth the broker nacks publishes (the API answers 503)
        // rather than dropping the oldest jobs, which would lose accepted requests.
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongInt(self.max_length as i32),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        args
    }

    fn dead_letter_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        // Quorum so dead letters survive a node loss like the jobs they came from.
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args
    }

    /// Declares every queue (idempotent; safe from many processes at once).
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(
                self.dead_letter_queue().as_str().into(),
                durable,
                self.dead_letter_args(),
            )
            .await?;
        channel
            .queue_declare(
                self.work_queue().as_str().into(),
                durable,
                self.work_queue_args(),
            )
            .await?;
        for level in 0..self.retry_delays.len() {
            channel
                .queue_declare(
                    self.retry_queue(level).as_str().into(),
                    durable,
                    self.retry_queue_args(level),
                )
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_round_trip_and_rejections() {
        let job = SendJob::new("CD76D376-2517-4924-92C5-DBC52262F93A".into());
        assert_eq!(SendJob::decode(&job.to_bytes()), Ok(job.clone()));
        assert!(SendJob::decode(b"not json").is_err());
        assert!(
            SendJob::decode(br#"{"v":99,"request_id":"x"}"#)
                .unwrap_err()
                .contains("schema")
        );
        let props = job.properties(3, Some("00-abc-def-01"));
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(header_u32(&props, HEADER_ATTEMPT), Some(3));
        assert_eq!(
            header_str(&props, HEADER_TRACEPARENT).as_deref(),
            Some("00-abc-def-01")
        );
    }
}
