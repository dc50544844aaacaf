//! Group commit for the accept path: concurrent requests' nonce records and send reservations are
//! applied by one writer task in shared transactions, so a burst of sends costs one commit per
//! batch instead of one (or two) per request, and SQLite never sees the API's writers compete.
//!
//! Every limit stays exact: each reservation runs the same conditional statements as a lone
//! request would (the quota's `count < limit` increment, the cooldown claim), in order, inside the
//! batch's transaction; on PostgreSQL the row locks still serialize batches of different API
//! processes. Items are applied in (account, contact) order so two processes' batches take their
//! locks in the same order and cannot deadlock.

use std::{collections::HashSet, time::Duration};

use msgcontact::{
    ApiError,
    entities::{contact, daily_counter, send_request, signature_nonce},
    status::SendStatus,
};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter,
    sea_query::{Expr, ExprTrait, OnConflict},
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
#[derive(Debug, Clone)]
pub struct Reservation {
    pub account_id: String,
    pub contact_id: String,
    pub phone: String,
    pub limit: u32,
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
    /// Starts the writer task. It ends when every handle is dropped.
    pub fn start(db: DatabaseConnection, max_batch: usize) -> Self {
        // The queue bounds waiting requests; beyond it callers wait for room (HTTP backpressure).
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 8);
        tokio::spawn(run(db, rx, max_batch.max(1)));
        Self { tx }
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
        metrics::histogram!("msgcontact_write_batch_size").record(batch.len() as f64);
        // One retry covers a lost deadlock or serialization race; the batch is all-or-nothing.
        let mut outcome = apply(&db, &batch, &counters).await;
        if let Err(e) = &outcome {
            tracing::warn!(error = %e, size = batch.len(), "write batch failed; retrying once");
            tokio::time::sleep(Duration::from_millis(20)).await;
            outcome = apply(&db, &batch, &counters).await;
        }
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

/// One transaction for the whole batch: the nonces in one statement, then each reservation's
/// conditional updates in order, then the accepted requests' rows in one statement.
async fn apply(
    db: &DatabaseConnection,
    batch: &[Job],
    counters: &HashSet<(String, String)>,
) -> Result<Applied, DbErr> {
    let txn = crate::write_txn(db)
        .await
        .map_err(|e| DbErr::Custom(e.to_string()))?;
    let mut results: Vec<Result<(), ApiError>> = vec![Ok(()); batch.len()];

    // Nonces: the rows that come back inserted are fresh; a nonce already recorded, or repeated
    // within this batch, is a replay.
    let mut seen = HashSet::new();
    let mut fresh_rows = Vec::new();
    for (i, job) in batch.iter().enumerate() {
        let n = match &job.op {
            Op::Nonce(n) => Some(n),
            Op::Send { nonce, .. } => nonce.as_ref(),
        };
        if let Some(n) = n {
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
        let inserted: HashSet<(String, String)> =
            match signature_nonce::Entity::insert_many(fresh_rows)
                .on_conflict(
                    OnConflict::columns([
                        signature_nonce::Column::AccessKeyId,
                        signature_nonce::Column::Nonce,
                    ])
                    .do_nothing()
                    .to_owned(),
                )
                .exec_with_returning_keys(&txn)
                .await
            {
                Ok(keys) => keys.into_iter().collect(),
                Err(DbErr::RecordNotInserted) => HashSet::new(),
                Err(e) => return Err(e),
            };
        let mut claimed = HashSet::new();
        for (i, job) in batch.iter().enumerate() {
            let n = match &job.op {
                Op::Nonce(n) => Some(n),
                Op::Send { nonce, .. } => nonce.as_ref(),
            };
            if let Some(n) = n
                && results[i].is_ok()
            {
                let key = (n.access_key_id.clone(), n.nonce.clone());
                if !inserted.contains(&key) || !claimed.insert(key) {
                    results[i] = Err(ApiError::SignatureNonceUsed);
                }
            }
        }
    }

    let mut ensured = Vec::new();
    let mut requests = Vec::new();
    for (i, job) in batch.iter().enumerate() {
        let Op::Send { reservation: r, .. } = &job.op else {
            continue;
        };
        if results[i].is_err() {
            continue;
        }
        let counter = (r.account_id.clone(), r.day.clone());
        if !counters.contains(&counter) && !ensured.contains(&counter) {
            ensure_counter(&txn, r).await?;
            ensured.push(counter);
        }
        results[i] = reserve(&txn, r).await?;
        if results[i].is_ok() {
            requests.push(request_row(r));
        }
    }
    if !requests.is_empty() {
        send_request::Entity::insert_many(requests)
            .exec_without_returning(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok((results, ensured))
}

async fn ensure_counter(txn: &DatabaseTransaction, r: &Reservation) -> Result<(), DbErr> {
    daily_counter::Entity::insert(daily_counter::ActiveModel {
        account_id: Set(r.account_id.clone()),
        day: Set(r.day.clone()),
        count: Set(0),
    })
    .on_conflict(
        OnConflict::columns([daily_counter::Column::AccountId, daily_counter::Column::Day])
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(txn)
    .await
    .map(|_| ())
    .or_else(|e| {
        if matches!(e, DbErr::RecordNotInserted) {
            Ok(())
        } else {
            Err(e)
        }
    })
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

/// The quota and cooldown of one send, exactly as a lone transaction would take them.
async fn reserve(
    txn: &DatabaseTransaction,
    r: &Reservation,
) -> Result<Result<(), ApiError>, DbErr> {
    // Quota first (its 409 outranks the cooldown's 429): an atomic conditional increment.
    let reserved = daily_counter::Entity::update_many()
        .col_expr(
            daily_counter::Column::Count,
            Expr::col(daily_counter::Column::Count).add(1),
        )
        .filter(daily_counter::Column::AccountId.eq(r.account_id.as_str()))
        .filter(daily_counter::Column::Day.eq(r.day.as_str()))
        .filter(daily_counter::Column::Count.lt(r.limit as i32))
        .exec(txn)
        .await?;
    if reserved.rows_affected == 0 {
        return Ok(Err(ApiError::DailyLimitExceeded));
    }
    // Cooldown: claim the contact's send slot only if the last send is old enough.
    let mut claim = contact::Entity::update_many()
        .col_expr(contact::Column::LastSendMs, Expr::value(r.now_ms))
        .filter(contact::Column::ContactId.eq(r.contact_id.as_str()))
        .filter(contact::Column::AccountId.eq(r.account_id.as_str()))
        .filter(contact::Column::PendingPhone.eq(r.phone.as_str()));
    if r.cooldown_ms > 0 {
        claim = claim.filter(
            Condition::any()
                .add(contact::Column::LastSendMs.is_null())
                .add(contact::Column::LastSendMs.lte(r.now_ms - r.cooldown_ms)),
        );
    }
    let claimed = claim.exec(txn).await?;
    if claimed.rows_affected == 0 {
        // Give the quota unit back (the batch commits, so no rollback does it for us).
        daily_counter::Entity::update_many()
            .col_expr(
                daily_counter::Column::Count,
                Expr::col(daily_counter::Column::Count).sub(1),
            )
            .filter(daily_counter::Column::AccountId.eq(r.account_id.as_str()))
            .filter(daily_counter::Column::Day.eq(r.day.as_str()))
            .exec(txn)
            .await?;
        // Tell apart a concurrent change of the contact from the cooldown.
        let c = contact::Entity::find_by_id(r.contact_id.clone())
            .filter(contact::Column::AccountId.eq(r.account_id.as_str()))
            .one(txn)
            .await?;
        let Some(c) = c.filter(|c| c.pending_phone.as_deref() == Some(r.phone.as_str())) else {
            return Ok(Err(ApiError::VerificationNotFound));
        };
        let wait = c.last_send_ms.unwrap_or(r.now_ms) + r.cooldown_ms - r.now_ms;
        return Ok(Err(ApiError::ContactThrottled {
            retry_after_ms: Ord::max(wait, 1) as u64,
        }));
    }
    Ok(Ok(()))
}
