//! MQTT over TLS (rustls): the listener and its certificate. Connections on it are
//! served by the same workers and MQTT handlers as plain TCP, with rustls between the
//! socket and the framing (`net/transport.rs`). Enabled only when `tls_cert` and
//! `tls_key` are set.
//!
//! rustls runs on the *ring* provider, chosen explicitly rather than through rustls's
//! process-wide default, so nothing depends on which other crate installed one first.
//! TLS 1.2 stays enabled next to 1.3 (the `tls12` feature): ESP8266 boards' BearSSL
//! speaks 1.2 only, with ECDHE + AES-GCM or ChaCha20-Poly1305, which rustls shares.
//! `tls_max_fragment_bytes` caps the records sent, for boards with small buffers.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A bound TLS listener and its server configuration, ready for the workers.
#[derive(Debug)]
pub struct TlsListener {
    pub addr: SocketAddr,
    pub listener: TcpListener,
    config: Arc<ServerConfig>,
}

impl TlsListener {
    /// Loads the certificate and key (failing early, at start-up, on a bad file) and
    /// binds `addr` (port 0 allowed).
    pub fn bind(
        addr: &str,
        cert: &Path,
        key: &Path,
        max_fragment: Option<usize>,
    ) -> anyhow::Result<TlsListener> {
        let config = server_config(cert, key, max_fragment)?;
        let listener =
            TcpListener::bind(addr).with_context(|| format!("binding TLS listener {addr}"))?;
        Ok(TlsListener {
            addr: listener.local_addr()?,
            listener,
            config,
        })
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }
}

/// A rustls server configuration from a PEM certificate chain and private key.
pub fn server_config(
    cert: &Path,
    key: &Path,
    max_fragment: Option<usize>,
) -> anyhow::Result<Arc<ServerConfig>> {
    if let Some(n) = max_fragment {
        // rustls's own bounds; checked here so a bad value stops start-up, not every
        // connection.
        anyhow::ensure!(
            (32..=16_384).contains(&n),
            "broker.tls_max_fragment_bytes = {n}: must be 32 ..= 16384"
        );
    }
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading TLS certificate {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading TLS private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not match")?;
    config.max_fragment_size = max_fragment;
    Ok(Arc::new(config))
}
