//! A contact's other fields: its name, email address, title and message types.

use crate::error::ApiError;

/// A contact name: 2 to 12 letters (any script, CJK included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactName(String);

impl ContactName {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let n = s.chars().count();
        if (2..=12).contains(&n) && s.chars().all(char::is_alphabetic) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ApiError::InvalidParameter("Name"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, checked for shape only (the email channel is a later milestone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let invalid = ApiError::InvalidParameter("EmailAddress");
        let (local, domain) = s.split_once('@').ok_or(invalid.clone())?;
        let ok = s.len() <= 254
            && !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !s.chars().any(|c| c.is_whitespace() || c.is_control())
            && !domain.contains('@');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(invalid)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! closed_set {
    ($(#[$m:meta])* $name:ident, $param:literal, [$($v:ident),+ $(,)?]) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($v),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            pub fn parse(s: &str) -> Result<Self, ApiError> {
                match s {
                    $(stringify!($v) => Ok($name::$v),)+
                    _ => Err(ApiError::InvalidParameter($param)),
                }
            }

            pub fn as_str(&self) -> &'static str {
                match self { $($name::$v => stringify!($v)),+ }
            }
        }
    };
}

closed_set!(
    /// A contact's job title.
    Title,
    "Title",
    [FinanceDirector, TechnicalDirector, MaintenanceDirector, CEO, ProjectDirector, Other]
);

closed_set!(
    /// A kind of message a contact receives.
    MessageType,
    "MessageTypes",
    [ServiceMessage, FaultMessage, AccountExpenses, SecurityMessage, ActivityMessage, ProductMessage]
);

/// A non-empty set of message types, kept sorted and without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageTypes(Vec<MessageType>);

impl MessageTypes {
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Self, ApiError> {
        if values.is_empty() {
            return Err(ApiError::MissingParameter("MessageTypes"));
        }
        let mut v = values
            .iter()
            .map(|s| MessageType::parse(s.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        v.sort();
        v.dedup();
        Ok(Self(v))
    }

    /// Stored form: comma separated.
    pub fn to_stored(&self) -> String {
        self.0
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn from_stored(s: &str) -> Vec<String> {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    }
}
