//! SMS providers: `log` (development) and `webhook`. Outcomes are classified for the retry policy.

use std::{io::Write, path::PathBuf, sync::Mutex, time::Duration};

use hmac::{Hmac, Mac};
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
}

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Log { .. } => "log",
            Provider::Webhook { .. } => "webhook",
        }
    }

    /// Sends one SMS; `Ok` carries the provider's message id.
    pub async fn send(&self, sms: &Sms) -> Result<String, ProviderFailure> {
        match self {
            Provider::Log { file, lock } => {
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
            Provider::Webhook {
                client,
                url,
                secret,
            } => webhook(client, url, secret, sms).await,
        }
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
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            // A connect failure never reached the provider; anything later might have.
            let class = if e.is_connect() {
                FailureClass::Transient
            } else {
                FailureClass::Ambiguous
            };
            return Err(ProviderFailure {
                class,
                code: if e.is_timeout() {
                    "Timeout".into()
                } else {
                    "ConnectionError".into()
                },
                message: e.to_string(),
                retry_after: None,
            });
        }
    };
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = resp.text().await.unwrap_or_default();
    if status.is_success() {
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
    let class = if status.as_u16() == 429 || status.is_server_error() || status.as_u16() == 408 {
        FailureClass::Transient
    } else {
        FailureClass::Permanent
    };
    Err(ProviderFailure {
        class,
        code: format!("Http{}", status.as_u16()),
        message: text.chars().take(200).collect(),
        retry_after,
    })
}
