//! What a job reads before claiming its request: the row, its supersede test, the contact and the
//! codes, in one statement, for all the jobs that want a read at the same moment.
//!
//! The read is the worker's only per-job statement that was not grouped: with it a job cost the
//! database a round trip of its own. A reader task now takes whatever reads have queued up while
//! its previous one ran and answers them with one `IN (…)` query (no timer, so a lone job is read
//! at once). A read is a read: answering several with one statement changes nothing about what a
//! job may do next (its claim is still guarded by the row's status and attempts).

use std::collections::HashMap;

use msgcontact::{
    db::{placeholder, text_array},
    entities::send_request,
    status::VerificationStatus,
};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, FromQueryResult, QueryResult, Statement,
};
use tokio::sync::{mpsc, oneshot};

/// Most reads answered by one statement.
const MAX_BATCH: usize = 128;

/// A verification as a job sees it: enough to derive its code and to know whether it is live.
#[derive(Debug, Clone)]
pub struct CodeRef {
    pub id: String,
    pub status: VerificationStatus,
    pub expires_ms: i64,
}

impl CodeRef {
    pub fn is_live(&self, now: i64) -> bool {
        self.status == VerificationStatus::Pending && self.expires_ms > now
    }
}

/// What a job knows about its request before claiming it: the row, whether a newer request for
/// the same contact and number supersedes it, the contact's pending number, the verification the
/// request already carries (a retry's) and the target's live verification.
#[derive(Clone)]
pub struct Snapshot {
    pub req: send_request::Model,
    pub superseded: bool,
    /// `None` when the contact was deleted, else its pending number.
    pub contact: Option<Option<String>>,
    pub own: Option<CodeRef>,
    pub live: Option<CodeRef>,
}

impl Snapshot {
    /// The contact still waits for a code on this request's number.
    pub fn target_ok(&self) -> bool {
        matches!(&self.contact, Some(Some(p)) if *p == self.req.phone)
    }

    fn from_row(row: &QueryResult) -> Result<Self, DbErr> {
        let code = |p: &str| -> Result<Option<CodeRef>, DbErr> {
            let id: Option<String> = row.try_get("", &format!("{p}_id"))?;
            let Some(id) = id else { return Ok(None) };
            Ok(Some(CodeRef {
                id,
                // Checked where it is read: a state this version does not know is an error.
                status: row
                    .try_get::<String>("", &format!("{p}_status"))?
                    .parse()
                    .map_err(|e: msgcontact::status::UnknownStatus| DbErr::Custom(e.to_string()))?,
                expires_ms: row.try_get("", &format!("{p}_expires"))?,
            }))
        };
        let exists: i32 = row.try_get("", "c_exists")?;
        let superseded: i32 = row.try_get("", "superseded")?;
        Ok(Snapshot {
            req: send_request::Model::from_query_result(row, "")?,
            superseded: superseded != 0,
            contact: (exists != 0)
                .then(|| row.try_get::<Option<String>>("", "c_pending"))
                .transpose()?,
            own: code("o")?,
            live: code("l")?,
        })
    }
}

/// Reads the snapshots of `ids` (distinct) in one statement; a missing request has none.
async fn load_many(db: &DatabaseConnection, ids: &[&str]) -> Result<Vec<Snapshot>, DbErr> {
    let backend = db.get_database_backend();
    // PostgreSQL takes the ids as one array: the statement's text is the same for every batch
    // size, so it is prepared once per connection instead of once per size (sizes churned the
    // connection's statement cache; the accept path measured +62 % at c=128 for the same change).
    let (filter, values): (String, Vec<sea_orm::Value>) = if backend == DbBackend::Postgres {
        (
            "= ANY($1::text[])".to_owned(),
            vec![text_array(ids.iter().copied())],
        )
    } else {
        let params = (1..=ids.len())
            .map(|n| placeholder(backend, n))
            .collect::<Vec<_>>()
            .join(", ");
        (
            format!("IN ({params})"),
            ids.iter().map(|id| (*id).into()).collect(),
        )
    };
    // Every join is on a primary key or a unique index, the supersede test a range of the
    // (contact, phone, accepted) index: one indexed lookup each. On PostgreSQL the lookups are
    // `LATERAL … LIMIT 1`, which the planner cannot turn into a hash join: the statement is
    // prepared once and its generic plan kept, and one planned while `verifications` was still new
    // and small (a fresh deployment, never analyzed) hashed the whole table on every call as it
    // grew, 13 ms a read at 40,000 codes (the drain ran at half the baseline's rate).
    let joins = if backend == DbBackend::Postgres {
        "LEFT JOIN LATERAL (SELECT contact_id, pending_phone FROM contacts \
             WHERE contact_id = r.contact_id LIMIT 1) c ON true \
         LEFT JOIN LATERAL (SELECT verification_id, status, expires_ms FROM verifications \
             WHERE verification_id = r.verification_id LIMIT 1) o ON true \
         LEFT JOIN LATERAL (SELECT verification_id, status, expires_ms FROM verifications \
             WHERE live_key = r.contact_id || '/' || r.phone LIMIT 1) l ON true"
    } else {
        "LEFT JOIN contacts c ON c.contact_id = r.contact_id \
         LEFT JOIN verifications o ON o.verification_id = r.verification_id \
         LEFT JOIN verifications l ON l.live_key = r.contact_id || '/' || r.phone"
    };
    let sql = format!(
        "SELECT r.*, \
           CASE WHEN c.contact_id IS NULL THEN 0 ELSE 1 END AS c_exists, \
           c.pending_phone AS c_pending, \
           CASE WHEN EXISTS (SELECT 1 FROM send_requests n \
               WHERE n.contact_id = r.contact_id AND n.phone = r.phone \
                 AND n.accepted_ms > r.accepted_ms \
                 AND n.status IN ('Queued', 'Sending', 'Retrying', 'Sent')) \
             THEN 1 ELSE 0 END AS superseded, \
           o.verification_id AS o_id, o.status AS o_status, o.expires_ms AS o_expires, \
           l.verification_id AS l_id, l.status AS l_status, l.expires_ms AS l_expires \
         FROM send_requests r {joins} \
         WHERE r.request_id {filter}"
    );
    let stmt = Statement::from_sql_and_values(backend, sql, values);
    db.query_all_raw(stmt)
        .await?
        .iter()
        .map(Snapshot::from_row)
        .collect()
}

type Reply = oneshot::Sender<Result<Option<Snapshot>, String>>;

/// Handle to the reader task.
#[derive(Clone)]
pub struct Reader {
    tx: mpsc::Sender<(String, Reply)>,
}

impl Reader {
    pub fn spawn(db: DatabaseConnection) -> Self {
        // Bounded by the jobs in flight (the prefetch), which each wait for their answer.
        let (tx, mut rx) = mpsc::channel::<(String, Reply)>(MAX_BATCH);
        tokio::spawn(async move {
            // Runs until every handle is dropped.
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let mut ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
                ids.sort_unstable();
                ids.dedup();
                match load_many(&db, &ids).await {
                    Ok(snaps) => {
                        let by_id: HashMap<String, Snapshot> = snaps
                            .into_iter()
                            .map(|s| (s.req.request_id.clone(), s))
                            .collect();
                        // A duplicate delivery in the batch gets a copy of the same read.
                        for (id, reply) in batch.drain(..) {
                            let _ = reply.send(Ok(by_id.get(&id).cloned()));
                        }
                    }
                    Err(e) => {
                        // Each job retries its own read (with backoff).
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

    /// The request's snapshot, `None` if there is no such request.
    pub async fn load(&self, request_id: &str) -> Result<Option<Snapshot>, DbErr> {
        let (reply, answer) = oneshot::channel();
        let stopped = || DbErr::Custom("the snapshot reader stopped".into());
        self.tx
            .send((request_id.to_owned(), reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?.map_err(DbErr::Custom)
    }
}
