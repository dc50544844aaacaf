//! Test harness: starts the real API (and worker) code against real RabbitMQ and a fresh database.
//!
//! Each app gets its own queue prefix and its own database (a SQLite file in a temp dir, or a new
//! PostgreSQL database), so tests run in parallel without seeing each other. RabbitMQ and
//! PostgreSQL must be running: when they are not, tests fail with a message saying so.
//!
//! [`Options`] is the one way to configure a test app: the API instances are built from it, and
//! the worker, in process or as a child process, reads the same environment ([`TestApp::worker_env`]).

mod app;
mod client;
mod config;
pub mod fake_sms;
mod inbox;
mod inspect;
mod process;
pub mod proxy;
mod workers;

pub use app::{TempDir, TestApp, refresh_keys};
pub use client::{API_VERSION, Key, Response, http_client, http_get, nonce, now_stamp};
pub use config::{Backend, Options, amqp_url, api_config, infra, pg_admin_url, test_secrets};
pub use inbox::Inbox;
pub use inspect::{assert_invariants, depth, depth_settled};
pub use process::{signal, wait_for_exit};

/// Runs each named `async fn(Backend)` once per database backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident;)*) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Postgres).await })*
        }
    };
}
