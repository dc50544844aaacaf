//! Claiming a request for one delivery, together with the code it delivers: the common case through
//! the group commit, the rare ones (an interrupted attempt, a code to retire) one by one.

use msgcontact::{
    domain::live_key,
    entities::{send_request, verification},
    status::{SendStatus, VerificationStatus},
    time::now_ms,
};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, SqlErr,
    TransactionTrait,
    sea_query::{Expr, ExprTrait},
};

use super::{
    context::{Disposition, JobCtx, Shared},
    outcome::{failed, set_outcome},
};
use crate::store::{
    claims as batch,
    snapshot::{CodeRef, Snapshot},
};

/// Which code a claimed request is to deliver.
pub(crate) enum CodePlan {
    /// Nothing to deliver: the target changed, or the retry's own code is no longer live.
    Nothing,
    /// The request's own code (a retry) or the target's live one.
    Use(CodeRef),
    /// A fresh code, retiring the target's expired or locked one first.
    Fresh { retire: Option<CodeRef> },
}

impl CodePlan {
    pub(crate) fn for_snapshot(s: &Snapshot, now: i64) -> Self {
        if !s.target_ok() {
            return Self::Nothing;
        }
        // A retry sends the code of its first attempt, never a new one.
        if s.req.verification_id.is_some() {
            return match &s.own {
                Some(c) if c.is_live(now) => Self::Use(c.clone()),
                _ => Self::Nothing,
            };
        }
        match &s.live {
            Some(c) if c.is_live(now) => Self::Use(c.clone()),
            other => Self::Fresh {
                retire: other.clone(),
            },
        }
    }
}

/// What the claim's transaction settled.
pub(crate) enum Claim {
    /// This delivery holds the request (Sending), with the code it delivers, if any.
    Held {
        req: Box<send_request::Model>,
        code: Option<CodeRef>,
    },
    /// This delivery must not send.
    Done(Disposition),
    /// Another worker created the target's live verification at the same moment: read again.
    Raced,
}

/// Claims the request for this delivery and settles its code in one transaction: a fresh
/// verification exists only if the claim that uses it committed.
pub(crate) async fn claim(
    shared: &Shared,
    snap: &Snapshot,
    ctx: &JobCtx,
    plan: CodePlan,
) -> Result<Claim, DbErr> {
    let req = &snap.req;
    // The common case (a queued or retrying request's next attempt, no expired code to retire)
    // goes through the group commit with its concurrent jobs; the rest, rare, one by one here.
    let queued = matches!(
        SendStatus::parse(&req.status),
        Some(SendStatus::Queued | SendStatus::Retrying)
    );
    if queued && !matches!(plan, CodePlan::Fresh { retire: Some(_) }) {
        let code = match plan {
            CodePlan::Nothing => batch::PlannedCode::Nothing,
            CodePlan::Use(c) => batch::PlannedCode::Existing(c),
            CodePlan::Fresh { .. } => {
                let (code, row) = fresh_row(shared, req);
                batch::PlannedCode::Fresh {
                    code,
                    row: Box::new(row),
                }
            }
        };
        let item = batch::ClaimItem {
            request_id: req.request_id.clone(),
            attempt: ctx.attempt as i32,
            code,
        };
        return Ok(match shared.claims.claim(item).await? {
            batch::Claimed::Held { req, code } => {
                ctx.claimed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Claim::Held { req, code }
            }
            batch::Claimed::NotClaimable => {
                tracing::info!(status = %req.status, attempts = req.attempts, "not claimable by this delivery (duplicate or finished); acknowledging");
                Claim::Done(Disposition::Ack)
            }
            batch::Claimed::Raced => Claim::Raced,
        });
    }
    let now = now_ms();
    let update = send_request::Entity::update_many()
        .col_expr(send_request::Column::UpdatedMs, Expr::value(now))
        .filter(send_request::Column::RequestId.eq(req.request_id.as_str()));
    let claiming = batch::claiming(update.clone());
    let update = match SendStatus::parse(&req.status) {
        // The normal case: each published attempt claims once; copies of it find attempts moved on.
        Some(SendStatus::Queued | SendStatus::Retrying) => claiming
            .filter(
                send_request::Column::Status
                    .is_in([SendStatus::Queued.as_str(), SendStatus::Retrying.as_str()]),
            )
            .filter(send_request::Column::Attempts.lt(ctx.attempt as i32)),
        // Our own claim from before a database error interrupted the job: the provider was not
        // called yet; only the code may still need settling.
        Some(SendStatus::Sending) if ctx.claimed.load(std::sync::atomic::Ordering::Relaxed) => {
            update.filter(send_request::Column::Status.eq(SendStatus::Sending.as_str()))
        }
        // The previous holder died mid-attempt: the SMS may or may not have gone out. One more
        // attempt is allowed for such an ambiguous outcome; after that the request fails.
        Some(SendStatus::Sending) if ctx.redelivered => {
            if req.ambiguous_attempts >= 1 {
                set_outcome(
                    shared,
                    &req.request_id,
                    failed(
                        "AmbiguousDelivery",
                        "Delivery was interrupted twice; the SMS may have been sent.",
                    ),
                )
                .await?;
                return Ok(Claim::Done(Disposition::Ack));
            }
            claiming
                .col_expr(
                    send_request::Column::AmbiguousAttempts,
                    Expr::col(send_request::Column::AmbiguousAttempts).add(1),
                )
                .filter(send_request::Column::Status.eq(SendStatus::Sending.as_str()))
                .filter(send_request::Column::Attempts.eq(req.attempts))
                .filter(send_request::Column::AmbiguousAttempts.eq(0))
        }
        _ => {
            tracing::info!(status = %req.status, attempts = req.attempts, "not claimable by this delivery (duplicate or finished); acknowledging");
            return Ok(Claim::Done(Disposition::Ack));
        }
    };
    let txn = shared.db.begin().await?;
    let (code, update) = match plan {
        CodePlan::Nothing => (None, update),
        CodePlan::Use(c) => (Some(c), update),
        CodePlan::Fresh { retire } => {
            let Some(c) = fresh_code(&txn, shared, req, retire).await? else {
                txn.rollback().await?;
                return Ok(Claim::Raced);
            };
            let update = update.col_expr(
                send_request::Column::VerificationId,
                Expr::value(c.id.as_str()),
            );
            (Some(c), update)
        }
    };
    let Some(claimed) = update.exec_with_returning(&txn).await?.pop() else {
        txn.rollback().await?;
        tracing::info!(status = %req.status, attempts = req.attempts, "not claimable by this delivery (duplicate or finished); acknowledging");
        return Ok(Claim::Done(Disposition::Ack));
    };
    txn.commit().await?;
    ctx.claimed
        .store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(Claim::Held {
        req: Box::new(claimed),
        code,
    })
}

/// A new live code for the request's target, and its verification row.
pub(crate) fn fresh_row(
    shared: &Shared,
    req: &send_request::Model,
) -> (CodeRef, verification::ActiveModel) {
    let now = now_ms();
    let code = CodeRef {
        // Time-ordered like request ids: new code rows append to the primary-key index.
        id: uuid::Uuid::now_v7().to_string(),
        status: VerificationStatus::Pending,
        expires_ms: now + shared.policy.code_ttl().as_millis() as i64,
    };
    let row = verification::ActiveModel {
        verification_id: Set(code.id.clone()),
        account_id: Set(req.account_id.clone()),
        contact_id: Set(req.contact_id.clone()),
        phone: Set(req.phone.clone()),
        status: Set(code.status.as_str().into()),
        failed_attempts: Set(0),
        created_ms: Set(now),
        expires_ms: Set(code.expires_ms),
        live_key: Set(Some(live_key(&req.contact_id, &req.phone))),
    };
    (code, row)
}

/// Creates the target's live verification inside the claim's transaction, retiring an expired or
/// locked one first. `None` when another worker took the live slot at the same moment (the unique
/// live key makes concurrent creators agree; the caller reads again and uses theirs).
pub(crate) async fn fresh_code(
    txn: &DatabaseTransaction,
    shared: &Shared,
    req: &send_request::Model,
    retire: Option<CodeRef>,
) -> Result<Option<CodeRef>, DbErr> {
    let key = live_key(&req.contact_id, &req.phone);
    if let Some(v) = retire {
        verification::Entity::update_many()
            .col_expr(
                verification::Column::LiveKey,
                Expr::value(Option::<String>::None),
            )
            .col_expr(
                verification::Column::Status,
                Expr::value(if v.status == VerificationStatus::Locked {
                    VerificationStatus::Locked.as_str()
                } else {
                    VerificationStatus::Closed.as_str()
                }),
            )
            .filter(
                Condition::all()
                    .add(verification::Column::VerificationId.eq(v.id.as_str()))
                    .add(verification::Column::LiveKey.eq(key.as_str())),
            )
            .exec(txn)
            .await?;
    }
    let (fresh, row) = fresh_row(shared, req);
    match verification::Entity::insert(row)
        .exec_without_returning(txn)
        .await
    {
        Ok(_) => Ok(Some(fresh)),
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => Ok(None),
        Err(e) => Err(e),
    }
}
