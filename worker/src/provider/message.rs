//! One SMS to deliver, and how a failed delivery is told: its class, a bounded code, and a summary
//! in our own words.

use std::time::Duration;

/// One SMS to deliver.
#[derive(Debug, Clone)]
pub struct Sms {
    pub request_id: String,
    /// `86-13912341234`
    pub phone_number: String,
    pub message: String,
    pub code: String,
}

/// How a failed delivery should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Worth retrying later (timeouts before sending, 5xx, 429, throttling).
    Transient,
    /// The provider may or may not have sent it (timeout after the request was written).
    Ambiguous,
    /// Retrying cannot help (bad number, bad credentials, rejected content).
    Permanent,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Transient => "transient",
            FailureClass::Ambiguous => "ambiguous",
            FailureClass::Permanent => "permanent",
        }
    }
}

/// A failed delivery as it is recorded: its class, a bounded code of safe characters, and a
/// summary in our own words. Nothing the provider sent back and nothing of the request (its URL,
/// its parameters, an error's text) is kept: a provider or a proxy that echoes the request would
/// otherwise put the code into `FailureMessage`, the logs or a dead letter.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{class:?} provider failure {code}: {message}")]
pub struct ProviderFailure {
    pub class: FailureClass,
    pub code: String,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ProviderFailure {
    /// The provider said "too fast" (HTTP 429 or a throttling code): the worker slows down.
    pub fn is_throttling(&self) -> bool {
        self.code == "Http429"
            || self.code == "isv.BUSINESS_LIMIT_CONTROL"
            || self.code.starts_with("Throttling")
    }
}

/// Most bytes of a provider's answer read: any real answer is far smaller, and a hostile or broken
/// endpoint cannot make the worker buffer without bound.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Longest provider message id stored (the column holds 128 characters).
pub const MAX_MESSAGE_ID_CHARS: usize = 128;
/// Longest provider error code stored.
pub(super) const MAX_CODE_CHARS: usize = 64;

/// A provider-supplied token (message id, error code) fit to store: at most `max` characters, all
/// of the kind such tokens use (Alibaba's `BizId` has a `^`), and never one that contains the code
/// being delivered. Anything else is refused whole, never trimmed to fit: a trimmed echo of the
/// request could still carry part of the code.
pub fn bounded_token(raw: &str, max: usize, code: &str) -> Option<String> {
    let fits = !raw.is_empty()
        && raw.len() <= max
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '^'));
    (fits && (code.is_empty() || !raw.contains(code))).then(|| raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_tokens_are_kept_whole_or_not_at_all() {
        assert_eq!(
            bounded_token("900619746936498440^0", 128, "123456").as_deref(),
            Some("900619746936498440^0")
        );
        assert_eq!(
            bounded_token("isv.BUSINESS_LIMIT_CONTROL", 64, "123456").as_deref(),
            Some("isv.BUSINESS_LIMIT_CONTROL")
        );
        // An echo of the request, a token quoting the code, an overlong one: refused whole.
        assert_eq!(
            bounded_token("POST / HTTP/1.1 code=123456", 64, "123456"),
            None
        );
        assert_eq!(bounded_token("id-123456-x", 64, "123456"), None);
        assert_eq!(bounded_token(&"a".repeat(129), 128, "123456"), None);
        assert_eq!(bounded_token("", 128, "123456"), None);
    }
}
