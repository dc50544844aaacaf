//! Every access key, held in memory in front of the database and refreshed each second, so a
//! request naming an unknown key costs no database read. Secrets are opened with the master key;
//! the accept batch re-checks a key's status in the transaction that records the request's nonce,
//! so a key disabled in the database is refused from its next batch on.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use msgcontact::{ApiError, entities::access_key, secrets::MasterKey, status::AccessKeyStatus};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};

/// How often keys created since the last look are read: a key made with the CLI works within it.
pub const KEY_REFRESH: Duration = Duration::from_secs(1);
/// Every so many refreshes, all keys are read again (disabled, removed or re-sealed ones).
const FULL_RELOAD_EVERY: u64 = 60;
/// How far back a refresh looks before the newest key it knows: keys created by processes whose
/// clocks run a little behind ours still show up.
const CREATED_OVERLAP_MS: i64 = 10_000;

/// An access key as authentication needs it.
#[derive(Clone, Debug)]
pub struct Key {
    pub access_key_id: String,
    pub account_id: String,
    pub secret: String,
    pub active: bool,
}

/// Every access key, in memory, in front of the database.
pub struct KeyStore {
    db: DatabaseConnection,
    master: MasterKey,
    keys: RwLock<Arc<HashMap<String, Key>>>,
    /// The newest `created_ms` seen, where the next refresh starts (less the overlap).
    newest_ms: AtomicI64,
    refreshes: AtomicU64,
    /// Reads of keys from the database (also the `ACCESS_KEY_READS` counter).
    reads: AtomicU64,
}

impl KeyStore {
    /// Reads every key, sealing any stored in clear by an earlier version first.
    pub async fn load(db: DatabaseConnection, master: MasterKey) -> Result<Self, DbErr> {
        seal_stored_secrets(&db, &master).await?;
        let store = Self {
            db,
            master,
            keys: RwLock::default(),
            newest_ms: AtomicI64::new(i64::MIN),
            refreshes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        };
        store.read(None).await?;
        Ok(store)
    }

    /// Database reads of keys so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// One refresh tick: the keys created lately, or every key now and then.
    pub async fn refresh(&self) -> Result<(), DbErr> {
        let n = self.refreshes.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(FULL_RELOAD_EVERY) {
            self.read(None).await
        } else {
            let since = self
                .newest_ms
                .load(Ordering::Relaxed)
                .saturating_sub(CREATED_OVERLAP_MS);
            self.read(Some(since)).await
        }
    }

    /// Reads all keys (`None`) or those created since a moment, into the map.
    async fn read(&self, since: Option<i64>) -> Result<(), DbErr> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(msgcontact::metrics::ACCESS_KEY_READS).increment(1);
        let mut q = access_key::Entity::find();
        if let Some(ms) = since {
            q = q.filter(access_key::Column::CreatedMs.gte(ms));
        }
        let rows = q.all(&self.db).await?;
        if since.is_some() && rows.is_empty() {
            return Ok(());
        }
        let current = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut next = if since.is_some() {
            (*current).clone()
        } else {
            HashMap::with_capacity(rows.len())
        };
        for row in rows {
            self.newest_ms.fetch_max(row.created_ms, Ordering::Relaxed);
            // Unchanged rows keep their opened secret (opening each second would be wasted work).
            let unchanged = current.get(&row.access_key_id).filter(|k| {
                k.active == (row.status == AccessKeyStatus::Active.as_str())
                    && k.account_id == row.account_id
            });
            if let Some(k) = unchanged
                && since.is_some()
            {
                next.insert(row.access_key_id.clone(), k.clone());
                continue;
            }
            match self.master.open(&row.secret, &row.access_key_id) {
                Ok(secret) => {
                    next.insert(
                        row.access_key_id.clone(),
                        Key {
                            active: row.status == AccessKeyStatus::Active.as_str(),
                            access_key_id: row.access_key_id,
                            account_id: row.account_id,
                            secret,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(access_key_id = %row.access_key_id, error = %e, "access key unusable");
                }
            }
        }
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        Ok(())
    }

    /// Marks a key disabled, e.g. when the writer found it so (the next full reload confirms).
    pub fn forget(&self, id: &str) {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if keys.get(id).is_some_and(|k| k.active) {
            let mut next = (**keys).clone();
            if let Some(k) = next.get_mut(id) {
                k.active = false;
            }
            *keys = Arc::new(next);
        }
    }

    /// The active key with this id; no database read either way.
    pub(super) fn lookup(&self, id: &str) -> Result<Key, ApiError> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        match keys.get(id) {
            None => Err(ApiError::AccessKeyNotFound),
            Some(k) if !k.active => Err(ApiError::AccessKeyInactive),
            Some(k) => Ok(k.clone()),
        }
    }
}

/// Seals every access key secret that is in clear (stored by an earlier version) or sealed with a
/// previous master key, with the current one. Returns how many it sealed.
pub async fn seal_stored_secrets(
    db: &DatabaseConnection,
    master: &MasterKey,
) -> Result<u64, DbErr> {
    let mut sealed = 0;
    for row in access_key::Entity::find().all(db).await? {
        if master.is_current(&row.secret) {
            continue;
        }
        let plain = if MasterKey::is_sealed(&row.secret) {
            match master.open(&row.secret, &row.access_key_id) {
                Ok(p) => p,
                Err(_) => continue,
            }
        } else {
            row.secret.clone()
        };
        // Conditional on the value read, so two processes sealing at once do not clash.
        let done = access_key::Entity::update_many()
            .col_expr(
                access_key::Column::Secret,
                sea_orm::sea_query::Expr::value(master.seal(&plain, &row.access_key_id)),
            )
            .filter(access_key::Column::AccessKeyId.eq(row.access_key_id.as_str()))
            .filter(access_key::Column::Secret.eq(row.secret.as_str()))
            .exec(db)
            .await?;
        sealed += done.rows_affected;
    }
    if sealed > 0 {
        tracing::warn!(
            sealed,
            "sealed access key secrets with the current master key"
        );
    }
    Ok(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use msgcontact::time::now_ms;
    use sea_orm::ActiveValue::Set;

    use crate::testing::TempDb;

    async fn insert_key(db: &DatabaseConnection, id: &str, secret: &str) {
        access_key::Entity::insert(access_key::ActiveModel {
            access_key_id: Set(id.into()),
            account_id: Set("1234567890123456".into()),
            secret: Set(secret.into()),
            status: Set(AccessKeyStatus::Active.as_str().into()),
            created_ms: Set(now_ms()),
        })
        .exec_without_returning(db)
        .await
        .expect("key");
    }

    #[tokio::test]
    async fn unknown_keys_cost_no_read_and_new_keys_appear_on_refresh() {
        let file = TempDb::new("keys");
        let db = msgcontact::db::connect(&file.url(), 1)
            .await
            .expect("database");
        // Stored in clear, as an earlier version did: sealed on load, and still usable.
        insert_key(&db, "LTAIlegacy", "legacy-secret-0123456789").await;
        let master = MasterKey::random();
        let keys = KeyStore::load(db.clone(), master.clone())
            .await
            .expect("load");
        let stored = access_key::Entity::find_by_id("LTAIlegacy".to_owned())
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert!(master.is_current(&stored.secret) && !stored.secret.contains("legacy-secret"));
        assert_eq!(
            keys.lookup("LTAIlegacy").unwrap().secret,
            "legacy-secret-0123456789"
        );

        let before = keys.reads();
        for i in 0..1000 {
            assert!(matches!(
                keys.lookup(&format!("LTAIunknown{i}")),
                Err(ApiError::AccessKeyNotFound)
            ));
        }
        assert_eq!(keys.reads(), before, "unknown keys read nothing");

        let sealed = master.seal("fresh-secret-0123456789", "LTAIfresh");
        insert_key(&db, "LTAIfresh", &sealed).await;
        assert!(keys.lookup("LTAIfresh").is_err());
        keys.refresh().await.unwrap();
        assert_eq!(
            keys.lookup("LTAIfresh").unwrap().secret,
            "fresh-secret-0123456789"
        );
        keys.forget("LTAIfresh");
        assert!(matches!(
            keys.lookup("LTAIfresh"),
            Err(ApiError::AccessKeyInactive)
        ));
        db.close().await.ok();
    }
}
