//! Group commit of claims: concurrent jobs' claims, with the fresh codes they need, written by one
//! task a batch at a time in a fixed number of statements, instead of several round trips and a
//! commit per job. Each job waits for the batch that carries it (it calls the provider only after
//! its claim is committed). Batches form by themselves: whatever arrived while the previous batch
//! was being written goes into the next (no timer, so a lone job is written at once).

use std::collections::{HashMap, HashSet};

use msgcontact::{
    db::text_array,
    entities::{send_request, verification},
    status::SendStatus,
    time::now_ms,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, FromQueryResult, QueryFilter, Statement, TransactionTrait, TryInsertResult,
    TryIntoModel, UpdateMany,
    sea_query::{Expr, ExprTrait},
};
use tokio::sync::{mpsc, oneshot};

use super::snapshot::CodeRef;

/// Most jobs written by one batch.
pub(super) const MAX_BATCH: usize = 256;

/// What a claim changes on a request row: it is being sent, on one more attempt.
pub fn claiming(update: UpdateMany<send_request::Entity>) -> UpdateMany<send_request::Entity> {
    update
        .col_expr(
            send_request::Column::Status,
            Expr::value(SendStatus::Sending.as_str()),
        )
        .col_expr(
            send_request::Column::Attempts,
            Expr::col(send_request::Column::Attempts).add(1),
        )
}

pub(super) fn stopped() -> DbErr {
    DbErr::Custom("the batch writer stopped".into())
}

/// A queued or retrying request to claim for its next attempt.
pub struct ClaimItem {
    pub request_id: String,
    /// The attempt the delivery carries: the claim holds only while fewer were made.
    pub attempt: i32,
    pub code: PlannedCode,
}

/// The code a claim settles with it.
pub enum PlannedCode {
    Nothing,
    /// A code that already exists (the retry's own, or the target's live one).
    Existing(CodeRef),
    /// A new code, created only if its claim commits; `row` is its verification.
    Fresh {
        code: CodeRef,
        row: Box<verification::ActiveModel>,
    },
}

/// What a claim batch settled for one request.
pub enum Claimed {
    Held {
        req: Box<send_request::Model>,
        code: Option<CodeRef>,
    },
    /// Not claimable by this delivery (a duplicate, or the request moved on).
    NotClaimable,
    /// Another job took the target's live code slot first: read again.
    Raced,
}

type ClaimReply = oneshot::Sender<Result<Claimed, String>>;

/// Handle to the claim writer task.
#[derive(Clone)]
pub struct ClaimWriter {
    tx: mpsc::Sender<(ClaimItem, ClaimReply)>,
}

impl ClaimWriter {
    pub fn spawn(db: DatabaseConnection) -> Self {
        let (tx, mut rx) = mpsc::channel(MAX_BATCH);
        tokio::spawn(async move {
            // Runs until every handle is dropped.
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                match write_claims(&db, &batch).await {
                    Ok(mut settled) => {
                        for (item, reply) in batch.drain(..) {
                            let r = settled
                                .remove(&item.request_id)
                                .unwrap_or(Claimed::NotClaimable);
                            let _ = reply.send(Ok(r));
                        }
                    }
                    Err(e) => {
                        // Nothing of the batch committed; every job retries on its own (with backoff).
                        let e = e.to_string();
                        for (_, reply) in batch.drain(..) {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    pub async fn claim(&self, item: ClaimItem) -> Result<Claimed, DbErr> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((item, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?.map_err(DbErr::Custom)
    }
}

/// One transaction: the batch's fresh codes (one insert; a live slot already taken makes that
/// request `Raced`), one `UPDATE … RETURNING` claiming every other request with its own attempt
/// bound and code, and the fresh codes of requests that turned out not claimable deleted again.
async fn write_claims(
    db: &DatabaseConnection,
    batch: &[(ClaimItem, ClaimReply)],
) -> Result<HashMap<String, Claimed>, DbErr> {
    let mut settled = HashMap::new();
    let txn = db.begin().await?;
    let fresh: Vec<verification::ActiveModel> = batch
        .iter()
        .filter_map(|(i, _)| match &i.code {
            PlannedCode::Fresh { row, .. } => Some((**row).clone()),
            _ => None,
        })
        .collect();
    let mut created = HashSet::new();
    if !fresh.is_empty() && db.get_database_backend() == DbBackend::Postgres {
        created.extend(insert_fresh_pg(&txn, fresh).await?);
    } else if !fresh.is_empty() {
        let inserted = verification::Entity::insert_many(fresh)
            .on_conflict_do_nothing_on([verification::Column::LiveKey])
            .exec_with_returning_many(&txn)
            .await?;
        if let TryInsertResult::Inserted(rows) = inserted {
            created.extend(rows.into_iter().map(|v| v.verification_id));
        }
    }
    let mut claiming = Vec::new();
    for (item, _) in batch {
        match &item.code {
            PlannedCode::Fresh { code, .. } if !created.contains(&code.id) => {
                settled.insert(item.request_id.clone(), Claimed::Raced);
            }
            _ => claiming.push(item),
        }
    }
    if !claiming.is_empty() && db.get_database_backend() == DbBackend::Postgres {
        let rows = claim_pg(&txn, &claiming).await?;
        settle(&txn, claiming, rows, &mut settled).await?;
    } else if let Some(first) = claiming.first() {
        let is = |id: &str| Expr::col(send_request::Column::RequestId).eq(id);
        let mut bound = Expr::case(is(&first.request_id), first.attempt);
        for i in &claiming[1..] {
            bound = bound.case(is(&i.request_id), i.attempt);
        }
        let mut update = self::claiming(send_request::Entity::update_many())
            .col_expr(send_request::Column::UpdatedMs, Expr::value(now_ms()));
        let fresh_ids: Vec<(&str, &str)> = claiming
            .iter()
            .filter_map(|i| match &i.code {
                PlannedCode::Fresh { code, .. } => Some((i.request_id.as_str(), code.id.as_str())),
                _ => None,
            })
            .collect();
        if let Some((rid, vid)) = fresh_ids.first() {
            let mut code = Expr::case(is(rid), *vid);
            for (rid, vid) in &fresh_ids[1..] {
                code = code.case(is(rid), *vid);
            }
            update = update.col_expr(
                send_request::Column::VerificationId,
                code.finally(Expr::col(send_request::Column::VerificationId))
                    .into(),
            );
        }
        let rows = update
            .filter(
                send_request::Column::RequestId
                    .is_in(claiming.iter().map(|i| i.request_id.as_str())),
            )
            .filter(
                send_request::Column::Status
                    .is_in([SendStatus::Queued.as_str(), SendStatus::Retrying.as_str()]),
            )
            .filter(Expr::col(send_request::Column::Attempts).lt(bound.finally(i32::MIN)))
            .exec_with_returning(&txn)
            .await?;
        settle(&txn, claiming, rows, &mut settled).await?;
    }
    txn.commit().await?;
    Ok(settled)
}

/// The fresh codes on PostgreSQL: one insert of fixed text with the rows as column arrays (a
/// multi-row `VALUES` would be a new statement text, and a new prepare, for every batch size).
/// Returns the ids inserted: a row whose live slot is already taken is skipped, as it is by the
/// `ON CONFLICT DO NOTHING` of the portable insert, a second row for one slot in the batch too.
async fn insert_fresh_pg(
    txn: &DatabaseTransaction,
    fresh: Vec<verification::ActiveModel>,
) -> Result<Vec<String>, DbErr> {
    const SQL: &str = r#"
INSERT INTO verifications (verification_id, account_id, contact_id, phone, status,
        failed_attempts, created_ms, expires_ms, live_key)
    SELECT v, a, c, p, s, f, cr, ex, NULLIF(l, '')
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
        $6::integer[], $7::bigint[], $8::bigint[], $9::text[]) AS t(v, a, c, p, s, f, cr, ex, l)
    ON CONFLICT (live_key) DO NOTHING
    RETURNING verification_id"#;
    let rows = fresh
        .into_iter()
        .map(|r| r.try_into_model())
        .collect::<Result<Vec<verification::Model>, DbErr>>()?;
    let texts = |f: fn(&verification::Model) -> &str| text_array(rows.iter().map(f));
    let ints = |f: fn(&verification::Model) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
    let values = [
        texts(|r| &r.verification_id),
        texts(|r| &r.account_id),
        texts(|r| &r.contact_id),
        texts(|r| &r.phone),
        texts(|r| &r.status),
        rows.iter()
            .map(|r| r.failed_attempts)
            .collect::<Vec<i32>>()
            .into(),
        ints(|r| r.created_ms).into(),
        ints(|r| r.expires_ms).into(),
        // Empty for no live slot (NULLIF'd back): the driver binds no NULL inside an array.
        texts(|r| r.live_key.as_deref().unwrap_or_default()),
    ];
    let inserted = txn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            SQL,
            values,
        ))
        .await?;
    inserted
        .iter()
        .map(|r| r.try_get::<String>("", "verification_id"))
        .collect()
}

/// The claim on PostgreSQL: one statement of fixed text with the batch as arrays (request, attempt
/// bound, fresh code or none), prepared once per connection whatever the batch's size. A request
/// repeated in the batch is claimed with its first entry's bound, as the `CASE` does; the other
/// entry then finds it held by the first.
async fn claim_pg(
    txn: &DatabaseTransaction,
    claiming: &[&ClaimItem],
) -> Result<Vec<send_request::Model>, DbErr> {
    const SQL: &str = r#"
UPDATE send_requests SET status = $1, attempts = send_requests.attempts + 1, updated_ms = $2,
    verification_id = COALESCE(NULLIF(t.v, ''), send_requests.verification_id)
    FROM unnest($3::text[], $4::integer[], $5::text[]) AS t(r, bound, v)
    WHERE send_requests.request_id = t.r AND send_requests.status = ANY($6::text[])
        AND send_requests.attempts < t.bound
    RETURNING send_requests.*"#;
    let mut seen = HashSet::new();
    let (mut ids, mut bounds, mut codes) = (Vec::new(), Vec::new(), Vec::new());
    for i in claiming {
        if seen.insert(i.request_id.as_str()) {
            ids.push(i.request_id.as_str());
            bounds.push(i.attempt);
            // Empty where the request keeps its code: the driver binds no NULL inside an array,
            // and a code id is never empty.
            codes.push(match &i.code {
                PlannedCode::Fresh { code, .. } => code.id.as_str(),
                _ => "",
            });
        }
    }
    let rows = txn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            SQL,
            [
                SendStatus::Sending.as_str().into(),
                now_ms().into(),
                text_array(ids),
                bounds.into(),
                text_array(codes),
                text_array([SendStatus::Queued.as_str(), SendStatus::Retrying.as_str()]),
            ],
        ))
        .await?;
    rows.iter()
        .map(|r| send_request::Model::from_query_result(r, ""))
        .collect()
}

/// Settles every claiming request by the rows its claim returned, and deletes again the fresh
/// codes of those that turned out not claimable.
async fn settle(
    txn: &DatabaseTransaction,
    claiming: Vec<&ClaimItem>,
    rows: Vec<send_request::Model>,
    settled: &mut HashMap<String, Claimed>,
) -> Result<(), DbErr> {
    let mut held: HashMap<String, send_request::Model> = rows
        .into_iter()
        .map(|r| (r.request_id.clone(), r))
        .collect();
    let mut orphans = Vec::new();
    for item in claiming {
        let code = match &item.code {
            PlannedCode::Nothing => None,
            PlannedCode::Existing(c) | PlannedCode::Fresh { code: c, .. } => Some(c.clone()),
        };
        match held.remove(&item.request_id) {
            Some(req) => {
                settled.insert(
                    item.request_id.clone(),
                    Claimed::Held {
                        req: Box::new(req),
                        code,
                    },
                );
            }
            None => {
                if let PlannedCode::Fresh { code, .. } = &item.code {
                    orphans.push(code.id.clone());
                }
                settled.insert(item.request_id.clone(), Claimed::NotClaimable);
            }
        }
    }
    if !orphans.is_empty() {
        verification::Entity::delete_many()
            .filter(verification::Column::VerificationId.is_in(orphans))
            .exec(txn)
            .await?;
    }
    Ok(())
}
