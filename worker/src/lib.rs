//! msgcontact worker: consumes send jobs and delivers verification SMS.
//!
//! Per delivery ([`job`]): decode → one read of the request with its supersede test, contact and
//! codes (grouped with other jobs' reads, [`store`]) → dedupe by RequestId and status → rate limit
//! ([`limits`]) → one transaction claiming it (Sending) together with its live verification (found
//! or created) → provider ([`provider`]) → record the outcome → ack. The ack comes only after the
//! outcome is committed, so a crash anywhere means a redelivery, never a lost request. The broker
//! session and its recovery live in [`consumer`]; [`app`] starts and stops it all.

mod app;
mod consumer;
pub mod dlq;
mod error;
mod job;
pub mod limits;
mod options;
pub mod provider;
mod store;

pub use app::Application;
pub use error::Error;
pub use options::{Config, WorkerOptions};
