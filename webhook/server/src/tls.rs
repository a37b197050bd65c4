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
    /// Both files' bytes, for change detection. From a mounted Secret (both files in one
    /// directory with a `..data` link, which the kubelet swaps to renew them at once) both
    /// are read from the version the link names, resolved once, so that a renewal between
    /// the two reads cannot pair the new certificate with the old key.
    pub fn read(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let read = |p: &Path, shown: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: shown.display().to_string(),
                source,
            })
        };
        let mut attempts = 3;
        loop {
            let version = match (self.cert.parent(), self.key.parent()) {
                (Some(a), Some(b)) if a == b => crate::config_dir::resolve(a),
                _ => None,
            };
            let (cert, key) = match (&version, self.cert.file_name(), self.key.file_name()) {
                (Some(v), Some(c), Some(k)) => (v.join(c), v.join(k)),
                _ => (self.cert.clone(), self.key.clone()),
            };
            match (read(&cert, &self.cert), read(&key, &self.key)) {
                (Ok(c), Ok(k)) => return Ok((c, k)),
                // The version went while it was read: swapped since; read the new one.
                (Err(_), _) | (_, Err(_))
                    if attempts > 1 && version.as_ref().is_some_and(|v| !v.is_dir()) =>
                {
                    attempts -= 1;
                }
                (Err(e), _) | (_, Err(e)) => return Err(e),
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Both files come from the version `..data` names, even where the top-level links
    /// would (for a moment, during a swap) lead to another one.
    #[test]
    fn a_mounted_secret_is_read_from_one_version() {
        let dir = std::env::temp_dir().join(format!("rs-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (v, body) in [("..v1", "one"), ("..v2", "two")] {
            std::fs::create_dir_all(dir.join(v)).unwrap();
            std::fs::write(dir.join(v).join("tls.crt"), format!("{body} crt")).unwrap();
            std::fs::write(dir.join(v).join("tls.key"), format!("{body} key")).unwrap();
        }
        let link = |target: &str, name: &str| std::os::unix::fs::symlink(target, dir.join(name));
        link("..v2", "..data").unwrap();
        // Mid-swap: the certificate's link still leads to the old version.
        link("..v1/tls.crt", "tls.crt").unwrap();
        link("..data/tls.key", "tls.key").unwrap();
        let paths = Paths {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        let (c, k) = paths.read().unwrap();
        assert_eq!((&c[..], &k[..]), (&b"two crt"[..], &b"two key"[..]));
        // Plain files, no `..data`: read as they are.
        let plain = dir.join("plain");
        std::fs::create_dir_all(&plain).unwrap();
        std::fs::write(plain.join("c"), "c").unwrap();
        std::fs::write(plain.join("k"), "k").unwrap();
        let paths = Paths {
            cert: plain.join("c"),
            key: plain.join("k"),
        };
        assert_eq!(paths.read().unwrap(), (b"c".to_vec(), b"k".to_vec()));
        let e = Paths {
            cert: plain.join("nope"),
            key: plain.join("k"),
        }
        .read()
        .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
