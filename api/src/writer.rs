//! Group commit for the accept path: concurrent requests' key checks, nonce records and send
//! reservations are applied by one writer task in shared transactions of a fixed number of
//! statements, so a burst of sends costs one commit and a handful of statements per batch instead of
//! several round trips per request, and SQLite never sees the API's writers compete. The batch's
//! reads go as one script and its writes as another ([`Script`]): on SQLite a batch is four calls
//! to the connection's thread whatever its size.
//!
//! Every limit stays exact: the batch reads its counter and contact rows locked (on SQLite the
//! transaction holds the database's write lock), decides each send in arrival order against those
//! rows exactly as a lone request would (a send accepted earlier in the batch has taken its quota
//! unit and cooldown slot for the next), and writes the result back before it commits. Rows are
//! locked in key order, and a contact's row only after its account's counter, so two API processes'
//! batches queue on the same rows in the same order and cannot deadlock.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
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
    sea_query::{
        Expr, ExprTrait, InsertStatement, LockType, OnConflict, Order, Query, SelectStatement,
    },
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
                            run(db, rx, max_batch).await;
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
        Ok(Self { tx })
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
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { op, reply })
            .await
            .map_err(|_| ApiError::ServiceUnavailable {
                retry_after_ms: 1000,
            })?;
        rx.await.map_err(|_| ApiError::ServiceUnavailable {
            retry_after_ms: 1000,
        })?
    }
}

async fn run(db: DatabaseConnection, mut rx: mpsc::Receiver<Job>, max_batch: usize) {
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
    }
}

type Applied = (Vec<Result<(), ApiError>>, Vec<(String, String)>);

fn nonce_of(op: &Op) -> Option<&NonceKey> {
    match op {
        Op::Nonce(n) => Some(n),
        Op::Send { nonce, .. } => nonce.as_ref(),
    }
}

/// One transaction for the whole batch in four calls whatever its size: it begins; one script
/// reads everything the batch decides on (the keys' status, the nonces it records, the counters
/// with the accounts' limits and the contacts, the counter and contact rows locked); every check
/// is decided in memory in arrival order; one script writes the counters, the contacts' cooldown
/// slots and the new request rows; it commits.
async fn apply(
    db: &DatabaseConnection,
    batch: &[Job],
    counters: &HashSet<(String, String)>,
) -> Result<Applied, DbErr> {
    let backend = db.get_database_backend();
    let txn = crate::write_txn(db)
        .await
        .map_err(|e| DbErr::Custom(e.to_string()))?;
    let mut results: Vec<Result<(), ApiError>> = vec![Ok(()); batch.len()];
    let mut reads = Script::new(backend);

    // Keys: authentication used a cached copy of the key, so a key disabled since is refused here,
    // inside the transaction that would spend its nonce or quota.
    let key_ids: BTreeSet<&str> = batch
        .iter()
        .filter_map(|j| nonce_of(&j.op))
        .map(|n| n.access_key_id.as_str())
        .collect();
    if !key_ids.is_empty() {
        reads.push(
            &Query::select()
                .expr(tag(KEY))
                .column(access_key::Column::AccessKeyId)
                .from(access_key::Entity)
                .and_where(access_key::Column::AccessKeyId.is_in(key_ids.iter().copied()))
                .and_where(access_key::Column::Status.eq(status::access_key::ACTIVE))
                .to_owned(),
        );
    }

    // Nonces: the rows that come back inserted are fresh; a nonce already recorded, or repeated
    // within this batch, is a replay.
    let mut seen = HashSet::new();
    let mut fresh_rows = Vec::new();
    for (i, job) in batch.iter().enumerate() {
        if let Some(n) = nonce_of(&job.op) {
            if seen.insert((n.access_key_id.as_str(), n.nonce.as_str())) {
                fresh_rows.push(signature_nonce::ActiveModel {
                    access_key_id: Set(n.access_key_id.clone()),
                    nonce: Set(n.nonce.clone()),
                    // Kept past the timestamp window on both sides: a replay with the same nonce
                    // is either caught here or rejected as expired.
                    expires_ms: Set(msgcontact::time::now_ms() + 2 * MAX_SKEW_MS),
                });
            } else {
                results[i] = Err(ApiError::SignatureNonceUsed);
            }
        }
    }
    if !fresh_rows.is_empty() {
        let mut insert = signature_nonce::Entity::insert_many(fresh_rows)
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

    // Sends: their counters (created first where they may not exist yet: a missing row cannot be
    // locked), then their contacts, both locked in key order: two API processes' batches queue on
    // the same rows in the same order. On SQLite the `BEGIN IMMEDIATE` write lock does the same
    // for the whole database. A send refused above (a replayed nonce) is read for but not decided.
    let sends: Vec<(usize, &Reservation)> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, j)| match &j.op {
            Op::Send { reservation, .. } if results[i].is_ok() => Some((i, reservation)),
            _ => None,
        })
        .collect();
    let groups: BTreeSet<(&str, &str)> = sends
        .iter()
        .map(|(_, r)| (r.account_id.as_str(), r.day.as_str()))
        .collect();
    let mut ensured = Vec::new();
    if !sends.is_empty() {
        let unknown: Vec<(&str, &str)> = groups
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
        reads.push(&lock_counters(&groups));
        let contact_ids: BTreeSet<&str> =
            sends.iter().map(|(_, r)| r.contact_id.as_str()).collect();
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
                .and_where(contact::Column::ContactId.is_in(contact_ids.iter().copied()))
                .order_by(contact::Column::ContactId, Order::Asc)
                .lock(LockType::Update)
                .to_owned(),
        );
    }

    let mut read = Read::default();
    for row in reads.rows(&txn).await? {
        read.take(&row)?;
    }

    for (i, job) in batch.iter().enumerate() {
        if let Some(n) = nonce_of(&job.op)
            && results[i].is_ok()
        {
            if !read.active_keys.contains(&n.access_key_id) {
                results[i] = Err(ApiError::AccessKeyInactive);
            } else if !read
                .fresh_nonces
                .remove(&(n.access_key_id.clone(), n.nonce.clone()))
            {
                results[i] = Err(ApiError::SignatureNonceUsed);
            }
        }
    }

    if !sends.is_empty() {
        let missing: Vec<(&str, &str)> = groups
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
            // again, then read (and lock) the counters once more.
            txn.execute(&ensure_counters(&missing)).await?;
            read.counts.clear();
            for row in txn.query_all(&lock_counters(&groups)).await? {
                read.take(&row)?;
            }
        }
        let sends: Vec<(usize, &Reservation)> = sends
            .into_iter()
            .filter(|(i, _)| results[*i].is_ok())
            .collect();
        let writes = reserve_all(backend, &sends, &mut read, &mut results);
        writes.run(&txn).await?;
    }
    txn.commit().await?;
    Ok((results, ensured))
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

/// The quota and cooldown of a batch's sends, each decided exactly as a lone request would be
/// against the rows read (and locked) for the batch, and the script that writes the result back:
/// one update per counter that changed, one for every cooldown slot taken, one insert of the new
/// request rows.
fn reserve_all(
    backend: DbBackend,
    sends: &[(usize, &Reservation)],
    read: &mut Read,
    results: &mut [Result<(), ApiError>],
) -> Script {
    let start = read.counts.clone();
    let mut claimed: BTreeMap<String, i64> = BTreeMap::new();
    let mut rows = Vec::new();
    for &(i, r) in sends {
        let outcome = decide(r, &read.limits, &mut read.counts, &mut read.contacts);
        if outcome.is_ok() {
            claimed.insert(r.contact_id.clone(), r.now_ms);
            rows.push(request_row(r));
        }
        results[i] = outcome;
    }

    let mut writes = Script::new(backend);
    for ((account, day), count) in &read.counts {
        let taken = count
            - start
                .get(&(account.clone(), day.clone()))
                .copied()
                .unwrap_or(0);
        if taken > 0 {
            writes.push(
                &daily_counter::Entity::update_many()
                    .col_expr(
                        daily_counter::Column::Count,
                        Expr::col(daily_counter::Column::Count).add(taken),
                    )
                    .filter(daily_counter::Column::AccountId.eq(account.as_str()))
                    .filter(daily_counter::Column::Day.eq(day.as_str()))
                    .into_query(),
            );
        }
    }
    if let Some((first, at)) = claimed.first_key_value() {
        // One statement for every slot the batch claimed, each with its own send time (a failed
        // publish gives a slot back only if it still holds that time).
        let mut slot = Expr::case(
            Expr::col(contact::Column::ContactId).eq(first.as_str()),
            *at,
        );
        for (id, at) in claimed.iter().skip(1) {
            slot = slot.case(Expr::col(contact::Column::ContactId).eq(id.as_str()), *at);
        }
        writes.push(
            &contact::Entity::update_many()
                .col_expr(
                    contact::Column::LastSendMs,
                    slot.finally(Expr::col(contact::Column::LastSendMs)).into(),
                )
                .filter(contact::Column::ContactId.is_in(claimed.keys().map(String::as_str)))
                .into_query(),
        );
    }
    if !rows.is_empty() {
        writes.push(&send_request::Entity::insert_many(rows).into_query());
    }
    writes
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

/// The batch's counters with their accounts' own limits, the counter rows locked in key order.
fn lock_counters(groups: &BTreeSet<(&str, &str)>) -> SelectStatement {
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
        .order_by(
            (daily_counter::Entity, daily_counter::Column::AccountId),
            Order::Asc,
        )
        .order_by(
            (daily_counter::Entity, daily_counter::Column::Day),
            Order::Asc,
        )
        // Only the counters: the account row is read, not locked (nor lockable across the outer
        // join on PostgreSQL).
        .lock_with_tables(LockType::Update, [daily_counter::Entity])
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
