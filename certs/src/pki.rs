//! The webhook's certificates: a CA, and a serving certificate for the webhook Service
//! signed by it, both ECDSA P-256, kept as the files a `kubernetes.io/tls` Secret holds
//! (`ca.crt`, `tls.crt`, `tls.key`) plus the CA's key (`ca.key`), which stays with the admin.
//!
//! `ca.crt` is the bundle clients trust (the webhook configuration's `caBundle`, and the
//! sidecars' bootstrap CA). During a CA rotation it holds the new CA and the old one, the
//! new one first: it signs. Files are replaced atomically (temporary file, rename); keys
//! are written readable by their owner only.

use crate::x509;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

/// What can go wrong with certificate files.
#[derive(Debug, Error)]
pub enum PkiError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key: {reason}")]
    NoKey { path: PathBuf, reason: String },
    #[error(
        "{path}: the CA certificate has no common name; rotate works with the CA rayshape-certs made"
    )]
    NotOurCa { path: PathBuf },
    #[error("{0} already exist; pass --force to replace them")]
    Exists(String),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Who the serving certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub dns: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
}

impl Names {
    /// The DNS names the API server uses to reach a Service: `svc`, `svc.ns`, `svc.ns.svc`
    /// and `svc.ns.svc.cluster.local`, plus any extra ones.
    pub fn for_service(
        service: &str,
        namespace: &str,
        extra_dns: &[String],
        ips: &[std::net::IpAddr],
    ) -> Names {
        let mut dns = vec![
            service.to_string(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ];
        dns.extend(extra_dns.iter().cloned());
        dns.dedup();
        Names {
            dns,
            ips: ips.to_vec(),
        }
    }
}

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 86_400)
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = SystemTime::now();
    // A little backdating covers clocks that run behind.
    params.not_before = (now - Duration::from_secs(300)).into();
    params.not_after = (now + lifetime).into();
}

/// The parameters of a CA this tool makes, by its common name.
fn ca_params(common_name: &str, lifetime: Duration) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p, lifetime);
    p
}

/// A new CA: its certificate and key, as PEM.
pub fn new_ca(lifetime_days: u32) -> Result<(String, String), PkiError> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let params = ca_params(&format!("rayshape webhook CA {stamp}"), days(lifetime_days));
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `names`, signed by the CA (`ca_cert_pem` is the CA's own
/// certificate, `ca_key_pem` its key): certificate and key, as PEM.
pub fn new_serving(
    names: &Names,
    lifetime_days: u32,
    ca_cert_pem: &str,
    ca_key_pem: &str,
    ca_path: &Path,
) -> Result<(String, String), PkiError> {
    let ca_der = CertificateDer::from_pem_slice(ca_cert_pem.as_bytes()).map_err(|_| {
        PkiError::NoCertificate {
            path: ca_path.to_path_buf(),
        }
    })?;
    let cn = x509::subject_common_name(&ca_der).ok_or_else(|| PkiError::NotOurCa {
        path: ca_path.to_path_buf(),
    })?;
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(|e| PkiError::NoKey {
        path: ca_path.with_file_name(CA_KEY),
        reason: e.to_string(),
    })?;
    let issuer = Issuer::new(ca_params(&cn, days(1)), ca_key);
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names
            .dns
            .first()
            .cloned()
            .unwrap_or_else(|| "rayshape-webhook".into()),
    );
    p.distinguished_name = dn;
    for d in &names.dns {
        p.subject_alt_names.push(SanType::DnsName(
            d.clone()
                .try_into()
                .map_err(|e| PkiError::Invalid(format!("{d:?} is not a DNS name: {e}")))?,
        ));
    }
    for ip in &names.ips {
        p.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut p, days(lifetime_days));
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Read a text file.
pub fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Replace a file atomically; `secret` files are readable by their owner only.
pub fn write(path: &Path, text: &str, secret: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Every certificate of a PEM bundle, as DER.
pub fn certificates(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

/// Check that a key file holds a key.
pub fn check_key(path: &Path, pem: &str) -> Result<(), PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map(|_| ())
        .map_err(|e| PkiError::NoKey {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// The first certificate of a PEM bundle, as PEM (the CA that signs, in `ca.crt`).
pub fn first_certificate_pem(pem: &str) -> Option<String> {
    let start = pem.find("-----BEGIN CERTIFICATE-----")?;
    let end_marker = "-----END CERTIFICATE-----";
    let end = pem[start..].find(end_marker)? + start + end_marker.len();
    Some(format!("{}\n", &pem[start..end]))
}

/// When a certificate expires, in seconds since the epoch.
pub fn not_after(der: &[u8]) -> Option<i64> {
    x509::not_after(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_certificates_chain_to_the_ca_by_its_name() {
        let (ca, ca_key) = new_ca(3650).unwrap();
        let names = Names::for_service(
            "rayshape-webhook",
            "rayshape-system",
            &[],
            &["127.0.0.1".parse().unwrap()],
        );
        assert!(
            names
                .dns
                .contains(&"rayshape-webhook.rayshape-system.svc".to_string())
        );
        let (tls, key) = new_serving(&names, 365, &ca, &ca_key, Path::new("ca.crt")).unwrap();
        let leaf = certificates(&tls);
        assert_eq!(leaf.len(), 1);
        crate::check::verify_chain(
            &leaf[0],
            &certificates(&ca),
            "rayshape-webhook.rayshape-system.svc",
        )
        .unwrap();
        crate::check::verify_chain(&leaf[0], &certificates(&ca), "127.0.0.1").unwrap();
        assert!(crate::check::verify_chain(&leaf[0], &certificates(&ca), "other.example").is_err());
        let (other, _) = new_ca(1).unwrap();
        assert!(
            crate::check::verify_chain(
                &leaf[0],
                &certificates(&other),
                "rayshape-webhook.rayshape-system.svc"
            )
            .is_err()
        );
        check_key(Path::new("tls.key"), &key).unwrap();
        let after = not_after(&leaf[0]).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((after - now - 365 * 86_400).abs() < 600, "{after} {now}");
    }
}
