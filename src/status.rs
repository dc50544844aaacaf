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

/// Generates a stored state's enum: its names as stored, parsing (an unknown name is an error at the
/// edge, where a row is read) and display.
macro_rules! stored_states {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vm])* $v),+ }

        impl $name {
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$v => stringify!($v)),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownStatus;

            fn from_str(s: &str) -> Result<Self, UnknownStatus> {
                match s {
                    $(stringify!($v) => Ok($name::$v),)+
                    _ => Err(UnknownStatus(s.to_owned())),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

stored_states!(
    /// A verification record's state.
    VerificationStatus {
        /// A code that may still be checked (until it expires).
        Pending,
        /// Checked successfully: the number became the contact's phone.
        Verified,
        /// Too many wrong checks.
        Locked,
        /// Replaced or withdrawn (expired code replaced, update cancelled, contact changed).
        Closed,
    }
);

stored_states!(
    /// An access key's state.
    AccessKeyStatus { Active, Inactive }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_from_its_stored_name() {
        for s in SendStatus::ALL {
            assert_eq!(s.as_str().parse::<SendStatus>(), Ok(s));
        }
        for s in [
            VerificationStatus::Pending,
            VerificationStatus::Verified,
            VerificationStatus::Locked,
            VerificationStatus::Closed,
        ] {
            assert_eq!(s.as_str().parse::<VerificationStatus>(), Ok(s));
        }
        assert_eq!(
            "Active".parse::<AccessKeyStatus>(),
            Ok(AccessKeyStatus::Active)
        );
        assert!("active".parse::<AccessKeyStatus>().is_err());
    }
}
