//! Requests on the webhook port (`/mutate`, `/healthz`, `/readyz`) and the metrics port.

use super::State;
use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use rayshape_engine::config::Config;
use rayshape_engine::decode::{MAX_INPUT, ReviewError};
use rayshape_engine::review::{Decision, Outcome};
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};

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
pub async fn webhook<B>(
    req: Request<B>,
    state: Arc<State>,
    source: std::net::IpAddr,
) -> Result<Response<Body>, Infallible>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    // Decremented on drop: also when hyper drops this future because the client left.
    let _in_flight = InFlight::enter(&state.metrics.in_flight);
    let health = matches!(req.uri().path(), "/healthz" | "/readyz");
    let open = (!health).then(|| Open::enter(&state.open_requests));
    let resp = if open
        .as_ref()
        .is_some_and(|o| o.before >= state.max_requests)
    {
        // Each open request holds memory until its body comes or times out, and a client
        // can open many on one HTTP/2 connection: past the bound they are turned away.
        let mut r = text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server already has {} requests open (--max-requests); retry",
                state.max_requests
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        r
    } else {
        route(req, &state, source).await
    };
    state
        .metrics
        .responses
        .with_label_values(&[labels::code(resp.status())])
        .inc();
    Ok(resp)
}

/// Counts a request in flight for as long as it lives.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a prometheus::IntGauge) -> InFlight<'a> {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts a request (health checks aside) against `--max-requests` for as long as it lives.
struct Open<'a> {
    count: &'a std::sync::atomic::AtomicUsize,
    /// Requests open before this one: this one is refused when that is the bound.
    before: usize,
}

impl<'a> Open<'a> {
    fn enter(count: &'a std::sync::atomic::AtomicUsize) -> Open<'a> {
        let before = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Open { count, before }
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.count
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Metric label values from requests, mapped to fixed sets so that no client can grow the
/// server's memory with made-up kinds, operations or codes.
pub mod labels {
    use http::StatusCode;

    /// Object kinds the webhook is registered for; anything else is `other`.
    pub fn kind(kind: &str) -> &'static str {
        match kind {
            "Pod" => "Pod",
            "RayCluster" => "RayCluster",
            "RayJob" => "RayJob",
            "RayService" => "RayService",
            _ => "other",
        }
    }

    /// Admission operations; anything else is `other`.
    pub fn operation(op: &str) -> &'static str {
        match op {
            "CREATE" => "CREATE",
            "UPDATE" => "UPDATE",
            "DELETE" => "DELETE",
            "CONNECT" => "CONNECT",
            _ => "other",
        }
    }

    /// The status codes the server answers with; anything else is `other`.
    pub fn code(status: StatusCode) -> &'static str {
        match status.as_u16() {
            200 => "200",
            400 => "400",
            401 => "401",
            403 => "403",
            404 => "404",
            405 => "405",
            408 => "408",
            413 => "413",
            429 => "429",
            500 => "500",
            503 => "503",
            _ => "other",
        }
    }
}

async fn route<B>(req: Request<B>, state: &State, source: std::net::IpAddr) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => {
            if state.ready() {
                text(StatusCode::OK, "ok")
            } else if state.draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the configuration or the serving certificate has not loaded yet",
                )
            }
        }
        (&Method::POST, "/mutate") => mutate(req, state).await,
        (&Method::POST, rayshape_contract::BOOTSTRAP_PATH) => {
            // Boxed: its future is large, and every request's future would carry its size.
            Box::pin(crate::bootstrap::handle(
                req.headers().get(header::AUTHORIZATION),
                source,
                state,
            ))
            .await
        }
        (_, rayshape_contract::BOOTSTRAP_PATH) => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST with Authorization: Bearer <the pod's projected token>",
        ),
        (_, "/mutate") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST with an admission.k8s.io/v1 AdmissionReview",
        ),
        (_, "/healthz" | "/readyz") => text(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
        (_, path) => text(
            StatusCode::NOT_FOUND,
            format!(
                "no such path {path:?}; the webhook serves POST /mutate, POST /v1/bootstrap, GET /healthz and GET /readyz"
            ),
        ),
    }
}

async fn mutate<B>(req: Request<B>, state: &State) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body over {MAX_INPUT} bytes (7 MiB), more than an AdmissionReview of two objects at the API server's 3 MiB limit"
            ),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_INPUT as u64) {
        tokio::spawn(drain(req.into_body(), state.body_timeout));
        return too_large();
    }
    let (body, _held) = match read_body(req.into_body(), state.body_timeout, &state.bodies).await {
        Ok(b) => b,
        Err(BodyError::Busy(rest)) => {
            tokio::spawn(drain(rest, state.body_timeout));
            let mut r = text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the server already holds {} MiB of request bodies (many large reviews at once, or clients that stopped sending); retry",
                    state.body_memory >> 20
                ),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return r;
        }
        Err(BodyError::TooLarge(rest)) => {
            // Answer while the client is still sending, and keep reading what it sends so
            // the answer arrives: a request body dropped unread resets an HTTP/2 stream
            // before its response goes out.
            tokio::spawn(drain(rest, state.body_timeout));
            return too_large();
        }
        Err(BodyError::Read(e)) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}"),
            );
        }
        Err(BodyError::Timeout) => {
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
    answer(&body, state, rayshape_engine::decide).await
}

/// The answer to a review whose handling panicked: counted, logged, and 500.
fn internal_error(state: &State, uid: &str, panic: &(dyn std::any::Any + Send)) -> Response<Body> {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    state.metrics.panics.inc();
    tracing::error!(uid, panic = %what, "internal error while handling a review; the server goes on serving");
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!(
            "rayshape: internal error while handling review {uid:?}; this is a bug, please report it with the webhook's log"
        ),
    )
}

/// The engine's entry point, as the server calls it.
type Decide = fn(&rayshape_engine::json::Value, &Config) -> Result<Decision, ReviewError>;

/// Decide one review's body and answer it. A panic while reading, deciding or answering
/// answers this review with 500 and leaves the server serving.
async fn answer(body: &[u8], state: &State, decide: Decide) -> Response<Body> {
    let started = Instant::now();
    let parsed = std::panic::catch_unwind(|| rayshape_engine::decode::parse_review(body));
    let doc = match parsed {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return bad_request(state, format!("the body is not JSON: {e}")),
        Err(panic) => return internal_error(state, "", &*panic),
    };
    let cfg = state.config();
    let decided = std::panic::catch_unwind(AssertUnwindSafe(|| decide(&doc, &cfg)));
    let decision = match decided {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            return bad_request(
                state,
                format!("not an admission.k8s.io/v1 AdmissionReview: {e}"),
            );
        }
        Err(panic) => {
            let uid = doc
                .pointer("/request/uid")
                .and_then(rayshape_engine::json::Value::as_str)
                .unwrap_or("");
            return internal_error(state, uid, &*panic);
        }
    };
    let out = match std::panic::catch_unwind(AssertUnwindSafe(|| decision.response_bytes())) {
        Ok(out) => out,
        Err(panic) => return internal_error(state, &decision.uid, &*panic),
    };
    let elapsed = started.elapsed();
    let m = &state.metrics;
    let result = decision.result_label();
    let kind = labels::kind(&decision.kind);
    m.admissions
        .with_label_values(&[kind, labels::operation(&decision.operation), result])
        .inc();
    m.admission_seconds
        .with_label_values(&[kind])
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

enum BodyError<B> {
    /// Over the limit; the rest of the body, still unread.
    TooLarge(B),
    /// The server's budget for bodies held is spent; the rest of the body, still unread.
    Busy(B),
    Read(String),
    Timeout,
}

/// The request body, up to [`MAX_INPUT`] bytes, within `timeout`, with the share of the
/// server's body budget (`budget`, in KiB) it holds: every body held counts, so that
/// clients sending many large bodies, or stopping just short of their end, cannot run the
/// server out of memory.
async fn read_body<'a, B>(
    mut body: B,
    timeout: Duration,
    budget: &'a Semaphore,
) -> Result<(Bytes, Option<SemaphorePermit<'a>>), BodyError<B>>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    enum Over {
        Limit,
        Budget,
    }
    let mut held_kib: Option<SemaphorePermit<'a>> = None;
    let read = async {
        // A body that comes in one frame (the usual case) is used as it came; only one in
        // several frames is copied together.
        let mut first: Option<Bytes> = None;
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                let held = first.as_ref().map_or(0, Bytes::len) + buf.len();
                if held + data.len() > MAX_INPUT {
                    return Ok(Err(Over::Limit));
                }
                if data.is_empty() {
                    continue;
                }
                let have = held_kib.as_ref().map_or(0, SemaphorePermit::num_permits);
                let need = (held + data.len()).div_ceil(1024).saturating_sub(have);
                if need > 0 {
                    // MAX_INPUT is 7 MiB: the count fits.
                    let Ok(more) = budget.try_acquire_many(need as u32) else {
                        return Ok(Err(Over::Budget));
                    };
                    match &mut held_kib {
                        Some(p) => p.merge(more),
                        None => held_kib = Some(more),
                    }
                }
                match first.take() {
                    None if buf.is_empty() => first = Some(data),
                    None => buf.extend_from_slice(&data),
                    Some(f) => {
                        buf.reserve(f.len() + data.len());
                        buf.extend_from_slice(&f);
                        buf.extend_from_slice(&data);
                    }
                }
            }
        }
        Ok(Ok(first.unwrap_or_else(|| buf.freeze())))
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(Ok(b))) => Ok((b, held_kib)),
        Ok(Ok(Err(Over::Limit))) => Err(BodyError::TooLarge(body)),
        Ok(Ok(Err(Over::Budget))) => Err(BodyError::Busy(body)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BodyError::Timeout),
    }
}

/// Read and discard the rest of a refused body, for at most `timeout` and a few times the
/// limit; past that the stream is reset (HTTP/2) or the connection closed (HTTP/1.1).
async fn drain<B: hyper::body::Body<Data = Bytes> + Unpin>(mut body: B, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async {
        let mut left = 4 * MAX_INPUT;
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, Bytes::len);
            match left.checked_sub(n) {
                Some(l) => left = l,
                None => return,
            }
        }
    })
    .await;
}

fn bad_request(state: &State, msg: String) -> Response<Body> {
    state
        .metrics
        .admissions
        .with_label_values(&["other", "other", "error"])
        .inc();
    tracing::warn!(error = %msg, "rejected request");
    text(StatusCode::BAD_REQUEST, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panicking(_: &rayshape_engine::json::Value, _: &Config) -> Result<Decision, ReviewError> {
        panic!("a bug in the engine")
    }

    #[tokio::test]
    async fn a_panic_answers_its_review_with_500_and_is_counted() {
        let state = State::new(
            Config::builtin(),
            4,
            Duration::from_secs(1),
            64 << 20,
            crate::bootstrap::Bootstrap::new(Err("not in this test".into())),
        );
        let body = br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u-77"}}"#;
        let resp = answer(body, &state, panicking).await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&text).contains("\"u-77\""),
            "{text:?}"
        );
        assert_eq!(state.metrics.panics.get(), 1);
        // The next review is decided as usual.
        let resp = answer(body, &state, rayshape_engine::decide).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_body_in_several_frames_is_read_whole() {
        for frames in [
            &[][..],
            &["{}"],
            &["", "{\"a\"", "", ":1", "}"],
            &["{", "}"],
        ] {
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(8);
            for f in frames {
                tx.send_data(Bytes::from_static(f.as_bytes()))
                    .await
                    .unwrap();
            }
            drop(tx);
            let budget = Semaphore::new(64);
            let Ok((b, held)) = read_body(body, Duration::from_secs(5), &budget).await else {
                panic!("{frames:?} is read");
            };
            assert_eq!(b, frames.concat().as_bytes());
            assert_eq!(held.map_or(0, |p| p.num_permits()), b.len().div_ceil(1024));
        }
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(8);
        tx.send_data(Bytes::from(vec![b' '; MAX_INPUT]))
            .await
            .unwrap();
        tx.send_data(Bytes::from_static(b"x")).await.unwrap();
        let budget = Semaphore::new(MAX_INPUT / 1024);
        assert!(matches!(
            read_body(body, Duration::from_secs(5), &budget).await,
            Err(BodyError::TooLarge(_))
        ));
        assert_eq!(budget.available_permits(), MAX_INPUT / 1024);
    }

    /// Bodies held count against the server's budget until their request is done: a
    /// body that would go over is refused, and the budget comes back when the others go.
    #[tokio::test]
    async fn bodies_held_count_against_the_budget() {
        let budget = Semaphore::new(10);
        let body = |kib: usize| {
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(4);
            tokio::spawn(async move {
                for _ in 0..kib {
                    let _ = tx.send_data(Bytes::from(vec![b' '; 1024])).await;
                }
            });
            body
        };
        let Ok((a, held_a)) = read_body(body(6), Duration::from_secs(5), &budget).await else {
            panic!("6 KiB fit in 10");
        };
        assert_eq!((a.len(), budget.available_permits()), (6 * 1024, 4));
        assert!(matches!(
            read_body(body(5), Duration::from_secs(5), &budget).await,
            Err(BodyError::Busy(_))
        ));
        assert_eq!(
            budget.available_permits(),
            4,
            "a refused body holds nothing"
        );
        drop(held_a);
        assert!(
            read_body(body(5), Duration::from_secs(5), &budget)
                .await
                .is_ok()
        );
        assert_eq!(budget.available_permits(), 10);
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(labels::kind("Pod"), "Pod");
        assert_eq!(labels::kind("Deployment-x-1234"), "other");
        assert_eq!(labels::operation("DELETE"), "DELETE");
        assert_eq!(labels::operation("whatever"), "other");
        assert_eq!(labels::code(StatusCode::IM_A_TEAPOT), "other");
    }

    /// hyper drops a request's handler where it waits when the client goes away (an
    /// HTTP/2 stream reset, a connection torn down): it must not stay counted in flight.
    #[tokio::test]
    async fn a_dropped_request_leaves_the_in_flight_gauge() {
        let state = Arc::new(State::new(
            Config::builtin(),
            4,
            Duration::from_secs(30),
            64 << 20,
            crate::bootstrap::Bootstrap::new(Err("not in this test".into())),
        ));
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(1);
        tx.send_data(Bytes::from_static(b"{")).await.unwrap();
        let req = Request::post("/mutate").body(body).unwrap();
        let mut handler = Box::pin(webhook(req, state.clone(), [127, 0, 0, 1].into()));
        // It waits for the rest of the body.
        assert!(futures_poll_once(handler.as_mut()).await.is_none());
        assert_eq!(state.metrics.in_flight.get(), 1);
        drop(handler);
        assert_eq!(state.metrics.in_flight.get(), 0);
        drop(tx);
    }

    /// Poll a future once; `None` while it is pending.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(move |cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
