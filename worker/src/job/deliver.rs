//! Calling the provider for a claimed request, and recording what it answered: sent, failed, or a
//! retry at the schedule's next delay.

use std::time::Duration;

use msgcontact::{
    domain::mask_phone, entities::send_request, retry, status::SendStatus, time::now_ms,
};
use sea_orm::{
    ColumnTrait, DbErr, EntityTrait, QueryFilter,
    sea_query::{Expr, ExprTrait},
};

use super::{
    context::{Disposition, Shared},
    outcome::{Outcome, failed, set_outcome},
};
use crate::{
    provider::{FailureClass, ProviderFailure, Sms},
    store::snapshot::CodeRef,
};

/// Calls the provider for a claimed request and records what it answered.
pub(crate) async fn deliver(
    shared: &Shared,
    req: &send_request::Model,
    v: &CodeRef,
) -> Result<Disposition, DbErr> {
    let code = shared.code_secrets.derive(&v.id);
    let ttl_min = shared.policy.code_ttl_secs.div_ceil(60);
    let sms = Sms {
        request_id: req.request_id.clone(),
        phone_number: req.phone.clone(),
        message: format!("Your verification code is {code}. It is valid for {ttl_min} minutes."),
        code,
    };
    let started = std::time::Instant::now();
    let outcome = shared.provider.send(&sms).await;
    let elapsed = started.elapsed();
    let class = match &outcome {
        Ok(_) => "ok",
        Err(f) => f.class.as_str(),
    };
    metrics::histogram!(msgcontact::metrics::PROVIDER_DURATION, "provider" => shared.provider.name(), "class" => class)
        .record(elapsed.as_secs_f64());
    // The provider has been called: from here on the outcome must be recorded, not the job
    // re-run (a re-run would find the request Sending and drop it). While the database is
    // unreachable the recording is retried with backoff, holding the delivery; if that takes too
    // long (or we are stopping) the delivery goes back, and its redelivery is treated as the
    // ambiguous attempt it then is.
    Ok(retry::until_ok(
        &retry::DATABASE,
        "could not record the provider's outcome",
        &shared.shutdown,
        || record(shared, req, v.expires_ms, outcome.clone(), elapsed),
    )
    .await
    .unwrap_or(Disposition::Requeue))
}

/// Records what the provider answered and decides what happens to the delivery.
pub(crate) async fn record(
    shared: &Shared,
    req: &send_request::Model,
    code_expires_ms: i64,
    outcome: Result<String, ProviderFailure>,
    elapsed: Duration,
) -> Result<Disposition, DbErr> {
    let masked = mask_phone(&req.phone);
    let failure = match outcome {
        Ok(message_id) => {
            if shared.sent.record(&req.request_id, &message_id).await? {
                metrics::counter!(msgcontact::metrics::JOBS, "outcome" => SendStatus::Sent.as_str())
                    .increment(1);
            }
            tracing::info!(phone = %masked, ?elapsed, provider = shared.provider.name(), "SMS sent");
            return Ok(Disposition::Ack);
        }
        Err(f) => f,
    };
    if failure.is_throttling() {
        shared.limits.throttled();
    }
    let ProviderFailure {
        class,
        code,
        message,
        retry_after,
    } = failure;
    let reason = format!("{code} ({}): {message}", class.as_str());
    tracing::warn!(phone = %masked, class = class.as_str(), %code, ?elapsed, attempt = req.attempts, "provider failure");
    if class == FailureClass::Permanent {
        set_outcome(shared, &req.request_id, failed(&code, &reason)).await?;
        return Ok(Disposition::Ack);
    }
    if class == FailureClass::Ambiguous {
        // The provider may have sent it: at most one more attempt.
        let counted = send_request::Entity::update_many()
            .col_expr(
                send_request::Column::AmbiguousAttempts,
                Expr::col(send_request::Column::AmbiguousAttempts).add(1),
            )
            .filter(send_request::Column::RequestId.eq(req.request_id.as_str()))
            .filter(send_request::Column::AmbiguousAttempts.eq(0))
            .exec(&shared.db)
            .await?;
        if counted.rows_affected == 0 {
            set_outcome(
                shared,
                &req.request_id,
                failed("AmbiguousDelivery", &reason),
            )
            .await?;
            return Ok(Disposition::Ack);
        }
    }
    // Transient (or a first ambiguous outcome): retry after the schedule's next delay, at least
    // as long as the provider asked, while attempts and the code's lifetime allow.
    let delays = &shared.topology.retry_delays;
    let done = Ord::max(req.attempts, 1) as usize;
    if done > delays.len() {
        set_outcome(shared, &req.request_id, failed("RetriesExhausted", &reason)).await?;
        return Ok(Disposition::Ack);
    }
    let wanted = retry_after.unwrap_or_default();
    let level = (done - 1..delays.len())
        .find(|l| delays[*l] >= wanted)
        .unwrap_or(delays.len() - 1);
    // Jitter (up to -20%) spreads a burst of retries; a queue's TTL caps it from above.
    let base = delays[level];
    let delay = base
        .mul_f64(1.0 - rand::random::<f64>() * 0.2)
        .max(wanted.min(base));
    if now_ms() + delay.as_millis() as i64 >= code_expires_ms {
        set_outcome(shared, &req.request_id, failed("CodeExpired", &reason)).await?;
        return Ok(Disposition::Ack);
    }
    let parked = set_outcome(
        shared,
        &req.request_id,
        Outcome {
            status: SendStatus::Retrying,
            failure: Some((&code, &reason)),
            provider_message_id: None,
        },
    )
    .await?;
    if parked == 0 {
        return Ok(Disposition::Ack);
    }
    Ok(Disposition::Retry {
        attempt: req.attempts as u32 + 1,
        level,
        delay,
    })
}
