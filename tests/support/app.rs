//! A test app: its database and queue prefix, its API instances and worker, and what it leaves
//! behind removed when it ends.

use std::{net::SocketAddr, path::PathBuf};

use msgcontact::config::{InfraConfig, PolicyConfig};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    client::{Key, http_client},
    config::{
        self, Backend, Options, amqp_url, api_config, infra, pg_admin_url, test_secrets, unique,
    },
    fake_sms,
    inbox::{Inbox, start_inbox},
};

pub struct TestApp {
    pub backend: Backend,
    pub api_addrs: Vec<SocketAddr>,
    pub db_url: String,
    pub db: DatabaseConnection,
    pub prefix: String,
    pub key: Key,
    /// The instances' admin addresses (with `Options::admin_listen`).
    pub admin_addrs: Vec<SocketAddr>,
    /// Every in-process API instance's state.
    pub states: Vec<std::sync::Arc<msgcontact_api::AppState>>,
    pub inbox: Inbox,
    pub inbox_addr: SocketAddr,
    pub options: Options,
    pub webhook_secret: String,
    pub sms: fake_sms::FakeSms,
    pub(crate) shutdown: CancellationToken,
    pub(crate) worker_shutdown: CancellationToken,
    pub(crate) tasks: Vec<JoinHandle<()>>,
    pub(crate) worker_task: Option<JoinHandle<()>>,
    pub(crate) extra_workers: Vec<JoinHandle<()>>,
    pub worker_addr: Option<SocketAddr>,
    pub(crate) leftovers: Leftovers,
    pub(crate) _dir: Option<TempDir>,
    pub(crate) http: reqwest::Client,
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a test made on the shared servers (its queues, its PostgreSQL database), removed when the
/// test ends however it ends: by [`TestApp::cleanup`], or on drop when the test failed before it
/// (`MSGCONTACT_TEST_KEEP=1` keeps a failed test's leftovers for a look and prints their names).
pub(crate) struct Leftovers {
    pub(crate) queues: Vec<String>,
    pub(crate) pg_database: Option<String>,
    pub(crate) armed: bool,
}

impl Leftovers {
    pub(crate) async fn remove(&mut self) {
        self.armed = false;
        if let Ok(conn) = msgcontact::amqp::connect(&amqp_url(), "test-cleanup").await
            && let Ok(ch) = conn.create_channel().await
        {
            for q in &self.queues {
                let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
            }
            let _ = conn.close(200, "bye".into()).await;
        }
        if let Some(name) = self.pg_database.take()
            && let Ok(admin) = Database::connect(pg_admin_url()).await
        {
            let _ = admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await;
        }
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if std::env::var_os("MSGCONTACT_TEST_KEEP").is_some() {
            eprintln!(
                "kept for inspection: queues {:?}, database {:?}",
                self.queues, self.pg_database
            );
            return;
        }
        // Dropped inside the test's runtime (often while a panic unwinds), which cannot be
        // blocked on: the removal runs on a runtime of its own on another thread.
        let mut this = Leftovers {
            queues: std::mem::take(&mut self.queues),
            pg_database: self.pg_database.take(),
            armed: false,
        };
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(this.remove());
            }
        })
        .join();
    }
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, Options::default()).await
    }

    pub async fn spawn_with(backend: Backend, options: Options) -> Self {
        // Quiet unless asked for with RUST_LOG.
        if std::env::var_os("RUST_LOG").is_some() {
            static LOG: std::sync::OnceLock<msgcontact::telemetry::LogGuard> =
                std::sync::OnceLock::new();
            LOG.get_or_init(|| msgcontact::telemetry::init("pretty"));
        }
        let prefix = unique("test-");
        let (db_url, pg_database, dir) = match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(unique("msgcontact-test-"));
                std::fs::create_dir_all(&dir).unwrap();
                (
                    format!("sqlite://{}/db.sqlite?mode=rwc", dir.display()),
                    None,
                    Some(TempDir(dir)),
                )
            }
            Backend::Postgres => {
                let name = unique("msgcontact_test_");
                let admin = Database::connect(pg_admin_url()).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL is required for this test and is not reachable at {}: {e}",
                        pg_admin_url()
                    )
                });
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .expect("create test database");
                let base = pg_admin_url();
                let root = base.rsplit_once('/').unwrap().0.to_owned();
                (format!("{root}/{name}"), Some(name), None)
            }
        };
        let topology = infra(&db_url, &prefix, &options).topology();
        let mut queues = vec![topology.work_queue(), topology.dead_letter_queue()];
        queues.extend((0..topology.retry_delays.len()).map(|l| topology.retry_queue(l)));
        let leftovers = Leftovers {
            queues,
            pg_database,
            armed: true,
        };
        let (inbox, inbox_addr, inbox_task) = start_inbox(options.webhook_status).await;
        let policy = config::policy(&options);
        let shutdown = CancellationToken::new();
        let mut tasks = vec![inbox_task];
        let mut api_addrs = Vec::new();
        let mut states = Vec::new();
        let mut admin_addrs = Vec::new();
        for _ in 0..options.api_instances {
            let app = msgcontact_api::Application::build(api_config(
                &db_url,
                &prefix,
                &options,
                policy.clone(),
            ))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "API failed to start (are RabbitMQ at {} and the database up?): {e}",
                    amqp_url()
                )
            });
            api_addrs.push(app.local_addr());
            states.push(app.state());
            admin_addrs.extend(app.admin_addr());
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                app.run_until_stopped(stop).await.unwrap();
            }));
        }
        let db = states[0].db.clone();
        let master = test_secrets(&prefix).master_key().unwrap();
        let created =
            msgcontact_api::admin_cli::create_key(&db, &master, "1234567890123456", None, None)
                .await
                .unwrap();
        refresh_keys(&states).await;
        let key = Key {
            id: created["AccessKeyId"].as_str().unwrap().into(),
            secret: created["AccessKeySecret"].as_str().unwrap().into(),
            account: "1234567890123456".into(),
        };
        let mut app = Self {
            backend,
            api_addrs,
            db_url,
            db,
            prefix,
            key,
            admin_addrs,
            states,
            inbox,
            inbox_addr,
            options: options.clone(),
            webhook_secret: "whsec-test".into(),
            sms: fake_sms::FakeSms::start().await,
            shutdown,
            worker_shutdown: CancellationToken::new(),
            tasks,
            worker_task: None,
            extra_workers: Vec::new(),
            worker_addr: None,
            leftovers,
            _dir: dir,
            http: http_client(),
        };
        if options.worker {
            app.start_worker().await;
        }
        app
    }

    /// The master key this test's processes seal access key secrets with.
    pub fn master(&self) -> msgcontact::secrets::MasterKey {
        test_secrets(&self.prefix).master_key().unwrap()
    }

    pub fn policy(&self) -> PolicyConfig {
        config::policy(&self.options)
    }

    pub fn work_queue(&self) -> String {
        format!("{}.send", self.prefix)
    }

    pub async fn new_key(&self, account: &str) -> Key {
        let created =
            msgcontact_api::admin_cli::create_key(&self.db, &self.master(), account, None, None)
                .await
                .unwrap();
        refresh_keys(&self.states).await;
        Key {
            id: created["AccessKeyId"].as_str().unwrap().into(),
            secret: created["AccessKeySecret"].as_str().unwrap().into(),
            account: account.into(),
        }
    }

    /// The infrastructure settings this test's API and workers run with.
    pub fn infra(&self) -> InfraConfig {
        infra(&self.db_url, &self.prefix, &self.options)
    }

    /// This test's queue names and retry levels.
    pub fn topology(&self) -> msgcontact::job::Topology {
        self.infra().topology()
    }

    /// Stops everything and removes the test's queues and database.
    pub async fn cleanup(mut self) {
        self.stop_worker().await;
        self.shutdown.cancel();
        for t in self.tasks.drain(..).skip(1) {
            let _ = t.await;
        }
        self.db.clone().close().await.ok();
        self.leftovers.remove().await;
    }
}

/// Makes keys just created known to every API instance now (they would be within
/// `auth::KEY_REFRESH`).
pub async fn refresh_keys(states: &[std::sync::Arc<msgcontact_api::AppState>]) {
    for s in states {
        s.keys.refresh().await.unwrap();
    }
}
