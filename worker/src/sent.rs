//! Group commit of successful deliveries: the `Sent` outcomes of concurrent jobs are written by one
//! task, in one statement per batch, instead of one commit per job.
//!
//! A delivery is acknowledged only after its outcome is committed, so every job waits for the
//! batch that carries it. Batches form by themselves: whatever arrived while the previous one was
//! being written goes into the next (no timer, so a lone job is written at once).

use msgcontact::{entities::send_request, status::SendStatus, time::now_ms};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    sea_query::{Expr, ExprTrait},
};
use tokio::sync::{mpsc, oneshot};

/// Most outcomes written by one statement.
const MAX_BATCH: usize = 256;

struct Item {
    request_id: String,
    message_id: String,
    /// Whether this request's row took the outcome (it was still live).
    reply: oneshot::Sender<Result<bool, String>>,
}

/// Handle to the writer task; the task ends when the last handle is dropped.
#[derive(Clone)]
pub struct SentWriter {
    tx: mpsc::Sender<Item>,
}

impl SentWriter {
    pub fn spawn(db: DatabaseConnection) -> Self {
        // Bounded by the jobs in flight (the prefetch), which each wait for their reply.
        let (tx, rx) = mpsc::channel(MAX_BATCH);
        tokio::spawn(run(db, rx));
        Self { tx }
    }

    /// Records the request `Sent` with the provider's message id, if it is still live. Returns
    /// whether it was.
    pub async fn record(&self, request_id: &str, message_id: &str) -> Result<bool, DbErr> {
        let (reply, answer) = oneshot::channel();
        let item = Item {
            request_id: request_id.to_owned(),
            message_id: message_id.to_owned(),
            reply,
        };
        let gone = || DbErr::Custom("the outcome writer stopped".into());
        self.tx.send(item).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?.map_err(DbErr::Custom)
    }
}

async fn run(db: DatabaseConnection, mut rx: mpsc::Receiver<Item>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        metrics::histogram!(msgcontact::metrics::SENT_BATCH_SIZE).record(batch.len() as f64);
        match write(&db, &batch).await {
            Ok(updated) => {
                for item in batch.drain(..) {
                    let took = updated.contains(&item.request_id);
                    let _ = item.reply.send(Ok(took));
                }
            }
            Err(e) => {
                // Every job of the batch retries its own recording (with backoff).
                let e = e.to_string();
                for item in batch.drain(..) {
                    let _ = item.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One `UPDATE … SET provider_message_id = CASE request_id …` for the batch, limited to rows still
/// live (an outcome is recorded once). Returns the request ids it changed.
async fn write(
    db: &DatabaseConnection,
    batch: &[Item],
) -> Result<std::collections::HashSet<String>, DbErr> {
    let now = now_ms();
    let mut message = Expr::case(
        Expr::col(send_request::Column::RequestId).eq(batch[0].request_id.as_str()),
        batch[0].message_id.as_str(),
    );
    for item in &batch[1..] {
        message = message.case(
            Expr::col(send_request::Column::RequestId).eq(item.request_id.as_str()),
            item.message_id.as_str(),
        );
    }
    let rows = send_request::Entity::update_many()
        .col_expr(
            send_request::Column::Status,
            Expr::value(SendStatus::Sent.as_str()),
        )
        .col_expr(
            send_request::Column::ProviderMessageId,
            message
                .finally(Expr::col(send_request::Column::ProviderMessageId))
                .into(),
        )
        .col_expr(send_request::Column::SentMs, Expr::value(now))
        .col_expr(send_request::Column::UpdatedMs, Expr::value(now))
        .filter(send_request::Column::RequestId.is_in(batch.iter().map(|i| i.request_id.as_str())))
        .filter(send_request::Column::Status.is_in(crate::LIVE_STATES))
        .exec_with_returning(db)
        .await?;
    Ok(rows.into_iter().map(|r| r.request_id).collect())
}
