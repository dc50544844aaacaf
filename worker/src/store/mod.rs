//! The worker's database access: the grouped read a job starts with ([`snapshot`]) and the group
//! commits of claims and `Sent` outcomes ([`batch`]).

pub mod batch;
pub mod snapshot;
