//! Prometheus metrics: one recorder per process, rendered by `/metrics` on the API and the worker.
//!
//! Metric names are an interface (dashboards and alerts depend on them); they are all spelled here.

use std::{sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

pub const API_REQUESTS: &str = "msgcontact_api_requests_total";
pub const API_DURATION: &str = "msgcontact_api_request_duration_seconds";
/// The same latency split by HTTP status as well. A metric of its own: the SPEC names
/// `API_DURATION`'s labels as an interface, and a 503 shed at a full queue and an accepted send's
/// two durable writes are latencies one histogram of both describes neither of.
pub const API_DURATION_BY_STATUS: &str = "msgcontact_api_request_duration_by_status_seconds";
pub const ACCESS_KEY_READS: &str = "msgcontact_access_key_reads_total";
/// Connections closed on accept because `MSGCONTACT_MAX_CONNECTIONS` were open.
pub const API_CONNECTIONS_REFUSED: &str = "msgcontact_api_connections_refused_total";
/// Connections closed because a request's headers did not arrive in time.
pub const API_CONNECTIONS_TIMED_OUT: &str = "msgcontact_api_connections_timed_out_total";
/// Requests whose handler panicked (answered 500).
pub const API_PANICS: &str = "msgcontact_api_panics_total";
pub const PUBLISH_CONFIRMS: &str = "msgcontact_publish_confirms_total";
pub const PUBLISH_DURATION: &str = "msgcontact_publish_duration_seconds";
pub const WRITE_BATCH_SIZE: &str = "msgcontact_write_batch_size";
pub const WRITE_BATCH_DURATION: &str = "msgcontact_write_batch_duration_seconds";
pub const WRITE_WAIT: &str = "msgcontact_write_wait_seconds";
/// SQLite only: the writer's pauses between batches to finish a checkpoint so the WAL starts over
/// (see `db::WAL_RESTART_FRAMES`); the batches queued behind one wait this long.
pub const WAL_RESTART_PAUSE: &str = "msgcontact_wal_restart_pause_seconds";
pub const SENT_BATCH_SIZE: &str = "msgcontact_worker_sent_batch_size";
pub const QUEUE_READY: &str = "msgcontact_queue_messages_ready";
pub const QUEUE_CONSUMERS: &str = "msgcontact_queue_consumers";
pub const JOBS: &str = "msgcontact_jobs_total";
pub const PROVIDER_DURATION: &str = "msgcontact_provider_request_duration_seconds";
pub const RATE_LIMIT_WAIT: &str = "msgcontact_rate_limit_wait_seconds";
pub const OLDEST_QUEUED_AGE: &str = "msgcontact_oldest_queued_request_age_seconds";
pub const REQUESTS_BY_STATUS: &str = "msgcontact_send_requests";
pub const SEND_RATE: &str = "msgcontact_send_rate_per_second";
/// Sends refused at accept because the work queue was full.
pub const SENDS_SHED: &str = "msgcontact_sends_shed_total";
/// Jobs parked in a retry queue by the worker's rate limits (not a provider failure).
pub const RATE_LIMIT_DEFERRALS: &str = "msgcontact_rate_limit_deferrals_total";
/// Failed requests, by failure code.
pub const JOBS_FAILED: &str = "msgcontact_jobs_failed_total";
/// The worker's adaptive provider rate factor (1 = the configured rate).
pub const PROVIDER_RATE_FACTOR: &str = "msgcontact_provider_rate_factor";
/// Phone numbers the per-phone burst guard currently tracks.
pub const PHONE_LIMITER_KEYS: &str = "msgcontact_phone_limiter_keys";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder on first use and returns the handle that renders it.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // Latency histograms: 1 ms to 30 s covers an accept path and a slow provider.
            let buckets = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            // A recorder installed by someone else (tests embedding several apps) is kept.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// How often [`upkeep`] folds the histograms' pending samples into their buckets.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Folds the histograms' pending samples into their buckets every [`UPKEEP_INTERVAL`] until
/// `stop`. The recorder keeps every recorded sample until a scrape or an upkeep drains it, and
/// `build_recorder` leaves the upkeep to its owner: without it a process that nobody scrapes grows
/// with its request count.
pub fn upkeep(stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    let handle = handle();
    crate::time::every(UPKEEP_INTERVAL, stop, move || {
        handle.run_upkeep();
        std::future::ready(())
    })
}

/// Renders the Prometheus text exposition.
pub fn render() -> String {
    handle().render()
}
