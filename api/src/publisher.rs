//! Publishing send jobs with publisher confirms: a job counts as accepted only once the broker has it.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use lapin::{
    Channel, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use msgcontact::job::{SendJob, Topology};

/// Why a publish did not become a confirmed, routed message.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker refused the message (nack): queue full or resource alarm")]
    Nacked,
    #[error("message was unroutable (work queue missing)")]
    Unroutable,
    #[error("no confirm within {0:?}")]
    Timeout(Duration),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
}

/// A small pool of confirm-mode channels; publishes rotate over them so confirms pipeline.
pub struct Publisher {
    channels: Vec<Channel>,
    next: AtomicUsize,
    routing_key: String,
    confirm_timeout: Duration,
}

impl Publisher {
    pub async fn new(
        conn: &Connection,
        topology: &Topology,
        size: usize,
        confirm_timeout: Duration,
    ) -> Result<Self, lapin::Error> {
        let mut channels = Vec::with_capacity(size);
        for _ in 0..size.max(1) {
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            channels.push(ch);
        }
        Ok(Self {
            channels,
            next: AtomicUsize::new(0),
            routing_key: topology.work_queue(),
            confirm_timeout,
        })
    }

    /// Publishes a job (persistent, mandatory) and waits for the broker's confirm.
    pub async fn publish(
        &self,
        job: &SendJob,
        traceparent: Option<&str>,
    ) -> Result<(), PublishError> {
        let ch = &self.channels[self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len()];
        let fut = async {
            let confirm = ch
                .basic_publish(
                    "".into(),
                    self.routing_key.as_str().into(),
                    // mandatory: a missing queue comes back as a return instead of vanishing.
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &job.to_bytes(),
                    job.properties(1, traceparent),
                )
                .await?
                .await?;
            if confirm.is_nack() {
                return Err(PublishError::Nacked);
            }
            if confirm.take_message().is_some() {
                return Err(PublishError::Unroutable);
            }
            Ok(())
        };
        let result = tokio::time::timeout(self.confirm_timeout, fut)
            .await
            .map_err(|_| PublishError::Timeout(self.confirm_timeout))
            .and_then(|r| r);
        let label = match &result {
            Ok(()) => "ack",
            Err(PublishError::Nacked) => "nack",
            Err(PublishError::Unroutable) => "unroutable",
            Err(PublishError::Timeout(_)) => "timeout",
            Err(PublishError::Broker(_)) => "error",
        };
        metrics::counter!(msgcontact::metrics::PUBLISH_CONFIRMS, "result" => label).increment(1);
        result
    }

    pub fn is_ready(&self) -> bool {
        self.channels.iter().all(|c| c.status().connected())
    }
}
