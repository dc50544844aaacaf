//! SMS providers: `log` (development), `webhook` and `aliyun` (Dysmsapi SendSms). Every failure is
//! classified (transient, ambiguous, permanent) for the retry policy.

use std::{io::Write, path::PathBuf, sync::Mutex, time::Duration};

use hmac::{Hmac, Mac};
use msgcontact::signing::OutboundCall;
use sha2::Sha256;

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
        secret: String,
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
            Provider::Webhook {
                client,
                url,
                secret,
            } => webhook(client, url, secret, sms).await,
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
        message: e.to_string(),
        retry_after: None,
    })?;
    Ok(format!("log-{}", sms.request_id))
}

/// A transport failure: a connect failure never reached the provider (safe to retry); anything
/// after the request was on the wire (timeout, reset mid-body) may have been delivered.
fn transport_failure(e: reqwest::Error) -> ProviderFailure {
    let class = if e.is_connect() {
        FailureClass::Transient
    } else {
        FailureClass::Ambiguous
    };
    ProviderFailure {
        class,
        code: if e.is_timeout() {
            "Timeout".into()
        } else {
            "ConnectionError".into()
        },
        message: e.to_string(),
        retry_after: None,
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
    secret: &str,
    sms: &Sms,
) -> Result<String, ProviderFailure> {
    let body = serde_json::to_vec(&serde_json::json!({
        "request_id": sms.request_id,
        "phone_number": sms.phone_number,
        "message": sms.message,
        "code": sms.code,
    }))
    .expect("json");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(&body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .header("idempotency-key", &sms.request_id)
        .header("x-msgcontact-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(transport_failure)?;
    let status = resp.status().as_u16();
    let retry_after = retry_after(resp.headers());
    let text = resp.text().await.map_err(transport_failure)?;
    if (200..300).contains(&status) {
        let id = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                v.get("message_id")
                    .and_then(|m| m.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| format!("webhook-{}", sms.request_id));
        return Ok(id);
    }
    Err(ProviderFailure {
        class: if transient_status(status) {
            FailureClass::Transient
        } else {
            FailureClass::Permanent
        },
        code: format!("Http{status}"),
        message: text.chars().take(200).collect(),
        retry_after,
    })
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
    let query: Vec<(String, String)> = vec![
        ("PhoneNumbers".into(), sms_number(&sms.phone_number)),
        ("SignName".into(), s.sign_name.clone()),
        ("TemplateCode".into(), s.template_code.clone()),
        (
            "TemplateParam".into(),
            serde_json::json!({ "code": sms.code }).to_string(),
        ),
        ("OutId".into(), sms.request_id.clone()),
    ];
    let headers = OutboundCall {
        host: &s.endpoint,
        action: "SendSms",
        version: "2017-05-25",
        query: &query,
        form_body: None,
    }
    .sign(
        &s.access_key_id,
        &s.access_key_secret,
        &chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        &uuid::Uuid::new_v4().simple().to_string(),
    );
    let url = format!(
        "{}://{}/?{}",
        s.protocol,
        s.endpoint,
        msgcontact::signing::canonical_query(&query)
    );
    let mut req = client.post(url).header("accept", "application/json");
    for (k, v) in &headers {
        // reqwest derives Host from the URL, which is the same `host[:port]` that was signed.
        if k != "host" {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    let resp = req.send().await.map_err(transport_failure)?;
    let status = resp.status().as_u16();
    let retry_after = retry_after(resp.headers());
    let text = resp.text().await.map_err(transport_failure)?;
    let json: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    let code = json
        .as_ref()
        .and_then(|j| j.get("Code"))
        .and_then(|c| c.as_str())
        .unwrap_or("");
    let message = json
        .as_ref()
        .and_then(|j| j.get("Message"))
        .and_then(|c| c.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| text.chars().take(200).collect());
    if status == 200 && code == "OK" {
        let biz = json
            .as_ref()
            .and_then(|j| j.get("BizId"))
            .and_then(|b| b.as_str())
            .unwrap_or("");
        return Ok(if biz.is_empty() {
            format!("aliyun-{}", sms.request_id)
        } else {
            biz.to_owned()
        });
    }
    let class = if transient_status(status) {
        FailureClass::Transient
    } else if code.is_empty() {
        // A 2xx without a readable answer: the provider may have sent it.
        if status == 200 {
            FailureClass::Ambiguous
        } else {
            FailureClass::Permanent
        }
    } else {
        classify_sms_code(code)
    };
    Err(ProviderFailure {
        class,
        code: if code.is_empty() {
            format!("Http{status}")
        } else {
            code.to_owned()
        },
        message,
        retry_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
