//! One job's decisions before the provider: finished, superseded, expired, rate limited, then the
//! claim.

use std::time::Duration;

use msgcontact::{job::SendJob, status::SendStatus, time::now_ms};
use sea_orm::DbErr;

use super::{
    claim::{Claim, CodePlan, claim},
    context::{Disposition, JobCtx, Shared},
    deliver::deliver,
    outcome::{Outcome, failed, set_outcome},
};
use crate::limits;

/// Ends a queued request that waited longer than a code lives, without an SMS.
pub(crate) async fn expired(shared: &Shared, request_id: &str) -> Result<Disposition, DbErr> {
    set_outcome(
        shared,
        request_id,
        failed(
            "CodeExpired",
            "The request waited in the queue longer than a code lives.",
        ),
    )
    .await?;
    Ok(Disposition::Ack)
}

/// Rate-limit waits longer than this re-read the request: its rows may have moved meanwhile.
pub(crate) const STALE_AFTER_WAIT: Duration = Duration::from_millis(50);

pub(crate) async fn process(
    shared: &Shared,
    job: &SendJob,
    ctx: &JobCtx,
) -> Result<Disposition, DbErr> {
    let mut gated = false;
    for _ in 0..4 {
        let Some(snap) = shared.reader.load(&job.request_id).await? else {
            return Ok(Disposition::DeadLetter(format!(
                "unknown request {}",
                job.request_id
            )));
        };
        let req = &snap.req;
        let status = SendStatus::parse(&req.status);
        if status.is_none_or(SendStatus::is_terminal) {
            tracing::info!(status = %req.status, "delivery of a finished request; acknowledging");
            return Ok(Disposition::Ack);
        }
        // A newer accepted request for the same contact and number will deliver the same code.
        if matches!(status, Some(SendStatus::Queued | SendStatus::Retrying)) && snap.superseded {
            set_outcome(
                shared,
                &req.request_id,
                Outcome {
                    status: SendStatus::Superseded,
                    failure: None,
                    provider_message_id: None,
                },
            )
            .await?;
            tracing::info!("superseded by a newer request");
            return Ok(Disposition::Ack);
        }
        // A verification SMS is only worth sending while the code the user waits for would
        // still be valid; a request that waited longer than that (an overload backlog) ends
        // without an SMS.
        let worth_until = matches!(status, Some(SendStatus::Queued))
            .then(|| req.accepted_ms + shared.policy.code_ttl().as_millis() as i64);
        if worth_until.is_some_and(|ms| ms <= now_ms()) {
            return expired(shared, &req.request_id).await;
        }
        // Rate limits before the claim: a deferred job keeps its attempt number and state. Only a
        // redelivered in-flight attempt (ambiguous) must not be republished, so it waits in place.
        if !gated {
            gated = true;
            let may_defer = matches!(status, Some(SendStatus::Queued | SendStatus::Retrying));
            let waited = std::time::Instant::now();
            // Its turn is only worth taking while the request is still worth an SMS.
            let deadline = worth_until.map(|ms| {
                std::time::Instant::now()
                    + Duration::from_millis(u64::try_from(ms - now_ms()).unwrap_or(0))
            });
            let gate = shared.limits.acquire(&req.phone, may_defer, deadline).await;
            let waited = waited.elapsed();
            metrics::histogram!(msgcontact::metrics::RATE_LIMIT_WAIT).record(waited.as_secs_f64());
            if gate == limits::Gate::Late {
                return expired(shared, &req.request_id).await;
            }
            if let limits::Gate::Defer(wait) = gate {
                let delays = &shared.topology.retry_delays;
                let level = (0..delays.len())
                    .find(|l| delays[*l] >= wait)
                    .unwrap_or(delays.len() - 1);
                metrics::counter!(msgcontact::metrics::RATE_LIMIT_DEFERRALS).increment(1);
                tracing::debug!(?wait, level, "rate limited: parking the job");
                return Ok(Disposition::Retry {
                    attempt: ctx.attempt,
                    level,
                    delay: wait.min(delays[level]),
                });
            }
            if waited > STALE_AFTER_WAIT {
                continue;
            }
        }
        let plan = CodePlan::for_snapshot(&snap, now_ms());
        let (req, code) = match claim(shared, &snap, ctx, plan).await? {
            Claim::Held { req, code } => (req, code),
            Claim::Done(d) => return Ok(d),
            Claim::Raced => continue,
        };
        if !snap.target_ok() {
            let (code, msg) = match snap.contact {
                None => (
                    "ContactDeleted",
                    "The contact was deleted before the SMS was sent.",
                ),
                Some(_) => (
                    "TargetChanged",
                    "The number is no longer pending verification.",
                ),
            };
            set_outcome(shared, &req.request_id, failed(code, msg)).await?;
            return Ok(Disposition::Ack);
        }
        // A retry whose first code is no longer live has nothing valid left to deliver.
        let Some(code) = code else {
            set_outcome(
                shared,
                &req.request_id,
                failed(
                    "CodeExpired",
                    "The code expired before it could be delivered.",
                ),
            )
            .await?;
            return Ok(Disposition::Ack);
        };
        return deliver(shared, &req, &code).await;
    }
    Err(DbErr::Custom(
        "could not settle the live verification".into(),
    ))
}
