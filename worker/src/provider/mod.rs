//! SMS providers: `log` (development), `webhook` and `aliyun` (Dysmsapi SendSms). Every failure is
//! classified (transient, ambiguous, permanent) for the retry policy.

mod aliyun;
mod http;
mod log;
mod message;
mod webhook;

use std::{path::PathBuf, sync::Mutex, time::Duration};

use crate::{error::Error, options::WorkerOptions};

pub use aliyun::{AliyunSettings, classify_sms_code};
pub use message::{
    FailureClass, MAX_ANSWER_BYTES, MAX_MESSAGE_ID_CHARS, ProviderFailure, Sms, bounded_token,
};

/// Where SMS go, chosen by `MSGCONTACT_SMS_PROVIDER`.
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
            Provider::Log { file, lock } => log::send(file, lock, sms),
            Provider::Webhook { client, url, key } => webhook::send(client, url, key, sms).await,
            Provider::Aliyun { client, settings } => aliyun::send(client, settings, sms).await,
        }
    }
}

impl Provider {
    /// The provider `MSGCONTACT_SMS_PROVIDER` names, with its settings checked.
    pub fn from_options(w: &WorkerOptions) -> Result<Self, Error> {
        Ok(match w.sms_provider.as_str() {
            "log" => Provider::Log {
                file: w.log_provider_file.clone(),
                lock: Default::default(),
            },
            "webhook" => Provider::Webhook {
                client: http_client(w.provider_timeout_ms)?,
                url: webhook_url(w.webhook_url.as_deref(), w.webhook_allow_http)?,
                key: w
                    .webhook_secret
                    .as_deref()
                    .ok_or_else(|| {
                        Error::Config(
                            "MSGCONTACT_WEBHOOK_SECRET is required for the webhook provider".into(),
                        )
                    })
                    .and_then(|s| {
                        msgcontact::signing::webhook::key(s).ok_or_else(|| {
                            Error::Config(
                                "MSGCONTACT_WEBHOOK_SECRET: a whsec_ secret must be base64".into(),
                            )
                        })
                    })?,
            },
            "aliyun" => {
                let need = |v: &Option<String>, name: &str| {
                    v.clone().ok_or_else(|| {
                        Error::Config(format!("{name} is required for the aliyun provider"))
                    })
                };
                if !matches!(w.aliyun_sms_protocol.as_str(), "http" | "https") {
                    return Err(Error::Config(
                        "MSGCONTACT_ALIYUN_SMS_PROTOCOL must be http or https".into(),
                    ));
                }
                Provider::Aliyun {
                    client: http_client(w.provider_timeout_ms)?,
                    settings: AliyunSettings {
                        endpoint: w.aliyun_sms_endpoint.clone(),
                        protocol: w.aliyun_sms_protocol.clone(),
                        access_key_id: need(
                            &w.aliyun_access_key_id,
                            "MSGCONTACT_ALIYUN_ACCESS_KEY_ID",
                        )?,
                        access_key_secret: need(
                            &w.aliyun_access_key_secret,
                            "MSGCONTACT_ALIYUN_ACCESS_KEY_SECRET",
                        )?,
                        sign_name: need(
                            &w.aliyun_sms_sign_name,
                            "MSGCONTACT_ALIYUN_SMS_SIGN_NAME",
                        )?,
                        template_code: need(
                            &w.aliyun_sms_template_code,
                            "MSGCONTACT_ALIYUN_SMS_TEMPLATE_CODE",
                        )?,
                    },
                }
            }
            other => {
                return Err(Error::Config(format!(
                    "unknown SMS provider {other:?} (log, webhook, aliyun)"
                )));
            }
        })
    }
}

fn http_client(timeout_ms: u64) -> Result<reqwest::Client, Error> {
    msgcontact::tls::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_millis(timeout_ms))
        .connect_timeout(Duration::from_secs(3))
        // A redirect would re-send the code to wherever the answer points.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::Config(e.to_string()))
}

/// The webhook URL, checked: `https`, or `http` to this machine only unless allowed.
fn webhook_url(url: Option<&str>, allow_http: bool) -> Result<String, Error> {
    let raw = url.ok_or_else(|| {
        Error::Config("MSGCONTACT_WEBHOOK_URL is required for the webhook provider".into())
    })?;
    let parsed = reqwest::Url::parse(raw)
        .map_err(|e| Error::Config(format!("MSGCONTACT_WEBHOOK_URL is not a URL: {e}")))?;
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(raw.to_owned()),
        "http" if loopback || allow_http => Ok(raw.to_owned()),
        "http" => Err(Error::Config(
            "MSGCONTACT_WEBHOOK_URL: http:// is only for this machine; use https:// or set \
             MSGCONTACT_WEBHOOK_ALLOW_HTTP=true"
                .into(),
        )),
        other => Err(Error::Config(format!(
            "MSGCONTACT_WEBHOOK_URL: unsupported scheme {other:?}"
        ))),
    }
}
