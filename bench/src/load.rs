//! Load generation: closed loop at a concurrency, open loop at a rate, and the latency statistics.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use msgcontact::signing;

use crate::stack::Stack;

/// Where requests go and how they are built.
#[derive(Clone)]
pub struct Target {
    client: reqwest::Client,
    /// Sends rotate over these (several API processes behind one load, as a balancer would).
    addrs: Arc<Vec<SocketAddr>>,
    /// Signed like the official SDKs (ours); the baseline takes the same bytes unsigned.
    key: Option<(String, String)>,
    contacts: Arc<Vec<(String, String)>>,
    next: Arc<AtomicUsize>,
}

impl Target {
    /// Our first API process.
    pub fn ours(stack: &Stack) -> Self {
        Self::ours_at(stack, vec![stack.api_addr()])
    }

    /// Every API process of the stack, taking turns.
    pub fn ours_all(stack: &Stack) -> Self {
        Self::ours_at(stack, stack.api_addrs())
    }

    fn ours_at(stack: &Stack, addrs: Vec<SocketAddr>) -> Self {
        Self {
            client: client(),
            addrs: Arc::new(addrs),
            key: Some((stack.key_id.clone(), stack.secret.clone())),
            contacts: stack.contacts.clone(),
            next: Default::default(),
        }
    }

    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            client: client(),
            addrs: Arc::new(vec![addr]),
            key: None,
            contacts: Arc::new(vec![("c-0000000000000000".into(), "86-13900000000".into())]),
            next: Default::default(),
        }
    }

    /// One send to the next contact; the status code, or 0 when the connection failed.
    pub async fn send(&self) -> u16 {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (contact, phone) = &self.contacts[n % self.contacts.len()];
        let query = vec![
            ("ContactId".to_owned(), contact.clone()),
            ("PhoneNumber".to_owned(), phone.clone()),
        ];
        let host = self.addrs[n % self.addrs.len()].to_string();
        let mut req = self.client.post(format!(
            "http://{host}/?{}",
            signing::canonical_query(&query)
        ));
        let headers = signing::OutboundCall {
            host: &host,
            action: "SendPhoneVerificationForMessageContact",
            version: "2022-04-19",
            query: &query,
            form_body: None,
        }
        .sign(
            self.key.as_ref().map_or("none", |k| k.0.as_str()),
            self.key.as_ref().map_or("none", |k| k.1.as_str()),
            &chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            &uuid::Uuid::new_v4().simple().to_string(),
        );
        for (k, v) in headers {
            if k != "host" {
                req = req.header(k, v);
            }
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let _ = r.bytes().await;
                status
            }
            Err(_) => 0,
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// Latencies and outcomes of one measured run.
#[derive(Default, Debug)]
pub struct Stats {
    pub ok: u64,
    pub errors: u64,
    pub unavailable: u64,
    pub error_kinds: BTreeMap<u16, u64>,
    pub elapsed: Duration,
    ok_latencies: Vec<Duration>,
    unavailable_latencies: Vec<Duration>,
}

impl Stats {
    fn record(&mut self, status: u16, latency: Duration) {
        if status == 200 {
            self.ok += 1;
            self.ok_latencies.push(latency);
        } else {
            self.errors += 1;
            *self.error_kinds.entry(status).or_default() += 1;
            if status == 503 {
                self.unavailable += 1;
                self.unavailable_latencies.push(latency);
            }
        }
    }

    fn merge(&mut self, other: Stats) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.unavailable += other.unavailable;
        for (k, v) in other.error_kinds {
            *self.error_kinds.entry(k).or_default() += v;
        }
        self.ok_latencies.extend(other.ok_latencies);
        self.unavailable_latencies
            .extend(other.unavailable_latencies);
    }

    fn finish(&mut self) {
        self.ok_latencies.sort();
        self.unavailable_latencies.sort();
    }

    pub fn ok_rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn pick(v: &[Duration], q: f64) -> Duration {
        if v.is_empty() {
            return Duration::ZERO;
        }
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    }

    /// Mean latency of successful requests.
    pub fn mean(&self) -> Duration {
        let total: Duration = self.ok_latencies.iter().sum();
        total / (self.ok_latencies.len().max(1) as u32)
    }

    /// Quantile of successful requests' latency.
    pub fn p(&self, q: f64) -> Duration {
        Self::pick(&self.ok_latencies, q)
    }

    /// Quantile of the 503 answers' latency.
    pub fn p_unavailable(&self, q: f64) -> Duration {
        Self::pick(&self.unavailable_latencies, q)
    }

    pub fn percentiles(&self) -> String {
        format!(
            "{}/{}/{}",
            crate::report::ms(self.p(0.5)),
            crate::report::ms(self.p(0.99)),
            crate::report::ms(self.p(0.999))
        )
    }
}

/// `conc` workers each sending back to back for `dur`.
pub async fn closed_loop(target: &Target, conc: usize, dur: Duration) -> Stats {
    let started = Instant::now();
    let deadline = started + dur;
    let mut tasks = Vec::with_capacity(conc);
    for _ in 0..conc {
        let t = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = Stats::default();
            while Instant::now() < deadline {
                let at = Instant::now();
                let status = t.send().await;
                s.record(status, at.elapsed());
            }
            s
        }));
    }
    let mut all = Stats::default();
    for t in tasks {
        all.merge(t.await.expect("load task"));
    }
    all.elapsed = started.elapsed();
    all.finish();
    all
}

/// Requests started at a fixed rate regardless of answers (no coordinated omission), for `dur`.
pub async fn open_loop(target: &Target, rate: f64, dur: Duration) -> Stats {
    let stats = Arc::new(Mutex::new(Stats::default()));
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * dur.as_secs_f64()) as u64;
    let mut handles = Vec::new();
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let t = target.clone();
        let s = stats.clone();
        handles.push(tokio::spawn(async move {
            // Latency counts from when the request was due, so a stalled sender shows up.
            let status = t.send().await;
            let lat = due.elapsed();
            s.lock().unwrap().record(status, lat);
        }));
        if handles.len() >= 4096 {
            handles.retain(|h| !h.is_finished());
        }
    }
    for h in handles {
        let _ = h.await;
    }
    let mut s = std::mem::take(&mut *stats.lock().unwrap());
    s.elapsed = started.elapsed().min(dur.max(Duration::from_millis(1)));
    s.finish();
    s
}

/// Two open loops at the same rate in the same moments, `a`'s requests due halfway between
/// `b`'s: whatever the machine does during the window (a disk stall, a busy neighbour) it does to
/// both, so their tails compare the two systems rather than the moments each was measured in.
pub async fn open_loop_side_by_side(
    a: &Target,
    b: &Target,
    rate: f64,
    dur: Duration,
) -> (Stats, Stats) {
    let offset = Duration::from_secs_f64(0.5 / rate);
    tokio::join!(open_loop(a, rate, dur), async {
        tokio::time::sleep(offset).await;
        open_loop(b, rate, dur).await
    })
}

/// Sends one request to each of the first `n` contacts (`conc` at a time); returns how many got 200.
pub async fn fill_distinct(target: &Target, n: usize, conc: usize) -> usize {
    let ok = Arc::new(AtomicUsize::new(0));
    let issued = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (t, ok, issued) = (target.clone(), ok.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            while issued.fetch_add(1, Ordering::Relaxed) < n {
                if t.send().await == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    ok.load(Ordering::Relaxed)
}
