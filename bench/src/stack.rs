//! The system under test: a fresh database and queue prefix, the real binaries as child processes,
//! and a fake SMS provider (the webhook protocol) that counts what it receives.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use msgcontact::{
    domain::{ContactId, MessageTypes},
    entities::{contact, send_request},
    job::Topology,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, Database, DatabaseConnection, EntityTrait, PaginatorTrait,
    QueryFilter, QuerySelect, Set,
};
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::leftovers::{self, Leftover, Mark};

pub const ACCOUNT: &str = "1000000000000001";

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Receives SMS as the webhook provider sends them; answers 429 beyond its rate, like a provider.
#[derive(Clone)]
pub struct FakeProvider {
    pub url: String,
    inner: Arc<ProviderState>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

struct ProviderState {
    count: AtomicU64,
    /// Requests answered 429 for exceeding the rate.
    throttled: AtomicU64,
    duplicates: AtomicU64,
    seen: Mutex<HashSet<String>>,
    /// When the first and the latest SMS since the last reset arrived.
    window: Mutex<Option<(Instant, Instant)>>,
    limiter: Option<DefaultDirectRateLimiter>,
}

impl FakeProvider {
    pub async fn start(rate: Option<u32>) -> anyhow::Result<Self> {
        let inner = Arc::new(ProviderState {
            count: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            seen: Mutex::new(HashSet::new()),
            window: Mutex::new(None),
            limiter: rate
                .and_then(std::num::NonZeroU32::new)
                // A burst of one second's worth, as provider contracts usually allow.
                .map(|r| RateLimiter::direct(Quota::per_second(r))),
        });
        async fn receive(
            State(s): State<Arc<ProviderState>>,
            Json(body): Json<Value>,
        ) -> (StatusCode, [(&'static str, &'static str); 1]) {
            if let Some(l) = &s.limiter
                && l.check().is_err()
            {
                s.throttled.fetch_add(1, Ordering::Relaxed);
                return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]);
            }
            let id = body["request_id"].as_str().unwrap_or_default().to_owned();
            if !s.seen.lock().unwrap().insert(id) {
                s.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            let now = Instant::now();
            s.window.lock().unwrap().get_or_insert((now, now)).1 = now;
            s.count.fetch_add(1, Ordering::Relaxed);
            (StatusCode::OK, [("content-type", "application/json")])
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/sms", post(receive))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            url: format!("http://{addr}/sms"),
            inner,
            task: Arc::new(task),
        })
    }

    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// Requests refused with 429 for exceeding the provider's rate.
    pub fn throttled(&self) -> u64 {
        self.inner.throttled.load(Ordering::Relaxed)
    }

    pub fn duplicates(&self) -> u64 {
        self.inner.duplicates.load(Ordering::Relaxed)
    }

    pub fn reset(&self) {
        self.inner.count.store(0, Ordering::Relaxed);
        self.inner.throttled.store(0, Ordering::Relaxed);
        self.inner.duplicates.store(0, Ordering::Relaxed);
        self.inner.seen.lock().unwrap().clear();
        *self.inner.window.lock().unwrap() = None;
    }

    /// When the first and the latest SMS since the last reset arrived.
    pub fn window(&self) -> Option<(Instant, Instant)> {
        *self.inner.window.lock().unwrap()
    }

    pub async fn wait_for(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.count() < n as u64 {
            if Instant::now() > deadline {
                bail!("provider received {} of {n}", self.count());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// The drain of `n` jobs whose consumer was started at `started`, once all `n` arrived.
    pub fn drain(&self, n: usize, started: Instant) -> Drain {
        let (first, last) = self.window().unwrap_or((started, started));
        Drain {
            jobs: n,
            total: last.saturating_duration_since(started),
            start_up: first.saturating_duration_since(started),
        }
    }

    pub async fn stop(self) {
        self.task.abort();
    }
}

/// How a backlog drained: from the start of the consumer's process to the last SMS, of which the
/// time to the first SMS is start-up (connecting, declaring, the first deliveries).
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    pub jobs: usize,
    pub total: Duration,
    pub start_up: Duration,
}

impl Drain {
    /// Jobs per second over the whole drain, start-up included.
    pub fn rate(&self) -> f64 {
        self.jobs as f64 / self.total.as_secs_f64().max(1e-9)
    }

    /// Jobs per second from the first SMS to the last: the pipeline's throughput once running.
    pub fn steady_rate(&self) -> f64 {
        let run = self.total.saturating_sub(self.start_up);
        self.jobs.saturating_sub(1) as f64 / run.as_secs_f64().max(1e-9)
    }
}

/// Directory holding the binaries under test (next to this executable).
fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::current_exe()?
        .parent()
        .context("executable directory")?
        .to_path_buf();
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "{} not found; build the workspace first (cargo build --release --workspace)",
            p.display()
        );
    }
    Ok(p)
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Resident set size of a process in MiB, from /proc.
pub fn rss_mib(pid: Option<u32>) -> String {
    let Some(pid) = pid else {
        return "-".into();
    };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or("-".into(), |kb| format!("{:.1} MiB", kb / 1024.0))
}

/// CPU time (user + system, all threads) a process has used so far, from /proc.
pub fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    proc_stat(pid?).map(|(_, ticks)| from_ticks(ticks))
}

/// A process's command name and CPU clock ticks so far, from `/proc/{pid}/stat`.
fn proc_stat(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is parenthesised (and may hold spaces); utime and stime are the 14th and
    // 15th fields overall.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((stat[open + 1..close].to_owned(), ticks))
}

/// Clock ticks are 1/100 s on Linux.
fn from_ticks(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 10)
}

/// Who used the machine's CPU during a measurement: every process's user + system time from /proc
/// at its start and at its end, so the figures of ours and a baseline can be split by process.
pub struct CpuWatch {
    start: std::collections::HashMap<u32, (String, u64)>,
    at: Instant,
}

/// CPU time used during a [`CpuWatch`], by role.
pub struct CpuSplit {
    pub elapsed: Duration,
    pub roles: Vec<(&'static str, Duration)>,
}

impl CpuSplit {
    pub fn total(&self) -> Duration {
        self.roles.iter().map(|(_, d)| *d).sum()
    }

    /// `role µs, …` per `n` units of work (accepted sends), and how busy the machine was.
    pub fn per(&self, n: u64) -> String {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n.max(1) as f64;
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
        let mut out: Vec<String> = self
            .roles
            .iter()
            .map(|(role, d)| format!("{role} {:.0}", us(*d)))
            .collect();
        out.push(format!(
            "total {:.0} µs; machine {:.0} % busy",
            us(self.total()),
            100.0 * self.total().as_secs_f64() / (cores * self.elapsed.as_secs_f64().max(1e-9))
        ));
        out.join(", ")
    }
}

fn ticks_by_pid() -> std::collections::HashMap<u32, (String, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Default::default();
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, proc_stat(pid)?)))
        .collect()
}

impl CpuWatch {
    pub fn start() -> Self {
        Self {
            start: ticks_by_pid(),
            at: Instant::now(),
        }
    }

    /// CPU time since the start of each of `own` (role, pid), then of the broker (`beam.smp`),
    /// PostgreSQL's processes and everything else. A process that ended meanwhile is not counted
    /// (the pools here keep their connections); one that started meanwhile counts whole.
    pub fn split(&self, own: &[(&'static str, Option<u32>)]) -> CpuSplit {
        let end = ticks_by_pid();
        let mut roles: Vec<(&'static str, u64)> = own.iter().map(|(r, _)| (*r, 0)).collect();
        let (mut broker, mut database, mut other) = (0, 0, 0);
        for (pid, (comm, ticks)) in &end {
            let used = ticks - self.start.get(pid).map_or(0, |(_, t)| (*t).min(*ticks));
            if let Some(i) = own.iter().position(|(_, p)| *p == Some(*pid)) {
                roles[i].1 += used;
            } else if comm == "beam.smp" || comm == "erl_child_setup" {
                broker += used;
            } else if comm == "postgres" {
                database += used;
            } else {
                other += used;
            }
        }
        roles.extend([
            ("broker", broker),
            ("PostgreSQL", database),
            ("other", other),
        ]);
        CpuSplit {
            elapsed: self.at.elapsed(),
            roles: roles.into_iter().map(|(r, t)| (r, from_ticks(t))).collect(),
        }
    }
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
        msgcontact_api::cli::create_key(
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

pub struct Scraper {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(u32, Duration)>,
}

impl Scraper {
    pub async fn stop(self) -> (u32, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// SIGTERM, then a kill if it does not exit within 30 s.
pub async fn terminate(mut child: Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    }
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

async fn wait_healthy(addr: SocketAddr) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("process at {addr} did not become ready (see its log)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One reading of a cumulative latency histogram: (upper bound in seconds, count at or below it),
/// ascending, `+Inf` last.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Buckets(Vec<(f64, f64)>);

impl Buckets {
    /// The send histogram's buckets for one status from the API's Prometheus text.
    fn parse(text: &str, status: u16) -> Self {
        Self::parse_metric(
            text,
            msgcontact::metrics::API_DURATION_BY_STATUS,
            &format!("action=\"SendPhoneVerificationForMessageContact\",status=\"{status}\","),
        )
    }

    /// One histogram's buckets; `labels` are the ones before `le`, each followed by a comma.
    fn parse_metric(text: &str, name: &str, labels: &str) -> Self {
        let prefix = format!("{name}_bucket{{{labels}le=\"");
        let mut v: Vec<(f64, f64)> = text
            .lines()
            .filter_map(|l| {
                let (le, count) = l.strip_prefix(&prefix)?.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.trim().parse().ok()?))
            })
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self(v)
    }

    /// The smallest bucket bound at or below which the fraction `q` of the samples recorded
    /// between `earlier` and `self` fell; `None` without samples.
    pub fn quantile_since(&self, earlier: &Buckets, q: f64) -> Option<f64> {
        let before = |le: f64| {
            earlier
                .0
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, n)| *n)
        };
        let deltas: Vec<(f64, f64)> = self.0.iter().map(|&(le, n)| (le, n - before(le))).collect();
        let total = deltas.last()?.1;
        if total <= 0.0 {
            return None;
        }
        deltas
            .iter()
            .find(|(_, n)| *n >= q * total)
            .map(|&(le, _)| le)
    }
}

/// A bucket bound from [`Buckets::quantile_since`] as printed: `≤2.5` (ms), `-` without samples.
pub fn bound_ms(bound: Option<f64>) -> String {
    match bound {
        Some(le) if le.is_finite() => format!("≤{:.1}", le * 1000.0),
        Some(_) => "beyond".into(),
        None => "-".into(),
    }
}

/// An accepted send's stage histograms at one moment: two readings bound each stage's tail.
#[derive(Debug, Default, Clone)]
pub struct StageBuckets {
    request: Buckets,
    write_wait: Buckets,
    publish: Buckets,
    /// (sum, count) of the SQLite writer's pauses to start its WAL over.
    wal_pause: (f64, f64),
}

impl StageBuckets {
    /// The bucket bound of quantile `q` of each stage between `earlier` and `self`, as one line.
    pub fn quantiles_since(&self, earlier: &StageBuckets, q: f64) -> String {
        let at = |later: &Buckets, before: &Buckets| bound_ms(later.quantile_since(before, q));
        let pauses = self.wal_pause.1 - earlier.wal_pause.1;
        let wal = if pauses > 0.0 {
            format!(
                "; the writer paused {pauses:.0} times to start SQLite's WAL over, {:.1} ms each",
                (self.wal_pause.0 - earlier.wal_pause.0) / pauses * 1000.0
            )
        } else {
            String::new()
        };
        format!(
            "request {} ms = shared transaction {} + publish to confirm {}{wal}",
            at(&self.request, &earlier.request),
            at(&self.write_wait, &earlier.write_wait),
            at(&self.publish, &earlier.publish),
        )
    }
}

/// Running totals (sum, count) of the API's accept-path histograms: the difference of two
/// readings says where a level's time went.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stages {
    request: (f64, f64),
    write_wait: (f64, f64),
    batch: (f64, f64),
    batch_size: (f64, f64),
    publish: (f64, f64),
}

/// (sum, count) of histogram `name` in a /metrics text: unlabelled, or a send's.
fn total(text: &str, name: &str) -> (f64, f64) {
    let value = |suffix: &str| {
        text.lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(suffix))
            .filter(|rest| {
                rest.starts_with(' ')
                    || rest.starts_with("{action=\"SendPhoneVerificationForMessageContact\"}")
            })
            .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    (value("_sum"), value("_count"))
}

impl Stages {
    fn parse(text: &str) -> Self {
        let total = |name: &str| total(text, name);
        use msgcontact::metrics as m;
        Self {
            request: total(m::API_DURATION),
            write_wait: total(m::WRITE_WAIT),
            batch: total(m::WRITE_BATCH_DURATION),
            batch_size: total(m::WRITE_BATCH_SIZE),
            publish: total(m::PUBLISH_DURATION),
        }
    }

    /// Mean ms per send between `earlier` and `self` of the whole request, its wait for its
    /// shared transaction and its publish to confirm.
    pub fn means_since(&self, earlier: &Stages) -> (f64, f64, f64) {
        let ms = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0) / (a.1 - b.1).max(1.0) * 1000.0;
        (
            ms(self.request, earlier.request),
            ms(self.write_wait, earlier.write_wait),
            ms(self.publish, earlier.publish),
        )
    }

    /// Mean per send of each stage between `earlier` and `self`, as one line.
    pub fn since(&self, earlier: &Stages) -> String {
        let mean = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0) / (a.1 - b.1).max(1.0);
        let ms = |a, b| mean(a, b) * 1000.0;
        let (request, wait, publish) = self.means_since(earlier);
        format!(
            "request {request:.2} ms = its shared transaction {wait:.2} (batches of {:.1} sends, {:.2} ms each) + publish to confirm {publish:.2} + the rest {:.2}",
            mean(self.batch_size, earlier.batch_size),
            ms(self.batch, earlier.batch),
            request - wait - publish,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Buckets;

    #[test]
    fn a_quantile_of_the_samples_between_two_readings_is_a_bucket_bound() {
        let reading = |counts: [u32; 4]| {
            let mut text = String::from(
                "msgcontact_api_request_duration_by_status_seconds_bucket{action=\"SendPhoneVerificationForMessageContact\",status=\"200\",le=\"0.001\"} 999\n",
            );
            for (le, n) in ["0.001", "0.0025", "0.005", "+Inf"].iter().zip(counts) {
                text += &format!(
                    "msgcontact_api_request_duration_by_status_seconds_bucket{{action=\"SendPhoneVerificationForMessageContact\",status=\"503\",le=\"{le}\"}} {n}\n"
                );
            }
            Buckets::parse(&text, 503)
        };
        let earlier = reading([100, 100, 100, 100]);
        // 1,000 more: 980 within 1 ms, 15 more within 2.5 ms, 5 within 5 ms.
        let later = reading([1080, 1095, 1100, 1100]);
        assert_eq!(later.quantile_since(&earlier, 0.5), Some(0.001));
        assert_eq!(later.quantile_since(&earlier, 0.99), Some(0.0025));
        assert_eq!(later.quantile_since(&earlier, 0.999), Some(0.005));
        assert_eq!(
            later.quantile_since(&later, 0.99),
            None,
            "no samples between"
        );
        assert_eq!(Buckets::parse("", 503).quantile_since(&earlier, 0.99), None);

        // A histogram without labels of its own: 98 of 100 within 10 ms, 2 beyond every bound.
        let plain = |within: u32, all: u32| {
            Buckets::parse_metric(
                &format!(
                    "msgcontact_write_wait_seconds_bucket{{le=\"0.01\"}} {within}\nmsgcontact_write_wait_seconds_bucket{{le=\"+Inf\"}} {all}\n"
                ),
                "msgcontact_write_wait_seconds",
                "",
            )
        };
        assert_eq!(
            plain(98, 100).quantile_since(&plain(0, 0), 0.98),
            Some(0.01)
        );
        assert_eq!(
            plain(98, 100).quantile_since(&plain(0, 0), 0.99),
            Some(f64::INFINITY)
        );
    }
}
