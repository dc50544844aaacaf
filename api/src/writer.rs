//! Group commit for the accept path: concurrent requests' key checks, nonce records and send
//! reservations are applied by one writer task in shared transactions of a fixed number of
//! statements, so a burst of sends costs one commit and a handful of statements per batch instead of
//! several round trips per request, and SQLite never sees the API's writers compete. On SQLite the
//! batch's reads go as one script and its writes as another ([`Script`]): four calls to the
//! connection's thread whatever its size. On PostgreSQL three statements of fixed text take the
//! batch's values as arrays: five round trips whatever its size, each statement prepared once.
//!
//! Every limit stays exact: the batch reads its counter and contact rows locked (on SQLite the
//! transaction holds the database's write lock), decides each send in arrival order against those
//! rows exactly as a lone request would (a send accepted earlier in the batch has taken its quota
//! unit and cooldown slot for the next), and writes the result back before it commits. Rows are
//! locked in key order, and a contact's row only after its account's counter, so two API processes'
//! batches queue on the same rows in the same order and cannot deadlock.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use msgcontact::db::Script;
use msgcontact::{
    ApiError,
    entities::{access_key, account, contact, daily_counter, send_request, signature_nonce},
    status::{self, SendStatus},
};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter,
    QueryResult, QueryTrait,
    sea_query::{Expr, ExprTrait, InsertStatement, OnConflict, Query, SelectStatement},
};
use tokio::sync::{mpsc, oneshot};

use crate::auth::{MAX_SKEW_MS, db_unavailable};

/// A signature nonce to record (replay protection).
#[derive(Debug, Clone)]
pub struct NonceKey {
    pub access_key_id: String,
    pub nonce: String,
}

/// Everything a send reserves: a daily-quota unit, the contact's cooldown slot and the request row.
/// The contact and the account's own limit are read in the batch, under its locks.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub account_id: String,
    pub contact_id: String,
    pub phone: String,
    /// The quota when the account has no limit of its own.
    pub default_limit: u32,
    pub cooldown_ms: i64,
    pub now_ms: i64,
    pub day: String,
    pub request_id: String,
}

#[derive(Debug)]
pub enum Op {
    Nonce(NonceKey),
    Send {
        nonce: Option<NonceKey>,
        reservation: Reservation,
    },
}

impl Op {
    fn order_key(&self) -> (&str, &str) {
        match self {
            Op::Nonce(_) => ("", ""),
            Op::Send { reservation: r, .. } => (&r.account_id, &r.contact_id),
        }
    }
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<(), ApiError>>,
}

/// Handle to the writer task; cheap to share.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    wal_restart: Arc<AtomicBool>,
}

impl Writer {
    /// Connects the writer's own database connection and starts the writer on a thread of its
    /// own. It ends when every handle is dropped.
    ///
    /// Its own thread and runtime because a batch is a chain of short statements, each of which
    /// wakes the writer again, while it holds the write lock (on PostgreSQL the counter rows): off
    /// the request runtime those wake-ups never queue behind HTTP tasks. Measured on 2 cores at
    /// c=32 this changed throughput by no more than the run-to-run noise.
    pub async fn start(database_url: &str, max_batch: usize) -> Result<Self, msgcontact::Error> {
        let max_batch = max_batch.max(1);
        // The queue bounds waiting requests; beyond it callers wait for room (HTTP backpressure).
        let (tx, rx) = mpsc::channel(max_batch * 8);
        let (ready, connected) = oneshot::channel();
        let url = database_url.to_owned();
        let wal_restart = Arc::new(AtomicBool::new(false));
        let restart = wal_restart.clone();
        std::thread::Builder::new()
            .name("msgcontact-writer".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready.send(Err(msgcontact::Error::Config(format!(
                            "writer runtime: {e}"
                        ))));
                        return;
                    }
                };
                rt.block_on(async move {
                    match msgcontact::db::connect_single(&url).await {
                        Ok(db) => {
                            let _ = ready.send(Ok(()));
                            run(db, rx, max_batch, restart).await;
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| msgcontact::Error::Config(format!("writer thread: {e}")))?;
        connected
            .await
            .map_err(|_| msgcontact::Error::Config("writer thread ended at start".into()))??;
        Ok(Self { tx, wal_restart })
    }

    /// Asks the writer to finish a SQLite checkpoint on its own connection after its current
    /// batch, so that its next batch writes the WAL from the start (see
    /// [`msgcontact::db::WAL_RESTART_FRAMES`] for why the checkpoint task alone cannot do that).
    pub fn restart_wal_soon(&self) {
        self.wal_restart.store(true, Ordering::Relaxed);
    }

    /// Records a nonce in a coming batch without waiting for it (a request answered at once
    /// still spends its nonce). Dropped if the writer's queue is full: that request got an
    /// error, so a replay of it gains nothing it could not have by being sent again.
    pub fn record_nonce_later(&self, nonce: NonceKey) {
        let (reply, _) = oneshot::channel();
        let _ = self.tx.try_send(Job {
            op: Op::Nonce(nonce),
            reply,
        });
    }

    /// Applies one operation in the next batch and returns its own outcome.
    pub async fn submit(&self, op: Op) -> Result<(), ApiError> {
        // Recorded beside the batch's own duration, which misses the batches queued ahead: in a
        // disk stall batches fill to the maximum one after another, each still fairly short,
        // while the requests behind them wait for all of them.
        let started = std::time::Instant::now();
        let (reply, rx) = oneshot::channel();
        let outcome = match self.tx.send(Job { op, reply }).await {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        metrics::histogram!(msgcontact::metrics::WRITE_WAIT)
            .record(started.elapsed().as_secs_f64());
        outcome.unwrap_or(Err(ApiError::ServiceUnavailable {
            retry_after_ms: 1000,
        }))
    }
}

async fn run(
    db: DatabaseConnection,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    wal_restart: Arc<AtomicBool>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    // Daily counter rows known to exist, so their insert is not repeated for every request.
    let mut counters: HashSet<(String, String)> = HashSet::new();
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        batch.sort_by(|a, b| a.op.order_key().cmp(&b.op.order_key()));
        metrics::histogram!(msgcontact::metrics::WRITE_BATCH_SIZE).record(batch.len() as f64);
        let started = std::time::Instant::now();
        // One retry covers a lost deadlock or serialization race; the batch is all-or-nothing.
        let mut outcome = apply(&db, &batch, &counters).await;
        if let Err(e) = &outcome {
            tracing::warn!(error = %e, size = batch.len(), "write batch failed; retrying once");
            tokio::time::sleep(Duration::from_millis(20)).await;
            outcome = apply(&db, &batch, &counters).await;
        }
        metrics::histogram!(msgcontact::metrics::WRITE_BATCH_DURATION)
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok((results, ensured)) => {
                if counters.len() > 100_000 {
                    counters.clear();
                }
                counters.extend(ensured);
                for (job, r) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "write batch failed");
                for job in batch.drain(..) {
                    let _ = job
                        .reply
                        .send(Err(db_unavailable(DbErr::Custom(e.to_string()))));
                }
            }
        }
        if wal_restart.swap(false, Ordering::Relaxed) {
            // Between batches, nothing of this writer's is uncommitted: copying what the
            // checkpoint task's pass left (the few batches committed while it ran) makes the WAL
            // fully copied when the next batch begins, and that batch writes it from the start.
            let started = std::time::Instant::now();
            match msgcontact::db::checkpoint(&db).await {
                Ok(_) => metrics::histogram!(msgcontact::metrics::WAL_RESTART_PAUSE)
                    .record(started.elapsed().as_secs_f64()),
                Err(e) => tracing::warn!(error = %e, "writer's WAL checkpoint failed"),
            }
        }
    }
}

type Applied = (Vec<Result<(), ApiError>>, Vec<(String, String)>);

fn nonce_of(op: &Op) -> Option<&NonceKey> {
    match op {
        Op::Nonce(n) => Some(n),
        Op::Send { nonce, .. } => nonce.as_ref(),
    }
}

/// What a batch asks of the database, gathered before anything runs.
struct Plan<'a> {
    results: Vec<Result<(), ApiError>>,
    /// The keys whose nonces or sends the batch records.
    key_ids: BTreeSet<&'a str>,
    /// The nonces to record, each once; one repeated within the batch is refused already.
    fresh: Vec<&'a NonceKey>,
    /// Kept past the timestamp window on both sides: a replay with the same nonce is either
    /// caught by its row or rejected as expired.
    nonce_expires_ms: i64,
    /// The sends still to decide (a send refused for its nonce is not), in arrival order.
    sends: Vec<(usize, &'a Reservation)>,
    /// Their (account, day) counters and their contacts, in key order: the order they are locked.
    groups: BTreeSet<(&'a str, &'a str)>,
    contact_ids: BTreeSet<&'a str>,
}

impl<'a> Plan<'a> {
    fn of(batch: &'a [Job]) -> Self {
        let mut results: Vec<Result<(), ApiError>> = vec![Ok(()); batch.len()];
        let mut seen = HashSet::new();
        let mut fresh = Vec::new();
        for (i, job) in batch.iter().enumerate() {
            if let Some(n) = nonce_of(&job.op) {
                if seen.insert((n.access_key_id.as_str(), n.nonce.as_str())) {
                    fresh.push(n);
                } else {
                    results[i] = Err(ApiError::SignatureNonceUsed);
                }
            }
        }
        let sends: Vec<(usize, &Reservation)> = batch
            .iter()
            .enumerate()
            .filter_map(|(i, j)| match &j.op {
                Op::Send { reservation, .. } if results[i].is_ok() => Some((i, reservation)),
                _ => None,
            })
            .collect();
        Self {
            key_ids: fresh.iter().map(|n| n.access_key_id.as_str()).collect(),
            groups: sends
                .iter()
                .map(|(_, r)| (r.account_id.as_str(), r.day.as_str()))
                .collect(),
            contact_ids: sends.iter().map(|(_, r)| r.contact_id.as_str()).collect(),
            results,
            fresh,
            nonce_expires_ms: msgcontact::time::now_ms() + 2 * MAX_SKEW_MS,
            sends,
        }
    }

    /// Refuses what the reads showed: a key disabled since authentication read its cached copy,
    /// a nonce already recorded. Then decides every remaining send in arrival order.
    fn decide(&mut self, batch: &[Job], read: &mut Read) -> Reserved<'a> {
        for (i, job) in batch.iter().enumerate() {
            if let Some(n) = nonce_of(&job.op)
                && self.results[i].is_ok()
            {
                if !read.active_keys.contains(&n.access_key_id) {
                    self.results[i] = Err(ApiError::AccessKeyInactive);
                } else if !read
                    .fresh_nonces
                    .remove(&(n.access_key_id.clone(), n.nonce.clone()))
                {
                    self.results[i] = Err(ApiError::SignatureNonceUsed);
                }
            }
        }
        let start = read.counts.clone();
        let mut reserved = Reserved::default();
        for &(i, r) in &self.sends {
            if self.results[i].is_err() {
                continue;
            }
            let outcome = decide(r, &read.limits, &mut read.counts, &mut read.contacts);
            if outcome.is_ok() {
                reserved.claimed.insert(r.contact_id.as_str(), r.now_ms);
                reserved.rows.push(r);
            }
            self.results[i] = outcome;
        }
        for ((account, day), count) in &read.counts {
            let taken = count
                - start
                    .get(&(account.clone(), day.clone()))
                    .copied()
                    .unwrap_or(0);
            if taken > 0 {
                reserved.taken.push((account.clone(), day.clone(), taken));
            }
        }
        reserved
    }
}

/// What a batch's accepted sends take, to be written back before it commits.
#[derive(Default)]
struct Reserved<'a> {
    /// Quota units taken per (account, day) counter.
    taken: Vec<(String, String, i32)>,
    /// Cooldown slots claimed, each with its own send time (a failed publish gives a slot back
    /// only if it still holds that time).
    claimed: BTreeMap<&'a str, i64>,
    /// The new request rows.
    rows: Vec<&'a Reservation>,
}

/// One transaction for the whole batch in a fixed number of round trips whatever its size, on
/// either database: it begins; the reads take everything the batch decides on, the counter and
/// contact rows locked; every check is decided in memory in arrival order; the writes put back
/// the counters, the contacts' cooldown slots and the new request rows; it commits.
async fn apply(
    db: &DatabaseConnection,
    batch: &[Job],
    counters: &HashSet<(String, String)>,
) -> Result<Applied, DbErr> {
    let txn = crate::write_txn(db)
        .await
        .map_err(|e| DbErr::Custom(e.to_string()))?;
    let mut plan = Plan::of(batch);
    let (mut read, ensured) = match db.get_database_backend() {
        DbBackend::Postgres => (pg::read(&txn, &plan).await?, Vec::new()),
        backend => scripted::read(&txn, backend, &plan, counters).await?,
    };
    let reserved = plan.decide(batch, &mut read);
    match db.get_database_backend() {
        DbBackend::Postgres => pg::write(&txn, &reserved).await?,
        backend => scripted::write(backend, &reserved).run(&txn).await?,
    }
    txn.commit().await?;
    Ok((plan.results, ensured))
}

/// The batch on PostgreSQL: three statements of fixed text whose values travel as arrays, so
/// each is parsed and planned once per connection and costs one round trip whatever the batch's
/// size (statements built for the batch at hand had a new text for every batch size: each cost
/// another round trip to be prepared and pushed others out of the connection's statement cache).
mod pg {
    use super::*;
    use msgcontact::db::text_array;
    use sea_orm::{DatabaseTransaction, Statement, Value};

    /// The nonces recorded (those that come back were fresh), the keys still active, and the
    /// batch's counters, created where missing and locked in key order: an upsert that sets a
    /// counter to itself locks the row, new or not, and returns its latest committed count.
    const READ: &str = r#"
WITH fresh AS (
    INSERT INTO signature_nonces (access_key_id, nonce, expires_ms)
    SELECT k, n, $3::bigint FROM unnest($1::text[], $2::text[]) AS t(k, n)
    ON CONFLICT (access_key_id, nonce) DO NOTHING
    RETURNING access_key_id, nonce
), counted AS (
    INSERT INTO daily_counters (account_id, day, count)
    SELECT a, d, 0 FROM unnest($5::text[], $6::text[]) AS t(a, d) ORDER BY a, d
    ON CONFLICT (account_id, day) DO UPDATE SET count = daily_counters.count
    RETURNING account_id, day, count
)
SELECT 'key'::text, access_key_id::text, NULL::text, NULL::integer, NULL::integer
    FROM access_keys WHERE access_key_id = ANY($4::text[]) AND status = $7
UNION ALL
SELECT 'nonce', access_key_id, nonce, NULL, NULL FROM fresh
UNION ALL
SELECT 'counter', c.account_id, c.day, c.count, a.daily_limit
    FROM counted c LEFT JOIN accounts a ON a.account_id = c.account_id"#;

    /// The batch's contacts, locked after the counters and in key order, as everywhere.
    const CONTACTS: &str = r#"
SELECT 'contact'::text, contact_id, account_id, phone, pending_phone, last_send_ms
    FROM contacts WHERE contact_id = ANY($1::text[]) ORDER BY contact_id FOR UPDATE"#;

    const WRITE: &str = r#"
WITH counted AS (
    UPDATE daily_counters SET count = daily_counters.count + t.n
    FROM unnest($1::text[], $2::text[], $3::integer[]) AS t(a, d, n)
    WHERE daily_counters.account_id = t.a AND daily_counters.day = t.d
), slots AS (
    UPDATE contacts SET last_send_ms = t.ms
    FROM unnest($4::text[], $5::bigint[]) AS t(id, ms)
    WHERE contacts.contact_id = t.id
)
INSERT INTO send_requests (request_id, account_id, contact_id, phone, status, attempts,
    ambiguous_attempts, day, accepted_ms, updated_ms)
SELECT r, a, c, p, $6::text, 0, 0, d, ms, ms
    FROM unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[])
    AS t(r, a, c, p, d, ms)"#;

    fn statement(sql: &str, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
    }

    pub(super) async fn read(txn: &DatabaseTransaction, plan: &Plan<'_>) -> Result<Read, DbErr> {
        let mut read = Read::default();
        let rows = txn
            .query_all_raw(statement(
                READ,
                vec![
                    text_array(plan.fresh.iter().map(|n| n.access_key_id.as_str())),
                    text_array(plan.fresh.iter().map(|n| n.nonce.as_str())),
                    plan.nonce_expires_ms.into(),
                    text_array(plan.key_ids.iter().copied()),
                    text_array(plan.groups.iter().map(|(a, _)| *a)),
                    text_array(plan.groups.iter().map(|(_, d)| *d)),
                    status::access_key::ACTIVE.into(),
                ],
            ))
            .await?;
        for row in &rows {
            read.take(row)?;
        }
        if !plan.contact_ids.is_empty() {
            let rows = txn
                .query_all_raw(statement(
                    CONTACTS,
                    vec![text_array(plan.contact_ids.iter().copied())],
                ))
                .await?;
            for row in &rows {
                read.take(row)?;
            }
        }
        Ok(read)
    }

    pub(super) async fn write(
        txn: &DatabaseTransaction,
        reserved: &Reserved<'_>,
    ) -> Result<(), DbErr> {
        if reserved.rows.is_empty() {
            return Ok(());
        }
        let rows = &reserved.rows;
        txn.execute_raw(statement(
            WRITE,
            vec![
                text_array(reserved.taken.iter().map(|(a, _, _)| a.as_str())),
                text_array(reserved.taken.iter().map(|(_, d, _)| d.as_str())),
                reserved
                    .taken
                    .iter()
                    .map(|(_, _, n)| *n)
                    .collect::<Vec<i32>>()
                    .into(),
                text_array(reserved.claimed.keys().copied()),
                reserved
                    .claimed
                    .values()
                    .copied()
                    .collect::<Vec<i64>>()
                    .into(),
                SendStatus::Queued.as_str().into(),
                text_array(rows.iter().map(|r| r.request_id.as_str())),
                text_array(rows.iter().map(|r| r.account_id.as_str())),
                text_array(rows.iter().map(|r| r.contact_id.as_str())),
                text_array(rows.iter().map(|r| r.phone.as_str())),
                text_array(rows.iter().map(|r| r.day.as_str())),
                rows.iter().map(|r| r.now_ms).collect::<Vec<i64>>().into(),
            ],
        ))
        .await?;
        Ok(())
    }
}

/// The batch on SQLite: the reads as one script and the writes as another ([`Script`]), each one
/// call to the connection's thread whatever the batch's size.
mod scripted {
    use super::*;
    use sea_orm::DatabaseTransaction;

    /// Reads everything the batch decides on, creating the counters it believes may not exist
    /// yet; returns those so the writer remembers them.
    pub(super) async fn read(
        txn: &DatabaseTransaction,
        backend: DbBackend,
        plan: &Plan<'_>,
        counters: &HashSet<(String, String)>,
    ) -> Result<(Read, Vec<(String, String)>), DbErr> {
        let mut reads = Script::new(backend);
        if !plan.key_ids.is_empty() {
            reads.push(
                &Query::select()
                    .expr(tag(KEY))
                    .column(access_key::Column::AccessKeyId)
                    .from(access_key::Entity)
                    .and_where(access_key::Column::AccessKeyId.is_in(plan.key_ids.iter().copied()))
                    .and_where(access_key::Column::Status.eq(status::access_key::ACTIVE))
                    .to_owned(),
            );
        }
        // The rows that come back inserted are fresh; a nonce already recorded is a replay.
        if !plan.fresh.is_empty() {
            let mut insert = signature_nonce::Entity::insert_many(plan.fresh.iter().map(|n| {
                signature_nonce::ActiveModel {
                    access_key_id: Set(n.access_key_id.clone()),
                    nonce: Set(n.nonce.clone()),
                    expires_ms: Set(plan.nonce_expires_ms),
                }
            }))
            .on_conflict(
                OnConflict::columns([
                    signature_nonce::Column::AccessKeyId,
                    signature_nonce::Column::Nonce,
                ])
                .do_nothing()
                .to_owned(),
            )
            .into_query();
            insert.returning(Query::returning().exprs([
                tag(NONCE),
                Expr::col(signature_nonce::Column::AccessKeyId),
                Expr::col(signature_nonce::Column::Nonce),
            ]));
            reads.push(&insert);
        }
        // Counters (created first where they may not exist yet: a missing row cannot be read
        // back), then contacts. The `BEGIN IMMEDIATE` write lock serializes whole batches.
        let mut ensured = Vec::new();
        if !plan.sends.is_empty() {
            let unknown: Vec<(&str, &str)> = plan
                .groups
                .iter()
                .filter(|(a, d)| !counters.contains(&((*a).to_owned(), (*d).to_owned())))
                .copied()
                .collect();
            if !unknown.is_empty() {
                reads.push(&ensure_counters(&unknown));
                ensured.extend(
                    unknown
                        .iter()
                        .map(|(a, d)| ((*a).to_owned(), (*d).to_owned())),
                );
            }
            reads.push(&counters_of(&plan.groups));
            reads.push(
                &Query::select()
                    .expr(tag(CONTACT))
                    .columns([
                        contact::Column::ContactId,
                        contact::Column::AccountId,
                        contact::Column::Phone,
                        contact::Column::PendingPhone,
                        contact::Column::LastSendMs,
                    ])
                    .from(contact::Entity)
                    .and_where(contact::Column::ContactId.is_in(plan.contact_ids.iter().copied()))
                    .to_owned(),
            );
        }
        let mut read = Read::default();
        for row in reads.rows(txn).await? {
            read.take(&row)?;
        }
        let missing: Vec<(&str, &str)> = plan
            .groups
            .iter()
            .filter(|(a, d)| {
                !read
                    .counts
                    .contains_key(&((*a).to_owned(), (*d).to_owned()))
            })
            .copied()
            .collect();
        if !missing.is_empty() {
            // A row believed to exist was purged since (a new day's housekeeping): create it
            // again, then read the counters once more.
            txn.execute(&ensure_counters(&missing)).await?;
            read.counts.clear();
            for row in txn.query_all(&counters_of(&plan.groups)).await? {
                read.take(&row)?;
            }
        }
        Ok((read, ensured))
    }

    /// One update per counter that changed, one for every cooldown slot taken, one insert of
    /// the new request rows.
    pub(super) fn write(backend: DbBackend, reserved: &Reserved<'_>) -> Script {
        let mut writes = Script::new(backend);
        for (account, day, taken) in &reserved.taken {
            writes.push(
                &daily_counter::Entity::update_many()
                    .col_expr(
                        daily_counter::Column::Count,
                        Expr::col(daily_counter::Column::Count).add(*taken),
                    )
                    .filter(daily_counter::Column::AccountId.eq(account.as_str()))
                    .filter(daily_counter::Column::Day.eq(day.as_str()))
                    .into_query(),
            );
        }
        if let Some((first, at)) = reserved.claimed.first_key_value() {
            let mut slot = Expr::case(Expr::col(contact::Column::ContactId).eq(*first), *at);
            for (id, at) in reserved.claimed.iter().skip(1) {
                slot = slot.case(Expr::col(contact::Column::ContactId).eq(*id), *at);
            }
            writes.push(
                &contact::Entity::update_many()
                    .col_expr(
                        contact::Column::LastSendMs,
                        slot.finally(Expr::col(contact::Column::LastSendMs)).into(),
                    )
                    .filter(contact::Column::ContactId.is_in(reserved.claimed.keys().copied()))
                    .into_query(),
            );
        }
        if !reserved.rows.is_empty() {
            writes.push(
                &send_request::Entity::insert_many(reserved.rows.iter().map(|r| request_row(r)))
                    .into_query(),
            );
        }
        writes
    }
}

/// Tags on the rows of the read script, so each row is told apart from the others by its first
/// column.
const KEY: &str = "key";
const NONCE: &str = "nonce";
const COUNTER: &str = "counter";
const CONTACT: &str = "contact";

/// A tag as an SQL literal (part of the statement text, not a bound value).
fn tag(name: &str) -> Expr {
    Expr::cust(format!("'{name}'"))
}

/// A contact as the checks of a send need it.
#[derive(Debug)]
struct ContactRow {
    account_id: String,
    phone: Option<String>,
    pending_phone: Option<String>,
    last_send_ms: Option<i64>,
}

/// What the read script found.
#[derive(Default)]
struct Read {
    active_keys: HashSet<String>,
    fresh_nonces: HashSet<(String, String)>,
    counts: HashMap<(String, String), i32>,
    limits: HashMap<String, Option<i32>>,
    contacts: HashMap<String, ContactRow>,
}

impl Read {
    fn take(&mut self, row: &QueryResult) -> Result<(), DbErr> {
        let tag: String = row.try_get_by_index(0)?;
        match tag.as_str() {
            KEY => {
                self.active_keys.insert(row.try_get_by_index(1)?);
            }
            NONCE => {
                self.fresh_nonces
                    .insert((row.try_get_by_index(1)?, row.try_get_by_index(2)?));
            }
            COUNTER => {
                let account: String = row.try_get_by_index(1)?;
                self.counts.insert(
                    (account.clone(), row.try_get_by_index(2)?),
                    row.try_get_by_index(3)?,
                );
                self.limits.insert(account, row.try_get_by_index(4)?);
            }
            CONTACT => {
                self.contacts.insert(
                    row.try_get_by_index(1)?,
                    ContactRow {
                        account_id: row.try_get_by_index(2)?,
                        phone: row.try_get_by_index(3)?,
                        pending_phone: row.try_get_by_index(4)?,
                        last_send_ms: row.try_get_by_index(5)?,
                    },
                );
            }
            other => return Err(DbErr::Custom(format!("unexpected row tag {other:?}"))),
        }
        Ok(())
    }
}

/// One send's synchronous checks against the rows read for its batch, in the SPEC's order (the
/// contact, the number, the quota's 409 before the cooldown's 429); an accepted send takes its
/// quota unit and cooldown slot in those rows, so the batch's next send sees them taken.
fn decide(
    r: &Reservation,
    limits: &HashMap<String, Option<i32>>,
    counts: &mut HashMap<(String, String), i32>,
    contacts: &mut HashMap<String, ContactRow>,
) -> Result<(), ApiError> {
    let c = contacts
        .get_mut(&r.contact_id)
        .filter(|c| c.account_id == r.account_id)
        .ok_or(ApiError::ContactNotFound)?;
    let pending = c.pending_phone.as_deref() == Some(r.phone.as_str());
    if !pending && c.phone.as_deref() != Some(r.phone.as_str()) {
        return Err(ApiError::InvalidParameter("PhoneNumber"));
    }
    if !pending {
        return Err(ApiError::VerificationNotFound);
    }
    let limit = limits
        .get(&r.account_id)
        .copied()
        .flatten()
        .map(|l| Ord::max(l, 0) as u32)
        .unwrap_or(r.default_limit);
    let count = counts
        .entry((r.account_id.clone(), r.day.clone()))
        .or_insert(0);
    if *count as i64 >= limit as i64 {
        return Err(ApiError::DailyLimitExceeded);
    }
    if r.cooldown_ms > 0
        && let Some(last) = c.last_send_ms
        && last > r.now_ms - r.cooldown_ms
    {
        return Err(ApiError::ContactThrottled {
            retry_after_ms: Ord::max(last + r.cooldown_ms - r.now_ms, 1) as u64,
        });
    }
    *count += 1;
    c.last_send_ms = Some(r.now_ms);
    Ok(())
}

/// The batch's counters with their accounts' own limits (SQLite: the transaction's write lock
/// already keeps them from changing under the batch).
fn counters_of(groups: &BTreeSet<(&str, &str)>) -> SelectStatement {
    let accounts: BTreeSet<&str> = groups.iter().map(|(a, _)| *a).collect();
    let days: BTreeSet<&str> = groups.iter().map(|(_, d)| *d).collect();
    Query::select()
        .expr(tag(COUNTER))
        .column((daily_counter::Entity, daily_counter::Column::AccountId))
        .column((daily_counter::Entity, daily_counter::Column::Day))
        .column((daily_counter::Entity, daily_counter::Column::Count))
        .column((account::Entity, account::Column::DailyLimit))
        .from(daily_counter::Entity)
        .left_join(
            account::Entity,
            Expr::col((account::Entity, account::Column::AccountId))
                .equals((daily_counter::Entity, daily_counter::Column::AccountId)),
        )
        .and_where(
            Expr::col((daily_counter::Entity, daily_counter::Column::AccountId)).is_in(accounts),
        )
        .and_where(Expr::col((daily_counter::Entity, daily_counter::Column::Day)).is_in(days))
        .to_owned()
}

/// Creates the counter rows that may not exist yet (at zero; an existing row is left alone).
fn ensure_counters(groups: &[(&str, &str)]) -> InsertStatement {
    daily_counter::Entity::insert_many(groups.iter().map(|(account, day)| {
        daily_counter::ActiveModel {
            account_id: Set((*account).to_owned()),
            day: Set((*day).to_owned()),
            count: Set(0),
        }
    }))
    .on_conflict(
        OnConflict::columns([daily_counter::Column::AccountId, daily_counter::Column::Day])
            .do_nothing()
            .to_owned(),
    )
    .into_query()
}

fn request_row(r: &Reservation) -> send_request::ActiveModel {
    send_request::ActiveModel {
        request_id: Set(r.request_id.clone()),
        account_id: Set(r.account_id.clone()),
        contact_id: Set(r.contact_id.clone()),
        phone: Set(r.phone.clone()),
        status: Set(SendStatus::Queued.as_str().into()),
        attempts: Set(0),
        ambiguous_attempts: Set(0),
        failure_code: Set(None),
        failure_message: Set(None),
        provider_message_id: Set(None),
        verification_id: Set(None),
        day: Set(r.day.clone()),
        accepted_ms: Set(r.now_ms),
        sent_ms: Set(None),
        updated_ms: Set(r.now_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::TempDb;

    fn nonce(i: usize) -> Op {
        Op::Nonce(NonceKey {
            access_key_id: "key".into(),
            nonce: format!("n{i}"),
        })
    }

    /// The frames in the WAL, as a passive checkpoint counts them (copying them too).
    async fn wal_frames(db: &DatabaseConnection) -> i64 {
        msgcontact::db::checkpoint(db).await.unwrap().unwrap().0
    }

    /// Writes 20 batches, asks for a restart or not, and writes two more: returns the WAL's
    /// frames after them. Nothing else checkpoints here, as under a steady load nothing else
    /// finds a moment when every frame is copied and no batch has begun.
    async fn frames_after(restart: bool) -> i64 {
        let db = TempDb(std::env::temp_dir().join(format!(
            "msgcontact-wal-{}.sqlite",
            uuid::Uuid::new_v4().simple()
        )));
        let url = format!("sqlite://{}?mode=rwc", db.0.display());
        let pool = msgcontact::db::connect(&url, 2).await.unwrap();
        access_key::Entity::insert(access_key::ActiveModel {
            access_key_id: Set("key".into()),
            account_id: Set("1234567890123456".into()),
            secret: Set("testSecret".into()),
            status: Set(status::access_key::ACTIVE.into()),
            created_ms: Set(0),
        })
        .exec_without_returning(&pool)
        .await
        .unwrap();
        let writer = Writer::start(&url, 16).await.unwrap();
        for i in 0..20 {
            writer.submit(nonce(i)).await.unwrap();
        }
        if restart {
            writer.restart_wal_soon();
        }
        // The writer looks at the request after its next batch, between that batch and the last.
        writer.submit(nonce(100)).await.unwrap();
        writer.submit(nonce(101)).await.unwrap();
        wal_frames(&pool).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn asked_to_restart_the_wal_the_writer_starts_it_over_after_its_next_batch() {
        // Every batch adds a frame, and without a full copy the WAL keeps them all.
        let kept = frames_after(false).await;
        assert!(kept >= 22, "the WAL started over by itself: {kept} frames");
        // The writer copied the rest after the batch that followed the request, and the last
        // batch wrote the WAL from its start.
        let restarted = frames_after(true).await;
        // A few frames (one or two batches, more when a busy machine delays the writer's look),
        // against every batch's frames kept without the restart.
        assert!(
            restarted * 4 < kept,
            "the WAL did not start over: {restarted} frames (without a restart: {kept})"
        );
    }
}
