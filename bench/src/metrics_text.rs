//! Reading the binaries' /metrics text: a scraper, histograms' buckets, per-stage timings.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

pub struct Scraper {
    pub stop: Arc<std::sync::atomic::AtomicBool>,
    pub task: tokio::task::JoinHandle<(u32, Duration)>,
}

impl Scraper {
    pub async fn stop(self) -> (u32, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// One reading of a cumulative latency histogram: (upper bound in seconds, count at or below it),
/// ascending, `+Inf` last.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Buckets(Vec<(f64, f64)>);

impl Buckets {
    /// The send histogram's buckets for one status from the API's Prometheus text.
    pub fn parse(text: &str, status: u16) -> Self {
        Self::parse_metric(
            text,
            msgcontact::metrics::API_DURATION_BY_STATUS,
            &format!("action=\"SendPhoneVerificationForMessageContact\",status=\"{status}\","),
        )
    }

    /// One histogram's buckets; `labels` are the ones before `le`, each followed by a comma.
    pub fn parse_metric(text: &str, name: &str, labels: &str) -> Self {
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
    pub request: Buckets,
    pub write_wait: Buckets,
    pub publish: Buckets,
    /// (sum, count) of the SQLite writer's pauses to start its WAL over.
    pub wal_pause: (f64, f64),
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
pub fn total(text: &str, name: &str) -> (f64, f64) {
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
    pub fn parse(text: &str) -> Self {
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
