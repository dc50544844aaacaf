//! msgcontact API: Alibaba Cloud RPC over HTTP, authenticated, validated, with confirmed publishing.
//!
//! `Application::build` binds and connects everything; `run_until_stopped` serves until the
//! cancellation token fires, then drains in-flight requests. The layout: [`http`] receives and
//! answers, [`auth`] says who signed, [`actions`] runs an action, [`accept`] decides and records a
//! batch of requests in one transaction, [`publisher`] hands a send to the broker.

pub mod accept;
pub mod actions;
pub mod admin_cli;
mod app;
pub mod auth;
mod config;
mod error;
pub mod http;
pub mod publisher;
mod state;

#[cfg(test)]
mod testing;

pub use app::Application;
pub use config::{API_VERSION, ApiOptions, BODY_TIMEOUT, Config, REQUEST_TIMEOUT};
pub use error::Error;
pub use http::{admin_router, router};
pub use state::AppState;
