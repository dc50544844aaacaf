//! The webhook provider: each SMS is POSTed as JSON, signed the Standard Webhooks way.

use msgcontact::signing::webhook;

use super::{
    http::{read_bounded, retry_after, status_failure, transport_failure},
    message::{MAX_MESSAGE_ID_CHARS, ProviderFailure, Sms, bounded_token},
};

pub(super) async fn send(
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
