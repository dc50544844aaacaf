//! The HTTP face: the routers (RPC, health checks, the operators' pages), the RPC request's reading
//! ([`rpc`], [`params`]) and the wire format's rendering, and the server that runs them
//! ([`server`]).

pub mod params;
mod render;
mod rpc;
pub mod server;

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use msgcontact::{ApiError, domain::RequestId};
use serde_json::{Value, json};

use crate::state::AppState;
use render::render;

/// The API: RPC at `/`, health checks, and the operators' pages unless they have an address of
/// their own. A panic answers 500 in the wire format.
pub fn router(state: Arc<AppState>, with_admin: bool) -> Router {
    let routes = health_routes().fallback(rpc::rpc);
    let routes = if with_admin {
        routes.merge(admin_routes())
    } else {
        routes
    };
    routes
        .with_state(state)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
}

/// The admin address: the operators' pages (metrics, the ops page with all tenants' counts) and
/// health checks.
pub fn admin_router(state: Arc<AppState>) -> Router {
    health_routes()
        .merge(admin_routes())
        .with_state(state)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
}

fn health_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
}

fn admin_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/metrics", get(|| async { msgcontact::metrics::render() }))
        .route("/ops", get(|| async { axum::response::Html(OPS_PAGE) }))
        .route("/ops/data", get(ops_data))
}

/// A handler's panic, answered as the wire format's `InternalError` (the panic's text stays in
/// the log: it could hold anything).
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    metrics::counter!(msgcontact::metrics::API_PANICS).increment(1);
    tracing::error!(panic = %what, "request handler panicked");
    render(RequestId::new(), "msgcontact", Err(ApiError::Internal))
}

/// The live ops page: one self-contained file, no external assets.
const OPS_PAGE: &str = include_str!("ops.html");

async fn ops_data(State(state): State<Arc<AppState>>) -> axum::Json<Value> {
    let samples = state.history.samples();
    let series: Vec<Value> = samples
        .iter()
        .map(|s| {
            let sum = |role: &str| -> u32 {
                s.report
                    .queues
                    .iter()
                    .filter(|q| q.role == role)
                    .filter_map(|q| q.ready)
                    .sum()
            };
            json!({
                "at_ms": s.at_ms,
                "work": sum("work"),
                "retry": sum("retry"),
                "dead": sum("dead"),
                "send_rate": s.report.send_rate_per_second,
                "oldest_age": s.report.oldest_queued_age_seconds,
            })
        })
        .collect();
    axum::Json(json!({ "latest": samples.last(), "series": series }))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let db_ok = state.db.ping().await.is_ok();
    let broker_ok = state.publisher.is_ready();
    let body = json!({ "database": db_ok, "broker": broker_ok });
    let status = if db_ok && broker_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request, routing::get};
    use tower::ServiceExt;

    async fn boom() -> &'static str {
        let secret = "boom with a secret 123456";
        if !secret.is_empty() {
            panic!("{secret}");
        }
        secret
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_in_the_wire_format() {
        let app = axum::Router::new().route("/", get(boom)).layer(
            tower_http::catch_panic::CatchPanicLayer::custom(super::panicked),
        );
        let resp = app
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 500);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["Code"], "InternalError");
        assert!(json["RequestId"].as_str().is_some_and(|r| r.len() == 36));
        assert!(
            !String::from_utf8_lossy(&body).contains("123456"),
            "the panic's text stays out"
        );
    }
}
