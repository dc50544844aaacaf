//! Inbound authentication: ACS3-HMAC-SHA256 and v1 HMAC-SHA1, timestamps, replay-proof nonces.
//!
//! Nonces are recorded in the database, so a replay is caught whichever API process receives it.
//! Active keys are cached; the writer re-checks a key's status in the transaction that records the
//! request's nonce, so a key disabled in the database is refused from its next batch on.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::http::HeaderMap;
use chrono::{DateTime, NaiveDateTime, Utc};
use msgcontact::{
    ApiError, Error,
    domain::AccountId,
    entities::{access_key, signature_nonce},
    signing::{self, Acs3Authorization, Acs3Request},
    status,
    time::now_ms,
};
use sea_orm::{DatabaseConnection, DbErr, EntityTrait};
use tokio::sync::OnceCell;

use crate::{params::Params, writer::NonceKey};

/// How far a request's timestamp may be from our clock, either way.
pub const MAX_SKEW_MS: i64 = 15 * 60 * 1000;

/// How long a key's secret is trusted without reading it again. Its status is re-checked in every
/// batch regardless; this only bounds how stale a cached secret can be.
const KEY_TTL: Duration = Duration::from_secs(60);
/// Keys cached at most; past it the cache starts over (a scan of many unknown keys is not
/// cached at all, only keys that signed a request correctly are).
const MAX_CACHED_KEYS: usize = 10_000;

/// One read of a key from the database, shared by the requests that miss the cache meanwhile.
type SharedRead = Arc<OnceCell<Option<access_key::Model>>>;

/// Access keys by id: a read-through cache of the active ones in front of the database.
pub struct KeyStore {
    db: DatabaseConnection,
    cache: RwLock<HashMap<String, (access_key::Model, Instant)>>,
    /// Reads in progress by key id. When a busy key's entry expires, every request arriving
    /// before it is read again misses together (at c=32, 32 identical reads once a minute); they
    /// wait for the first one's read instead.
    reading: Mutex<HashMap<String, SharedRead>>,
    /// Reads of a key from the database (also the `ACCESS_KEY_READS` counter).
    reads: AtomicU64,
}

/// Ends a shared read: whoever started it removes it, even if its request was dropped meanwhile
/// (the others then finish the read themselves, which `OnceCell` allows).
struct ReadingGuard<'a> {
    store: &'a KeyStore,
    id: &'a str,
    started: bool,
}

impl Drop for ReadingGuard<'_> {
    fn drop(&mut self) {
        if self.started {
            self.store
                .reading
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(self.id);
        }
    }
}

impl KeyStore {
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            cache: RwLock::default(),
            reading: Mutex::default(),
            reads: AtomicU64::new(0),
        }
    }

    /// Forgets a key, e.g. when the writer found it disabled.
    pub fn forget(&self, id: &str) {
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// The key and whether it came from the cache (a key read from the database is remembered
    /// once it has verified a signature).
    async fn lookup(&self, id: &str) -> Result<(access_key::Model, bool), ApiError> {
        if let Some((key, at)) = self.cache.read().unwrap_or_else(|e| e.into_inner()).get(id)
            && at.elapsed() < KEY_TTL
        {
            return Ok((key.clone(), true));
        }
        let key = self
            .read_shared(id)
            .await?
            .ok_or(ApiError::AccessKeyNotFound)?;
        if key.status != status::access_key::ACTIVE {
            self.forget(id);
            return Err(ApiError::AccessKeyInactive);
        }
        Ok((key, false))
    }

    /// Reads a key, or joins the read of it already in progress. A failed read is not shared:
    /// the next waiter tries again.
    async fn read_shared(&self, id: &str) -> Result<Option<access_key::Model>, ApiError> {
        let (read, started) = {
            let mut reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
            match reading.get(id) {
                Some(read) => (read.clone(), false),
                None => {
                    let read = SharedRead::default();
                    reading.insert(id.to_owned(), read.clone());
                    (read, true)
                }
            }
        };
        let _guard = ReadingGuard {
            store: self,
            id,
            started,
        };
        read.get_or_try_init(|| async {
            self.reads.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(msgcontact::metrics::ACCESS_KEY_READS).increment(1);
            access_key::Entity::find_by_id(id.to_owned())
                .one(&self.db)
                .await
                .map_err(db_unavailable)
        })
        .await
        .cloned()
    }

    /// Remembers a key after it verified a signature.
    fn remember(&self, key: &access_key::Model) {
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED_KEYS && !cache.contains_key(&key.access_key_id) {
            cache.clear();
        }
        cache.insert(key.access_key_id.clone(), (key.clone(), Instant::now()));
    }
}

/// What the signature covers besides the parameters.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub query: &'a Params,
    pub all_params: &'a Params,
    pub body: &'a [u8],
    /// True when the action came from the `x-acs-action` header (it must then be signed).
    pub action_from_header: bool,
}

/// Who signed a request, and the nonce to record (the caller records it, see `writer`).
#[derive(Debug)]
pub struct Caller {
    pub account: AccountId,
    pub nonce: NonceKey,
}

/// Authenticates a request: the key, its status, the timestamp and the signature. Recording the
/// nonce (replay protection) is left to the caller, so a send can record it in the same grouped
/// transaction as its reservation.
pub async fn authenticate(keys: &KeyStore, req: &SignedRequest<'_>) -> Result<Caller, ApiError> {
    let authz = req
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if authz.starts_with(signing::ACS3_ALGORITHM) {
        acs3(keys, req, authz).await
    } else if authz.is_empty()
        && (req.all_params.get("Signature").is_some()
            || req.all_params.get("AccessKeyId").is_some())
    {
        v1(keys, req).await
    } else if authz.is_empty() {
        Err(ApiError::IncompleteSignature("The request is not signed."))
    } else {
        Err(ApiError::SignatureMethodUnsupported)
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

async fn acs3(keys: &KeyStore, req: &SignedRequest<'_>, authz: &str) -> Result<Caller, ApiError> {
    let auth = Acs3Authorization::parse(authz).ok_or(ApiError::IncompleteSignature(
        "The Authorization header is malformed.",
    ))?;
    let date = header(req.headers, "x-acs-date")
        .ok_or(ApiError::IncompleteSignature("x-acs-date is missing."))?;
    let nonce = header(req.headers, "x-acs-signature-nonce").ok_or(
        ApiError::IncompleteSignature("x-acs-signature-nonce is missing."),
    )?;
    let content_sha = header(req.headers, "x-acs-content-sha256").ok_or(
        ApiError::IncompleteSignature("x-acs-content-sha256 is missing."),
    )?;
    let signed: Vec<&str> = auth.signed_headers.split(';').collect();
    // Without these in the signature, a captured request could be replayed with a fresh nonce or
    // date, or redirected to another action.
    let mut must_sign = vec![
        "x-acs-date",
        "x-acs-signature-nonce",
        "x-acs-content-sha256",
    ];
    if req.action_from_header {
        must_sign.push("x-acs-action");
    }
    if must_sign.iter().any(|h| !signed.contains(h)) {
        return Err(ApiError::IncompleteSignature(
            "SignedHeaders must include the x-acs-* headers.",
        ));
    }
    let mut headers = Vec::with_capacity(signed.len());
    for name in &signed {
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ApiError::IncompleteSignature("SignedHeaders is malformed."));
        }
        let values: Vec<&str> = req
            .headers
            .get_all(*name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if values.is_empty() {
            return Err(ApiError::IncompleteSignature("A signed header is missing."));
        }
        headers.push((name.to_string(), values.join(",")));
    }

    let (key, cached) = keys.lookup(&auth.access_key_id).await?;
    check_timestamp(parse_time(date)?)?;
    if !signing::signatures_equal(
        &signing::sha256_hex(req.body),
        &content_sha.to_ascii_lowercase(),
    ) {
        return Err(ApiError::SignatureDoesNotMatch);
    }
    let expected = Acs3Request {
        method: req.method,
        path: req.path,
        query: req.query.pairs(),
        headers: &headers,
        signed_headers: &auth.signed_headers,
        payload_hash: content_sha,
    }
    .signature(&key.secret);
    if !signing::signatures_equal(&expected, &auth.signature.to_ascii_lowercase()) {
        return Err(ApiError::SignatureDoesNotMatch);
    }
    if !cached {
        keys.remember(&key);
    }
    caller(&key, nonce)
}

async fn v1(keys: &KeyStore, req: &SignedRequest<'_>) -> Result<Caller, ApiError> {
    let p = req.all_params;
    let missing = |what| ApiError::IncompleteSignature(what);
    let ak = p
        .get("AccessKeyId")
        .ok_or(missing("AccessKeyId is missing."))?;
    let signature = p.get("Signature").ok_or(missing("Signature is missing."))?;
    let nonce = p
        .get("SignatureNonce")
        .ok_or(missing("SignatureNonce is missing."))?;
    let timestamp = p.get("Timestamp").ok_or(missing("Timestamp is missing."))?;
    match p.get("SignatureMethod") {
        Some("HMAC-SHA1") => {}
        None => return Err(missing("SignatureMethod is missing.")),
        Some(_) => return Err(ApiError::SignatureMethodUnsupported),
    }
    if p.get("SignatureVersion").is_none() {
        return Err(missing("SignatureVersion is missing."));
    }
    let (key, cached) = keys.lookup(ak).await?;
    check_timestamp(parse_time(timestamp)?)?;
    let signed_params: Vec<(&str, &str)> = p
        .pairs()
        .iter()
        .filter(|(k, _)| k != "Signature")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let expected = signing::v1_signature(
        &key.secret,
        &signing::v1_string_to_sign(req.method, &signed_params),
    );
    if !signing::signatures_equal(&expected, signature) {
        return Err(ApiError::SignatureDoesNotMatch);
    }
    if !cached {
        keys.remember(&key);
    }
    caller(&key, nonce)
}

fn parse_time(s: &str) -> Result<i64, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ")
        .map(|t| t.and_utc().timestamp_millis())
        .map_err(|_| ApiError::TimestampFormat)
}

fn check_timestamp(ms: i64) -> Result<(), ApiError> {
    if (Utc::now().timestamp_millis() - ms).abs() > MAX_SKEW_MS {
        Err(ApiError::TimestampExpired)
    } else {
        Ok(())
    }
}

fn caller(key: &access_key::Model, nonce: &str) -> Result<Caller, ApiError> {
    if nonce.len() > 128 {
        return Err(ApiError::IncompleteSignature(
            "The signature nonce is too long.",
        ));
    }
    Ok(Caller {
        account: AccountId::parse(&key.account_id).map_err(|_| ApiError::Internal)?,
        nonce: NonceKey {
            access_key_id: key.access_key_id.clone(),
            nonce: nonce.to_owned(),
        },
    })
}

/// Removes nonces past their replay window.
pub async fn purge_nonces(db: &DatabaseConnection) -> Result<u64, Error> {
    use sea_orm::{ColumnTrait, QueryFilter};
    let res = signature_nonce::Entity::delete_many()
        .filter(signature_nonce::Column::ExpiresMs.lt(now_ms()))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}

/// A database failure on the request path: the caller may retry.
pub fn db_unavailable(e: DbErr) -> ApiError {
    tracing::error!(error = %e, "database error");
    ApiError::ServiceUnavailable {
        retry_after_ms: 1000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{ActiveValue::Set, TransactionTrait};

    use crate::testing::TempDb;

    /// A fresh SQLite database holding one active key, and a store in front of it.
    async fn store_with_key(id: &str) -> (KeyStore, TempDb) {
        let path =
            std::env::temp_dir().join(format!("msgcontact-keys-{}.db", uuid::Uuid::new_v4()));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let db = msgcontact::db::connect(&url, 1).await.expect("database");
        access_key::Entity::insert(access_key::ActiveModel {
            access_key_id: Set(id.into()),
            account_id: Set("1234567890123456".into()),
            secret: Set("testSecret".into()),
            status: Set(status::access_key::ACTIVE.into()),
            created_ms: Set(now_ms()),
        })
        .exec_without_returning(&db)
        .await
        .expect("key");
        (KeyStore::new(db), TempDb(path))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_missing_one_key_together_share_one_read() {
        let (keys, _file) = store_with_key("LTAIshared").await;
        // The pool's one connection held elsewhere: the first reader's read waits for it, so all
        // 32 miss while that read is under way (unheld, a first read could finish before the last
        // lookup had begun, and that one would rightly read again).
        let held = keys.db.begin().await.expect("the pool's connection");
        let mut lookups: Vec<_> = (0..32)
            .map(|_| Box::pin(keys.lookup("LTAIshared")))
            .collect();
        for lookup in &mut lookups {
            assert!(futures::poll!(lookup.as_mut()).is_pending());
        }
        held.rollback().await.expect("rollback");
        let found = futures::future::join_all(lookups).await;
        assert!(
            found
                .iter()
                .all(|r| matches!(r, Ok((k, false)) if k.secret == "testSecret"))
        );
        assert_eq!(
            keys.reads.load(Ordering::Relaxed),
            1,
            "32 misses at once, one read"
        );
        assert!(keys.reading.lock().unwrap().is_empty(), "the read is over");

        // An unknown key is not remembered: each later miss reads again, and says not found.
        for _ in 0..2 {
            assert!(matches!(
                keys.lookup("LTAIunknown").await,
                Err(ApiError::AccessKeyNotFound)
            ));
        }
        assert_eq!(keys.reads.load(Ordering::Relaxed), 3);

        // A verified key is served from the cache afterwards.
        let (key, _) = keys.lookup("LTAIshared").await.expect("key");
        keys.remember(&key);
        assert!(matches!(keys.lookup("LTAIshared").await, Ok((_, true))));
        assert_eq!(keys.reads.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn a_dropped_first_reader_leaves_no_read_behind() {
        let (keys, _file) = store_with_key("LTAIdropped").await;
        // Polled once, then dropped mid-read (a caller that hung up): its entry goes with it.
        let mut first = Box::pin(keys.lookup("LTAIdropped"));
        let _ = futures::poll!(first.as_mut());
        drop(first);
        assert!(keys.reading.lock().unwrap().is_empty());
        assert!(matches!(keys.lookup("LTAIdropped").await, Ok((_, false))));
    }
}
