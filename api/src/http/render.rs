//! The Alibaba wire format of an answer: the action's fields with its `RequestId`, or the catalog's
//! error body with its status and retry-after headers.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use msgcontact::{ApiError, domain::RequestId};
use serde_json::{Value, json};

/// Renders a success or an error in the Alibaba wire format.
pub(super) fn render(
    request_id: RequestId,
    host: &str,
    result: Result<serde_json::Map<String, Value>, ApiError>,
) -> Response {
    match result {
        Ok(mut body) => {
            body.insert("RequestId".into(), json!(request_id.to_string()));
            (StatusCode::OK, axum::Json(Value::Object(body))).into_response()
        }
        Err(e) => {
            let body = json!({
                "RequestId": request_id.to_string(),
                "HostId": host,
                "Code": e.code(),
                "Message": e.message(),
                "Recommend": "",
            });
            let status =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = (status, axum::Json(body)).into_response();
            if let Some(ms) = e.retry_after_ms() {
                let h = resp.headers_mut();
                h.insert("x-acs-retry-after", HeaderValue::from(ms));
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(ms.div_ceil(1000).max(1)),
                );
            }
            resp
        }
    }
}
