//! Retry schedules as data, for database and broker operations that must eventually succeed: an
//! exponential backoff with jitter (backon), and one loop that waits it out between failures until
//! the operation succeeds, the schedule gives up, or the process is stopping.

use std::{fmt::Display, future::Future, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// How long to wait between attempts, and for how long in all.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub first: Duration,
    /// Each wait doubles up to this.
    pub max: Duration,
    /// The waits add up to at most this; `None` retries for as long as the process runs.
    pub give_up_after: Option<Duration>,
}

/// The database while it is unreachable: a job holds its delivery (no ack, no requeue loop) for up
/// to ten minutes, well under the broker's consumer timeout (30 min by default).
pub const DATABASE: Schedule = Schedule {
    first: Duration::from_millis(200),
    max: Duration::from_secs(10),
    give_up_after: Some(Duration::from_secs(600)),
};

/// The broker while a session is being rebuilt: a restarted broker is picked up within seconds.
pub const BROKER: Schedule = Schedule {
    first: Duration::from_millis(200),
    max: Duration::from_secs(5),
    give_up_after: None,
};

impl Schedule {
    /// The waits, jittered so that many jobs failing together do not retry together.
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.first)
            .with_max_delay(self.max)
            .with_jitter()
            .without_max_times()
            .with_total_delay(self.give_up_after)
            .build()
    }
}

/// Why [`until_ok`] stopped trying, with the last error.
#[derive(Debug)]
pub enum GaveUp<E> {
    /// `stop` fired.
    Stopped(E),
    /// The schedule's waits ran out.
    Exhausted(E),
}

/// Runs `op` until it succeeds. After a failure it logs `what` and waits the schedule's next delay,
/// unless `stop` fires first; an attempt under way is never interrupted.
pub async fn until_ok<T, E, F, Fut>(
    schedule: &Schedule,
    what: &str,
    stop: &CancellationToken,
    mut op: F,
) -> Result<T, GaveUp<E>>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = schedule.delays();
    loop {
        let e = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Some(delay) = delays.next() else {
            return Err(GaveUp::Exhausted(e));
        };
        tracing::warn!(error = %e, ?delay, "{what}; will retry");
        tokio::select! {
            _ = stop.cancelled() => return Err(GaveUp::Stopped(e)),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_up_to_the_cap_and_stop_at_the_total() {
        let s = Schedule {
            first: Duration::from_millis(100),
            max: Duration::from_millis(800),
            give_up_after: Some(Duration::from_secs(3)),
        };
        let delays: Vec<Duration> = s.delays().collect();
        assert!(delays.len() >= 4, "{delays:?}");
        // Jitter adds up to one more delay's worth, never less than the schedule's.
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(200));
        assert!(
            delays.iter().all(|d| *d <= Duration::from_millis(1600)),
            "{delays:?}"
        );
        let total: Duration = delays.iter().sum();
        assert!(
            total <= Duration::from_secs(3) + Duration::from_millis(1600),
            "{total:?}"
        );
    }

    #[tokio::test]
    async fn until_ok_retries_until_success_and_stops_when_asked() {
        let quick = Schedule {
            first: Duration::from_millis(1),
            max: Duration::from_millis(2),
            give_up_after: None,
        };
        let mut calls = 0;
        let r: Result<u32, GaveUp<String>> =
            until_ok(&quick, "test", &CancellationToken::new(), || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        Err(format!("failure {n}"))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert!(matches!(r, Ok(3)));
        let stop = CancellationToken::new();
        stop.cancel();
        let r: Result<(), GaveUp<&str>> =
            until_ok(&quick, "test", &stop, || async { Err("down") }).await;
        assert!(matches!(r, Err(GaveUp::Stopped("down"))));
    }
}
