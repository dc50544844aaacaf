//! What a request asks of the accept batch: a nonce to record, or a send to reserve with its nonce.

use msgcontact::ApiError;
use tokio::sync::oneshot;

use crate::auth::replay::NonceKey;

/// Everything a send reserves: a daily-quota unit, the contact's cooldown slot and the request row.
/// The contact and the account's own limit are read in the batch, under its locks.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub account_id: String,
    pub contact_id: String,
    pub phone: String,
    /// The quota when the account has no limit of its own.
    pub default_limit: u32,
    pub cooldown_ms: i64,
    pub now_ms: i64,
    pub day: String,
    pub request_id: String,
}

#[derive(Debug)]
pub enum Op {
    Nonce(NonceKey),
    Send {
        nonce: Option<NonceKey>,
        reservation: Reservation,
    },
}

impl Op {
    pub(super) fn order_key(&self) -> (&str, &str) {
        match self {
            Op::Nonce(_) => ("", ""),
            Op::Send { reservation: r, .. } => (&r.account_id, &r.contact_id),
        }
    }
}

/// One request waiting for its batch, with where its outcome goes.
pub(super) struct Job {
    pub(super) op: Op,
    pub(super) reply: oneshot::Sender<Result<(), ApiError>>,
}

/// The nonce a request records, if any.
pub(super) fn nonce_of(op: &Op) -> Option<&NonceKey> {
    match op {
        Op::Nonce(n) => Some(n),
        Op::Send { nonce, .. } => nonce.as_ref(),
    }
}
