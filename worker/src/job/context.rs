//! What every job shares (connections, provider, limits, group-commit writers, the publish
//! channel), what one delivery says about its attempt, and what is to become of a delivery.

use std::time::Duration;

use lapin::Channel;
use msgcontact::{config::PolicyConfig, job::Topology};
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use super::in_flight::InFlight;
use crate::{
    limits,
    provider::Provider,
    store::{claims::ClaimWriter, sent::SentWriter, snapshot},
};

/// What every job of this process shares.
pub(crate) struct Shared {
    pub(crate) db: DatabaseConnection,
    pub(crate) policy: PolicyConfig,
    pub(crate) code_secrets: msgcontact::secrets::CodeSecrets,
    pub(crate) provider: Provider,
    pub(crate) limits: limits::Limits,
    pub(crate) reader: snapshot::Reader,
    pub(crate) claims: ClaimWriter,
    pub(crate) sent: SentWriter,
    pub(crate) topology: Topology,
    /// The current session's confirm-mode channel for dead letters and retries (none while
    /// reconnecting).
    pub(crate) publish_channel: std::sync::RwLock<Option<Channel>>,
    pub(crate) in_flight: InFlight,
    pub(crate) shutdown: CancellationToken,
}

impl Shared {
    pub(crate) fn publish_channel(&self) -> Option<Channel> {
        self.publish_channel
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_publish_channel(&self, ch: Option<Channel>) {
        *self
            .publish_channel
            .write()
            .unwrap_or_else(|p| p.into_inner()) = ch;
    }
}

/// What to do with a delivery once processing is over.
pub(crate) enum Disposition {
    Ack,
    /// Give it back to the queue (shutdown during a database outage); the delivery limit bounds this.
    Requeue,
    DeadLetter(String),
    /// Park the job in a delay queue, then deliver it again as attempt `attempt`.
    Retry {
        attempt: u32,
        level: usize,
        delay: Duration,
    },
}

/// What the delivery says about the attempt it carries.
pub(crate) struct JobCtx {
    /// The attempt number this message was published for (1 = first).
    pub(crate) attempt: u32,
    /// The broker delivered it before (the previous holder died or gave it back).
    pub(crate) redelivered: bool,
    /// This delivery already claimed the request (a database error interrupted the job before
    /// the provider was called, and the job is being run again).
    pub(crate) claimed: std::sync::atomic::AtomicBool,
}
