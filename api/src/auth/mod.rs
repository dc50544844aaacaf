//! Inbound authentication: who signed a request (ACS3-HMAC-SHA256 or v1 HMAC-SHA1), checked against
//! the in-memory key store ([`keys`]), with its timestamp and nonce for replay protection
//! ([`replay`]).

pub mod keys;
pub mod replay;

use axum::http::HeaderMap;
use msgcontact::{
    ApiError,
    domain::AccountId,
    signing::{self, Acs3Authorization, Acs3Request},
};

use crate::http::params::Params;
use keys::Key;
pub use keys::{KEY_REFRESH, KeyStore};
pub use replay::{MAX_SKEW_MS, NonceKey};
use replay::{check_timestamp, parse_time};

/// What the signature covers besides the parameters.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub query: &'a Params,
    pub all_params: &'a Params,
    pub body: &'a [u8],
    /// True when the action came from the `x-acs-action` header (it must then be signed).
    pub action_from_header: bool,
    /// True when the version came from the `x-acs-version` header (it must then be signed).
    pub version_from_header: bool,
    /// True when the body was read as parameters (its content type must then be signed).
    pub body_params: bool,
}

/// Who signed a request, and the nonce to record (the caller records it, see `writer`).
#[derive(Debug)]
pub struct Caller {
    pub account: AccountId,
    pub nonce: NonceKey,
}

/// Authenticates a request: the key, its status, the timestamp and the signature. Recording the
/// nonce (replay protection) is left to the caller, so a send can record it in the same grouped
/// transaction as its reservation.
pub async fn authenticate(keys: &KeyStore, req: &SignedRequest<'_>) -> Result<Caller, ApiError> {
    let authz = req
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if authz.starts_with(signing::ACS3_ALGORITHM) {
        acs3(keys, req, authz).await
    } else if authz.is_empty()
        && (req.all_params.get("Signature").is_some()
            || req.all_params.get("AccessKeyId").is_some())
    {
        v1(keys, req).await
    } else if authz.is_empty() {
        Err(ApiError::IncompleteSignature("The request is not signed."))
    } else {
        Err(ApiError::SignatureMethodUnsupported)
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

async fn acs3(keys: &KeyStore, req: &SignedRequest<'_>, authz: &str) -> Result<Caller, ApiError> {
    let auth = Acs3Authorization::parse(authz).ok_or(ApiError::IncompleteSignature(
        "The Authorization header is malformed.",
    ))?;
    let date = header(req.headers, "x-acs-date")
        .ok_or(ApiError::IncompleteSignature("x-acs-date is missing."))?;
    // The clock first: a stale or forged request costs no key lookup at all.
    check_timestamp(parse_time(date)?)?;
    let nonce = header(req.headers, "x-acs-signature-nonce").ok_or(
        ApiError::IncompleteSignature("x-acs-signature-nonce is missing."),
    )?;
    let content_sha = header(req.headers, "x-acs-content-sha256").ok_or(
        ApiError::IncompleteSignature("x-acs-content-sha256 is missing."),
    )?;
    let signed: Vec<&str> = auth.signed_headers.split(';').collect();
    // Without these in the signature, a captured request could be replayed with a fresh nonce or
    // date, or redirected to another action.
    let mut must_sign = vec![
        "x-acs-date",
        "x-acs-signature-nonce",
        "x-acs-content-sha256",
    ];
    if req.action_from_header {
        must_sign.push("x-acs-action");
    }
    if req.version_from_header {
        must_sign.push("x-acs-version");
    }
    if must_sign.iter().any(|h| !signed.contains(h)) {
        return Err(ApiError::IncompleteSignature(
            "SignedHeaders must include the x-acs-* headers.",
        ));
    }
    if req.body_params && !signed.contains(&"content-type") {
        return Err(ApiError::IncompleteSignature(
            "SignedHeaders must include content-type when the body carries parameters.",
        ));
    }
    let mut headers = Vec::with_capacity(signed.len());
    for name in &signed {
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ApiError::IncompleteSignature("SignedHeaders is malformed."));
        }
        let values: Vec<&str> = req
            .headers
            .get_all(*name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if values.is_empty() {
            return Err(ApiError::IncompleteSignature("A signed header is missing."));
        }
        headers.push((name.to_string(), values.join(",")));
    }

    let key = keys.lookup(&auth.access_key_id)?;
    if !signing::signatures_equal(
        &signing::sha256_hex(req.body),
        &content_sha.to_ascii_lowercase(),
    ) {
        return Err(ApiError::SignatureDoesNotMatch);
    }
    let expected = Acs3Request {
        method: req.method,
        path: req.path,
        query: req.query.pairs(),
        headers: &headers,
        signed_headers: &auth.signed_headers,
        payload_hash: content_sha,
    }
    .signature(&key.secret);
    if !signing::signatures_equal(&expected, &auth.signature.to_ascii_lowercase()) {
        return Err(ApiError::SignatureDoesNotMatch);
    }
    caller(&key, nonce)
}

async fn v1(keys: &KeyStore, req: &SignedRequest<'_>) -> Result<Caller, ApiError> {
    let p = req.all_params;
    let missing = |what| ApiError::IncompleteSignature(what);
    let ak = p
        .get("AccessKeyId")
        .ok_or(missing("AccessKeyId is missing."))?;
    let signature = p.get("Signature").ok_or(missing("Signature is missing."))?;
    let nonce = p
        .get("SignatureNonce")
        .ok_or(missing("SignatureNonce is missing."))?;
    let timestamp = p.get("Timestamp").ok_or(missing("Timestamp is missing."))?;
    check_timestamp(parse_time(timestamp)?)?;
    match p.get("SignatureMethod") {
        Some("HMAC-SHA1") => {}
        None => return Err(missing("SignatureMethod is missing.")),
        Some(_) => return Err(ApiError::SignatureMethodUnsupported),
    }
    if p.get("SignatureVersion").is_none() {
        return Err(missing("SignatureVersion is missing."));
    }
    let key = keys.lookup(ak)?;
    let signed_params: Vec<(&str, &str)> = p
        .pairs()
        .iter()
        .filter(|(k, _)| k != "Signature")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let expected = signing::v1_signature(
        &key.secret,
        &signing::v1_string_to_sign(req.method, &signed_params),
    );
    if !signing::signatures_equal(&expected, signature) {
        return Err(ApiError::SignatureDoesNotMatch);
    }
    caller(&key, nonce)
}

fn caller(key: &Key, nonce: &str) -> Result<Caller, ApiError> {
    if nonce.len() > 128 {
        return Err(ApiError::IncompleteSignature(
            "The signature nonce is too long.",
        ));
    }
    Ok(Caller {
        account: AccountId::parse(&key.account_id).map_err(|_| ApiError::Internal)?,
        nonce: NonceKey {
            access_key_id: key.access_key_id.clone(),
            nonce: nonce.to_owned(),
        },
    })
}
