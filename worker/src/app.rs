//! The worker process: built from its settings, then run until stopped (health server, queue
//! monitor, limiter housekeeping and the consumer).

use std::{net::SocketAddr, num::NonZeroU32, sync::Arc, time::Duration};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use futures::future::BoxFuture;
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use crate::{
    consumer::{self, Session},
    error::Error,
    job::{InFlight, Shared},
    limits,
    options::Config,
    provider::Provider,
    store::{claims, sent, snapshot},
};

pub struct Application {
    shared: Arc<Shared>,
    /// The first session, opened by `build` so a broker that is down at startup fails it.
    session: Session,
    listener: tokio::net::TcpListener,
    prefetch: u16,
    amqp_url: String,
    broker_recovery_timeout: Duration,
}

impl Application {
    /// Binds and connects everything.
    // Boxed here (as is `run_until_stopped`): the binaries then poll one `dyn Future` instead of
    // compiling this crate's whole async call tree again each (a release build's largest cost).
    pub fn build(config: Config) -> BoxFuture<'static, Result<Self, Error>> {
        Box::pin(Self::connect(config))
    }

    async fn connect(config: Config) -> Result<Self, Error> {
        let provider = Provider::from_options(&config.worker)?;
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
        let claims = claims::ClaimWriter::spawn(db.clone());
        let sent = sent::SentWriter::spawn(db.clone());
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
    pub fn run_until_stopped(
        self,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(self.run(shutdown))
    }

    async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
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
        let poller = tokio::spawn(msgcontact::monitor::poll_depths(
            self.amqp_url.clone(),
            self.shared.db.clone(),
            self.shared.topology.clone(),
            msgcontact::monitor::History::default(),
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

        let lost = consumer::run(
            self.shared.clone(),
            self.session,
            consumer::Reconnect {
                url: self.amqp_url.clone(),
                prefetch: self.prefetch,
                recovery_timeout: self.broker_recovery_timeout,
            },
            broker_ready,
            shutdown.clone(),
        )
        .await;
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
