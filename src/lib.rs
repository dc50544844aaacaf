//! msgcontact core: what the API and the worker share.
//!
//! Domain types parsed at the edge, the error catalog, request signing, the job contract and queue
//! topology, sea-orm entities, configuration and telemetry.

pub mod amqp;
pub mod code;
pub mod config;
pub mod db;
pub mod domain;
pub mod entities;
pub mod error;
pub mod job;
pub mod metrics;
pub mod monitor;
pub mod retry;
pub mod secrets;
pub mod signal;
pub mod signing;
pub mod status;
pub mod telemetry;
pub mod time;
pub mod tls;

pub use error::ApiError;

/// Infrastructure failures (database, broker, configuration) of the shared code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("configuration: {0}")]
    Config(String),
}
