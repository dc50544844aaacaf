//! SMS providers: `log` (development), `webhook` and `aliyun` (Dysmsapi SendSms). Every failure is
//! classified (transient, ambiguous, permanent) for the retry policy.

use std::{io::Write, path::PathBuf, sync::Mutex, time::Duration};

use msgcontact::signing::{OutboundCall, webhook};

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
const MAX_CODE_CHARS: usize = 64;

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

/// Reads at most [`MAX_ANSWER_BYTES`] of an answer; the rest is dropped with the connection.
async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
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

/// Settings of the Alibaba Cloud SMS provider.
#[derive(Debug, Clone)]
pub struct AliyunSettings {
    /// `host[:port]`
    pub endpoint: String,
    /// `https` or `http`
    pub protocol: String,
    pub access_key_id: String,
    pub access_key_secret: String,
    pub sign_name: String,
    pub template_code: String,
}

pub enum Provider {
    Log {
        file: PathBuf,
        lock: Mutex<()>,
    },
    Webhook {
        client: reqwest::Client,
        url: String,
        /// The Standard Webhooks HMAC key (a `whsec_` secret decoded).
        key: Vec<u8>,
    },
    Aliyun {
        client: reqwest::Client,
        settings: AliyunSettings,
    },
}

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Log { .. } => "log",
            Provider::Webhook { .. } => "webhook",
            Provider::Aliyun { .. } => "aliyun",
        }
    }

    /// Sends one SMS; `Ok` carries the provider's message id.
    pub async fn send(&self, sms: &Sms) -> Result<String, ProviderFailure> {
        match self {
            Provider::Log { file, lock } => log_sms(file, lock, sms),
            Provider::Webhook { client, url, key } => webhook(client, url, key, sms).await,
            Provider::Aliyun { client, settings } => aliyun(client, settings, sms).await,
        }
    }
}

fn log_sms(file: &std::path::Path, lock: &Mutex<()>, sms: &Sms) -> Result<String, ProviderFailure> {
    // Development only: the code is written out in clear, and says so.
    tracing::warn!(
        request_id = %sms.request_id,
        phone = %sms.phone_number,
        code = %sms.code,
        "DEVELOPMENT log provider: SMS not sent, written to the log and {}",
        file.display()
    );
    let line = serde_json::json!({
        "request_id": sms.request_id,
        "phone_number": sms.phone_number,
        "message": sms.message,
        "code": sms.code,
        "sent_at": msgcontact::time::format_ms(msgcontact::time::now_ms()),
    });
    let write = || -> std::io::Result<()> {
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dir) = file.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)?;
        writeln!(f, "{line}")
    };
    write().map_err(|e| ProviderFailure {
        class: FailureClass::Transient,
        code: "LogWriteFailed".into(),
        message: format!("could not write the development log file ({:?})", e.kind()),
        retry_after: None,
    })?;
    Ok(format!("log-{}", sms.request_id))
}

/// A transport failure: a connect failure never reached the provider (safe to retry); anything
/// after the request was on the wire (timeout, reset mid-body) may have been delivered. The error's
/// own text is not kept: it names the request's URL.
fn transport_failure(e: reqwest::Error) -> ProviderFailure {
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
fn status_failure(status: u16, retry_after: Option<Duration>) -> ProviderFailure {
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
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
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
fn transient_status(status: u16) -> bool {
    status == 429 || status == 408 || status >= 500
}

/// Dysmsapi business codes: throttling and provider-side faults are worth retrying; number,
/// template, signature, account and balance problems are not.
pub fn classify_sms_code(code: &str) -> FailureClass {
    if code == "isv.BUSINESS_LIMIT_CONTROL"
        || code.starts_with("isp.")
        || code.starts_with("Throttling")
        || code == "ServiceUnavailable"
        || code == "InternalError"
    {
        FailureClass::Transient
    } else {
        FailureClass::Permanent
    }
}

async fn webhook(
    client: &reqwest::Client,
    url: &str,
    key: &[u8],
    sms: &Sms,
) -> Result<String, ProviderFailure> {
    let body = serde_json::to_vec(&serde_json::json!({
        "request_id": sms.request_id,
        "phone_number": sms.phone_number,
        "message": sms.message,
        "code": sms.code,
    }))
    .expect("json");
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .header("idempotency-key", &sms.request_id);
    // The RequestId is the webhook id: the same on every retry, so the receiver can deduplicate.
    let timestamp = chrono::Utc::now().timestamp();
    for (name, value) in webhook::headers(key, &sms.request_id, timestamp, &body) {
        req = req.header(name, value);
    }
    let resp = req.body(body).send().await.map_err(transport_failure)?;
    let status = resp.status().as_u16();
    let retry_after = retry_after(resp.headers());
    let answer = read_bounded(resp).await.map_err(transport_failure)?;
    if (200..300).contains(&status) {
        let id = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| {
                v.get("message_id")
                    .and_then(|m| m.as_str())
                    .and_then(|m| bounded_token(m, MAX_MESSAGE_ID_CHARS, &sms.code))
            })
            .unwrap_or_else(|| format!("webhook-{}", sms.request_id));
        return Ok(id);
    }
    Err(status_failure(status, retry_after))
}

/// The number as Dysmsapi wants it: national digits for mainland China, country code + number
/// for everywhere else.
fn sms_number(phone: &str) -> String {
    match phone.split_once('-') {
        Some(("86", national)) => national.to_owned(),
        Some((cc, national)) => format!("{cc}{national}"),
        None => phone.to_owned(),
    }
}

async fn aliyun(
    client: &reqwest::Client,
    s: &AliyunSettings,
    sms: &Sms,
) -> Result<String, ProviderFailure> {
    let params: Vec<(String, String)> = vec![
        ("PhoneNumbers".into(), sms_number(&sms.phone_number)),
        ("SignName".into(), s.sign_name.clone()),
        ("TemplateCode".into(), s.template_code.clone()),
        (
            "TemplateParam".into(),
            serde_json::json!({ "code": sms.code }).to_string(),
        ),
        ("OutId".into(), sms.request_id.clone()),
    ];
    // The parameters travel in the signed form body, never in the URL: a URL ends up in error
    // texts, proxy logs and access logs, and TemplateParam carries the code.
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish()
        .into_bytes();
    let headers = OutboundCall {
        host: &s.endpoint,
        action: "SendSms",
        version: "2017-05-25",
        query: &[],
        form_body: Some(&body),
    }
    .sign(
        &s.access_key_id,
        &s.access_key_secret,
        &chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        &uuid::Uuid::new_v4().simple().to_string(),
    );
    let url = format!("{}://{}/", s.protocol, s.endpoint);
    let mut req = client
        .post(url)
        .header("accept", "application/json")
        .body(body);
    for (k, v) in &headers {
        // reqwest derives Host from the URL, which is the same `host[:port]` that was signed.
        if k != "host" {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    let resp = req.send().await.map_err(transport_failure)?;
    let status = resp.status().as_u16();
    let retry_after = retry_after(resp.headers());
    let answer = read_bounded(resp).await.map_err(transport_failure)?;
    let json: Option<serde_json::Value> = serde_json::from_slice(&answer).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(|c| c.as_str())
            .unwrap_or("")
    };
    let code = field("Code");
    if status == 200 && code == "OK" {
        return Ok(
            bounded_token(field("BizId"), MAX_MESSAGE_ID_CHARS, &sms.code)
                .unwrap_or_else(|| format!("aliyun-{}", sms.request_id)),
        );
    }
    if transient_status(status) || (code.is_empty() && status != 200) {
        let mut failure = status_failure(status, retry_after);
        // The provider's error code, when it is one (bounded, and never anything quoting the code).
        if let Some(c) = bounded_token(code, MAX_CODE_CHARS, &sms.code) {
            failure.message = format!("The provider answered HTTP {status} ({c}).");
        }
        return Err(failure);
    }
    // The provider's own `Message` is not kept: it may quote the request.
    let Some(code) = bounded_token(code, MAX_CODE_CHARS, &sms.code) else {
        if !(200..300).contains(&status) {
            return Err(status_failure(status, retry_after));
        }
        // A 2xx without a readable answer: the provider may have sent it.
        return Err(ProviderFailure {
            class: FailureClass::Ambiguous,
            code: format!("Http{status}"),
            message: "The provider's answer could not be read; the message may have been sent."
                .into(),
            retry_after,
        });
    };
    let class = classify_sms_code(&code);
    Err(ProviderFailure {
        class,
        message: format!("The provider refused the message with {code}."),
        code,
        retry_after,
    })
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

    #[test]
    fn sms_codes_are_classified() {
        for c in [
            "isv.BUSINESS_LIMIT_CONTROL",
            "isp.SYSTEM_ERROR",
            "isp.GATEWAY_ERROR",
            "Throttling.User",
        ] {
            assert_eq!(classify_sms_code(c), FailureClass::Transient, "{c}");
        }
        for c in [
            "isv.MOBILE_NUMBER_ILLEGAL",
            "isv.SMS_TEMPLATE_ILLEGAL",
            "isv.SMS_SIGNATURE_ILLEGAL",
            "isv.AMOUNT_NOT_ENOUGH",
            "InvalidAccessKeyId.NotFound",
            "SignatureDoesNotMatch",
        ] {
            assert_eq!(classify_sms_code(c), FailureClass::Permanent, "{c}");
        }
        assert!(transient_status(503) && transient_status(429) && !transient_status(400));
        assert_eq!(sms_number("86-13912341234"), "13912341234");
        assert_eq!(sms_number("1-2015550123"), "12015550123");
    }
}
