//! One RPC request: its parameters (query and form body), its action and version, who signed it,
//! then the action itself, under the request deadline, counted in the request metrics.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, Method, header},
    response::Response,
};
use msgcontact::{ApiError, domain::RequestId};
use serde_json::Value;

use super::{params::Params, render::render};
use crate::{
    accept, actions, auth,
    config::{API_VERSION, BODY_TIMEOUT, REQUEST_TIMEOUT},
    state::AppState,
};

pub(super) async fn rpc(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let started = std::time::Instant::now();
    let request_id = RequestId::new();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("msgcontact")
        .to_owned();
    let span = tracing::info_span!("rpc", request_id = %request_id, action = tracing::field::Empty);
    let mut action = "Unknown";
    // The deadline drops whatever the request still waits for; a send's reservation and publish
    // run in a task of their own (see `actions::send`), so dropping never strands one.
    let result = tokio::time::timeout(
        REQUEST_TIMEOUT,
        handle(&state, req, request_id, &span, &mut action),
    )
    .await
    .unwrap_or(Err(ApiError::ServiceUnavailable {
        retry_after_ms: 1000,
    }));
    let (code, status) = match &result {
        Ok(_) => (std::borrow::Cow::Borrowed("OK"), 200),
        Err(e) => {
            span.in_scope(
                || tracing::info!(code = %e.code(), status = e.status(), "request failed"),
            );
            (e.code(), e.status())
        }
    };
    metrics::counter!(msgcontact::metrics::API_REQUESTS, "action" => action, "code" => code.into_owned()).increment(1);
    let elapsed = started.elapsed().as_secs_f64();
    metrics::histogram!(msgcontact::metrics::API_DURATION, "action" => action).record(elapsed);
    metrics::histogram!(msgcontact::metrics::API_DURATION_BY_STATUS, "action" => action, "status" => status_label(status))
        .record(elapsed);
    render(request_id, &host, result)
}

/// The few statuses the API answers with, as static labels (no allocation per request).
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        400 => "400",
        404 => "404",
        405 => "405",
        409 => "409",
        408 => "408",
        413 => "413",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}

async fn handle(
    state: &Arc<AppState>,
    req: Request,
    request_id: RequestId,
    span: &tracing::Span,
    action_label: &mut &'static str,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let (parts, body) = req.into_parts();
    if parts.method != Method::POST && parts.method != Method::GET {
        return Err(ApiError::UnsupportedMethod);
    }
    if parts.uri.path() != "/" {
        return Err(ApiError::ActionNotFound);
    }
    let body = read_body(body, state.max_body_bytes).await?;
    let mut query = Params::default();
    query.parse_into(parts.uri.query().unwrap_or("").as_bytes())?;
    let mut all = query.clone();
    let acs3 = parts.headers.contains_key(header::AUTHORIZATION);
    let form = is_form(&parts.headers);
    // A body becomes parameters only where the signature covers that reading: v1 signs every
    // parameter itself; ACS3 signs only the body's hash, so its content type must be signed too
    // (else a captured request's body could be re-read as other parameters).
    let body_params = if acs3 {
        form && !body.is_empty()
    } else {
        form || (!body.is_empty() && parts.headers.get(header::CONTENT_TYPE).is_none())
    };
    if body_params {
        all.parse_into(&body)?;
    }
    let header_value = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    };
    let header_action = header_value("x-acs-action");
    let header_version = header_value("x-acs-version");
    // v1 signs no header: a header that would pick the action or version must say what the
    // signed parameters say, or it is an unsigned change. (A request signed neither way is
    // refused as unsigned further on.)
    if !acs3 && all.get("Signature").is_some() {
        let differs = |h: Option<&str>, p: Option<&str>| h.is_some() && h != p;
        if differs(header_action, all.get("Action")) || differs(header_version, all.get("Version"))
        {
            return Err(ApiError::SignatureDoesNotMatch);
        }
    }
    let action = header_action
        .or(all.get("Action"))
        .ok_or(ApiError::MissingAction)?
        .to_owned();
    span.record("action", action.as_str());
    let parsed = action.parse::<actions::Action>();
    if let Ok(known) = &parsed {
        *action_label = known.as_str();
    }
    let version = header_version.or(all.get("Version"));
    if version != Some(API_VERSION) {
        return Err(ApiError::InvalidVersion);
    }
    let caller = auth::authenticate(
        &state.keys,
        &auth::SignedRequest {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            headers: &parts.headers,
            query: &query,
            all_params: &all,
            body: &body,
            action_from_header: header_action.is_some(),
            version_from_header: header_version.is_some(),
            body_params,
        },
    )
    .await?;
    let key_id = caller.nonce.access_key_id.clone();
    let result = async {
        // A send records its nonce in the same grouped transaction as its reservation.
        let nonce = if matches!(&parsed, Ok(a) if a.records_nonce_itself()) {
            Some(caller.nonce)
        } else {
            state.writer.submit(accept::Op::Nonce(caller.nonce)).await?;
            None
        };
        use tracing::Instrument;
        actions::dispatch(state, parsed?, &caller.account, &all, request_id, nonce)
            .instrument(span.clone())
            .await
    }
    .await;
    if matches!(result, Err(ApiError::AccessKeyInactive)) {
        // The writer found the key disabled since it was cached.
        state.keys.forget(&key_id);
    }
    result
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let read = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| ApiError::RequestTimeout)?;
    read.map_err(|e| {
        // `to_bytes` reports an over-limit body as a length-limit error somewhere in its sources.
        let mut src: Option<&dyn std::error::Error> = Some(&e);
        while let Some(s) = src {
            if s.is::<http_body_util::LengthLimitError>() {
                return ApiError::BodyTooLarge(limit);
            }
            src = s.source();
        }
        ApiError::InvalidParameter("Body")
    })
}
