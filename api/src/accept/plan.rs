//! What a batch decides: the plan gathered before anything runs, the rows its reads found, and
//! the checks of each send against them, in memory and in arrival order.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use msgcontact::ApiError;

use super::{
    request::{Job, Op, Reservation, nonce_of},
    rows::{ContactRow, Read},
};
use crate::auth::replay::{self, NonceKey};

/// What a batch asks of the database, gathered before anything runs.
pub(super) struct Plan<'a> {
    pub(super) results: Vec<Result<(), ApiError>>,
    /// The keys whose nonces or sends the batch records.
    pub(super) key_ids: BTreeSet<&'a str>,
    /// The nonces to record, each once; one repeated within the batch is refused already.
    pub(super) fresh: Vec<&'a NonceKey>,
    /// Kept past the timestamp window on both sides: a replay with the same nonce is either
    /// caught by its row or rejected as expired.
    pub(super) nonce_expires_ms: i64,
    /// The sends still to decide (a send refused for its nonce is not), in arrival order.
    pub(super) sends: Vec<(usize, &'a Reservation)>,
    /// Their (account, day) counters and their contacts, in key order: the order they are locked.
    pub(super) groups: BTreeSet<(&'a str, &'a str)>,
    pub(super) contact_ids: BTreeSet<&'a str>,
}

impl<'a> Plan<'a> {
    pub(super) fn of(batch: &'a [Job]) -> Self {
        let mut results: Vec<Result<(), ApiError>> = vec![Ok(()); batch.len()];
        let mut seen = HashSet::new();
        let mut fresh = Vec::new();
        for (i, job) in batch.iter().enumerate() {
            if let Some(n) = nonce_of(&job.op) {
                if seen.insert((n.access_key_id.as_str(), n.nonce.as_str())) {
                    fresh.push(n);
                } else {
                    results[i] = Err(ApiError::SignatureNonceUsed);
                }
            }
        }
        let sends: Vec<(usize, &Reservation)> = batch
            .iter()
            .enumerate()
            .filter_map(|(i, j)| match &j.op {
                Op::Send { reservation, .. } if results[i].is_ok() => Some((i, reservation)),
                _ => None,
            })
            .collect();
        Self {
            key_ids: fresh.iter().map(|n| n.access_key_id.as_str()).collect(),
            groups: sends
                .iter()
                .map(|(_, r)| (r.account_id.as_str(), r.day.as_str()))
                .collect(),
            contact_ids: sends.iter().map(|(_, r)| r.contact_id.as_str()).collect(),
            results,
            fresh,
            nonce_expires_ms: replay::nonce_expires_ms(msgcontact::time::now_ms()),
            sends,
        }
    }

    /// Refuses what the reads showed: a key disabled since authentication read its cached copy,
    /// a nonce already recorded. Then decides every remaining send in arrival order.
    pub(super) fn decide(&mut self, batch: &[Job], read: &mut Read) -> Reserved<'a> {
        for (i, job) in batch.iter().enumerate() {
            if let Some(n) = nonce_of(&job.op)
                && self.results[i].is_ok()
            {
                if !read.active_keys.contains(&n.access_key_id) {
                    self.results[i] = Err(ApiError::AccessKeyInactive);
                } else if !read
                    .fresh_nonces
                    .remove(&(n.access_key_id.clone(), n.nonce.clone()))
                {
                    self.results[i] = Err(ApiError::SignatureNonceUsed);
                }
            }
        }
        let start = read.counts.clone();
        let mut reserved = Reserved::default();
        for &(i, r) in &self.sends {
            if self.results[i].is_err() {
                continue;
            }
            let outcome = decide(r, &read.limits, &mut read.counts, &mut read.contacts);
            if outcome.is_ok() {
                reserved.claimed.insert(r.contact_id.as_str(), r.now_ms);
                reserved.rows.push(r);
            }
            self.results[i] = outcome;
        }
        for ((account, day), count) in &read.counts {
            let taken = count
                - start
                    .get(&(account.clone(), day.clone()))
                    .copied()
                    .unwrap_or(0);
            if taken > 0 {
                reserved.taken.push((account.clone(), day.clone(), taken));
            }
        }
        reserved
    }
}

/// What a batch's accepted sends take, to be written back before it commits.
#[derive(Default)]
pub(super) struct Reserved<'a> {
    /// Quota units taken per (account, day) counter.
    pub(super) taken: Vec<(String, String, i32)>,
    /// Cooldown slots claimed, each with its own send time (a failed publish gives a slot back
    /// only if it still holds that time).
    pub(super) claimed: BTreeMap<&'a str, i64>,
    /// The new request rows.
    pub(super) rows: Vec<&'a Reservation>,
}

/// One send's synchronous checks against the rows read for its batch, in the SPEC's order (the
/// contact, the number, the quota's 409 before the cooldown's 429); an accepted send takes its
/// quota unit and cooldown slot in those rows, so the batch's next send sees them taken.
pub(super) fn decide(
    r: &Reservation,
    limits: &HashMap<String, Option<i32>>,
    counts: &mut HashMap<(String, String), i32>,
    contacts: &mut HashMap<String, ContactRow>,
) -> Result<(), ApiError> {
    let c = contacts
        .get_mut(&r.contact_id)
        .filter(|c| c.account_id == r.account_id)
        .ok_or(ApiError::ContactNotFound)?;
    let pending = c.pending_phone.as_deref() == Some(r.phone.as_str());
    if !pending && c.phone.as_deref() != Some(r.phone.as_str()) {
        return Err(ApiError::InvalidParameter("PhoneNumber"));
    }
    if !pending {
        return Err(ApiError::VerificationNotFound);
    }
    let limit = limits
        .get(&r.account_id)
        .copied()
        .flatten()
        .map(|l| Ord::max(l, 0) as u32)
        .unwrap_or(r.default_limit);
    let count = counts
        .entry((r.account_id.clone(), r.day.clone()))
        .or_insert(0);
    if *count as i64 >= limit as i64 {
        return Err(ApiError::DailyLimitExceeded);
    }
    if r.cooldown_ms > 0
        && let Some(last) = c.last_send_ms
        && last > r.now_ms - r.cooldown_ms
    {
        return Err(ApiError::ContactThrottled {
            retry_after_ms: Ord::max(last + r.cooldown_ms - r.now_ms, 1) as u64,
        });
    }
    *count += 1;
    c.last_send_ms = Some(r.now_ms);
    Ok(())
}
