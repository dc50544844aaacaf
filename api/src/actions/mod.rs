//! The RPC actions: one `enum Action`, and per family a file of functions, parameters in, JSON
//! fields out (the `RequestId` is added by the renderer).

pub mod contacts;
pub mod reply;
pub mod send;

use msgcontact::{
    ApiError,
    domain::{AccountId, RequestId},
};
use reply::OpResult;

use crate::{auth::replay::NonceKey, http::params::Params, state::AppState};

/// Every action served. Its name on the wire is its variant's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    AddMessageContact,
    UpdateMessageContact,
    DeleteMessageContact,
    GetMessageContact,
    ListMessageContacts,
    ListMessageContactVerifications,
    CancelMessageContactUpdate,
    GetMessageContactDeletionStatus,
    AssociateMembers,
    DisassociateMembers,
    SendPhoneVerificationForMessageContact,
    SendEmailVerificationForMessageContact,
    CheckPhoneVerificationForMessageContact,
    GetVerificationRequest,
}

impl Action {
    pub const ALL: [Action; 14] = [
        Action::AddMessageContact,
        Action::UpdateMessageContact,
        Action::DeleteMessageContact,
        Action::GetMessageContact,
        Action::ListMessageContacts,
        Action::ListMessageContactVerifications,
        Action::CancelMessageContactUpdate,
        Action::GetMessageContactDeletionStatus,
        Action::AssociateMembers,
        Action::DisassociateMembers,
        Action::SendPhoneVerificationForMessageContact,
        Action::SendEmailVerificationForMessageContact,
        Action::CheckPhoneVerificationForMessageContact,
        Action::GetVerificationRequest,
    ];

    /// The action's name on the wire (also its metrics label).
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::AddMessageContact => "AddMessageContact",
            Action::UpdateMessageContact => "UpdateMessageContact",
            Action::DeleteMessageContact => "DeleteMessageContact",
            Action::GetMessageContact => "GetMessageContact",
            Action::ListMessageContacts => "ListMessageContacts",
            Action::ListMessageContactVerifications => "ListMessageContactVerifications",
            Action::CancelMessageContactUpdate => "CancelMessageContactUpdate",
            Action::GetMessageContactDeletionStatus => "GetMessageContactDeletionStatus",
            Action::AssociateMembers => "AssociateMembers",
            Action::DisassociateMembers => "DisassociateMembers",
            Action::SendPhoneVerificationForMessageContact => {
                "SendPhoneVerificationForMessageContact"
            }
            Action::SendEmailVerificationForMessageContact => {
                "SendEmailVerificationForMessageContact"
            }
            Action::CheckPhoneVerificationForMessageContact => {
                "CheckPhoneVerificationForMessageContact"
            }
            Action::GetVerificationRequest => "GetVerificationRequest",
        }
    }

    /// A send records its nonce in the same grouped transaction as its reservation; every other
    /// action records it on its own before it runs.
    pub fn records_nonce_itself(self) -> bool {
        self == Action::SendPhoneVerificationForMessageContact
    }
}

impl std::str::FromStr for Action {
    type Err = ApiError;

    /// Unknown names are `InvalidAction.NotFound`.
    fn from_str(name: &str) -> Result<Self, ApiError> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == name)
            .ok_or(ApiError::ActionNotFound)
    }
}

/// Runs an action for an authenticated account.
pub async fn dispatch(
    state: &std::sync::Arc<AppState>,
    action: Action,
    account: &AccountId,
    p: &Params,
    request_id: RequestId,
    nonce: Option<NonceKey>,
) -> OpResult {
    match action {
        Action::AddMessageContact => contacts::add(state, account, p).await,
        Action::UpdateMessageContact => contacts::update(state, account, p).await,
        Action::DeleteMessageContact => contacts::delete(state, account, p).await,
        Action::GetMessageContact => contacts::get(state, account, p).await,
        Action::ListMessageContacts => contacts::list(state, account, p).await,
        Action::ListMessageContactVerifications => {
            contacts::list_verifications(state, account, p).await
        }
        Action::CancelMessageContactUpdate => contacts::cancel_update(state, account, p).await,
        Action::GetMessageContactDeletionStatus => {
            contacts::deletion_status(state, account, p).await
        }
        Action::AssociateMembers => contacts::associate(state, account, p).await,
        Action::DisassociateMembers => contacts::disassociate(state, account, p).await,
        Action::SendPhoneVerificationForMessageContact => {
            send::send_phone(state, account, p, request_id, nonce).await
        }
        Action::SendEmailVerificationForMessageContact => {
            Err(ApiError::EmailVerificationUnsupported)
        }
        Action::CheckPhoneVerificationForMessageContact => {
            send::check_phone(state, account, p).await
        }
        Action::GetVerificationRequest => send::get_request(state, account, p).await,
    }
}

#[cfg(test)]
mod tests {
    use super::Action;

    #[test]
    fn every_action_parses_from_its_own_name() {
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>(), Ok(a));
        }
        assert!("Nope".parse::<Action>().is_err());
    }
}
