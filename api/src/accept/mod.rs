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
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use msgcontact::ApiError;
use sea_orm::{DatabaseConnection, DbBackend, DbErr};
use tokio::sync::{mpsc, oneshot};

use crate::auth::replay::NonceKey;
use plan::Plan;
use request::Job;
pub use request::{Op, Reservation};

mod plan;
mod postgres;
mod request;
mod rows;
mod sqlite;

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
    /// the request runtime those wake-ups never queue behind HTTP tasks, so the lock is held for
    /// the statements' time only, however busy the request threads are.
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
                        .send(Err(ApiError::from(DbErr::Custom(e.to_string()))));
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

/// One transaction for the whole batch in a fixed number of round trips whatever its size, on
/// either database: it begins; the reads take everything the batch decides on, the counter and
/// contact rows locked; every check is decided in memory in arrival order; the writes put back
/// the counters, the contacts' cooldown slots and the new request rows; it commits.
async fn apply(
    db: &DatabaseConnection,
    batch: &[Job],
    counters: &HashSet<(String, String)>,
) -> Result<Applied, DbErr> {
    let txn = msgcontact::db::write_txn(db).await?;
    let mut plan = Plan::of(batch);
    let (mut read, ensured) = match db.get_database_backend() {
        DbBackend::Postgres => (postgres::read(&txn, &plan).await?, Vec::new()),
        backend => sqlite::read(&txn, backend, &plan, counters).await?,
    };
    let reserved = plan.decide(batch, &mut read);
    match db.get_database_backend() {
        DbBackend::Postgres => postgres::write(&txn, &reserved).await?,
        backend => sqlite::write(backend, &reserved).run(&txn).await?,
    }
    txn.commit().await?;
    Ok((plan.results, ensured))
}

#[cfg(test)]
mod tests {
    use super::*;
    use msgcontact::{entities::access_key, status::AccessKeyStatus};
    use sea_orm::{ActiveValue::Set, EntityTrait};

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
            status: Set(AccessKeyStatus::Active.as_str().into()),
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
