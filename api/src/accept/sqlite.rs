//! The batch on SQLite: the reads as one script and the writes as another ([`Script`]), each one
//! call to the connection's thread whatever the batch's size.

use std::collections::{BTreeSet, HashSet};

use msgcontact::{
    db::Script,
    entities::{access_key, account, contact, daily_counter, send_request, signature_nonce},
    status::{AccessKeyStatus, SendStatus},
};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait, QueryFilter,
    QueryTrait,
    sea_query::{Expr, ExprTrait, InsertStatement, OnConflict, Query, SelectStatement},
};

use super::{
    plan::{Plan, Reserved},
    request::Reservation,
    rows::{CONTACT, COUNTER, KEY, NONCE, Read, tag},
};

/// Reads everything the batch decides on, creating the counters it believes may not exist
/// yet; returns those so the writer remembers them.
pub(super) async fn read(
    txn: &DatabaseTransaction,
    backend: DbBackend,
    plan: &Plan<'_>,
    counters: &HashSet<(String, String)>,
) -> Result<(Read, Vec<(String, String)>), DbErr> {
    let mut reads = Script::new(backend);
    if !plan.key_ids.is_empty() {
        reads.push(
            &Query::select()
                .expr(tag(KEY))
                .column(access_key::Column::AccessKeyId)
                .from(access_key::Entity)
                .and_where(access_key::Column::AccessKeyId.is_in(plan.key_ids.iter().copied()))
                .and_where(access_key::Column::Status.eq(AccessKeyStatus::Active.as_str()))
                .to_owned(),
        );
    }
    // The rows that come back inserted are fresh; a nonce already recorded is a replay.
    if !plan.fresh.is_empty() {
        let mut insert = signature_nonce::Entity::insert_many(plan.fresh.iter().map(|n| {
            signature_nonce::ActiveModel {
                access_key_id: Set(n.access_key_id.clone()),
                nonce: Set(n.nonce.clone()),
                expires_ms: Set(plan.nonce_expires_ms),
            }
        }))
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
    // Counters (created first where they may not exist yet: a missing row cannot be read
    // back), then contacts. The `BEGIN IMMEDIATE` write lock serializes whole batches.
    let mut ensured = Vec::new();
    if !plan.sends.is_empty() {
        let unknown: Vec<(&str, &str)> = plan
            .groups
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
        reads.push(&counters_of(&plan.groups));
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
                .and_where(contact::Column::ContactId.is_in(plan.contact_ids.iter().copied()))
                .to_owned(),
        );
    }
    let mut read = Read::default();
    for row in reads.rows(txn).await? {
        read.take(&row)?;
    }
    let missing: Vec<(&str, &str)> = plan
        .groups
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
        // again, then read the counters once more.
        txn.execute(&ensure_counters(&missing)).await?;
        read.counts.clear();
        for row in txn.query_all(&counters_of(&plan.groups)).await? {
            read.take(&row)?;
        }
    }
    Ok((read, ensured))
}

/// One update per counter that changed, one for every cooldown slot taken, one insert of
/// the new request rows.
pub(super) fn write(backend: DbBackend, reserved: &Reserved<'_>) -> Script {
    let mut writes = Script::new(backend);
    for (account, day, taken) in &reserved.taken {
        writes.push(
            &daily_counter::Entity::update_many()
                .col_expr(
                    daily_counter::Column::Count,
                    Expr::col(daily_counter::Column::Count).add(*taken),
                )
                .filter(daily_counter::Column::AccountId.eq(account.as_str()))
                .filter(daily_counter::Column::Day.eq(day.as_str()))
                .into_query(),
        );
    }
    if let Some((first, at)) = reserved.claimed.first_key_value() {
        let mut slot = Expr::case(Expr::col(contact::Column::ContactId).eq(*first), *at);
        for (id, at) in reserved.claimed.iter().skip(1) {
            slot = slot.case(Expr::col(contact::Column::ContactId).eq(*id), *at);
        }
        writes.push(
            &contact::Entity::update_many()
                .col_expr(
                    contact::Column::LastSendMs,
                    slot.finally(Expr::col(contact::Column::LastSendMs)).into(),
                )
                .filter(contact::Column::ContactId.is_in(reserved.claimed.keys().copied()))
                .into_query(),
        );
    }
    if !reserved.rows.is_empty() {
        writes.push(
            &send_request::Entity::insert_many(reserved.rows.iter().map(|r| request_row(r)))
                .into_query(),
        );
    }
    writes
}

/// The batch's counters with their accounts' own limits (SQLite: the transaction's write lock
/// already keeps them from changing under the batch).
fn counters_of(groups: &BTreeSet<(&str, &str)>) -> SelectStatement {
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
