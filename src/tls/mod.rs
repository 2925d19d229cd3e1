//! TLS termination: the rustls server configuration and the certificate it
//! serves, which can be replaced while connections are open.

pub(crate) mod chain;
pub(crate) mod sni;
pub(crate) mod store;

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{ResolvesServerCert, ServerSessionMemoryCache};

pub(crate) use store::{CertStore, TlsSettings};

/// rustls refused the server configuration (a defect, not a user's mistake).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
    #[error("TLS session tickets: {0}")]
    Tickets(rustls::Error),
}

/// TLS 1.2 and 1.3 with the ring provider's safe defaults; ALPN offers h2 first,
/// as nginx with `http2 on` does. The certificate comes from `store` on every
/// handshake, so a reload reaches new connections only.
/// `acme_alpn`: also offer `acme-tls/1`, for TLS-ALPN-01 validation handshakes.
pub(crate) fn server_config(
    store: Arc<dyn ResolvesServerCert>,
    acme_alpn: bool,
) -> Result<Arc<ServerConfig>, SetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(SetupError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme_alpn {
        config.alpn_protocols.push(crate::acme::ACME_TLS_ALPN.to_vec());
    }
    // Resumption spares repeat clients (STS, runners) a full handshake.
    config.session_storage = ServerSessionMemoryCache::new(8192);
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(SetupError::Tickets)?;
    Ok(Arc::new(config))
}
