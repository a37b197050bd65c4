//! Is what is deployed going to work: does the serving certificate chain to the CA bundle
//! the API server (and the sidecars) trust, for the name they use, and when does
//! everything expire.

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;

/// Verify `leaf` for `name` (a DNS name or an IP) against the CA certificates `roots`, as a
/// TLS client such as the API server does.
pub fn verify_chain(
    leaf: &CertificateDer<'_>,
    roots: &[CertificateDer<'_>],
    name: &str,
) -> Result<(), String> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(r.clone().into_owned())
            .map_err(|e| format!("a CA certificate is not usable: {e}"))?;
    }
    if store.is_empty() {
        return Err("the CA bundle holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map_err(|e| format!("cannot build a verifier: {e}"))?;
    let server = ServerName::try_from(name.to_string())
        .map_err(|e| format!("{name:?} is not a server name: {e}"))?;
    verifier
        .verify_server_cert(
            &leaf.clone().into_owned(),
            &[],
            &server,
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Whether a CA of `roots` signed `leaf`, judged at the last second of its validity: an
/// expired certificate is still one to renew.
pub fn signed_by(leaf: &CertificateDer<'_>, roots: &[CertificateDer<'_>]) -> bool {
    let Some(not_after) = crate::x509::not_after(leaf) else {
        return false;
    };
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        // A root that is not usable signs nothing.
        let _ = store.add(r.clone().into_owned());
    }
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(leaf) else {
        return false;
    };
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(not_after.saturating_sub(1)).unwrap_or(0),
    ));
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &store,
        &[],
        at,
        provider.signature_verification_algorithms.all,
    )
    .is_ok()
}

/// The `caBundle` of every webhook in a rendered configuration (YAML or JSON, one or more
/// documents, `MutatingWebhookConfiguration`s or a `List`), by webhook name.
pub fn ca_bundles(rendered: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(rendered).map_err(|e| format!("not YAML: {e}"))?;
    let mut out = Vec::new();
    let mut visit = |doc: &serde_json::Value| {
        let kind = doc.get("kind").and_then(serde_json::Value::as_str);
        if !matches!(
            kind,
            Some("MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration")
        ) {
            return;
        }
        for w in doc
            .get("webhooks")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = w
                .get("name")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("(unnamed)")
                .to_string();
            let bundle = w
                .pointer("/clientConfig/caBundle")
                .and_then(serde_json::Value::as_str)
                .map(str::to_string);
            out.push((name, bundle));
        }
    };
    for d in &docs {
        if let Some(items) = d.get("items").and_then(serde_json::Value::as_array) {
            items.iter().for_each(&mut visit);
        } else {
            visit(d);
        }
    }
    Ok(out)
}
