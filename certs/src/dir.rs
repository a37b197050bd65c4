//! The certificate directory as `rayshape-certs` keeps it: generation, renewal, and a CA
//! rotation with overlap.

use crate::check;
use crate::pki::{self, CA_CERT, CA_KEY, Names, PkiError, TLS_CERT, TLS_KEY};
use std::path::Path;

/// A CA and a serving certificate signed by it, in `out`.
pub fn generate(
    out: &Path,
    names: &Names,
    days: u32,
    ca_days: u32,
    force: bool,
) -> Result<(), PkiError> {
    std::fs::create_dir_all(out).map_err(|source| PkiError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let existing: Vec<&str> = [CA_CERT, CA_KEY, TLS_CERT, TLS_KEY]
        .into_iter()
        .filter(|f| out.join(f).exists())
        .collect();
    if !existing.is_empty() && !force {
        return Err(PkiError::Exists(format!(
            "{} in {}",
            existing.join(", "),
            out.display()
        )));
    }
    let (ca, ca_key) = pki::new_ca(ca_days)?;
    let (tls, key) = pki::new_serving(names, days, &ca, &ca_key, &out.join(CA_CERT))?;
    pki::write(&out.join(CA_KEY), &ca_key, true)?;
    pki::write(&out.join(CA_CERT), &ca, false)?;
    pki::write(&out.join(TLS_KEY), &key, true)?;
    pki::write(&out.join(TLS_CERT), &tls, false)?;
    Ok(())
}

/// A new serving certificate from the CA that signs (the first in `ca.crt`, key `ca.key`),
/// for `names` and, unless `replace`, every name of the certificate it replaces: a renewal
/// run without the `--namespace`, `--dns` or `--ip` the directory was made with must not
/// drop the name the API server calls the webhook by. The names kept are returned. A
/// `tls.crt` whose names cannot be read, or that no CA of `ca.crt` issued, is an error
/// (with `replace`, it is simply replaced).
pub fn renew(dir: &Path, names: &Names, days: u32, replace: bool) -> Result<Vec<String>, PkiError> {
    let bundle = pki::read(&dir.join(CA_CERT))?;
    let signing = pki::first_certificate_pem(&bundle).ok_or_else(|| PkiError::NoCertificate {
        path: dir.join(CA_CERT),
    })?;
    let ca_key = pki::read(&dir.join(CA_KEY))?;
    let old_path = dir.join(TLS_CERT);
    let mut names = names.clone();
    let kept = if replace {
        Vec::new()
    } else {
        match pki::read(&old_path) {
            Err(PkiError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Vec::new()
            }
            Err(e) => return Err(e),
            Ok(old) => keep_names(&old, &old_path, &bundle, &mut names)?,
        }
    };
    let (tls, key) = pki::new_serving(&names, days, &signing, &ca_key, &dir.join(CA_CERT))
        .map_err(|e| match e {
            PkiError::Invalid(why) if !kept.is_empty() => PkiError::Invalid(format!(
                "{why} (names kept from {}: {}; give the names it must have with --replace-names)",
                old_path.display(),
                kept.join(", ")
            )),
            e => e,
        })?;
    // The key first: a server reading between the two writes sees a mismatch and keeps the
    // pair it has until both are new.
    pki::write(&dir.join(TLS_KEY), &key, true)?;
    pki::write(&dir.join(TLS_CERT), &tls, false)?;
    Ok(kept)
}

/// Add the names of the certificate in `old` (PEM, from `path`) to `names`; the ones added.
fn keep_names(
    old: &str,
    path: &Path,
    bundle: &str,
    names: &mut Names,
) -> Result<Vec<String>, PkiError> {
    let refuse = |why: &str| {
        PkiError::Invalid(format!(
            "cannot keep the names of {}: {why}; give the names the certificate must have (--service, --namespace, --dns, --ip) and --replace-names",
            path.display()
        ))
    };
    let der = pki::certificates(old)
        .into_iter()
        .next()
        .ok_or_else(|| refuse("it holds no PEM certificate"))?;
    let sans = crate::x509::subject_alt_names(&der).map_err(refuse)?;
    // Names of a certificate another CA issued are not ours to sign again.
    if !check::signed_by(&der, &pki::certificates(bundle)) {
        return Err(refuse("no CA of ca.crt issued it"));
    }
    let mut kept = Vec::new();
    for d in sans.dns {
        if !names.dns.iter().any(|n| n.eq_ignore_ascii_case(&d)) {
            kept.push(d.clone());
            names.dns.push(d);
        }
    }
    for ip in sans.ips {
        if !names.ips.contains(&ip) {
            kept.push(ip.to_string());
            names.ips.push(ip);
        }
    }
    Ok(kept)
}

/// Start a CA rotation: a new CA signs, and `ca.crt` trusts it and the old one.
pub fn rotate_ca(dir: &Path, ca_days: u32) -> Result<(), PkiError> {
    let old = pki::read(&dir.join(CA_CERT))?;
    if pki::certificates(&old).is_empty() {
        return Err(PkiError::NoCertificate {
            path: dir.join(CA_CERT),
        });
    }
    let (ca, ca_key) = pki::new_ca(ca_days)?;
    // The old key is kept beside, in case the rotation must be undone.
    if let Ok(old_key) = pki::read(&dir.join(CA_KEY)) {
        pki::write(&dir.join("ca-previous.key"), &old_key, true)?;
    }
    pki::write(&dir.join(CA_KEY), &ca_key, true)?;
    let old_signing = pki::first_certificate_pem(&old).unwrap_or_default();
    pki::write(&dir.join(CA_CERT), &format!("{ca}{old_signing}"), false)?;
    Ok(())
}

/// End a CA rotation: `ca.crt` trusts only the CA that signs, once `tls.crt` is its.
pub fn finish_rotation(dir: &Path) -> Result<(), PkiError> {
    let bundle = pki::read(&dir.join(CA_CERT))?;
    let signing = pki::first_certificate_pem(&bundle).ok_or_else(|| PkiError::NoCertificate {
        path: dir.join(CA_CERT),
    })?;
    let tls = pki::read(&dir.join(TLS_CERT))?;
    let leaf = pki::certificates(&tls);
    let ok = leaf.first().is_some_and(|l| check_issuer(l, &signing));
    if !ok {
        return Err(PkiError::Invalid(
            "tls.crt is not signed by the new CA yet: run `renew` and deploy it before finishing the rotation".into(),
        ));
    }
    pki::write(&dir.join(CA_CERT), &signing, false)?;
    let _ = std::fs::remove_file(dir.join("ca-previous.key"));
    Ok(())
}

/// Whether `leaf` chains to `ca`, for the name in its common name (the first DNS name).
fn check_issuer(leaf: &rustls::pki_types::CertificateDer<'_>, ca: &str) -> bool {
    let roots = pki::certificates(ca);
    let cn = crate::x509::subject_common_name(leaf).unwrap_or_default();
    check::verify_chain(leaf, &roots, &cn).is_ok()
}
