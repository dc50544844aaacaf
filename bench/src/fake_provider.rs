//! A fake SMS provider speaking the webhook protocol: counts what it receives, answers 429 past
//! its rate.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::bail;
use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::Value;

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
