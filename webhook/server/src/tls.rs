//! The serving certificate: loaded from PEM files, swapped while running, handed to every
//! new TLS handshake. A certificate that does not load (or whose key does not match it) is
//! refused and the last good one stays in force.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}")]
    NoKey { path: String, reason: String },
    #[error("the key in {key} does not fit the certificate in {cert}: {reason}")]
    Mismatch {
        cert: String,
        key: String,
        reason: String,
    },
}

/// A certificate and key as read from disk, with the certificate's expiry.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// `notAfter` of the leaf certificate, seconds since the epoch.
    pub not_after: Option<i64>,
}

/// The paths of the serving certificate and key.
#[derive(Clone, Debug)]
pub struct Paths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Paths {
    /// Both files' bytes, for change detection.
    pub fn read(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        Ok((read(&self.cert)?, read(&self.key)?))
    }

    /// Parse and check a certificate chain and key.
    pub fn load(
        &self,
        cert_pem: &[u8],
        key_pem: &[u8],
        provider: &CryptoProvider,
    ) -> Result<Loaded, TlsError> {
        let cert = self.cert.display().to_string();
        let key = self.key.display().to_string();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .filter_map(Result::ok)
            .collect();
        if chain.is_empty() {
            return Err(TlsError::NoCertificate { path: cert });
        }
        let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::NoKey {
            path: key.clone(),
            reason: e.to_string(),
        })?;
        let not_after = rayshape_certs::x509::not_after(&chain[0]);
        let certified =
            CertifiedKey::from_der(chain, private, provider).map_err(|e| TlsError::Mismatch {
                cert,
                key,
                reason: e.to_string(),
            })?;
        Ok(Loaded {
            key: Arc::new(certified),
            not_after,
        })
    }
}

/// Hands the current certificate to each handshake; `None` until one has loaded, which
/// fails the handshake (and so keeps `/readyz` unreachable until then).
#[derive(Debug, Default)]
pub struct Resolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl Resolver {
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
    }

    pub fn is_loaded(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1 by ALPN, certificates from `resolver`.
pub fn server_config(
    provider: Arc<CryptoProvider>,
    resolver: Arc<Resolver>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}
