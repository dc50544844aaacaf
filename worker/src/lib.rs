//! msgcontact worker: consumes send jobs and delivers verification SMS.
//!
//! Per delivery: decode → one read of the request with its supersede test, contact and codes
//! (grouped with other jobs' reads) →
//! dedupe by RequestId and status → rate limit → one transaction claiming it (Sending) together
//! with its live verification (found or created) → provider → record the outcome → ack. The ack
//! comes only after the outcome is committed, so a crash anywhere means a redelivery, never a lost
//! request.

pub mod admin;
mod batch;
pub mod census;
pub mod limits;
pub mod provider;
mod snapshot;

use std::{net::SocketAddr, num::NonZeroU32, path::PathBuf, sync::Arc, time::Duration};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use futures::StreamExt;
use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions,
    },
    types::{AMQPValue, FieldTable, LongString},
};
use msgcontact::{
    config::{InfraConfig, PolicyConfig},
    domain::mask_phone,
    entities::{send_request, verification},
    job::{self, SendJob, Topology},
    status::{SendStatus, verification as vstatus},
    time::now_ms,
};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, SqlErr, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    provider::{FailureClass, Provider, ProviderFailure, Sms},
    snapshot::{CodeRef, Snapshot},
};

/// Errors of building or running the worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] msgcontact::Error),
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    BrokerLost(#[from] msgcontact::amqp::ReconnectError),
}

/// Worker-only settings.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerOptions {
    /// Address of the worker's /healthz, /readyz (and metrics).
    #[arg(
        long,
        env = "MSGCONTACT_WORKER_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub worker_listen: String,
    /// SMS provider: `log` (development), `webhook`.
    #[arg(long, env = "MSGCONTACT_SMS_PROVIDER", default_value = "log")]
    pub sms_provider: String,
    /// Where the `log` provider appends each SMS as a JSON line.
    #[arg(
        long,
        env = "MSGCONTACT_LOG_PROVIDER_FILE",
        default_value = "data/sms.jsonl"
    )]
    pub log_provider_file: PathBuf,
    /// URL the `webhook` provider posts to.
    #[arg(long, env = "MSGCONTACT_WEBHOOK_URL", hide_env_values = true)]
    pub webhook_url: Option<String>,
    /// Key of the webhook's Standard Webhooks signature (`whsec_<base64>`, or any other string
    /// taken as its bytes).
    #[arg(long, env = "MSGCONTACT_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Allow `http://` webhook URLs to other hosts than this one (the code would cross the
    /// network in clear).
    #[arg(long, env = "MSGCONTACT_WEBHOOK_ALLOW_HTTP", default_value_t = false)]
    pub webhook_allow_http: bool,
    /// Alibaba Cloud SMS endpoint, `host[:port]`.
    #[arg(
        long,
        env = "MSGCONTACT_ALIYUN_SMS_ENDPOINT",
        default_value = "dysmsapi.aliyuncs.com"
    )]
    pub aliyun_sms_endpoint: String,
    /// `https` or `http` (tests point the provider at a local fake).
    #[arg(long, env = "MSGCONTACT_ALIYUN_SMS_PROTOCOL", default_value = "https")]
    pub aliyun_sms_protocol: String,
    #[arg(long, env = "MSGCONTACT_ALIYUN_ACCESS_KEY_ID")]
    pub aliyun_access_key_id: Option<String>,
    #[arg(
        long,
        env = "MSGCONTACT_ALIYUN_ACCESS_KEY_SECRET",
        hide_env_values = true
    )]
    pub aliyun_access_key_secret: Option<String>,
    /// SMS signature name registered with Alibaba Cloud.
    #[arg(long, env = "MSGCONTACT_ALIYUN_SMS_SIGN_NAME")]
    pub aliyun_sms_sign_name: Option<String>,
    /// SMS template code; the template takes one `${code}` parameter.
    #[arg(long, env = "MSGCONTACT_ALIYUN_SMS_TEMPLATE_CODE")]
    pub aliyun_sms_template_code: Option<String>,
    /// Provider requests per second from this worker process. Ignored when the provider's total
    /// rate is given.
    #[arg(long, env = "MSGCONTACT_PROVIDER_RATE", default_value_t = 50)]
    pub provider_rate: u32,
    /// The provider's total contracted rate (requests per second) shared by all workers; each
    /// worker takes its share, `total / MSGCONTACT_WORKER_COUNT`.
    #[arg(long, env = "MSGCONTACT_PROVIDER_TOTAL_RATE")]
    pub provider_total_rate: Option<u32>,
    /// Number of worker processes sharing the provider's total rate.
    #[arg(long, env = "MSGCONTACT_WORKER_COUNT", default_value_t = 1)]
    pub worker_count: u32,
    /// SMS one phone number may receive at once (the per-phone burst guard).
    #[arg(long, env = "MSGCONTACT_PHONE_BURST", default_value_t = 3)]
    pub phone_burst: u32,
    /// Refill of the per-phone guard, messages per minute.
    #[arg(long, env = "MSGCONTACT_PHONE_PER_MINUTE", default_value_t = 6)]
    pub phone_per_minute: u32,
    /// Unacknowledged deliveries this worker holds at once. Enough in flight that the grouped
    /// reads and writes carry several jobs each (measured on PostgreSQL, 2 cores: 16 → 64 took a
    /// drain from ~0.4× to ~0.55× of a bare consume-insert-post pipeline), still small against one
    /// worker's share of a queue, and at a 20 SMS/s provider at most ~3 s of waiting.
    #[arg(long, env = "MSGCONTACT_PREFETCH", default_value_t = 64)]
    pub prefetch: u16,
    /// Provider request timeout in milliseconds.
    #[arg(long, env = "MSGCONTACT_PROVIDER_TIMEOUT_MS", default_value_t = 10_000)]
    pub provider_timeout_ms: u64,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    #[command(flatten)]
    pub infra: InfraConfig,
    #[command(flatten)]
    pub policy: PolicyConfig,
    #[command(flatten)]
    pub worker: WorkerOptions,
}

struct Shared {
    db: DatabaseConnection,
    policy: PolicyConfig,
    code_secrets: msgcontact::secrets::CodeSecrets,
    provider: Provider,
    limits: limits::Limits,
    reader: snapshot::Reader,
    claims: batch::ClaimWriter,
    sent: batch::SentWriter,
    topology: Topology,
    /// The current session's confirm-mode channel for dead letters and retries (none while
    /// reconnecting).
    publish_channel: std::sync::RwLock<Option<Channel>>,
    in_flight: InFlight,
    shutdown: CancellationToken,
}

impl Shared {
    fn publish_channel(&self) -> Option<Channel> {
        self.publish_channel
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_publish_channel(&self, ch: Option<Channel>) {
        *self
            .publish_channel
            .write()
            .unwrap_or_else(|p| p.into_inner()) = ch;
    }
}

/// Requests this process is working on. After a broker loss the broker redelivers the lost
/// session's deliveries while their jobs still run here (waiting on the provider, say); such a
/// copy waits for the running job instead of taking the request, found `Sending`, for an
/// interrupted attempt and sending a second SMS.
#[derive(Default)]
struct InFlight(std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl InFlight {
    async fn enter(&self, request_id: &str) -> InFlightGuard<'_> {
        let lock = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(request_id.to_owned())
            .or_default()
            .clone();
        let held = lock.clone().lock_owned().await;
        InFlightGuard {
            map: self,
            request_id: request_id.to_owned(),
            lock,
            held: Some(held),
        }
    }
}

struct InFlightGuard<'a> {
    map: &'a InFlight,
    request_id: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        drop(self.held.take());
        let mut map = self.map.0.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map's reference and ours left: nobody is waiting, the entry goes.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.request_id);
        }
    }
}

/// One broker connection with the worker's two channels.
struct Session {
    conn: lapin::Connection,
    consume: Channel,
    publish: Channel,
}

impl Session {
    async fn open(url: &str, topology: &Topology, prefetch: u16) -> Result<Self, lapin::Error> {
        let conn = msgcontact::amqp::connect(url, "msgcontact-worker").await?;
        let consume = conn.create_channel().await?;
        // Declared on every (re)connect, so a broker that lost its definitions gets them back.
        topology.declare(&consume).await?;
        // A small prefetch bounds in-flight work and keeps a crashed worker's redeliveries few.
        consume
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            conn,
            consume,
            publish,
        })
    }
}

pub struct Application {
    shared: Arc<Shared>,
    /// The first session, opened by `build` so a broker that is down at startup fails it.
    session: Session,
    listener: tokio::net::TcpListener,
    prefetch: u16,
    amqp_url: String,
    broker_recovery_timeout: Duration,
}

fn http_client(timeout_ms: u64) -> Result<reqwest::Client, Error> {
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

impl Application {
    pub async fn build(config: Config) -> Result<Self, Error> {
        let provider = match config.worker.sms_provider.as_str() {
            "log" => Provider::Log {
                file: config.worker.log_provider_file.clone(),
                lock: Default::default(),
            },
            "webhook" => Provider::Webhook {
                client: http_client(config.worker.provider_timeout_ms)?,
                url: webhook_url(
                    config.worker.webhook_url.as_deref(),
                    config.worker.webhook_allow_http,
                )?,
                key: config
                    .worker
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
                let w = &config.worker;
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
                    settings: provider::AliyunSettings {
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
        };
        msgcontact::metrics::handle();
        let w = &config.worker;
        let per_worker = match w.provider_total_rate {
            Some(total) => total / Ord::max(w.worker_count, 1),
            None => w.provider_rate,
        };
        let rate = NonZeroU32::new(per_worker).ok_or_else(|| {
            Error::Config("the provider rate per worker must be at least 1 per second".into())
        })?;
        let nz = |v: u32, name: &str| {
            NonZeroU32::new(v).ok_or_else(|| Error::Config(format!("{name} must be at least 1")))
        };
        let limits = limits::Limits::new(
            rate,
            nz(w.phone_burst, "MSGCONTACT_PHONE_BURST")?,
            nz(w.phone_per_minute, "MSGCONTACT_PHONE_PER_MINUTE")?,
        );
        let db =
            msgcontact::db::connect(&config.infra.database_url, config.infra.database_pool).await?;
        let code_secrets = msgcontact::db::code_secrets(&db, &config.infra.secrets).await?;
        let topology = config.infra.topology();
        let session =
            Session::open(&config.infra.amqp_url, &topology, config.worker.prefetch).await?;
        let listener = tokio::net::TcpListener::bind(&config.worker.worker_listen).await?;
        let reader = snapshot::Reader::spawn(db.clone());
        let claims = batch::ClaimWriter::spawn(db.clone());
        let sent = batch::SentWriter::spawn(db.clone());
        Ok(Self {
            shared: Arc::new(Shared {
                db,
                policy: config.policy,
                code_secrets,
                provider,
                limits,
                reader,
                claims,
                sent,
                topology,
                publish_channel: std::sync::RwLock::new(None),
                in_flight: InFlight::default(),
                shutdown: CancellationToken::new(),
            }),
            session,
            listener,
            prefetch: config.worker.prefetch,
            amqp_url: config.infra.amqp_url.clone(),
            broker_recovery_timeout: config.infra.broker_recovery_timeout(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Consumes until `shutdown` fires, then stops consuming, lets in-flight jobs finish, and closes.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), Error> {
        let broker_ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let health = HealthState {
            db: self.shared.db.clone(),
            broker: broker_ready.clone(),
        };
        let app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(|| async { msgcontact::metrics::render() }))
            .with_state(health);
        let upkeep = msgcontact::metrics::upkeep(shutdown.clone());
        let statistics = msgcontact::db::statistics_upkeep(&self.shared.db, shutdown.clone());
        let poller = tokio::spawn(admin::poll_depths(
            self.amqp_url.clone(),
            self.shared.db.clone(),
            self.shared.topology.clone(),
            admin::History::default(),
            shutdown.clone(),
        ));
        let housekeeping = {
            let shared = self.shared.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(30));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => shared.limits.housekeeping(),
                    }
                }
            })
        };
        let http_stop = shutdown.clone();
        let http = tokio::spawn(
            axum::serve(self.listener, app)
                .with_graceful_shutdown(http_stop.cancelled_owned())
                .into_future(),
        );

        let tracker = TaskTracker::new();
        let queue = self.shared.topology.work_queue();
        let mut next_session = Some(self.session);
        let mut lost = None;
        // The supervisor: one pass per broker session. A session ends when its connection or
        // consumer is lost; a new one is built (and the topology re-declared) until the recovery
        // deadline, after which the worker reports not ready and stops with an error.
        'sessions: loop {
            let session = match next_session.take() {
                Some(s) => s,
                None => {
                    let deadline = tokio::time::Instant::now() + self.broker_recovery_timeout;
                    let topology = self.shared.topology.clone();
                    let (url, prefetch) = (self.amqp_url.clone(), self.prefetch);
                    match msgcontact::amqp::reconnect("worker", deadline, &shutdown, || {
                        Session::open(&url, &topology, prefetch)
                    })
                    .await
                    {
                        Ok(s) => s,
                        Err(msgcontact::amqp::ReconnectError::Stopped) => break 'sessions,
                        Err(e) => {
                            lost = Some(e);
                            break 'sessions;
                        }
                    }
                }
            };
            let consumer = session
                .consume
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await;
            let mut consumer = match consumer {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "could not start consuming; reconnecting");
                    let _ = session.conn.close(200, "reconnecting".into()).await;
                    continue 'sessions;
                }
            };
            self.shared
                .set_publish_channel(Some(session.publish.clone()));
            broker_ready.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(%queue, prefetch = self.prefetch, provider = self.shared.provider.name(), "worker consuming");
            let mut watchdog = tokio::time::interval(Duration::from_secs(1));
            let stopping = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break true,
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => {
                            let shared = self.shared.clone();
                            tracker.spawn(async move { handle_delivery(&shared, delivery).await });
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "consumer failed; reconnecting");
                            break false;
                        }
                        None => {
                            tracing::warn!("consumer stream ended; reconnecting");
                            break false;
                        }
                    },
                    // A connection that died without failing the consumer stream still ends
                    // the session.
                    _ = watchdog.tick() => {
                        let ok = session.conn.status().connected()
                            && session.consume.status().connected()
                            && session.publish.status().connected();
                        if !ok {
                            tracing::warn!("broker session lost; reconnecting");
                            break false;
                        }
                    }
                }
            };
            broker_ready.store(false, std::sync::atomic::Ordering::Relaxed);
            if stopping {
                tracing::info!("stopping: finishing in-flight jobs");
                // Jobs waiting out a database outage give their delivery back instead of
                // holding it.
                self.shared.shutdown.cancel();
                let _ = session
                    .consume
                    .basic_cancel(consumer.tag(), Default::default())
                    .await;
                tracker.close();
                if tokio::time::timeout(Duration::from_secs(30), tracker.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        "in-flight jobs did not finish in time; the broker will redeliver them"
                    );
                }
                self.shared.set_publish_channel(None);
                let _ = session.conn.close(200, "shutdown".into()).await;
                break 'sessions;
            }
            // The broker requeues this session's unacknowledged deliveries; jobs still running
            // on it finish their database work, and their acks fail harmlessly.
            self.shared.set_publish_channel(None);
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                session.conn.close(200, "reconnecting".into()),
            )
            .await;
        }
        if lost.is_some() {
            shutdown.cancel();
        }
        // Jobs of a session lost while stopping finish (or give their delivery back) too.
        self.shared.shutdown.cancel();
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(30), tracker.wait()).await;
        let _ = http.await;
        let _ = poller.await;
        let _ = upkeep.await;
        if let Some(statistics) = statistics {
            let _ = statistics.await;
        }
        let _ = housekeeping.await;
        if let Some(e) = lost {
            tracing::error!(error = %e, "worker stopped: broker lost");
            return Err(e.into());
        }
        tracing::info!("worker stopped");
        Ok(())
    }
}

#[derive(Clone)]
struct HealthState {
    db: DatabaseConnection,
    /// A session is consuming.
    broker: Arc<std::sync::atomic::AtomicBool>,
}

async fn readyz(State(s): State<HealthState>) -> impl IntoResponse {
    let db_ok = s.db.ping().await.is_ok();
    let broker_ok = s.broker.load(std::sync::atomic::Ordering::Relaxed);
    let status = if db_ok && broker_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({ "database": db_ok, "broker": broker_ok })),
    )
}

/// What to do with a delivery once processing is over.
enum Disposition {
    Ack,
    /// Give it back to the queue (shutdown during a database outage); the delivery limit bounds this.
    Requeue,
    DeadLetter(String),
    /// Park the job in a delay queue, then deliver it again as attempt `attempt`.
    Retry {
        attempt: u32,
        level: usize,
        delay: Duration,
    },
}

/// Longest a delivery is held while the database is unreachable, well under the broker's consumer
/// timeout (30 min by default); after that it goes back to the queue.
const MAX_DB_WAIT: Duration = Duration::from_secs(600);

async fn handle_delivery(shared: &Shared, delivery: Delivery) {
    let request_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default();
    let traceparent =
        job::header_str(&delivery.properties, job::HEADER_TRACEPARENT).unwrap_or_default();
    let attempt = Ord::max(
        job::header_u32(&delivery.properties, job::HEADER_ATTEMPT).unwrap_or(1),
        1,
    );
    // The trace id of the API request that accepted this job (W3C `traceparent`).
    let trace_id = traceparent.split('-').nth(1).unwrap_or_default().to_owned();
    let span = tracing::info_span!("job", request_id = %request_id, trace_id = %trace_id, attempt);
    let disposition = {
        async {
            let job = match SendJob::decode(&delivery.data) {
                Err(reason) => return Disposition::DeadLetter(reason),
                Ok(job) => job,
            };
            let ctx = JobCtx {
                attempt,
                redelivered: delivery.redelivered,
                claimed: Default::default(),
            };
            // A copy of a job still running here waits for it rather than racing it.
            let _in_flight = shared.in_flight.enter(&job.request_id).await;
            // The database is the source of truth: while it is unreachable, hold the delivery
            // (no ack, no requeue loop) and retry with backoff.
            let started = tokio::time::Instant::now();
            let mut backoff = Duration::from_millis(200);
            loop {
                match process(shared, &job, &ctx).await {
                    Ok(d) => return d,
                    Err(e) => {
                        tracing::warn!(error = %e, ?backoff, "database error while processing; will retry");
                        if started.elapsed() > MAX_DB_WAIT {
                            return Disposition::Requeue;
                        }
                        tokio::select! {
                            _ = shared.shutdown.cancelled() => return Disposition::Requeue,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        }
        .instrument(span.clone())
        .await
    };
    // Settling awaits too: the span is attached to the future, never held entered across an
    // await (that would leak it into whatever else runs on this thread).
    async move {
        let result = match disposition {
            Disposition::Ack => delivery.ack(BasicAckOptions::default()).await,
            Disposition::Requeue => {
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            }
            Disposition::DeadLetter(reason) => {
                tracing::warn!(%reason, "dead-lettering message");
                metrics::counter!(msgcontact::metrics::JOBS, "outcome" => "DeadLettered")
                    .increment(1);
                match republish(
                    shared,
                    &delivery,
                    &shared.topology.dead_letter_queue(),
                    |h| {
                        h.insert(
                            job::HEADER_DEAD_REASON.into(),
                            AMQPValue::LongString(LongString::from(reason.as_str())),
                        );
                    },
                    None,
                )
                .await
                {
                    Ok(()) => delivery.ack(BasicAckOptions::default()).await,
                    // Could not park it with a reason: let the broker dead-letter it (x-death says why).
                    Err(_) => {
                        delivery
                            .nack(BasicNackOptions {
                                requeue: false,
                                ..Default::default()
                            })
                            .await
                    }
                }
            }
            Disposition::Retry {
                attempt,
                level,
                delay,
            } => {
                let queue = shared.topology.retry_queue(level);
                tracing::info!(next_attempt = attempt, ?delay, %queue, "scheduling a retry");
                // After a provider failure the request is recorded Retrying, so its next attempt
                // exists only once this publish is confirmed. Giving the delivery back instead
                // would lose it: a redelivered copy of this attempt finds the request Retrying and
                // is dropped as a duplicate. So keep trying, on the fresh session the supervisor
                // builds after a broker loss.
                let mut backoff = Duration::from_millis(200);
                loop {
                    let sent = republish(
                        shared,
                        &delivery,
                        &queue,
                        |h| {
                            h.insert(job::HEADER_ATTEMPT.into(), AMQPValue::LongUInt(attempt));
                        },
                        Some(delay),
                    )
                    .await;
                    match sent {
                        Ok(()) => break delivery.ack(BasicAckOptions::default()).await,
                        Err(e) if shared.shutdown.is_cancelled() => {
                            tracing::error!(error = %e, "stopping before the retry could be scheduled; requeueing");
                            break delivery
                                .nack(BasicNackOptions {
                                    requeue: true,
                                    ..Default::default()
                                })
                                .await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, ?backoff, "could not schedule the retry yet; will try again");
                            tokio::select! {
                                _ = shared.shutdown.cancelled() => {}
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not settle delivery; the broker will redeliver it");
        }
    }
    .instrument(span)
    .await;
}

/// Publishes a copy of a delivery (confirmed) to another queue, with edited headers and an
/// optional per-message expiration.
async fn republish(
    shared: &Shared,
    delivery: &Delivery,
    queue: &str,
    edit: impl FnOnce(&mut FieldTable),
    expiration: Option<Duration>,
) -> Result<(), lapin::Error> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    edit(&mut headers);
    let mut props: BasicProperties = delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    if let Some(e) = expiration {
        props = props.with_expiration(e.as_millis().to_string().as_str().into());
    }
    let Some(channel) = shared.publish_channel() else {
        return Err(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
            lapin::ChannelState::Closed,
            "no broker session (reconnecting)",
        )));
    };
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &delivery.data,
            props,
        )
        .await?
        .await?;
    if confirm.is_ack() && confirm.take_message().is_none() {
        Ok(())
    } else {
        Err(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
            lapin::ChannelState::Error,
            "republish refused by the broker",
        )))
    }
}

/// What the delivery says about the attempt it carries.
struct JobCtx {
    /// The attempt number this message was published for (1 = first).
    attempt: u32,
    /// The broker delivered it before (the previous holder died or gave it back).
    redelivered: bool,
    /// This delivery already claimed the request (a database error interrupted the job before
    /// the provider was called, and the job is being run again).
    claimed: std::sync::atomic::AtomicBool,
}

pub(crate) const LIVE_STATES: [&str; 3] = ["Queued", "Sending", "Retrying"];

/// Writes a request's outcome, only if it is still live (an outcome is recorded once).
struct Outcome<'a> {
    status: SendStatus,
    failure: Option<(&'a str, &'a str)>,
    provider_message_id: Option<&'a str>,
}

async fn set_outcome(shared: &Shared, request_id: &str, o: Outcome<'_>) -> Result<u64, DbErr> {
    let status = o.status;
    let code = o.failure.map(|f| f.0.to_owned());
    let n = write_outcome(&shared.db, request_id, o).await?;
    if n > 0 {
        metrics::counter!(msgcontact::metrics::JOBS, "outcome" => status.as_str()).increment(1);
        if let (SendStatus::Failed, Some(code)) = (status, code) {
            metrics::counter!("msgcontact_jobs_failed_total", "code" => code).increment(1);
        }
    }
    Ok(n)
}

async fn write_outcome(
    db: &DatabaseConnection,
    request_id: &str,
    o: Outcome<'_>,
) -> Result<u64, DbErr> {
    let now = now_ms();
    let mut q = send_request::Entity::update_many()
        .col_expr(send_request::Column::Status, Expr::value(o.status.as_str()))
        .col_expr(send_request::Column::UpdatedMs, Expr::value(now))
        .filter(send_request::Column::RequestId.eq(request_id))
        .filter(send_request::Column::Status.is_in(LIVE_STATES));
    if let Some((code, message)) = o.failure {
        q = q
            .col_expr(send_request::Column::FailureCode, Expr::value(code))
            .col_expr(send_request::Column::FailureMessage, Expr::value(message));
    }
    if let Some(id) = o.provider_message_id {
        q = q
            .col_expr(send_request::Column::ProviderMessageId, Expr::value(id))
            .col_expr(send_request::Column::SentMs, Expr::value(now));
    }
    Ok(q.exec(db).await?.rows_affected)
}

fn failed<'a>(code: &'a str, message: &'a str) -> Outcome<'a> {
    Outcome {
        status: SendStatus::Failed,
        failure: Some((code, message)),
        provider_message_id: None,
    }
}

/// Which code a claimed request is to deliver.
enum CodePlan {
    /// Nothing to deliver: the target changed, or the retry's own code is no longer live.
    Nothing,
    /// The request's own code (a retry) or the target's live one.
    Use(CodeRef),
    /// A fresh code, retiring the target's expired or locked one first.
    Fresh { retire: Option<CodeRef> },
}

impl CodePlan {
    fn for_snapshot(s: &Snapshot, now: i64) -> Self {
        if !s.target_ok() {
            return Self::Nothing;
        }
        // A retry sends the code of its first attempt, never a new one.
        if s.req.verification_id.is_some() {
            return match &s.own {
                Some(c) if c.is_live(now) => Self::Use(c.clone()),
                _ => Self::Nothing,
            };
        }
        match &s.live {
            Some(c) if c.is_live(now) => Self::Use(c.clone()),
            other => Self::Fresh {
                retire: other.clone(),
            },
        }
    }
}

/// What the claim's transaction settled.
enum Claim {
    /// This delivery holds the request (Sending), with the code it delivers, if any.
    Held {
        req: Box<send_request::Model>,
        code: Option<CodeRef>,
    },
    /// This delivery must not send.
    Done(Disposition),
    /// Another worker created the target's live verification at the same moment: read again.
    Raced,
}

/// Claims the request for this delivery and settles its code in one transaction: a fresh
/// verification exists only if the claim that uses it committed.
async fn claim(
    shared: &Shared,
    snap: &Snapshot,
    ctx: &JobCtx,
    plan: CodePlan,
) -> Result<Claim, DbErr> {
    let req = &snap.req;
    // The common case (a queued or retrying request's next attempt, no expired code to retire)
    // goes through the group commit with its concurrent jobs; the rest, rare, one by one here.
    let queued = matches!(
        SendStatus::parse(&req.status),
        Some(SendStatus::Queued | SendStatus::Retrying)
    );
    if queued && !matches!(plan, CodePlan::Fresh { retire: Some(_) }) {
        let code = match plan {
            CodePlan::Nothing => batch::PlannedCode::Nothing,
            CodePlan::Use(c) => batch::PlannedCode::Existing(c),
            CodePlan::Fresh { .. } => {
                let (code, row) = fresh_row(shared, req);
                batch::PlannedCode::Fresh {
                    code,
                    row: Box::new(row),
                }
            }
        };
        let item = batch::ClaimItem {
            request_id: req.request_id.clone(),
            attempt: ctx.attempt as i32,
            code,
        };
        return Ok(match shared.claims.claim(item).await? {
            batch::Claimed::Held { req, code } => {
                ctx.claimed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Claim::Held { req, code }
            }
            batch::Claimed::NotClaimable => {
                tracing::info!(status = %req.status, attempts = req.attempts, "not claimable by this delivery (duplicate or finished); acknowledging");
                Claim::Done(Disposition::Ack)
            }
            batch::Claimed::Raced => Claim::Raced,
        });
    }
    let now = now_ms();
    let update = send_request::Entity::update_many()
        .col_expr(send_request::Column::UpdatedMs, Expr::value(now))
        .filter(send_request::Column::RequestId.eq(req.request_id.as_str()));
    let claiming = batch::claiming(update.clone());
    let update = match SendStatus::parse(&req.status) {
        // The normal case: each published attempt claims once; copies of it find attempts moved on.
        Some(SendStatus::Queued | SendStatus::Retrying) => claiming
            .filter(send_request::Column::Status.is_in(["Queued", "Retrying"]))
            .filter(send_request::Column::Attempts.lt(ctx.attempt as i32)),
        // Our own claim from before a database error interrupted the job: the provider was not
        // called yet; only the code may still need settling.
        Some(SendStatus::Sending) if ctx.claimed.load(std::sync::atomic::Ordering::Relaxed) => {
            update.filter(send_request::Column::Status.eq("Sending"))
        }
        // The previous holder died mid-attempt: the SMS may or may not have gone out. One more
        // attempt is allowed for such an ambiguous outcome; after that the request fails.
        Some(SendStatus::Sending) if ctx.redelivered => {
            if req.ambiguous_attempts >= 1 {
                set_outcome(
                    shared,
                    &req.request_id,
                    failed(
                        "AmbiguousDelivery",
                        "Delivery was interrupted twice; the SMS may have been sent.",
                    ),
                )
                .await?;
                return Ok(Claim::Done(Disposition::Ack));
            }
            claiming
                .col_expr(
                    send_request::Column::AmbiguousAttempts,
                    Expr::col(send_request::Column::AmbiguousAttempts).add(1),
                )
                .filter(send_request::Column::Status.eq("Sending"))
                .filter(send_request::Column::Attempts.eq(req.attempts))
                .filter(send_request::Column::AmbiguousAttempts.eq(0))
        }
        _ => {
            tracing::info!(status = %req.status, attempts = req.attempts, "not claimable by this delivery (duplicate or finished); acknowledging");
            return Ok(Claim::Done(Disposition::Ack));
        }
    };
    let txn = shared.db.begin().await?;
    let (code, update) = match plan {
        CodePlan::Nothing => (None, update),
        CodePlan::Use(c) => (Some(c), update),
        CodePlan::Fresh { retire } => {
            let Some(c) = fresh_code(&txn, shared, req, retire).await? else {
                txn.rollback().await?;
                return Ok(Claim::Raced);
            };
            let update = update.col_expr(
                send_request::Column::VerificationId,
                Expr::value(c.id.as_str()),
            );
            (Some(c), update)
        }
    };
    let Some(claimed) = update.exec_with_returning(&txn).await?.pop() else {
        txn.rollback().await?;
        tracing::info!(status = %req.status, attempts = req.attempts, "not claimable by this delivery (duplicate or finished); acknowledging");
        return Ok(Claim::Done(Disposition::Ack));
    };
    txn.commit().await?;
    ctx.claimed
        .store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(Claim::Held {
        req: Box::new(claimed),
        code,
    })
}

/// Ends a queued request that waited longer than a code lives, without an SMS.
async fn expired(shared: &Shared, request_id: &str) -> Result<Disposition, DbErr> {
    set_outcome(
        shared,
        request_id,
        failed(
            "CodeExpired",
            "The request waited in the queue longer than a code lives.",
        ),
    )
    .await?;
    Ok(Disposition::Ack)
}

/// Rate-limit waits longer than this re-read the request: its rows may have moved meanwhile.
const STALE_AFTER_WAIT: Duration = Duration::from_millis(50);

async fn process(shared: &Shared, job: &SendJob, ctx: &JobCtx) -> Result<Disposition, DbErr> {
    let mut gated = false;
    for _ in 0..4 {
        let Some(snap) = shared.reader.load(&job.request_id).await? else {
            return Ok(Disposition::DeadLetter(format!(
                "unknown request {}",
                job.request_id
            )));
        };
        let req = &snap.req;
        let status = SendStatus::parse(&req.status);
        if status.is_none_or(SendStatus::is_terminal) {
            tracing::info!(status = %req.status, "delivery of a finished request; acknowledging");
            return Ok(Disposition::Ack);
        }
        // A newer accepted request for the same contact and number will deliver the same code.
        if matches!(status, Some(SendStatus::Queued | SendStatus::Retrying)) && snap.superseded {
            set_outcome(
                shared,
                &req.request_id,
                Outcome {
                    status: SendStatus::Superseded,
                    failure: None,
                    provider_message_id: None,
                },
            )
            .await?;
            tracing::info!("superseded by a newer request");
            return Ok(Disposition::Ack);
        }
        // A verification SMS is only worth sending while the code the user waits for would
        // still be valid; a request that waited longer than that (an overload backlog) ends
        // without an SMS.
        let worth_until = matches!(status, Some(SendStatus::Queued))
            .then(|| req.accepted_ms + shared.policy.code_ttl().as_millis() as i64);
        if worth_until.is_some_and(|ms| ms <= now_ms()) {
            return expired(shared, &req.request_id).await;
        }
        // Rate limits before the claim: a deferred job keeps its attempt number and state. Only a
        // redelivered in-flight attempt (ambiguous) must not be republished, so it waits in place.
        if !gated {
            gated = true;
            let may_defer = matches!(status, Some(SendStatus::Queued | SendStatus::Retrying));
            let waited = std::time::Instant::now();
            // Its turn is only worth taking while the request is still worth an SMS.
            let deadline = worth_until.map(|ms| {
                std::time::Instant::now()
                    + Duration::from_millis(u64::try_from(ms - now_ms()).unwrap_or(0))
            });
            let gate = shared.limits.acquire(&req.phone, may_defer, deadline).await;
            let waited = waited.elapsed();
            metrics::histogram!(msgcontact::metrics::RATE_LIMIT_WAIT).record(waited.as_secs_f64());
            if gate == limits::Gate::Late {
                return expired(shared, &req.request_id).await;
            }
            if let limits::Gate::Defer(wait) = gate {
                let delays = &shared.topology.retry_delays;
                let level = (0..delays.len())
                    .find(|l| delays[*l] >= wait)
                    .unwrap_or(delays.len() - 1);
                metrics::counter!("msgcontact_rate_limit_deferrals_total").increment(1);
                tracing::debug!(?wait, level, "rate limited: parking the job");
                return Ok(Disposition::Retry {
                    attempt: ctx.attempt,
                    level,
                    delay: wait.min(delays[level]),
                });
            }
            if waited > STALE_AFTER_WAIT {
                continue;
            }
        }
        let plan = CodePlan::for_snapshot(&snap, now_ms());
        let (req, code) = match claim(shared, &snap, ctx, plan).await? {
            Claim::Held { req, code } => (req, code),
            Claim::Done(d) => return Ok(d),
            Claim::Raced => continue,
        };
        if !snap.target_ok() {
            let (code, msg) = match snap.contact {
                None => (
                    "ContactDeleted",
                    "The contact was deleted before the SMS was sent.",
                ),
                Some(_) => (
                    "TargetChanged",
                    "The number is no longer pending verification.",
                ),
            };
            set_outcome(shared, &req.request_id, failed(code, msg)).await?;
            return Ok(Disposition::Ack);
        }
        // A retry whose first code is no longer live has nothing valid left to deliver.
        let Some(code) = code else {
            set_outcome(
                shared,
                &req.request_id,
                failed(
                    "CodeExpired",
                    "The code expired before it could be delivered.",
                ),
            )
            .await?;
            return Ok(Disposition::Ack);
        };
        return deliver(shared, &req, &code).await;
    }
    Err(DbErr::Custom(
        "could not settle the live verification".into(),
    ))
}

/// Calls the provider for a claimed request and records what it answered.
async fn deliver(
    shared: &Shared,
    req: &send_request::Model,
    v: &CodeRef,
) -> Result<Disposition, DbErr> {
    let code = shared.code_secrets.derive(&v.id);
    let ttl_min = shared.policy.code_ttl_secs.div_ceil(60);
    let sms = Sms {
        request_id: req.request_id.clone(),
        phone_number: req.phone.clone(),
        message: format!("Your verification code is {code}. It is valid for {ttl_min} minutes."),
        code,
    };
    let started = std::time::Instant::now();
    let outcome = shared.provider.send(&sms).await;
    let elapsed = started.elapsed();
    let class = match &outcome {
        Ok(_) => "ok",
        Err(f) => f.class.as_str(),
    };
    metrics::histogram!(msgcontact::metrics::PROVIDER_DURATION, "provider" => shared.provider.name(), "class" => class)
        .record(elapsed.as_secs_f64());
    // The provider has been called: from here on the outcome must be recorded, not the job
    // re-run (a re-run would find the request Sending and drop it). While the database is
    // unreachable the recording is retried with backoff, holding the delivery; if that takes too
    // long (or we are stopping) the delivery goes back, and its redelivery is treated as the
    // ambiguous attempt it then is.
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        match record(shared, req, v.expires_ms, outcome.clone(), elapsed).await {
            Ok(d) => return Ok(d),
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "could not record the provider's outcome; will retry");
                if started.elapsed() > MAX_DB_WAIT {
                    return Ok(Disposition::Requeue);
                }
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return Ok(Disposition::Requeue),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Records what the provider answered and decides what happens to the delivery.
async fn record(
    shared: &Shared,
    req: &send_request::Model,
    code_expires_ms: i64,
    outcome: Result<String, ProviderFailure>,
    elapsed: Duration,
) -> Result<Disposition, DbErr> {
    let masked = mask_phone(&req.phone);
    let failure = match outcome {
        Ok(message_id) => {
            if shared.sent.record(&req.request_id, &message_id).await? {
                metrics::counter!(msgcontact::metrics::JOBS, "outcome" => SendStatus::Sent.as_str())
                    .increment(1);
            }
            tracing::info!(phone = %masked, ?elapsed, provider = shared.provider.name(), "SMS sent");
            return Ok(Disposition::Ack);
        }
        Err(f) => f,
    };
    if failure.is_throttling() {
        shared.limits.throttled();
    }
    let ProviderFailure {
        class,
        code,
        message,
        retry_after,
    } = failure;
    let reason = format!("{code} ({}): {message}", class.as_str());
    tracing::warn!(phone = %masked, class = class.as_str(), %code, ?elapsed, attempt = req.attempts, "provider failure");
    if class == FailureClass::Permanent {
        set_outcome(shared, &req.request_id, failed(&code, &reason)).await?;
        return Ok(Disposition::Ack);
    }
    if class == FailureClass::Ambiguous {
        // The provider may have sent it: at most one more attempt.
        let counted = send_request::Entity::update_many()
            .col_expr(
                send_request::Column::AmbiguousAttempts,
                Expr::col(send_request::Column::AmbiguousAttempts).add(1),
            )
            .filter(send_request::Column::RequestId.eq(req.request_id.as_str()))
            .filter(send_request::Column::AmbiguousAttempts.eq(0))
            .exec(&shared.db)
            .await?;
        if counted.rows_affected == 0 {
            set_outcome(
                shared,
                &req.request_id,
                failed("AmbiguousDelivery", &reason),
            )
            .await?;
            return Ok(Disposition::Ack);
        }
    }
    // Transient (or a first ambiguous outcome): retry after the schedule's next delay, at least
    // as long as the provider asked, while attempts and the code's lifetime allow.
    let delays = &shared.topology.retry_delays;
    let done = Ord::max(req.attempts, 1) as usize;
    if done > delays.len() {
        set_outcome(shared, &req.request_id, failed("RetriesExhausted", &reason)).await?;
        return Ok(Disposition::Ack);
    }
    let wanted = retry_after.unwrap_or_default();
    let level = (done - 1..delays.len())
        .find(|l| delays[*l] >= wanted)
        .unwrap_or(delays.len() - 1);
    // Jitter (up to -20%) spreads a burst of retries; a queue's TTL caps it from above.
    let base = delays[level];
    let delay = base
        .mul_f64(1.0 - rand::random::<f64>() * 0.2)
        .max(wanted.min(base));
    if now_ms() + delay.as_millis() as i64 >= code_expires_ms {
        set_outcome(shared, &req.request_id, failed("CodeExpired", &reason)).await?;
        return Ok(Disposition::Ack);
    }
    let parked = set_outcome(
        shared,
        &req.request_id,
        Outcome {
            status: SendStatus::Retrying,
            failure: Some((&code, &reason)),
            provider_message_id: None,
        },
    )
    .await?;
    if parked == 0 {
        return Ok(Disposition::Ack);
    }
    Ok(Disposition::Retry {
        attempt: req.attempts as u32 + 1,
        level,
        delay,
    })
}

fn live_key(contact_id: &str, phone: &str) -> String {
    format!("{contact_id}/{phone}")
}

/// A new live code for the request's target, and its verification row.
fn fresh_row(shared: &Shared, req: &send_request::Model) -> (CodeRef, verification::ActiveModel) {
    let now = now_ms();
    let code = CodeRef {
        // Time-ordered like request ids: new code rows append to the primary-key index.
        id: uuid::Uuid::now_v7().to_string(),
        status: vstatus::PENDING.into(),
        expires_ms: now + shared.policy.code_ttl().as_millis() as i64,
    };
    let row = verification::ActiveModel {
        verification_id: Set(code.id.clone()),
        account_id: Set(req.account_id.clone()),
        contact_id: Set(req.contact_id.clone()),
        phone: Set(req.phone.clone()),
        status: Set(code.status.clone()),
        failed_attempts: Set(0),
        created_ms: Set(now),
        expires_ms: Set(code.expires_ms),
        live_key: Set(Some(live_key(&req.contact_id, &req.phone))),
    };
    (code, row)
}

/// Creates the target's live verification inside the claim's transaction, retiring an expired or
/// locked one first. `None` when another worker took the live slot at the same moment (the unique
/// live key makes concurrent creators agree; the caller reads again and uses theirs).
async fn fresh_code(
    txn: &DatabaseTransaction,
    shared: &Shared,
    req: &send_request::Model,
    retire: Option<CodeRef>,
) -> Result<Option<CodeRef>, DbErr> {
    let key = live_key(&req.contact_id, &req.phone);
    if let Some(v) = retire {
        verification::Entity::update_many()
            .col_expr(
                verification::Column::LiveKey,
                Expr::value(Option::<String>::None),
            )
            .col_expr(
                verification::Column::Status,
                Expr::value(if v.status == vstatus::LOCKED {
                    vstatus::LOCKED
                } else {
                    vstatus::CLOSED
                }),
            )
            .filter(
                Condition::all()
                    .add(verification::Column::VerificationId.eq(v.id.as_str()))
                    .add(verification::Column::LiveKey.eq(key.as_str())),
            )
            .exec(txn)
            .await?;
    }
    let (fresh, row) = fresh_row(shared, req);
    match verification::Entity::insert(row)
        .exec_without_returning(txn)
        .await
    {
        Ok(_) => Ok(Some(fresh)),
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => Ok(None),
        Err(e) => Err(e),
    }
}
