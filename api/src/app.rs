//! The API process: built from its settings, then run until stopped with the tasks that run beside the server (nonce
//! purge, key refresh, SQLite checkpoints, queue monitor, broker supervisor).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::{
    accept, auth,
    config::Config,
    error::Error,
    http::{self, server},
    publisher::Publisher,
    state::AppState,
};

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
    /// Binds and connects everything.
    // Boxed here (as is `run_until_stopped`): the binaries then poll one `dyn Future` instead of
    // compiling this crate's whole async call tree again each (a release build's largest cost).
    pub fn build(config: Config) -> BoxFuture<'static, Result<Self, Error>> {
        Box::pin(Self::connect(config))
    }

    async fn connect(config: Config) -> Result<Self, Error> {
        msgcontact::metrics::handle();
        let db =
            msgcontact::db::connect(&config.infra.database_url, config.infra.database_pool).await?;
        let master = config.infra.secrets.master_key()?;
        let code_secrets = msgcontact::db::code_secrets(&db, &config.infra.secrets).await?;
        let keys = auth::KeyStore::load(db.clone(), master.clone()).await?;
        let writer =
            accept::Writer::start(&config.infra.database_url, config.api.write_batch_max).await?;
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

    /// Serves until `shutdown` fires, then drains in-flight requests and closes.
    pub fn run_until_stopped(
        self,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(self.run(shutdown))
    }

    async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let state = self.state.clone();
        let purger = msgcontact::time::every(Duration::from_secs(60), shutdown.clone(), {
            let db = state.db.clone();
            move || {
                let db = db.clone();
                async move {
                    if let Err(e) = auth::replay::purge_nonces(&db).await {
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
        let poller = tokio::spawn(msgcontact::monitor::poll_depths(
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
                    http::admin_router(state.clone()),
                    self.limits,
                    shutdown.clone(),
                )))
            }
            None => None,
        };
        let app = http::router(state.clone(), admin.is_none());
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
