//! A one-label mutating admission webhook, the baseline that `bench/admission.sh` measures
//! rayshape against: kube's `AdmissionReview<DynamicObject>` in, an `AdmissionResponse`
//! with a one-operation JSON patch out, served by axum over rustls (HTTP/2 and HTTP/1.1
//! by ALPN), `TCP_NODELAY` on accepted sockets, no log line per request.
//!
//! Usage: one-label-webhook ADDR CERT.pem KEY.pem

use axum::routing::{get, post};
use axum::{Json, Router};
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use json_patch::{AddOperation, Patch, PatchOperation, jsonptr::PointerBuf};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use std::net::SocketAddr;
use std::sync::Arc;

const LABEL: &str = "example.com/admitted";

/// The review answered: the object gets one label, or the review is refused as invalid.
async fn mutate(
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => return Json(AdmissionResponse::invalid(e.to_string()).into_review()),
    };
    let resp = AdmissionResponse::from(&req);
    let Some(obj) = req.object else {
        return Json(resp.into_review());
    };
    let mut ops = Vec::with_capacity(2);
    if obj.metadata.labels.is_none() {
        ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "labels"]),
            value: serde_json::json!({}),
        }));
    }
    ops.push(PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(["metadata", "labels", LABEL]),
        value: serde_json::Value::from("yes"),
    }));
    let resp = match resp.clone().with_patch(Patch(ops)) {
        Ok(r) => r,
        Err(e) => resp.deny(e.to_string()),
    };
    Json(resp.into_review())
}

fn tls_config(cert: &str, key: &str) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, cert, key] = args.as_slice() else {
        eprintln!("usage: one-label-webhook ADDR CERT.pem KEY.pem");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().unwrap_or_else(|e| {
        eprintln!("bad address {addr:?}: {e}");
        std::process::exit(2)
    });
    let cfg = tls_config(cert, key).unwrap_or_else(|e| {
        eprintln!("TLS: {e}");
        std::process::exit(2)
    });
    let acceptor = RustlsAcceptor::new(RustlsConfig::from_config(Arc::new(cfg)))
        .acceptor(NoDelayAcceptor::new());
    let app = Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok" }));
    let server = axum_server::bind(addr)
        .acceptor(acceptor)
        .serve(app.into_make_service());
    tokio::select! {
        r = server => if let Err(e) = r {
            eprintln!("serving on {addr}: {e}");
            std::process::exit(1);
        },
        _ = tokio::signal::ctrl_c() => {}
    }
}
