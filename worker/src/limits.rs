//! Provider rate limits of one worker process: the global rate (governor), a keyed per-phone burst
//! guard (governor, keyed, with housekeeping), and an adaptive factor that backs off when the
//! provider throttles and recovers gradually.
//!
//! Every limit delays work rather than failing it. A wait longer than [`MAX_HOLD`] is not waited
//! out while holding the delivery: the caller parks the job in a delay queue instead, so no delivery
//! is held anywhere near the broker's consumer timeout.

use std::{
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant},
};

use governor::{
    DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock,
    clock::DefaultClock,
};

/// Turns the global rate may run ahead of its even schedule: 2, or 10 ms of the rate when that is
/// more, never more than one second's worth.
fn ahead(rate: NonZeroU32) -> NonZeroU32 {
    let turns = (rate.get() / 100).max(2).min(rate.get());
    NonZeroU32::new(turns).unwrap_or(NonZeroU32::MIN)
}

/// Longest a delivery waits in-process for a rate limit before it is parked in a delay queue.
pub const MAX_HOLD: Duration = Duration::from_secs(3);

/// The adaptive factor never goes below this share of the configured rate.
const MIN_FACTOR: f64 = 1.0 / 64.0;
/// Growth of the factor per second without a throttling answer (×1.1/s: 0.5 → 1 in about 7 s).
const RECOVERY_PER_SEC: f64 = 1.1;

/// What a job should do about the limits before it calls the provider.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gate {
    /// Go ahead now.
    Go,
    /// Park the job for this long, then deliver it again.
    Defer(Duration),
    /// The job's deadline comes before its turn. Nothing of the global or the reduced rate was
    /// taken: the turn goes to a job that can still use it.
    Late,
}

struct Adaptive {
    factor: f64,
    adjusted: Instant,
    /// Next free slot of the reduced rate, when reduced.
    next_slot: Instant,
}

pub struct Limits {
    rate: NonZeroU32,
    global: DefaultDirectRateLimiter,
    per_phone: DefaultKeyedRateLimiter<String>,
    adaptive: Mutex<Adaptive>,
}

impl Limits {
    /// `rate` provider calls per second for this process; each phone gets `phone_burst` messages at
    /// once, refilled at `phone_per_minute`.
    pub fn new(rate: NonZeroU32, phone_burst: NonZeroU32, phone_per_minute: NonZeroU32) -> Self {
        let now = Instant::now();
        Self {
            rate,
            // Evenly spaced, one turn ahead at most. `per_second` alone lets a whole second's
            // worth go at once: a worker starting on a backlog sent `rate` at once and `rate` more
            // within that second, which left the provider's own bucket empty, and then every
            // late-arriving request was over its rate (3 answers 429 in the first minute of a
            // held run). A burst of 1 spaces them exactly but loses each wake-up's lateness
            // (~1 ms a turn: 1.2 % of the budget at 10/s); a burst of 2 keeps the schedule one
            // turn ahead, so lateness is made up, and at most one send beyond the rate ever. At
            // rates whose turns are shorter than the timer's tick (a waiter sleeps 1 ms at least)
            // the allowance is 10 ms of the rate instead, so the turns that pass while waiters
            // sleep are not lost either (measured at 100,000/s, where jobs reached the limiter
            // ~200 µs apart, a burst of 2 drained as fast: 0.94× baseline (b) against 0.90).
            global: RateLimiter::direct(Quota::per_second(rate).allow_burst(ahead(rate))),
            per_phone: RateLimiter::keyed(
                Quota::per_minute(phone_per_minute).allow_burst(phone_burst),
            ),
            adaptive: Mutex::new(Adaptive {
                factor: 1.0,
                adjusted: now,
                next_slot: now,
            }),
        }
    }

    /// The current share of the configured rate (1.0 = unthrottled).
    pub fn factor(&self) -> f64 {
        let mut a = self.adaptive.lock().expect("limits lock");
        Self::recover(&mut a);
        a.factor
    }

    fn recover(a: &mut Adaptive) {
        if a.factor < 1.0 {
            let secs = a.adjusted.elapsed().as_secs_f64();
            a.factor = (a.factor * RECOVERY_PER_SEC.powf(secs)).min(1.0);
        }
        a.adjusted = Instant::now();
    }

    /// Checks the per-phone guard and the adaptive rate for one send to `phone`, then waits for the
    /// global rate. A long wait comes back as `Defer` without consuming anything; a turn that would
    /// come after `deadline` comes back as `Late`, without taking it.
    ///
    /// Why the deadline: a request stops being worth an SMS once it is older than a code lives. In
    /// a backlog that old, jobs at the head of the queue reach the limiter just before that age; a
    /// job that took its turn and then turned out expired wasted it, and measured, the provider got
    /// 5 SMS/s of its 20 while valid jobs waited behind.
    pub async fn acquire(&self, phone: &str, may_defer: bool, deadline: Option<Instant>) -> Gate {
        let late = |wait: Duration| deadline.is_some_and(|d| Instant::now() + wait >= d);
        let key = phone.to_owned();
        loop {
            match self.per_phone.check_key(&key) {
                Ok(()) => break,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    if late(wait) {
                        return Gate::Late;
                    }
                    if may_defer && wait > MAX_HOLD {
                        return Gate::Defer(wait);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
        let slot_wait = {
            let mut a = self.adaptive.lock().expect("limits lock");
            Self::recover(&mut a);
            if a.factor >= 1.0 {
                Duration::ZERO
            } else {
                let now = Instant::now();
                let interval = Duration::from_secs_f64(1.0 / (self.rate.get() as f64 * a.factor));
                let slot = a.next_slot.max(now);
                let wait = slot - now;
                if late(wait) {
                    return Gate::Late;
                }
                if may_defer && wait > MAX_HOLD {
                    return Gate::Defer(wait);
                }
                a.next_slot = slot + interval;
                wait
            }
        };
        if !slot_wait.is_zero() {
            tokio::time::sleep(slot_wait).await;
        }
        // What `until_ready` does, with the deadline looked at before each wait: it would take the
        // turn whenever it came, and one after the deadline belongs to others.
        loop {
            match self.global.check() {
                Ok(()) => return Gate::Go,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    if late(wait) {
                        return Gate::Late;
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The provider throttled us: halve the rate (down to a floor).
    pub fn throttled(&self) {
        let mut a = self.adaptive.lock().expect("limits lock");
        Self::recover(&mut a);
        a.factor = (a.factor * 0.5).max(MIN_FACTOR);
        metrics::gauge!(msgcontact::metrics::PROVIDER_RATE_FACTOR).set(a.factor);
        tracing::info!(factor = a.factor, "provider throttling: slowing down");
    }

    /// Drops per-phone state that has fully refilled, so memory stays bounded.
    pub fn housekeeping(&self) {
        self.per_phone.retain_recent();
        self.per_phone.shrink_to_fit();
        metrics::gauge!(msgcontact::metrics::PHONE_LIMITER_KEYS).set(self.per_phone.len() as f64);
        metrics::gauge!(msgcontact::metrics::PROVIDER_RATE_FACTOR).set(self.factor());
    }

    pub fn tracked_phones(&self) -> usize {
        self.per_phone.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[tokio::test]
    async fn per_phone_burst_then_defer() {
        let l = Limits::new(nz(1000), nz(2), nz(6));
        assert_eq!(l.acquire("86-13900000001", true, None).await, Gate::Go);
        assert_eq!(l.acquire("86-13900000001", true, None).await, Gate::Go);
        // Third within the burst window: the refill is 10 s away, longer than MAX_HOLD.
        match l.acquire("86-13900000001", true, None).await {
            Gate::Defer(d) => assert!(d > MAX_HOLD && d <= Duration::from_secs(10), "{d:?}"),
            g => panic!("third send to one phone: {g:?}"),
        }
        // Other phones are not affected.
        assert_eq!(l.acquire("86-13900000002", true, None).await, Gate::Go);
        assert_eq!(l.tracked_phones(), 2);
    }

    #[tokio::test]
    async fn a_turn_after_the_deadline_is_left_to_others() {
        let l = Limits::new(nz(2), nz(10), nz(60));
        // Two turns go at once (one ahead of the schedule); the next is 0.5 s away.
        for i in 0..2 {
            let p = format!("86-1390000{i:04}");
            assert_eq!(l.acquire(&p, true, None).await, Gate::Go);
        }
        let t = Instant::now();
        let soon = Some(t + Duration::from_millis(100));
        assert_eq!(l.acquire("86-13900000002", true, soon).await, Gate::Late);
        assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
        // The late job took nothing: the next one gets the turn 0.5 s away, not 1 s.
        let later = Some(t + Duration::from_secs(2));
        assert_eq!(l.acquire("86-13900000003", true, later).await, Gate::Go);
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(400) && waited < Duration::from_millis(900),
            "{waited:?}"
        );
        // Throttled, the reduced rate's slot is not taken by a late job either.
        l.throttled();
        let t = Instant::now();
        assert_eq!(
            l.acquire("86-13900000004", true, Some(t + Duration::from_millis(10)))
                .await,
            Gate::Late
        );
    }

    #[tokio::test]
    async fn the_global_rate_spaces_sends_instead_of_letting_a_second_go_at_once() {
        let l = Limits::new(nz(20), nz(10), nz(60));
        let t = Instant::now();
        for i in 0..5 {
            assert_eq!(
                l.acquire(&format!("86-1390000{i:04}"), true, None).await,
                Gate::Go
            );
        }
        // At 20/s, one turn ahead: the first two at once, the fifth 3 × 50 ms later. A burst of
        // a second's worth would have let all five go at once.
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(140) && waited < Duration::from_millis(600),
            "{waited:?}"
        );
    }

    #[test]
    fn the_rate_runs_ahead_by_two_turns_or_ten_milliseconds() {
        assert_eq!(ahead(nz(1)).get(), 1);
        assert_eq!(ahead(nz(20)).get(), 2);
        assert_eq!(ahead(nz(1000)).get(), 10);
        assert_eq!(ahead(nz(100_000)).get(), 1000);
    }

    #[tokio::test]
    async fn throttling_halves_and_recovers() {
        let l = Limits::new(nz(100), nz(10), nz(60));
        l.throttled();
        l.throttled();
        assert!((l.factor() - 0.25).abs() < 0.01, "{}", l.factor());
        // 25/s: ten sends take about 0.36 s instead of nothing.
        let t = Instant::now();
        for i in 0..10 {
            assert_eq!(
                l.acquire(&format!("86-1390000{i:04}"), true, None).await,
                Gate::Go
            );
        }
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        // Throttled hard, a long queue of slots defers instead of holding.
        for _ in 0..6 {
            l.throttled();
        }
        let phones: Vec<String> = (0..20).map(|i| format!("86-1380000{i:04}")).collect();
        let gates =
            futures::future::join_all(phones.iter().map(|p| l.acquire(p, true, None))).await;
        let deferred = gates.iter().filter(|g| matches!(g, Gate::Defer(_))).count();
        // At 100/64 per second only the first few slots are within MAX_HOLD.
        assert!((10..20).contains(&deferred), "{gates:?}");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let f = l.factor();
        assert!(f > MIN_FACTOR, "the factor recovers over time: {f}");
    }
}
