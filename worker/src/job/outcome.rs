//! Recording a request's outcome: once, only while the request is still live.

use msgcontact::{entities::send_request, status::SendStatus, time::now_ms};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, sea_query::Expr};

use super::context::Shared;

/// Writes a request's outcome, only if it is still live (an outcome is recorded once).
pub(crate) struct Outcome<'a> {
    pub(crate) status: SendStatus,
    pub(crate) failure: Option<(&'a str, &'a str)>,
    pub(crate) provider_message_id: Option<&'a str>,
}

pub(crate) async fn set_outcome(
    shared: &Shared,
    request_id: &str,
    o: Outcome<'_>,
) -> Result<u64, DbErr> {
    let status = o.status;
    let code = o.failure.map(|f| f.0.to_owned());
    let n = write_outcome(&shared.db, request_id, o).await?;
    if n > 0 {
        metrics::counter!(msgcontact::metrics::JOBS, "outcome" => status.as_str()).increment(1);
        if let (SendStatus::Failed, Some(code)) = (status, code) {
            metrics::counter!(msgcontact::metrics::JOBS_FAILED, "code" => code).increment(1);
        }
    }
    Ok(n)
}

pub(crate) async fn write_outcome(
    db: &DatabaseConnection,
    request_id: &str,
    o: Outcome<'_>,
) -> Result<u64, DbErr> {
    let now = now_ms();
    let mut q = send_request::Entity::update_many()
        .col_expr(send_request::Column::Status, Expr::value(o.status.as_str()))
        .col_expr(send_request::Column::UpdatedMs, Expr::value(now))
        .filter(send_request::Column::RequestId.eq(request_id))
        .filter(send_request::Column::Status.is_in(SendStatus::LIVE_NAMES));
    if let Some((code, message)) = o.failure {
        q = q
            .col_expr(send_request::Column::FailureCode, Expr::value(code))
            .col_expr(send_request::Column::FailureMessage, Expr::value(message));
    }
    if let Some(id) = o.provider_message_id {
        q = q
            .col_expr(send_request::Column::ProviderMessageId, Expr::value(id))
            .col_expr(send_request::Column::SentMs, Expr::value(now));
    }
    Ok(q.exec(db).await?.rows_affected)
}

pub(crate) fn failed<'a>(code: &'a str, message: &'a str) -> Outcome<'a> {
    Outcome {
        status: SendStatus::Failed,
        failure: Some((code, message)),
        provider_message_id: None,
    }
}
