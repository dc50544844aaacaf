//! Sending and checking phone verifications, and the status of a send request.

use msgcontact::{
    ApiError,
    domain::{AccountId, ContactId, PhoneNumber, RequestId, live_key, mask_phone},
    entities::{contact, daily_counter, send_request, verification},
    job::SendJob,
    status::{SendStatus, VerificationStatus},
    time::{format_ms, now_ms, utc_day},
};
use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter,
    sea_query::{Expr, ExprTrait},
};

use super::{
    contacts::find_contact,
    reply::{OpResult, obj},
};
use crate::{
    accept::{Op, Reservation},
    auth::replay::NonceKey,
    http::params::Params,
    state::AppState,
};

/// Every synchronous check of the SPEC, in its order, then the reservation of quota and cooldown
/// with the request row, then a confirmed publish. The checks that read rows (the contact, its
/// number, quota, cooldown) are decided by the writer inside the batch that takes the reservation,
/// so they cost no round trip of their own and see exactly the rows they change.
pub async fn send_phone(
    state: &std::sync::Arc<AppState>,
    account: &AccountId,
    p: &Params,
    request_id: RequestId,
    nonce: Option<NonceKey>,
) -> OpResult {
    let id = ContactId::parse(p.require("ContactId")?)?;
    let phone = PhoneNumber::parse(
        p.require("PhoneNumber")?,
        &state.policy.supported_country_codes,
    )?;
    // From here the request runs to its end in a task of its own: a caller that hangs up, or the
    // request deadline, drops this future, and a reservation whose publish never ran (or was never
    // released) would hold quota and cooldown with no job behind it.
    let task = tokio::spawn(reserve_and_publish(
        state.clone(),
        account.clone(),
        id,
        phone,
        request_id,
        nonce,
    ));
    task.await.map_err(|e| {
        tracing::error!(error = %e, "send task failed");
        ApiError::Internal
    })?
}

/// Takes the reservation with the request row (the writer decides the checks that read rows), then
/// publishes the job with a confirm; a failed publish gives the reservation back.
async fn reserve_and_publish(
    state: std::sync::Arc<AppState>,
    account: AccountId,
    id: ContactId,
    phone: PhoneNumber,
    request_id: RequestId,
    nonce: Option<NonceKey>,
) -> OpResult {
    let state = &*state;
    let account = &account;
    let phone_s = phone.to_string();
    // Backpressure right after the parameters are known good: while the queue is full (or the
    // broker away) the answer is a fast 503 that reads nothing, takes no quota and writes nothing
    // but the nonce. The caller retries after retry-after and then gets the remaining checks.
    let Some(admission) = state.publisher.admit() else {
        metrics::counter!(msgcontact::metrics::SENDS_SHED).increment(1);
        if let Some(n) = nonce {
            state.writer.record_nonce_later(n);
        }
        return Err(ApiError::ServiceUnavailable {
            retry_after_ms: 1000,
        });
    };
    let now = now_ms();
    let day = utc_day(now);
    let cooldown_ms = state.policy.cooldown().as_millis() as i64;
    let rid = request_id.to_string();

    state
        .writer
        .submit(Op::Send {
            nonce,
            reservation: Reservation {
                account_id: account.to_string(),
                contact_id: id.to_string(),
                phone: phone_s.clone(),
                default_limit: state.policy.daily_limit,
                cooldown_ms,
                now_ms: now,
                day: day.clone(),
                request_id: rid.clone(),
            },
        })
        .await?;

    // W3C trace context: the trace id is the RequestId's 128 bits, so API logs, queue headers and
    // the worker's spans all correlate on the id the caller holds.
    let trace_id = rid.replace('-', "").to_lowercase();
    let traceparent = format!(
        "00-{trace_id}-{}-01",
        hex::encode(rand::random::<[u8; 8]>())
    );
    if let Err(e) = state
        .publisher
        .publish(admission, &SendJob::new(rid.clone()), Some(&traceparent))
        .await
    {
        tracing::warn!(request_id = %rid, error = %e, "publish failed; releasing quota and cooldown");
        release(state, account, &id, &rid, &day, now).await;
        return Err(ApiError::ServiceUnavailable {
            retry_after_ms: 1000,
        });
    }
    tracing::info!(request_id = %rid, trace_id = %trace_id, contact_id = %id, phone = %phone.masked(), "send accepted");
    Ok(obj! {})
}

/// Undoes the reservation of a request whose publish failed: it ends Failed, and the quota and the
/// cooldown slot it took are given back.
async fn release(
    state: &AppState,
    account: &AccountId,
    id: &ContactId,
    rid: &str,
    day: &str,
    sent_at: i64,
) {
    let result: Result<(), ApiError> = async {
        let txn = msgcontact::db::write_txn(&state.db).await?;
        let failed = send_request::Entity::update_many()
            .col_expr(
                send_request::Column::Status,
                Expr::value(SendStatus::Failed.as_str()),
            )
            .col_expr(
                send_request::Column::FailureCode,
                Expr::value("PublishFailed"),
            )
            // A fixed text: the broker's error could name hosts and credentials of the broker URL.
            .col_expr(
                send_request::Column::FailureMessage,
                Expr::value("The job could not be queued; quota and cooldown were given back."),
            )
            .col_expr(send_request::Column::UpdatedMs, Expr::value(now_ms()))
            .filter(send_request::Column::RequestId.eq(rid))
            .filter(send_request::Column::Status.eq(SendStatus::Queued.as_str()))
            .exec(&txn)
            .await?;
        if failed.rows_affected == 1 {
            daily_counter::Entity::update_many()
                .col_expr(
                    daily_counter::Column::Count,
                    Expr::col(daily_counter::Column::Count).sub(1),
                )
                .filter(daily_counter::Column::AccountId.eq(account.as_str()))
                .filter(daily_counter::Column::Day.eq(day))
                .filter(daily_counter::Column::Count.gt(0))
                .exec(&txn)
                .await?;
            contact::Entity::update_many()
                .col_expr(
                    contact::Column::LastSendMs,
                    Expr::value(Option::<i64>::None),
                )
                .filter(contact::Column::ContactId.eq(id.as_str()))
                .filter(contact::Column::LastSendMs.eq(sent_at))
                .exec(&txn)
                .await?;
        }
        txn.commit().await.map_err(ApiError::from)
    }
    .await;
    if let Err(e) = result {
        tracing::error!(request_id = %rid, error = %e, "could not release the reservation of a failed publish");
    }
}

pub async fn check_phone(state: &AppState, account: &AccountId, p: &Params) -> OpResult {
    let id = ContactId::parse(p.require("ContactId")?)?;
    let phone = PhoneNumber::parse(
        p.require("PhoneNumber")?,
        &state.policy.supported_country_codes,
    )?;
    let code = p.require("VerificationCode")?;
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::InvalidParameter("VerificationCode"));
    }
    let phone_s = phone.to_string();
    find_contact(&state.db, account, &id).await?;
    let key = live_key(id.as_str(), &phone_s);
    let max = state.policy.code_max_attempts as i32;
    let now = now_ms();
    // The attempt is taken before the guess is compared, in one conditional statement: however
    // many guesses arrive together, at most `max` of them get a slot, and the one taking the last
    // slot locks the code in the same statement (dead for the worker too: the next send issues a
    // new code). A guess that finds no slot is never compared.
    let taken = verification::Entity::update_many()
        .col_expr(
            verification::Column::FailedAttempts,
            Expr::col(verification::Column::FailedAttempts).add(1),
        )
        .col_expr(
            verification::Column::Status,
            Expr::case(
                Expr::col(verification::Column::FailedAttempts)
                    .add(1)
                    .gte(max),
                VerificationStatus::Locked.as_str(),
            )
            .finally(Expr::col(verification::Column::Status))
            .into(),
        )
        .filter(verification::Column::LiveKey.eq(key.as_str()))
        .filter(verification::Column::Status.eq(VerificationStatus::Pending.as_str()))
        .filter(verification::Column::FailedAttempts.lt(max))
        .filter(verification::Column::ExpiresMs.gt(now))
        .exec_with_returning(&state.db)
        .await?
        .pop();
    let Some(v) = taken else {
        // No slot: say why, from a read that compares nothing.
        let v = verification::Entity::find()
            .filter(verification::Column::LiveKey.eq(key.as_str()))
            .one(&state.db)
            .await?
            .ok_or(ApiError::VerificationNotFound)?;
        return Err(
            if v.status == VerificationStatus::Locked.as_str() || v.failed_attempts >= max {
                ApiError::VerificationCodeAttemptsExceeded
            } else if v.expires_ms <= now {
                ApiError::VerificationCodeExpired
            } else {
                ApiError::VerificationNotFound
            },
        );
    };
    if !state.code_secrets.matches(&v.verification_id, code) {
        return Err(ApiError::InvalidVerificationCode {
            attempts_left: Ord::max(max - v.failed_attempts, 0) as u32,
        });
    }
    let txn = msgcontact::db::write_txn(&state.db).await?;
    // Single use: only one check can verify the code, and only while it is still the live code and
    // unexpired. A right guess verifies even if its slot was the last (which locked the code): it
    // was compared within the budget. The attempt it took is given back.
    let used = verification::Entity::update_many()
        .col_expr(
            verification::Column::Status,
            Expr::value(VerificationStatus::Verified.as_str()),
        )
        .col_expr(
            verification::Column::LiveKey,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            verification::Column::FailedAttempts,
            Expr::col(verification::Column::FailedAttempts).sub(1),
        )
        .filter(verification::Column::VerificationId.eq(v.verification_id.as_str()))
        .filter(verification::Column::LiveKey.eq(key.as_str()))
        .filter(verification::Column::ExpiresMs.gt(now_ms()))
        .filter(verification::Column::Status.is_in([
            VerificationStatus::Pending.as_str(),
            VerificationStatus::Locked.as_str(),
        ]))
        .exec(&txn)
        .await?;
    if used.rows_affected == 0 {
        return Err(ApiError::VerificationNotFound);
    }
    contact::Entity::update_many()
        .col_expr(contact::Column::Phone, Expr::value(phone_s.as_str()))
        .col_expr(
            contact::Column::PendingPhone,
            Expr::value(Option::<String>::None),
        )
        .col_expr(contact::Column::UpdatedMs, Expr::value(now_ms()))
        .filter(contact::Column::ContactId.eq(id.as_str()))
        .filter(contact::Column::PendingPhone.eq(phone_s.as_str()))
        .exec(&txn)
        .await?;
    let c = find_contact(&txn, account, &id).await?;
    txn.commit().await?;
    tracing::info!(contact_id = %id, phone = %phone.masked(), "phone verified");
    Ok(obj! { "Status" => super::contacts::contact_status(&c) })
}

pub async fn get_request(state: &AppState, account: &AccountId, p: &Params) -> OpResult {
    let rid = RequestId::parse(p.require("RequestId")?)?;
    let r = send_request::Entity::find_by_id(rid.to_string())
        .filter(send_request::Column::AccountId.eq(account.as_str()))
        .one(&state.db)
        .await?
        .ok_or(ApiError::RequestNotFound)?;
    Ok(obj! { "Request" => serde_json::json!({
        "RequestId": r.request_id,
        "ContactId": r.contact_id,
        "PhoneNumber": mask_phone(&r.phone),
        "Status": r.status,
        "Attempts": r.attempts,
        "FailureCode": r.failure_code,
        "FailureMessage": r.failure_message,
        "AcceptedDate": format_ms(r.accepted_ms),
        "SentDate": r.sent_ms.map(format_ms),
    }) })
}
