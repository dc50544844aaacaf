//! The process's one TLS crypto provider (ring), installed before any HTTPS client is built.

/// Installs ring as the process's rustls provider; later calls (and an earlier install) are no-ops.
/// The HTTP client is built without a provider of its own, so every binary or test that builds
/// one calls this first.
pub fn install_crypto_provider() {
    // `Err` means a provider is installed already, which is all this wants.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
