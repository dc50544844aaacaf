//! Identifiers: contacts, accounts, requests, members, and a contact's live-verification key.

use std::fmt;

use rand::Rng;
use uuid::Uuid;

use crate::error::ApiError;

/// `c-` followed by 16 ASCII alphanumerics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContactId(String);

impl ContactId {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let ok = s.len() == 18
            && s.starts_with("c-")
            && s[2..].bytes().all(|b| b.is_ascii_alphanumeric());
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ApiError::InvalidParameter("ContactId"))
        }
    }

    pub fn generate() -> Self {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let tail: String = (0..16)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect();
        Self(format!("c-{tail}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An account (tenant): 1 to 32 ASCII digits, as Alibaba account ids are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountId(String);

impl AccountId {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        if !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ApiError::InvalidParameter("AccountId"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request id: a UUID, written upper case as Alibaba services do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(Uuid);

impl RequestId {
    /// Time-ordered (UUIDv7: milliseconds, then 74 random bits), so the request rows of a burst
    /// land at the end of the primary-key index instead of on a random page each.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(s: &str) -> Result<Self, ApiError> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| ApiError::InvalidParameter("RequestId"))
    }

    /// The least id minted at `unix_ms` or later: ids sort by the millisecond they were minted
    /// in, so `request_id >= first_at(t)` is a range of the primary key.
    pub fn first_at(unix_ms: i64) -> Self {
        Self(Uuid::from_u128(
            (unix_ms.clamp(0, (1 << 48) - 1) as u128) << 80,
        ))
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = Uuid::encode_buffer();
        f.write_str(self.0.hyphenated().encode_upper(&mut buf))
    }
}

/// Key of the single live verification of a contact's number: unique in the database, so two
/// creators of a contact's live code agree on one. The worker's grouped read spells the same
/// concatenation in SQL (`contact_id || '/' || phone`).
pub fn live_key(contact_id: &str, phone: &str) -> String {
    format!("{contact_id}/{phone}")
}

/// A member a contact is associated with: an account id or a resource directory folder id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(String);

impl MemberId {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ApiError::InvalidParameter("Members"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}
