//! Requests on the webhook port (`/mutate`, `/healthz`, `/readyz`) and the metrics port.

use super::State;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use rayshape_engine::decode::MAX_INPUT;
use rayshape_engine::review::Outcome;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

pub type Body = Full<Bytes>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut m = msg.into();
    m.push('\n');
    reply(status, "text/plain; charset=utf-8", m)
}

/// The webhook port.
pub async fn webhook(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Body>, Infallible> {
    state.metrics.in_flight.inc();
    let resp = route(req, &state).await;
    state.metrics.in_flight.dec();
    state
        .metrics
        .responses
        .with_label_values(&[resp.status().as_str()])
        .inc();
    Ok(resp)
}

async fn route(req: Request<Incoming>, state: &State) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => {
            if state.ready() {
                text(StatusCode::OK, "ok")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the configuration or the serving certificate has not loaded yet",
                )
            }
        }
        (&Method::POST, "/mutate") => mutate(req, state).await,
        (_, "/mutate") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST with an admission.k8s.io/v1 AdmissionReview",
        ),
        (_, "/healthz" | "/readyz") => text(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
        (_, path) => text(
            StatusCode::NOT_FOUND,
            format!(
                "no such path {path:?}; the webhook serves POST /mutate, GET /healthz and GET /readyz"
            ),
        ),
    }
}

async fn mutate(req: Request<Incoming>, state: &State) -> Response<Body> {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {MAX_INPUT} bytes (3 MiB), the API server's own limit"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_INPUT as u64) {
        return too_large();
    }
    let body = match tokio::time::timeout(
        state.body_timeout,
        Limited::new(req.into_body(), MAX_INPUT).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(e)) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}"),
            );
        }
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:?}",
                    state.body_timeout
                ),
            );
        }
    };
    let _permit = state
        .decisions
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let started = Instant::now();
    let doc: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(state, format!("the body is not JSON: {e}")),
    };
    let cfg = state.config();
    let decision = match rayshape_engine::decide(&doc, &cfg) {
        Ok(d) => d,
        Err(e) => {
            return bad_request(
                state,
                format!("not an admission.k8s.io/v1 AdmissionReview: {e}"),
            );
        }
    };
    let out = serde_json::to_vec(&decision.response()).expect("JSON values serialise");
    let elapsed = started.elapsed();
    let m = &state.metrics;
    let result = decision.result_label();
    m.admissions
        .with_label_values(&[&decision.kind, &decision.operation, result])
        .inc();
    m.admission_seconds
        .with_label_values(&[&decision.kind])
        .observe(elapsed.as_secs_f64());
    match &decision.outcome {
        Outcome::Denied(d) => {
            if let Some(rule) = &d.rule {
                m.rule_failures.with_label_values(&[rule, "denied"]).inc();
            }
            tracing::info!(uid = %decision.uid, kind = %decision.kind, operation = %decision.operation, namespace = %decision.namespace,
                generate_name = %decision.generate_name, name = %decision.name, dry_run = decision.dry_run, decision = result,
                duration_us = elapsed.as_micros() as u64, reason = %d.message, "admission");
        }
        Outcome::Allowed { shaped, ops, .. } => {
            for rule in &shaped.failed_rules {
                m.rule_failures.with_label_values(&[rule, "skipped"]).inc();
            }
            tracing::info!(uid = %decision.uid, kind = %decision.kind, operation = %decision.operation, namespace = %decision.namespace,
                generate_name = %decision.generate_name, name = %decision.name, dry_run = decision.dry_run, decision = result,
                duration_us = elapsed.as_micros() as u64, patch_ops = *ops, warnings = shaped.warnings.len(), "admission");
        }
    }
    reply(StatusCode::OK, "application/json", out)
}

fn bad_request(state: &State, msg: String) -> Response<Body> {
    state
        .metrics
        .admissions
        .with_label_values(&["", "", "error"])
        .inc();
    tracing::warn!(error = %msg, "rejected request");
    text(StatusCode::BAD_REQUEST, msg)
}
