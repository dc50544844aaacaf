//! The operations, one function each: parameters in, JSON fields out (RequestId is added by the caller).

pub mod contacts;
pub mod send;

use msgcontact::{
    ApiError,
    domain::{AccountId, RequestId},
};
use serde_json::{Map, Value};

use crate::{AppState, params::Params};

/// Every action served; anything else is labelled `Unknown` in metrics to bound cardinality.
pub const ACTIONS: &[&str] = &[
    "AddMessageContact",
    "UpdateMessageContact",
    "DeleteMessageContact",
    "GetMessageContact",
    "ListMessageContacts",
    "ListMessageContactVerifications",
    "CancelMessageContactUpdate",
    "GetMessageContactDeletionStatus",
    "AssociateMembers",
    "DisassociateMembers",
    "SendPhoneVerificationForMessageContact",
    "SendEmailVerificationForMessageContact",
    "CheckPhoneVerificationForMessageContact",
    "GetVerificationRequest",
];

/// The one action whose writes are grouped with its nonce.
pub const SEND_PHONE: &str = "SendPhoneVerificationForMessageContact";

pub type OpResult = Result<Map<String, Value>, ApiError>;

/// Runs the named operation; unknown names are `InvalidAction.NotFound`.
pub async fn dispatch(
    state: &std::sync::Arc<AppState>,
    action: &str,
    account: &AccountId,
    p: &Params,
    request_id: RequestId,
    nonce: Option<crate::writer::NonceKey>,
) -> OpResult {
    match action {
        "AddMessageContact" => contacts::add(state, account, p).await,
        "UpdateMessageContact" => contacts::update(state, account, p).await,
        "DeleteMessageContact" => contacts::delete(state, account, p).await,
        "GetMessageContact" => contacts::get(state, account, p).await,
        "ListMessageContacts" => contacts::list(state, account, p).await,
        "ListMessageContactVerifications" => contacts::list_verifications(state, account, p).await,
        "CancelMessageContactUpdate" => contacts::cancel_update(state, account, p).await,
        "GetMessageContactDeletionStatus" => contacts::deletion_status(state, account, p).await,
        "AssociateMembers" => contacts::associate(state, account, p).await,
        "DisassociateMembers" => contacts::disassociate(state, account, p).await,
        "SendPhoneVerificationForMessageContact" => {
            send::send_phone(state, account, p, request_id, nonce).await
        }
        "SendEmailVerificationForMessageContact" => Err(ApiError::EmailVerificationUnsupported),
        "CheckPhoneVerificationForMessageContact" => send::check_phone(state, account, p).await,
        "GetVerificationRequest" => send::get_request(state, account, p).await,
        _ => Err(ApiError::ActionNotFound),
    }
}

/// Builds a JSON object from `key => value` pairs.
#[macro_export]
macro_rules! obj {
    ($($k:literal => $v:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut m = serde_json::Map::new();
        $(m.insert($k.to_string(), serde_json::json!($v));)*
        m
    }};
}
