//! The worker's database access: the grouped read a job starts with ([`snapshot`]) and the group
//! commits of claims ([`claims`]) and of `Sent` outcomes ([`sent`]).

pub mod claims;
pub mod sent;
pub mod snapshot;
