//! Group commit of `Sent` outcomes: concurrent jobs' message ids written by one task a batch at a
//! time, in one statement, instead of a commit per job; a delivery is acknowledged only after its
//! outcome is committed.

use std::collections::HashSet;

use msgcontact::{db::text_array, entities::send_request, status::SendStatus, time::now_ms};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter,
    Statement,
    sea_query::{Expr, ExprTrait},
};
use tokio::sync::{mpsc, oneshot};

use super::claims::{MAX_BATCH, stopped};

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
        self.tx.send(item).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?.map_err(DbErr::Custom)
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
            // One bad row must not fail the others (their redeliveries could send again): each
            // is written alone, and only the ones that still fail retry their own recording.
            Err(e) if batch.len() > 1 => {
                tracing::warn!(error = %e, size = batch.len(), "sent batch failed; writing its rows one by one");
                for item in batch.drain(..) {
                    let one = std::slice::from_ref(&item);
                    let result = write(&db, one)
                        .await
                        .map(|updated| updated.contains(&item.request_id))
                        .map_err(|e| e.to_string());
                    let _ = item.reply.send(result);
                }
            }
            Err(e) => {
                // The job retries its own recording (with backoff).
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
async fn write(db: &DatabaseConnection, batch: &[Item]) -> Result<HashSet<String>, DbErr> {
    let now = now_ms();
    if db.get_database_backend() == DbBackend::Postgres {
        return write_pg(db, batch, now).await;
    }
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
        // A Sent request answers no failure of an earlier attempt.
        .col_expr(
            send_request::Column::FailureCode,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            send_request::Column::FailureMessage,
            Expr::value(Option::<String>::None),
        )
        .filter(send_request::Column::RequestId.is_in(batch.iter().map(|i| i.request_id.as_str())))
        .filter(send_request::Column::Status.is_in(SendStatus::LIVE_NAMES))
        .exec_with_returning(db)
        .await?;
    Ok(rows.into_iter().map(|r| r.request_id).collect())
}

/// The same on PostgreSQL as one statement of fixed text with the batch as arrays, prepared once
/// per connection whatever the batch's size. A request repeated in the batch keeps its first
/// message id, as the `CASE` does.
async fn write_pg(
    db: &DatabaseConnection,
    batch: &[Item],
    now: i64,
) -> Result<HashSet<String>, DbErr> {
    const SQL: &str = r#"
UPDATE send_requests SET status = $1, provider_message_id = t.m, sent_ms = $2, updated_ms = $2,
        failure_code = NULL, failure_message = NULL
    FROM unnest($3::text[], $4::text[]) AS t(r, m)
    WHERE send_requests.request_id = t.r AND send_requests.status = ANY($5::text[])
    RETURNING send_requests.request_id"#;
    let mut seen = HashSet::new();
    let (ids, messages): (Vec<&str>, Vec<&str>) = batch
        .iter()
        .filter(|i| seen.insert(i.request_id.as_str()))
        .map(|i| (i.request_id.as_str(), i.message_id.as_str()))
        .unzip();
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            SQL,
            [
                SendStatus::Sent.as_str().into(),
                now.into(),
                text_array(ids),
                text_array(messages),
                text_array(SendStatus::LIVE_NAMES),
            ],
        ))
        .await?;
    rows.iter()
        .map(|r| r.try_get_by_index::<String>(0))
        .collect()
}
