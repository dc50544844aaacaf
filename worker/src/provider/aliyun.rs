//! Alibaba Cloud SMS (Dysmsapi `SendSms`), signed with the same code that verifies inbound calls.

use msgcontact::signing::OutboundCall;

use super::{
    http::{read_bounded, retry_after, status_failure, transient_status, transport_failure},
    message::{
        FailureClass, MAX_CODE_CHARS, MAX_MESSAGE_ID_CHARS, ProviderFailure, Sms, bounded_token,
    },
};

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

/// The number as Dysmsapi wants it: national digits for mainland China, country code + number
/// for everywhere else.
fn sms_number(phone: &str) -> String {
    match phone.split_once('-') {
        Some(("86", national)) => national.to_owned(),
        Some((cc, national)) => format!("{cc}{national}"),
        None => phone.to_owned(),
    }
}

pub(super) async fn send(
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
