//! The API's one error type for building and running it (a request's errors are the catalog's
//! `ApiError`).

/// Errors of building or running the API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] msgcontact::Error),
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    BrokerLost(#[from] msgcontact::amqp::ReconnectError),
}
