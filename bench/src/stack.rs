//! The system under test: a fresh database and queue prefix, the real binaries as child processes,
//! and a fake SMS provider (the webhook protocol) that counts what it receives.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use msgcontact::{
    domain::{ContactId, MessageTypes},
    entities::{contact, send_request},
    job::Topology,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, Database, DatabaseConnection, EntityTrait, PaginatorTrait,
    QueryFilter, QuerySelect, Set,
};
use tokio::process::{Child, Command};

use crate::{
    fake_provider::FakeProvider,
    leftovers::{self, Leftover, Mark},
    metrics_text::{Buckets, Scraper, StageBuckets, Stages, total},
    procstat::{bin, free_addr, terminate, wait_healthy},
};

pub const ACCOUNT: &str = "1000000000000001";

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub struct Stack {
    pub db_url: String,
    pub prefix: String,
    pub db: DatabaseConnection,
    pub key_id: String,
    pub secret: String,
    pub contacts: Arc<Vec<(String, String)>>,
    amqp_url: String,
    queue_max_length: u32,
    dir: PathBuf,
    /// What [`Stack::stop`] removes, also recorded in [`leftovers`] for a run that ends early.
    left: Vec<(Mark, Leftover)>,
    /// The API processes started, and their addresses.
    api: Vec<(Child, SocketAddr)>,
    /// The worker processes started, and their ops (`/metrics`) addresses.
    worker: Vec<(Child, SocketAddr)>,
}

impl Stack {
    /// A fresh database with one account, one key and `contacts` contacts pending verification.
    pub async fn new(
        db: Db,
        amqp_url: &str,
        pg_url: &str,
        contacts: usize,
        queue_max_length: u32,
    ) -> anyhow::Result<Self> {
        let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let dir = std::env::temp_dir().join(format!("msgcontact-bench-{tag}"));
        std::fs::create_dir_all(&dir)?;
        let mut left = Vec::new();
        keep(&mut left, Leftover::Dir(dir.clone()));
        let db_url = match db {
            Db::Sqlite => format!("sqlite://{}/db.sqlite?mode=rwc", dir.display()),
            Db::Postgres => {
                let name = format!("msgcontact_bench_{tag}");
                let admin = Database::connect(pg_url)
                    .await
                    .with_context(|| format!("PostgreSQL at {pg_url}"))?;
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await?;
                keep(
                    &mut left,
                    Leftover::Database {
                        admin_url: pg_url.to_owned(),
                        name: name.clone(),
                    },
                );
                let (server, query) = match pg_url.split_once('?') {
                    Some((server, query)) => (server, format!("?{query}")),
                    None => (pg_url, String::new()),
                };
                let root = server.rsplit_once('/').context("PostgreSQL URL")?.0;
                format!("{root}/{name}{query}")
            }
        };
        let conn = msgcontact::db::connect(&db_url, 4).await?;
        let prefix = format!("bench-{tag}");
        keep(
            &mut left,
            Leftover::Queues {
                amqp_url: amqp_url.to_owned(),
                names: queue_names(&topology(&prefix, queue_max_length)),
            },
        );
        let key_id = format!("LTAIbench{tag}");
        let secret = "benchSecret-0123456789".to_owned();
        // The stack's processes find the master key generated here (MSGCONTACT_SECRETS_DIR).
        let master = msgcontact::secrets::SecretsConfig {
            secrets_dir: dir.clone(),
            ..Default::default()
        }
        .master_key()?;
        msgcontact_api::admin_cli::create_key(
            &conn,
            &master,
            ACCOUNT,
            Some(key_id.clone()),
            Some(secret.clone()),
        )
        .await?;
        let types = MessageTypes::parse(&["FaultMessage"])?.to_stored();
        let mut list = Vec::with_capacity(contacts);
        let now = msgcontact::time::now_ms();
        for chunk_start in (0..contacts).step_by(1000) {
            let mut rows = Vec::new();
            for i in chunk_start..(chunk_start + 1000).min(contacts) {
                let id = ContactId::generate().to_string();
                let phone = format!("86-139{:08}", i);
                rows.push(contact::ActiveModel {
                    contact_id: Set(id.clone()),
                    account_id: Set(ACCOUNT.into()),
                    name: Set(format!("bench{i}")),
                    email: Set(format!("b{i}@example.com")),
                    title: Set("Other".into()),
                    message_types: Set(types.clone()),
                    phone: Set(None),
                    pending_phone: Set(Some(phone.clone())),
                    last_send_ms: Set(None),
                    created_ms: Set(now),
                    updated_ms: Set(now),
                });
                list.push((id, phone));
            }
            contact::Entity::insert_many(rows)
                .exec_without_returning(&conn)
                .await?;
        }
        Ok(Self {
            db_url,
            prefix,
            db: conn,
            key_id,
            secret,
            contacts: Arc::new(list),
            amqp_url: amqp_url.to_owned(),
            queue_max_length,
            dir,
            left,
            api: Vec::new(),
            worker: Vec::new(),
        })
    }

    fn command(&self, binary: &str, log: &str) -> anyhow::Result<Command> {
        let mut cmd = Command::new(bin(binary)?);
        cmd.env("MSGCONTACT_DATABASE_URL", &self.db_url)
            .env("MSGCONTACT_AMQP_URL", &self.amqp_url)
            .env("MSGCONTACT_QUEUE_PREFIX", &self.prefix)
            .env(
                "MSGCONTACT_QUEUE_MAX_LENGTH",
                self.queue_max_length.to_string(),
            )
            // Every send goes to a distinct contact or far apart: the quota and cooldown are
            // still checked and written on every request, they just never refuse.
            .env("MSGCONTACT_DAILY_LIMIT", "1000000000")
            .env("MSGCONTACT_RESEND_COOLDOWN_SECS", "0")
            .env("MSGCONTACT_LOG_FORMAT", "json")
            .env("MSGCONTACT_SECRETS_DIR", &self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(self.dir.join(log))?)
            .kill_on_drop(true);
        Ok(cmd)
    }

    pub async fn start_api(&mut self, env: &[(&str, String)]) -> anyhow::Result<()> {
        let addr = free_addr()?;
        let mut cmd = self.command("msgcontact-api", &log_name("api", self.api.len()))?;
        cmd.env("MSGCONTACT_API_LISTEN", addr.to_string());
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.api.push((cmd.spawn()?, addr));
        wait_healthy(addr).await
    }

    pub async fn start_worker(
        &mut self,
        provider: &FakeProvider,
        env: &[(&str, String)],
    ) -> anyhow::Result<()> {
        let addr = free_addr()?;
        let mut cmd = self.command("msgcontact-worker", &log_name("worker", self.worker.len()))?;
        cmd.env("MSGCONTACT_WORKER_LISTEN", addr.to_string())
            .env("MSGCONTACT_SMS_PROVIDER", "webhook")
            .env("MSGCONTACT_WEBHOOK_URL", &provider.url)
            .env("MSGCONTACT_WEBHOOK_SECRET", "bench")
            .env("MSGCONTACT_PROVIDER_RATE", "100000");
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.worker.push((cmd.spawn()?, addr));
        wait_healthy(addr).await
    }

    /// The first API process's address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api.first().expect("API started").1
    }

    pub fn api_addrs(&self) -> Vec<SocketAddr> {
        self.api.iter().map(|a| a.1).collect()
    }

    /// The run's own directory (removed when the stack goes).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn api_pid(&self) -> Option<u32> {
        self.api.first().and_then(|a| a.0.id())
    }

    pub fn api_pids(&self) -> Vec<Option<u32>> {
        self.api.iter().map(|a| a.0.id()).collect()
    }

    pub fn worker_pids(&self) -> Vec<Option<u32>> {
        self.worker.iter().map(|w| w.0.id()).collect()
    }

    /// How many SMS each worker process counts as sent (its `msgcontact_jobs_total`), in the
    /// order they were started.
    pub async fn sent_by_worker(&self) -> Vec<Option<u64>> {
        let mut out = Vec::new();
        for (_, addr) in &self.worker {
            let text = match reqwest::get(format!("http://{addr}/metrics")).await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            let prefix = format!("{}{{outcome=\"Sent\"}} ", msgcontact::metrics::JOBS);
            out.push(
                text.lines()
                    .find_map(|l| l.strip_prefix(&prefix)?.trim().parse::<f64>().ok())
                    .map(|n| n as u64),
            );
        }
        out
    }

    fn topology(&self) -> Topology {
        topology(&self.prefix, self.queue_max_length)
    }

    pub async fn work_depth(&self) -> anyhow::Result<u32> {
        let conn = lapin::Connection::connect(&self.amqp_url, Default::default()).await?;
        let ch = conn.create_channel().await?;
        let q = ch
            .queue_declare(
                self.topology().work_queue().as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await?;
        let _ = conn.close(200, "".into()).await;
        Ok(q.message_count())
    }

    pub async fn purge_work_queue(&self) -> anyhow::Result<()> {
        let conn = lapin::Connection::connect(&self.amqp_url, Default::default()).await?;
        let ch = conn.create_channel().await?;
        ch.queue_purge(
            self.topology().work_queue().as_str().into(),
            Default::default(),
        )
        .await?;
        let _ = conn.close(200, "".into()).await;
        Ok(())
    }

    /// Requests in a terminal state, and the ones still live.
    pub async fn terminal_and_live(&self) -> anyhow::Result<(u64, u64)> {
        let live = send_request::Entity::find()
            .filter(send_request::Column::Status.is_in(["Queued", "Sending", "Retrying"]))
            .count(&self.db)
            .await?;
        let all = send_request::Entity::find().count(&self.db).await?;
        Ok((all - live, live))
    }

    pub async fn wait_terminal(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let (terminal, live) = self.terminal_and_live().await?;
            if live == 0 && terminal >= n as u64 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{terminal} terminal, {live} live after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// p50 and p99 of sent_ms − accepted_ms (ms) of requests accepted since `since_ms`, and the count.
    pub async fn accept_to_sent_ms(&self, since_ms: i64) -> anyhow::Result<(i64, i64, usize)> {
        let rows: Vec<(i64, Option<i64>)> = send_request::Entity::find()
            .select_only()
            .column(send_request::Column::AcceptedMs)
            .column(send_request::Column::SentMs)
            .filter(send_request::Column::AcceptedMs.gte(since_ms))
            .filter(send_request::Column::Status.eq("Sent"))
            .into_tuple()
            .all(&self.db)
            .await?;
        let mut lat: Vec<i64> = rows
            .into_iter()
            .filter_map(|(a, s)| s.map(|s| s - a))
            .collect();
        lat.sort();
        let pick = |q: f64| {
            lat.get(((lat.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(0)
        };
        Ok((pick(0.5), pick(0.99), lat.len()))
    }

    /// Count of requests per (status, failure code).
    pub async fn outcome_summary(&self) -> anyhow::Result<Vec<(String, Option<String>, i64)>> {
        let rows: Vec<(String, Option<String>, i64)> = send_request::Entity::find()
            .select_only()
            .column(send_request::Column::Status)
            .column(send_request::Column::FailureCode)
            .column_as(send_request::Column::RequestId.count(), "n")
            .group_by(send_request::Column::Status)
            .group_by(send_request::Column::FailureCode)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows)
    }

    /// The first API process's /metrics text now.
    async fn api_metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("http://{}/metrics", self.api_addr()))
            .await?
            .text()
            .await?)
    }

    /// The API's accept-path stage totals now (from its /metrics).
    pub async fn stages(&self) -> anyhow::Result<Stages> {
        Ok(Stages::parse(&self.api_metrics().await?))
    }

    /// The API's histograms of an accepted send's stages, from one reading of its /metrics.
    pub async fn stage_buckets(&self) -> anyhow::Result<StageBuckets> {
        let text = self.api_metrics().await?;
        use msgcontact::metrics as m;
        Ok(StageBuckets {
            request: Buckets::parse(&text, 200),
            write_wait: Buckets::parse_metric(&text, m::WRITE_WAIT, ""),
            publish: Buckets::parse_metric(&text, m::PUBLISH_DURATION, ""),
            wal_pause: total(&text, m::WAL_RESTART_PAUSE),
        })
    }

    /// PostgreSQL's checkpoints completed so far, (requested, timed), server-wide; `None` on
    /// SQLite. A requested one was forced by WAL volume (`max_wal_size`): its writes share the
    /// disk with every commit's and the broker's syncs.
    pub async fn checkpoints(&self) -> Option<(i64, i64)> {
        if self.db.get_database_backend() != sea_orm::DbBackend::Postgres {
            return None;
        }
        // The columns moved to a view of their own in PostgreSQL 17.
        for sql in [
            "SELECT num_requested, num_timed FROM pg_stat_checkpointer",
            "SELECT checkpoints_req, checkpoints_timed FROM pg_stat_bgwriter",
        ] {
            let row = self
                .db
                .query_one_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    sql,
                ))
                .await;
            if let Ok(Some(row)) = row {
                return Some((row.try_get_by_index(0).ok()?, row.try_get_by_index(1).ok()?));
            }
        }
        None
    }

    /// The API's own latency histogram of the sends it answered with `status`, now.
    pub async fn send_latency(&self, status: u16) -> anyhow::Result<Buckets> {
        Ok(Buckets::parse(&self.api_metrics().await?, status))
    }

    /// Scrapes the API's /metrics at an interval until stopped; reports (scrapes, mean duration).
    pub fn scrape_metrics_every(&self, every: Duration) -> Scraper {
        let url = format!("http://{}/metrics", self.api_addr());
        let stop = tokio_util_stop();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut tick = tokio::time::interval(every);
            let (mut n, mut total) = (0u32, Duration::ZERO);
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                let at = Instant::now();
                if let Ok(r) = client.get(&url).send().await {
                    let _ = r.bytes().await;
                    n += 1;
                    total += at.elapsed();
                }
            }
            (n, total / n.max(1))
        });
        Scraper { stop, task }
    }

    /// Stops the processes, removes the queues and the database.
    pub async fn stop(mut self) {
        let workers = std::mem::take(&mut self.worker);
        let apis = std::mem::take(&mut self.api);
        for (child, _) in workers.into_iter().chain(apis) {
            terminate(child).await;
        }
        let _ = self.db.clone().close().await;
        // Newest first: the queues, then the database, then the directory.
        for (mark, l) in self.left.drain(..).rev() {
            leftovers::remove(&l).await;
            leftovers::forget(mark);
        }
    }
}

/// The log file of the `started`-th process of a kind: `api.log`, then `api-2.log`, …
fn log_name(kind: &str, started: usize) -> String {
    match started {
        0 => format!("{kind}.log"),
        n => format!("{kind}-{}.log", n + 1),
    }
}

/// The topology the binaries under test declare for `prefix` (the default retry delays).
fn topology(prefix: &str, queue_max_length: u32) -> Topology {
    Topology::new(
        prefix,
        queue_max_length,
        "5,30,120,600"
            .parse::<msgcontact::config::RetryDelays>()
            .expect("default delays")
            .0,
    )
}

fn queue_names(t: &Topology) -> Vec<String> {
    let mut queues = vec![t.work_queue(), t.dead_letter_queue()];
    queues.extend((0..t.retry_delays.len()).map(|l| t.retry_queue(l)));
    queues.into_iter().map(|q| q.as_str().to_owned()).collect()
}

/// Records a leftover of the run and keeps it for [`Stack::stop`].
fn keep(left: &mut Vec<(Mark, Leftover)>, l: Leftover) {
    left.push((leftovers::record(l.clone()), l));
}

fn tokio_util_stop() -> Arc<std::sync::atomic::AtomicBool> {
    Arc::new(std::sync::atomic::AtomicBool::new(false))
}
