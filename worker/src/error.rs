//! The worker's one error type: what can stop it from starting or running.

use sea_orm::DbErr;

/// Errors of building or running the worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] msgcontact::Error),
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    BrokerLost(#[from] msgcontact::amqp::ReconnectError),
}
