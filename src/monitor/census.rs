//! The request census behind the ops report: counts per status, the oldest Queued request and the
//! send rate, read without an index on `status`.
//!
//! Why no such index: on PostgreSQL any index on a column an update changes makes that update
//! write a new entry into every index of the table (no HOT update), and every request changes
//! status two or three times. So the census reads by primary key instead. Request ids are UUIDv7,
//! ordered by the millisecond they were minted in, and a request in a terminal status (Sent,
//! Failed, Superseded) never changes again. Requests minted well before the oldest live one are
//! therefore counted once, remembered, and never read again: each poll scans only the ids from a
//! low watermark on, which trails the oldest live request by [`MARGIN_MS`].

use std::collections::VecDeque;

use crate::{db::placeholder, domain::RequestId, status::SendStatus, time::now_ms};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Statement};

/// How far the watermark trails the oldest live request. A request row becomes visible when its
/// batch commits, a little after its id was minted, and API hosts' clocks differ slightly: a row
/// that appears below the watermark would never be counted, so the margin is far wider than
/// either (a minute) while keeping the rows each poll reads to the last minute or so of traffic.
pub const MARGIN_MS: i64 = 60_000;

/// The window the send rate is measured over.
const RATE_WINDOW_MS: i64 = 60_000;

/// One census reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Counts {
    /// Requests per status, indexed by `SendStatus as usize` (the order of [`SendStatus::ALL`]).
    pub by_status: [u64; 6],
    /// `accepted_ms` of the oldest Queued request.
    pub oldest_queued_ms: Option<i64>,
    /// Requests that reached Sent in the last minute, per second.
    pub send_rate_per_second: f64,
}

/// Census state kept between polls. A fresh one reads the whole table once.
#[derive(Debug, Default)]
pub struct Census {
    /// Counts of the requests with ids below `watermark`, all terminal when they were counted.
    settled: [u64; 6],
    watermark: i64,
    /// Where the watermark may move after the next poll (if nothing live lies below it then).
    next: i64,
    /// (time, Sent total) of past polls, for the send rate.
    sent: VecDeque<(i64, u64)>,
}

fn is_live(i: usize) -> bool {
    !SendStatus::ALL[i].is_terminal()
}

impl Census {
    pub async fn poll(&mut self, db: &DatabaseConnection) -> Result<Counts, DbErr> {
        self.poll_at(db, now_ms()).await
    }

    /// A poll as of `now` (epoch ms), which must not go back between polls.
    pub async fn poll_at(&mut self, db: &DatabaseConnection, now: i64) -> Result<Counts, DbErr> {
        let backend = db.get_database_backend();
        let p = |n| placeholder(backend, n);
        // The ids in [watermark, next) are tagged so they can be settled in the same read.
        let sql = format!(
            "SELECT status, \
               CAST(CASE WHEN request_id < {next} THEN 1 ELSE 0 END AS BIGINT) AS settling, \
               COUNT(*) AS n, MIN(accepted_ms) AS oldest, \
               COUNT(CASE WHEN sent_ms >= {since} THEN 1 END) AS recent \
             FROM send_requests WHERE request_id >= {from} GROUP BY 1, 2",
            next = p(1),
            since = p(2),
            from = p(3),
        );
        let since = now - RATE_WINDOW_MS;
        let values = [
            RequestId::first_at(self.next).to_string().into(),
            since.into(),
            RequestId::first_at(self.watermark).to_string().into(),
        ];
        let rows = db
            .query_all_raw(Statement::from_sql_and_values(backend, sql, values))
            .await?;
        let mut window = [0u64; 6];
        let mut settling = [0u64; 6];
        let mut oldest_live: Option<i64> = None;
        let mut oldest_queued: Option<i64> = None;
        let mut recent = 0u64;
        for row in rows {
            let status: String = row.try_get("", "status")?;
            let Some(i) = SendStatus::parse(&status).map(|s| s as usize) else {
                continue;
            };
            let n = row.try_get::<i64>("", "n")? as u64;
            let oldest: i64 = row.try_get("", "oldest")?;
            if row.try_get::<i64>("", "settling")? == 1 {
                settling[i] += n;
            } else {
                window[i] += n;
            }
            if is_live(i) {
                oldest_live = Some(oldest_live.map_or(oldest, |o| o.min(oldest)));
            }
            if i == SendStatus::Queued as usize {
                oldest_queued = Some(oldest);
            }
            recent += row.try_get::<i64>("", "recent")? as u64;
        }
        let by_status: [u64; 6] =
            std::array::from_fn(|i| self.settled[i] + settling[i] + window[i]);
        // A live request below `next` (one that became visible late) keeps the watermark where
        // it is, and the next `next` moves back below it.
        if (0..6).all(|i| !is_live(i) || settling[i] == 0) {
            for (settled, n) in self.settled.iter_mut().zip(settling) {
                *settled += n;
            }
            self.watermark = self.next;
        }
        self.next = (oldest_live.unwrap_or(now).min(now) - MARGIN_MS).max(self.watermark);

        // Sent is final and rows are never deleted, so the Sent total's rise over the last minute
        // is exactly what was sent in it. Until the census has a minute of history, the rows read
        // by this poll say it (exact while the watermark has not moved: a fresh census reads all).
        let sent_total = by_status[SendStatus::Sent as usize];
        while self.sent.len() > 1 && self.sent[1].0 <= since {
            self.sent.pop_front();
        }
        let send_rate_per_second = match self.sent.front() {
            Some(&(at, total)) if at <= since => {
                (sent_total - total.min(sent_total)) as f64 * 1000.0 / (now - at).max(1) as f64
            }
            _ => recent as f64 / (RATE_WINDOW_MS / 1000) as f64,
        };
        self.sent.push_back((now, sent_total));
        Ok(Counts {
            by_status,
            oldest_queued_ms: oldest_queued,
            send_rate_per_second,
        })
    }
}
