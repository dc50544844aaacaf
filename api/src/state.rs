//! What every request shares.

use msgcontact::config::PolicyConfig;
use sea_orm::DatabaseConnection;

use crate::{accept, auth::keys::KeyStore, publisher::Publisher};

/// Shared by every request.
pub struct AppState {
    pub db: DatabaseConnection,
    /// Access keys, cached (their status is re-checked by the writer).
    pub keys: KeyStore,
    pub policy: PolicyConfig,
    pub publisher: Publisher,
    /// Group commit of nonces and send reservations.
    pub writer: accept::Writer,
    /// Derives and checks verification codes.
    pub code_secrets: msgcontact::secrets::CodeSecrets,
    /// Seals access key secrets (the CLI's development key).
    pub master: msgcontact::secrets::MasterKey,
    pub max_body_bytes: usize,
    /// Recent queue reports, for the ops page.
    pub history: msgcontact::monitor::History,
}
