//! What the HTTP providers share: a bounded read of the answer, and failures told in our own words.

use std::time::Duration;

use super::message::{FailureClass, MAX_ANSWER_BYTES, ProviderFailure};

/// Reads at most [`MAX_ANSWER_BYTES`] of an answer; the rest is dropped with the connection.
pub(super) async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = MAX_ANSWER_BYTES - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= MAX_ANSWER_BYTES {
            break;
        }
    }
    Ok(buf)
}

/// A transport failure: a connect failure never reached the provider (safe to retry); anything
/// after the request was on the wire (timeout, reset mid-body) may have been delivered. The error's
/// own text is not kept: it names the request's URL.
pub(super) fn transport_failure(e: reqwest::Error) -> ProviderFailure {
    let (class, code, message) = if e.is_connect() {
        (
            FailureClass::Transient,
            "ConnectionError",
            "Could not connect to the provider.",
        )
    } else if e.is_timeout() {
        (
            FailureClass::Ambiguous,
            "Timeout",
            "The provider did not answer in time; the message may have been sent.",
        )
    } else {
        (
            FailureClass::Ambiguous,
            "ConnectionError",
            "The connection to the provider broke; the message may have been sent.",
        )
    };
    ProviderFailure {
        class,
        code: code.into(),
        message: message.into(),
        retry_after: None,
    }
}

/// The failure of an answer with a non-success HTTP status. A redirect is not followed (it would
/// carry the code to another address) and counts as a permanent misconfiguration.
pub(super) fn status_failure(status: u16, retry_after: Option<Duration>) -> ProviderFailure {
    let class = if transient_status(status) {
        FailureClass::Transient
    } else {
        FailureClass::Permanent
    };
    ProviderFailure {
        class,
        code: format!("Http{status}"),
        message: if (300..400).contains(&status) {
            format!("The provider answered HTTP {status} (a redirect, not followed).")
        } else {
            format!("The provider answered HTTP {status}.")
        },
        retry_after,
    }
}

/// `Retry-After` (seconds) or `x-acs-retry-after` (milliseconds).
pub(super) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    get("x-acs-retry-after")
        .map(Duration::from_millis)
        .or_else(|| get("retry-after").map(Duration::from_secs))
}

/// HTTP statuses that say "later": throttling, timeouts and server errors.
pub(super) fn transient_status(status: u16) -> bool {
    status == 429 || status == 408 || status >= 500
}
