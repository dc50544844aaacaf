//! The rows a batch's reads return, told apart by a tag in their first column.

use std::collections::{HashMap, HashSet};

use sea_orm::{DbErr, QueryResult, sea_query::Expr};

/// Tags on the rows of the read script, so each row is told apart from the others by its first
/// column.
pub(super) const KEY: &str = "key";
pub(super) const NONCE: &str = "nonce";
pub(super) const COUNTER: &str = "counter";
pub(super) const CONTACT: &str = "contact";

/// A tag as an SQL literal (part of the statement text, not a bound value).
pub(super) fn tag(name: &str) -> Expr {
    Expr::cust(format!("'{name}'"))
}

/// A contact as the checks of a send need it.
#[derive(Debug)]
pub(super) struct ContactRow {
    pub(super) account_id: String,
    pub(super) phone: Option<String>,
    pub(super) pending_phone: Option<String>,
    pub(super) last_send_ms: Option<i64>,
}

/// What the read script found.
#[derive(Default)]
pub(super) struct Read {
    pub(super) active_keys: HashSet<String>,
    pub(super) fresh_nonces: HashSet<(String, String)>,
    pub(super) counts: HashMap<(String, String), i32>,
    pub(super) limits: HashMap<String, Option<i32>>,
    pub(super) contacts: HashMap<String, ContactRow>,
}

impl Read {
    pub(super) fn take(&mut self, row: &QueryResult) -> Result<(), DbErr> {
        let tag: String = row.try_get_by_index(0)?;
        match tag.as_str() {
            KEY => {
                self.active_keys.insert(row.try_get_by_index(1)?);
            }
            NONCE => {
                self.fresh_nonces
                    .insert((row.try_get_by_index(1)?, row.try_get_by_index(2)?));
            }
            COUNTER => {
                let account: String = row.try_get_by_index(1)?;
                self.counts.insert(
                    (account.clone(), row.try_get_by_index(2)?),
                    row.try_get_by_index(3)?,
                );
                self.limits.insert(account, row.try_get_by_index(4)?);
            }
            CONTACT => {
                self.contacts.insert(
                    row.try_get_by_index(1)?,
                    ContactRow {
                        account_id: row.try_get_by_index(2)?,
                        phone: row.try_get_by_index(3)?,
                        pending_phone: row.try_get_by_index(4)?,
                        last_send_ms: row.try_get_by_index(5)?,
                    },
                );
            }
            other => return Err(DbErr::Custom(format!("unexpected row tag {other:?}"))),
        }
        Ok(())
    }
}
