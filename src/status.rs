//! States of a send request and of a verification, as stored and as answered.

/// Lifecycle of a send request: `Queued → Sending → Sent | Retrying → … | Failed | Superseded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    Queued,
    Sending,
    Retrying,
    Sent,
    Failed,
    Superseded,
}

impl SendStatus {
    /// Every status, in the order reports list them.
    pub const ALL: [SendStatus; 6] = [
        SendStatus::Queued,
        SendStatus::Sending,
        SendStatus::Retrying,
        SendStatus::Sent,
        SendStatus::Failed,
        SendStatus::Superseded,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            SendStatus::Queued => "Queued",
            SendStatus::Sending => "Sending",
            SendStatus::Retrying => "Retrying",
            SendStatus::Sent => "Sent",
            SendStatus::Failed => "Failed",
            SendStatus::Superseded => "Superseded",
        }
    }

    /// The states a request can still leave, as stored: its outcome is not recorded yet.
    pub const LIVE_NAMES: [&'static str; 3] = [
        SendStatus::Queued.as_str(),
        SendStatus::Sending.as_str(),
        SendStatus::Retrying.as_str(),
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Queued" => SendStatus::Queued,
            "Sending" => SendStatus::Sending,
            "Retrying" => SendStatus::Retrying,
            "Sent" => SendStatus::Sent,
            "Failed" => SendStatus::Failed,
            "Superseded" => SendStatus::Superseded,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SendStatus::Sent | SendStatus::Failed | SendStatus::Superseded
        )
    }
}

impl std::str::FromStr for SendStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, UnknownStatus> {
        SendStatus::parse(s).ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// A stored status no state of this version has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}")]
pub struct UnknownStatus(pub String);

/// Verification record states.
pub mod verification {
    /// A code that may still be checked (until it expires).
    pub const PENDING: &str = "Pending";
    /// Checked successfully: the number became the contact's phone.
    pub const VERIFIED: &str = "Verified";
    /// Too many wrong checks.
    pub const LOCKED: &str = "Locked";
    /// Replaced or withdrawn (expired code replaced, update cancelled, contact changed).
    pub const CLOSED: &str = "Closed";
}

/// Access key states.
pub mod access_key {
    pub const ACTIVE: &str = "Active";
    pub const INACTIVE: &str = "Inactive";
}
