//! The batch on PostgreSQL: three statements of fixed text whose values travel as arrays, so
//! each is parsed and planned once per connection and costs one round trip whatever the batch's
//! size (statements built for the batch at hand had a new text for every batch size: each cost
//! another round trip to be prepared and pushed others out of the connection's statement cache).

use msgcontact::{
    db::text_array,
    status::{AccessKeyStatus, SendStatus},
};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, Statement, Value};

use super::{
    plan::{Plan, Reserved},
    rows::Read,
};

/// The nonces recorded (those that come back were fresh), the keys still active, and the
/// batch's counters, created where missing and locked in key order: an upsert that sets a
/// counter to itself locks the row, new or not, and returns its latest committed count.
const READ: &str = r#"
WITH fresh AS (
INSERT INTO signature_nonces (access_key_id, nonce, expires_ms)
SELECT k, n, $3::bigint FROM unnest($1::text[], $2::text[]) AS t(k, n)
ON CONFLICT (access_key_id, nonce) DO NOTHING
RETURNING access_key_id, nonce
), counted AS (
INSERT INTO daily_counters (account_id, day, count)
SELECT a, d, 0 FROM unnest($5::text[], $6::text[]) AS t(a, d) ORDER BY a, d
ON CONFLICT (account_id, day) DO UPDATE SET count = daily_counters.count
RETURNING account_id, day, count
)
SELECT 'key'::text, access_key_id::text, NULL::text, NULL::integer, NULL::integer
FROM access_keys WHERE access_key_id = ANY($4::text[]) AND status = $7
UNION ALL
SELECT 'nonce', access_key_id, nonce, NULL, NULL FROM fresh
UNION ALL
SELECT 'counter', c.account_id, c.day, c.count, a.daily_limit
FROM counted c LEFT JOIN accounts a ON a.account_id = c.account_id"#;

/// The batch's contacts, locked after the counters and in key order, as everywhere.
const CONTACTS: &str = r#"
SELECT 'contact'::text, contact_id, account_id, phone, pending_phone, last_send_ms
FROM contacts WHERE contact_id = ANY($1::text[]) ORDER BY contact_id FOR UPDATE"#;

const WRITE: &str = r#"
WITH counted AS (
UPDATE daily_counters SET count = daily_counters.count + t.n
FROM unnest($1::text[], $2::text[], $3::integer[]) AS t(a, d, n)
WHERE daily_counters.account_id = t.a AND daily_counters.day = t.d
), slots AS (
UPDATE contacts SET last_send_ms = t.ms
FROM unnest($4::text[], $5::bigint[]) AS t(id, ms)
WHERE contacts.contact_id = t.id
)
INSERT INTO send_requests (request_id, account_id, contact_id, phone, status, attempts,
ambiguous_attempts, day, accepted_ms, updated_ms)
SELECT r, a, c, p, $6::text, 0, 0, d, ms, ms
FROM unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[])
AS t(r, a, c, p, d, ms)"#;

fn statement(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

pub(super) async fn read(txn: &DatabaseTransaction, plan: &Plan<'_>) -> Result<Read, DbErr> {
    let mut read = Read::default();
    let rows = txn
        .query_all_raw(statement(
            READ,
            vec![
                text_array(plan.fresh.iter().map(|n| n.access_key_id.as_str())),
                text_array(plan.fresh.iter().map(|n| n.nonce.as_str())),
                plan.nonce_expires_ms.into(),
                text_array(plan.key_ids.iter().copied()),
                text_array(plan.groups.iter().map(|(a, _)| *a)),
                text_array(plan.groups.iter().map(|(_, d)| *d)),
                AccessKeyStatus::Active.as_str().into(),
            ],
        ))
        .await?;
    for row in &rows {
        read.take(row)?;
    }
    if !plan.contact_ids.is_empty() {
        let rows = txn
            .query_all_raw(statement(
                CONTACTS,
                vec![text_array(plan.contact_ids.iter().copied())],
            ))
            .await?;
        for row in &rows {
            read.take(row)?;
        }
    }
    Ok(read)
}

pub(super) async fn write(txn: &DatabaseTransaction, reserved: &Reserved<'_>) -> Result<(), DbErr> {
    if reserved.rows.is_empty() {
        return Ok(());
    }
    let rows = &reserved.rows;
    txn.execute_raw(statement(
        WRITE,
        vec![
            text_array(reserved.taken.iter().map(|(a, _, _)| a.as_str())),
            text_array(reserved.taken.iter().map(|(_, d, _)| d.as_str())),
            reserved
                .taken
                .iter()
                .map(|(_, _, n)| *n)
                .collect::<Vec<i32>>()
                .into(),
            text_array(reserved.claimed.keys().copied()),
            reserved
                .claimed
                .values()
                .copied()
                .collect::<Vec<i64>>()
                .into(),
            SendStatus::Queued.as_str().into(),
            text_array(rows.iter().map(|r| r.request_id.as_str())),
            text_array(rows.iter().map(|r| r.account_id.as_str())),
            text_array(rows.iter().map(|r| r.contact_id.as_str())),
            text_array(rows.iter().map(|r| r.phone.as_str())),
            text_array(rows.iter().map(|r| r.day.as_str())),
            rows.iter().map(|r| r.now_ms).collect::<Vec<i64>>().into(),
        ],
    ))
    .await?;
    Ok(())
}
