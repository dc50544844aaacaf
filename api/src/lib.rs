//! msgcontact API: Alibaba Cloud RPC over HTTP, authenticated, validated, with confirmed publishing.
//!
//! `Application::build` binds and connects everything; `run_until_stopped` serves until the
//! cancellation token fires, then drains in-flight requests.

pub mod auth;
pub mod cli;
pub mod ops;
pub mod params;
pub mod publisher;
pub mod server;
pub mod writer;

#[cfg(test)]
mod testing;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use msgcontact::{
    ApiError,
    config::{InfraConfig, PolicyConfig},
    domain::RequestId,
};
use sea_orm::{
    DatabaseConnection, DatabaseTransaction, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{params::Params, publisher::Publisher};

/// The only API version served.
pub const API_VERSION: &str = "2022-04-19";

/// Errors of building or running the API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] msgcontact::Error),
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    BrokerLost(#[from] msgcontact::amqp::ReconnectError),
}

/// API-only settings.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiOptions {
    /// Address the API listens on.
    #[arg(long, env = "MSGCONTACT_API_LISTEN", default_value = "127.0.0.1:8080")]
    pub api_listen: String,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "MSGCONTACT_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Longest wait for the broker's publish confirm before answering 503.
    #[arg(
        long,
        env = "MSGCONTACT_PUBLISH_CONFIRM_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub publish_confirm_timeout_ms: u64,
    /// Confirm-mode channels publishes rotate over. One by default: its confirms already
    /// pipeline (each publish waits on its own delivery tag), and the broker confirms a run of
    /// them in one `basic.ack` with `multiple` set, where every extra channel is another channel
    /// process and another stream of acks. At c=32 on PostgreSQL, 4 channels cost the broker
    /// 83-91 µs of CPU per send and 1 channel 71-72 µs, with the publish to confirm 0.1-0.3 ms
    /// shorter (two runs each, alternated).
    #[arg(long, env = "MSGCONTACT_PUBLISH_CHANNELS", default_value_t = 1)]
    pub publish_channels: usize,
    /// Most requests whose writes share one transaction (group commit).
    #[arg(long, env = "MSGCONTACT_WRITE_BATCH_MAX", default_value_t = 128)]
    pub write_batch_max: usize,
    /// Most connections served at once; more are closed on accept.
    #[arg(long, env = "MSGCONTACT_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Address for `/metrics` and `/ops` (they then leave the API address, where every caller
    /// could read all tenants' counts). Unset: both are served on the API address.
    #[arg(long, env = "MSGCONTACT_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
}

/// Longest a request may take from its headers to its answer; past it the answer is 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a request's body may take to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything `msgcontact-api` needs to serve.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    #[command(flatten)]
    pub infra: InfraConfig,
    #[command(flatten)]
    pub policy: PolicyConfig,
    #[command(flatten)]
    pub api: ApiOptions,
}

/// Shared by every request.
pub struct AppState {
    pub db: DatabaseConnection,
    /// Access keys, cached (their status is re-checked by the writer).
    pub keys: auth::KeyStore,
    pub policy: PolicyConfig,
    pub publisher: Publisher,
    /// Group commit of nonces and send reservations.
    pub writer: writer::Writer,
    /// Derives and checks verification codes.
    pub code_secrets: msgcontact::secrets::CodeSecrets,
    /// Seals access key secrets (the CLI's development key).
    pub master: msgcontact::secrets::MasterKey,
    pub max_body_bytes: usize,
    /// Recent queue reports, for the ops page.
    pub history: msgcontact_worker::admin::History,
}

/// Starts a write transaction. On SQLite it takes the write lock up front (`BEGIN IMMEDIATE`), so a
/// transaction that reads before it writes waits for its turn instead of failing with BUSY.
pub async fn write_txn(db: &DatabaseConnection) -> Result<DatabaseTransaction, ApiError> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
    .map_err(auth::db_unavailable)
}

pub struct Application {
    listener: tokio::net::TcpListener,
    admin_listener: Option<tokio::net::TcpListener>,
    limits: server::Limits,
    state: Arc<AppState>,
    amqp_url: String,
    broker_recovery_timeout: Duration,
    topology: msgcontact::job::Topology,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, Error> {
        msgcontact::metrics::handle();
        let db =
            msgcontact::db::connect(&config.infra.database_url, config.infra.database_pool).await?;
        let master = config.infra.secrets.master_key()?;
        let code_secrets = msgcontact::db::code_secrets(&db, &config.infra.secrets).await?;
        let keys = auth::KeyStore::load(db.clone(), master.clone()).await?;
        let writer =
            writer::Writer::start(&config.infra.database_url, config.api.write_batch_max).await?;
        let topology = config.infra.topology();
        let publisher = Publisher::connect(
            &config.infra.amqp_url,
            &topology,
            config.api.publish_channels,
            Duration::from_millis(config.api.publish_confirm_timeout_ms),
        )
        .await?;
        let listener = tokio::net::TcpListener::bind(&config.api.api_listen).await?;
        let admin_listener = match &config.api.admin_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
            None => None,
        };
        Ok(Self {
            listener,
            admin_listener,
            limits: server::Limits {
                max_connections: config.api.max_connections.max(1),
                ..Default::default()
            },
            amqp_url: config.infra.amqp_url.clone(),
            broker_recovery_timeout: config.infra.broker_recovery_timeout(),
            topology,
            state: Arc::new(AppState {
                writer,
                keys,
                db,
                policy: config.policy,
                publisher,
                code_secrets,
                master,
                max_body_bytes: config.api.max_body_bytes,
                history: Default::default(),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The admin address, when `MSGCONTACT_ADMIN_LISTEN` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .as_ref()
            .map(|l| l.local_addr().expect("bound listener has an address"))
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), Error> {
        let state = self.state.clone();
        let purger = msgcontact::time::every(Duration::from_secs(60), shutdown.clone(), {
            let db = state.db.clone();
            move || {
                let db = db.clone();
                async move {
                    if let Err(e) = auth::purge_nonces(&db).await {
                        tracing::warn!(error = %e, "nonce purge failed");
                    }
                }
            }
        });
        let key_refresh = msgcontact::time::every(auth::KEY_REFRESH, shutdown.clone(), {
            let state = state.clone();
            move || {
                let state = state.clone();
                async move {
                    if let Err(e) = state.keys.refresh().await {
                        tracing::warn!(error = %e, "access key refresh failed");
                    }
                }
            }
        });
        // The writer's connection leaves checkpoints to this task (see `db::connect_single`): they
        // run beside its batches instead of inside one of their commits. Past a size, the writer
        // copies the rest between two batches so its next one starts the WAL over; not while a
        // reader keeps a pass from copying everything, which the writer's copy could not undo.
        let sqlite = state.db.get_database_backend() == sea_orm::DbBackend::Sqlite;
        let checkpointer = sqlite.then(|| {
            let (db, writer) = (state.db.clone(), state.writer.clone());
            msgcontact::time::every(Duration::from_millis(100), shutdown.clone(), move || {
                let (db, writer) = (db.clone(), writer.clone());
                async move {
                    match msgcontact::db::checkpoint(&db).await {
                        Ok(Some((frames, copied)))
                            if frames >= msgcontact::db::WAL_RESTART_FRAMES && copied == frames =>
                        {
                            writer.restart_wal_soon();
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
                    }
                }
            })
        });
        let upkeep = msgcontact::metrics::upkeep(shutdown.clone());
        let statistics = msgcontact::db::statistics_upkeep(&state.db, shutdown.clone());
        let poller = tokio::spawn(msgcontact_worker::admin::poll_depths(
            self.amqp_url.clone(),
            state.db.clone(),
            self.topology.clone(),
            state.history.clone(),
            shutdown.clone(),
        ));
        // The publisher's supervisor: a broker that stays unreachable past the recovery deadline
        // stops the process (not ready, exit non-zero) so its own supervisor can restart it.
        let lost = Arc::new(std::sync::Mutex::new(None));
        let supervisor = {
            let (state, stop, lost) = (state.clone(), shutdown.clone(), lost.clone());
            let timeout = self.broker_recovery_timeout;
            tokio::spawn(async move {
                if let Err(e) = state.publisher.supervise(timeout, stop.clone()).await {
                    *lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    stop.cancel();
                }
            })
        };
        let admin = match self.admin_listener {
            Some(listener) => {
                tracing::info!(addr = %listener.local_addr()?, "admin listening");
                Some(tokio::spawn(server::serve(
                    listener,
                    admin_router(state.clone()),
                    self.limits,
                    shutdown.clone(),
                )))
            }
            None => None,
        };
        let app = router(state.clone(), admin.is_none());
        tracing::info!(addr = %self.listener.local_addr()?, "API listening");
        server::serve(self.listener, app, self.limits, shutdown.clone()).await?;
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        purger.abort();
        let _ = key_refresh.await;
        if let Some(checkpointer) = checkpointer {
            let _ = checkpointer.await;
        }
        let _ = poller.await;
        let _ = upkeep.await;
        if let Some(statistics) = statistics {
            let _ = statistics.await;
        }
        let _ = supervisor.await;
        state.publisher.close().await;
        if let Some(e) = lost.lock().unwrap_or_else(|p| p.into_inner()).take() {
            tracing::error!(error = %e, "API stopped: broker lost");
            return Err(e.into());
        }
        tracing::info!("API stopped");
        Ok(())
    }
}

/// The API: RPC at `/`, health checks, and the operators' pages unless they have an address of
/// their own. A panic answers 500 in the wire format.
pub fn router(state: Arc<AppState>, with_admin: bool) -> Router {
    let routes = health_routes().fallback(rpc);
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
    let snapshots = state.history.snapshots();
    let series: Vec<Value> = snapshots
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
    axum::Json(json!({ "latest": snapshots.last(), "series": series }))
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

/// Renders a success or an error in the Alibaba wire format.
fn render(
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

async fn rpc(State(state): State<Arc<AppState>>, req: Request) -> Response {
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
    // run in a task of their own (see `ops::send`), so dropping never strands one.
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
    if let Some(known) = ops::ACTIONS.iter().find(|a| **a == action) {
        *action_label = known;
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
        let nonce = if action == ops::SEND_PHONE {
            Some(caller.nonce)
        } else {
            state.writer.submit(writer::Op::Nonce(caller.nonce)).await?;
            None
        };
        use tracing::Instrument;
        ops::dispatch(state, &action, &caller.account, &all, request_id, nonce)
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
