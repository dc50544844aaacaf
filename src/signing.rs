//! Alibaba Cloud request signing: ACS3-HMAC-SHA256 and the v1 HMAC-SHA1 RPC scheme.
//!
//! One implementation serves both directions: the API verifies inbound calls with it, and the worker
//! signs its calls to Alibaba SMS with it. The functions are pure (no clock, no I/O) so the captured
//! vectors can test them byte for byte.

use base64::Engine;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const ACS3_ALGORITHM: &str = "ACS3-HMAC-SHA256";

/// RFC 3986 unreserved characters stay; everything else is percent-encoded (space → `%20`).
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, RFC3986).to_string()
}

/// Lower-case hex SHA-256, as used for `x-acs-content-sha256` and canonical request hashes.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The canonical query string: parameters sorted by name (then value), each re-encoded per RFC 3986.
pub fn canonical_query<K: AsRef<str>, V: AsRef<str>>(params: &[(K, V)]) -> String {
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (percent_encode(k.as_ref()), percent_encode(v.as_ref())))
        .collect();
    encoded.sort();
    encoded
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The parts of an ACS3 canonical request.
pub struct Acs3Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Decoded query parameters.
    pub query: &'a [(String, String)],
    /// The signed headers, lower-case names, in the order of `signed_headers`.
    pub headers: &'a [(String, String)],
    /// `;`-joined lower-case names, as in the Authorization header.
    pub signed_headers: &'a str,
    pub payload_hash: &'a str,
}

impl Acs3Request<'_> {
    pub fn canonical_request(&self) -> String {
        let mut out = String::with_capacity(512);
        out.push_str(self.method);
        out.push('\n');
        out.push_str(if self.path.is_empty() { "/" } else { self.path });
        out.push('\n');
        out.push_str(&canonical_query(self.query));
        out.push('\n');
        for (name, value) in self.headers {
            out.push_str(name);
            out.push(':');
            out.push_str(value.trim());
            out.push('\n');
        }
        out.push('\n');
        out.push_str(self.signed_headers);
        out.push('\n');
        out.push_str(self.payload_hash);
        out
    }

    pub fn string_to_sign(&self) -> String {
        format!(
            "{ACS3_ALGORITHM}\n{}",
            sha256_hex(self.canonical_request().as_bytes())
        )
    }

    pub fn signature(&self, secret: &str) -> String {
        hex::encode(hmac_sha256(
            secret.as_bytes(),
            self.string_to_sign().as_bytes(),
        ))
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The fields of an `Authorization: ACS3-HMAC-SHA256 …` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acs3Authorization {
    pub access_key_id: String,
    pub signed_headers: String,
    pub signature: String,
}

impl Acs3Authorization {
    /// Parses `ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=a;b,Signature=hex`; `None` if incomplete.
    pub fn parse(header: &str) -> Option<Self> {
        let rest = header.strip_prefix(ACS3_ALGORITHM)?.trim_start();
        let (mut ak, mut sh, mut sig) = (None, None, None);
        for part in rest.split(',') {
            let (k, v) = part.trim().split_once('=')?;
            match k {
                "Credential" => ak = Some(v.to_owned()),
                "SignedHeaders" => sh = Some(v.to_owned()),
                "Signature" => sig = Some(v.to_owned()),
                _ => {}
            }
        }
        let auth = Self {
            access_key_id: ak?,
            signed_headers: sh?,
            signature: sig?,
        };
        (!auth.access_key_id.is_empty() && !auth.signature.is_empty()).then_some(auth)
    }
}

/// v1 (RPC, HMAC-SHA1) string to sign from all request parameters except `Signature`.
pub fn v1_string_to_sign<K: AsRef<str>, V: AsRef<str>>(method: &str, params: &[(K, V)]) -> String {
    format!(
        "{method}&{}&{}",
        percent_encode("/"),
        percent_encode(&canonical_query(params))
    )
}

/// v1 signature: base64 HMAC-SHA1 keyed with `secret + "&"`.
pub fn v1_signature(secret: &str, string_to_sign: &str) -> String {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(format!("{secret}&").as_bytes()).expect("any key length");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Constant-time comparison of two signatures.
pub fn signatures_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// An outbound RPC call to sign with ACS3, as the official SDKs send it.
pub struct OutboundCall<'a> {
    /// `host[:port]` exactly as the Host header will carry it.
    pub host: &'a str,
    pub action: &'a str,
    pub version: &'a str,
    /// Decoded query parameters (the SDKs put RPC parameters here).
    pub query: &'a [(String, String)],
    /// A form body, if parameters travel in the body instead.
    pub form_body: Option<&'a [u8]>,
}

impl OutboundCall<'_> {
    /// The headers to set, `Authorization` included.
    pub fn sign(
        &self,
        access_key_id: &str,
        secret: &str,
        date: &str,
        nonce: &str,
    ) -> Vec<(String, String)> {
        let payload_hash = sha256_hex(self.form_body.unwrap_or(b""));
        let mut headers: Vec<(String, String)> = Vec::with_capacity(8);
        if self.form_body.is_some() {
            headers.push((
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ));
        }
        headers.extend([
            ("host".into(), self.host.into()),
            ("x-acs-action".into(), self.action.into()),
            ("x-acs-content-sha256".into(), payload_hash.clone()),
            ("x-acs-date".into(), date.into()),
            ("x-acs-signature-nonce".into(), nonce.into()),
            ("x-acs-version".into(), self.version.into()),
        ]);
        let signed_headers = headers
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let signature = Acs3Request {
            method: "POST",
            path: "/",
            query: self.query,
            headers: &headers,
            signed_headers: &signed_headers,
            payload_hash: &payload_hash,
        }
        .signature(secret);
        headers.push((
            "authorization".into(),
            format!("{ACS3_ALGORITHM} Credential={access_key_id},SignedHeaders={signed_headers},Signature={signature}"),
        ));
        headers
    }
}

/// Standard Webhooks signing of outbound webhooks (SMS and email providers, status callbacks).
///
/// The signature covers the message id and timestamp as well as the body, so a captured delivery
/// cannot be replayed later or under another id.
pub mod webhook {
    use base64::Engine;

    use super::hmac_sha256;

    /// The HMAC key of a webhook secret: a `whsec_<base64>` secret is its decoded bytes, any other
    /// secret its own bytes. `None` for a `whsec_` secret that is not valid base64.
    pub fn key(secret: &str) -> Option<Vec<u8>> {
        match secret.strip_prefix("whsec_") {
            Some(b64) => base64::engine::general_purpose::STANDARD.decode(b64).ok(),
            None => Some(secret.as_bytes().to_vec()),
        }
    }

    /// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, the `webhook-signature` value.
    pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut signed = Vec::with_capacity(id.len() + body.len() + 24);
        signed.extend_from_slice(id.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(timestamp.to_string().as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(body);
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(hmac_sha256(key, &signed))
        )
    }

    /// The three Standard Webhooks headers of one delivery.
    pub fn headers(
        key: &[u8],
        id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> [(&'static str, String); 3] {
        [
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature(key, id, timestamp, body)),
        ]
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The example of the Standard Webhooks specification's reference libraries.
        #[test]
        fn signs_like_the_reference_implementation() {
            let key = key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
            let sig = signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#,
            );
            assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
            assert!(super::key("whsec_%%%").is_none());
            assert_eq!(super::key("plain").unwrap(), b"plain");
        }
    }
}
