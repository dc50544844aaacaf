//! Replay protection: a request's timestamp must be within [`MAX_SKEW_MS`] of our clock, and its
//! nonce must be new for its access key. The nonce is recorded in the database by the accept batch
//! (`accept`), in the same transaction as the request's writes (a send's reservation), so a replay
//! is caught whichever API process receives it; rows outlive the timestamp window and are purged
//! after it.

use chrono::{DateTime, NaiveDateTime, Utc};
use msgcontact::{ApiError, Error, entities::signature_nonce, time::now_ms};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

/// How far a request's timestamp may be from our clock, either way.
pub const MAX_SKEW_MS: i64 = 15 * 60 * 1000;

/// A signature nonce to record (replay protection).
#[derive(Debug, Clone)]
pub struct NonceKey {
    pub access_key_id: String,
    pub nonce: String,
}

/// Until when a nonce recorded now is kept: past the timestamp window on both sides, so a replay
/// with the same nonce is either caught by its row or refused as expired.
pub fn nonce_expires_ms(now_ms: i64) -> i64 {
    now_ms + 2 * MAX_SKEW_MS
}

pub(super) fn parse_time(s: &str) -> Result<i64, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ")
        .map(|t| t.and_utc().timestamp_millis())
        .map_err(|_| ApiError::TimestampFormat)
}

pub(super) fn check_timestamp(ms: i64) -> Result<(), ApiError> {
    if (Utc::now().timestamp_millis() - ms).abs() > MAX_SKEW_MS {
        Err(ApiError::TimestampExpired)
    } else {
        Ok(())
    }
}

/// Removes nonces past their replay window.
pub async fn purge_nonces(db: &DatabaseConnection) -> Result<u64, Error> {
    let res = signature_nonce::Entity::delete_many()
        .filter(signature_nonce::Column::ExpiresMs.lt(now_ms()))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}
