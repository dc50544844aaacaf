//! Watching the pipeline: queue depths, requests by state, send rate and drain time, as a report
//! (the worker's `queues` command), as gauges and as the recent history the ops page draws.

pub mod census;

use std::time::Duration;

use lapin::{Connection, options::QueueDeclareOptions};
use sea_orm::DatabaseConnection;
use serde::Serialize;

use crate::{Error, job::Topology, status::SendStatus, time::now_ms};

pub use census::Census;

#[derive(Debug, Clone, Serialize)]
pub struct QueueDepth {
    pub queue: String,
    /// `work`, `retry` or `dead`.
    pub role: String,
    /// Ready messages; `None` if the queue does not exist.
    pub ready: Option<u32>,
    pub consumers: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub queues: Vec<QueueDepth>,
    /// Send requests by status.
    pub requests: Vec<(String, u64)>,
    pub oldest_queued_age_seconds: Option<f64>,
    /// Requests that reached Sent in the last minute, per second.
    pub send_rate_per_second: f64,
    /// Backlog (work + retry queues) divided by the current send rate.
    pub projected_drain_seconds: Option<f64>,
}

/// Reads one queue's depth with a passive declare. A missing queue closes the channel, so each
/// probe uses a fresh one.
pub async fn queue_depth(conn: &Connection, queue: &str) -> Result<Option<(u32, u32)>, Error> {
    let ch = conn.create_channel().await?;
    let r = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    let out = match r {
        Ok(q) => Some((q.message_count(), q.consumer_count())),
        Err(_) => None,
    };
    if ch.status().connected() {
        let _ = ch.close(200, "probe done".into()).await;
    }
    Ok(out)
}

/// One report. `census` carries the request counts between the polls of one watcher (a fresh
/// one reads the whole table once).
pub async fn report(
    conn: &Connection,
    db: &DatabaseConnection,
    topology: &Topology,
    census: &mut Census,
) -> Result<Report, Error> {
    let mut names = vec![(topology.work_queue(), "work")];
    names.extend((0..topology.retry_delays.len()).map(|l| (topology.retry_queue(l), "retry")));
    names.push((topology.dead_letter_queue(), "dead"));
    let mut queues = Vec::new();
    for (queue, role) in names {
        let d = queue_depth(conn, &queue).await?;
        queues.push(QueueDepth {
            queue,
            role: role.into(),
            ready: d.map(|x| x.0),
            consumers: d.map(|x| x.1),
        });
    }
    let counts = census.poll(db).await?;
    let requests = SendStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), counts.by_status[*s as usize]))
        .collect();
    let oldest = counts
        .oldest_queued_ms
        .map(|a| (now_ms() - a) as f64 / 1000.0);
    let rate = counts.send_rate_per_second;
    let backlog: u32 = queues
        .iter()
        .filter(|q| q.role != "dead")
        .filter_map(|q| q.ready)
        .sum();
    let drain = if backlog == 0 {
        Some(0.0)
    } else if rate > 0.0 {
        Some(backlog as f64 / rate)
    } else {
        None
    };
    Ok(Report {
        queues,
        requests,
        oldest_queued_age_seconds: oldest,
        send_rate_per_second: rate,
        projected_drain_seconds: drain,
    })
}

pub fn render_table(r: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<48} {:>6} {:>10} {:>10}\n",
        "QUEUE", "ROLE", "READY", "CONSUMERS"
    ));
    for q in &r.queues {
        let show = |v: Option<u32>| v.map(|n| n.to_string()).unwrap_or_else(|| "missing".into());
        out.push_str(&format!(
            "{:<48} {:>6} {:>10} {:>10}\n",
            q.queue,
            q.role,
            show(q.ready),
            show(q.consumers)
        ));
    }
    out.push_str("\nREQUESTS ");
    out.push_str(
        &r.requests
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect::<Vec<_>>()
            .join("  "),
    );
    out.push_str(&format!(
        "\noldest queued: {}   send rate: {:.2}/s   projected drain: {}\n",
        r.oldest_queued_age_seconds
            .map(|s| format!("{s:.1}s"))
            .unwrap_or_else(|| "-".into()),
        r.send_rate_per_second,
        r.projected_drain_seconds
            .map(|s| format!("{s:.0}s"))
            .unwrap_or_else(|| "unknown (nothing sent in the last minute)".into()),
    ));
    out
}

/// How often `queues --watch` refreshes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// How often the depth poller refreshes the queue gauges.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Publishes the report as gauges every few seconds until `stop` fires. Uses its own connection,
/// re-established after errors, so monitoring never disturbs publishing or consuming.
pub async fn poll_depths(
    amqp_url: String,
    db: DatabaseConnection,
    topology: Topology,
    history: History,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut conn: Option<Connection> = None;
    let mut census = Census::default();
    loop {
        let poll = async {
            if conn.as_ref().is_none_or(|c| !c.status().connected()) {
                conn = crate::amqp::connect(&amqp_url, "msgcontact-monitor")
                    .await
                    .ok();
            }
            let Some(c) = &conn else { return };
            match report(c, &db, &topology, &mut census).await {
                Ok(r) => {
                    publish_gauges(&r);
                    history.push(r);
                }
                Err(e) => tracing::debug!(error = %e, "depth poll failed"),
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = poll => {}
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
    if let Some(c) = conn {
        let _ = c.close(200, "monitor stopped".into()).await;
    }
}

fn publish_gauges(r: &Report) {
    use crate::metrics as m;
    for q in &r.queues {
        if let (Some(ready), Some(consumers)) = (q.ready, q.consumers) {
            metrics::gauge!(m::QUEUE_READY, "queue" => q.queue.clone(), "role" => q.role.clone())
                .set(ready as f64);
            metrics::gauge!(m::QUEUE_CONSUMERS, "queue" => q.queue.clone(), "role" => q.role.clone()).set(consumers as f64);
        }
    }
    for (status, n) in &r.requests {
        metrics::gauge!(m::REQUESTS_BY_STATUS, "status" => status.clone()).set(*n as f64);
    }
    metrics::gauge!(m::OLDEST_QUEUED_AGE).set(r.oldest_queued_age_seconds.unwrap_or(0.0));
    metrics::gauge!(m::SEND_RATE).set(r.send_rate_per_second);
}

/// One poll of the report, timestamped.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at_ms: i64,
    pub report: Report,
}

/// The last minutes of reports, for the ops page's chart.
#[derive(Debug, Clone, Default)]
pub struct History(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<Sample>>>);

impl History {
    /// Ten minutes at the poll interval.
    const KEEP: usize = 120;

    pub fn push(&self, report: Report) {
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        h.push_back(Sample {
            at_ms: now_ms(),
            report,
        });
        while h.len() > Self::KEEP {
            h.pop_front();
        }
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}
