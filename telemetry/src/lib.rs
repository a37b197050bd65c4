//! What rayshape's programs share for operations: JSON log lines on stderr, and Prometheus
//! metrics in the text format on a plain-HTTP port.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// JSON lines on stderr; `env_var` (such as `RAYSHAPE_LOG`) sets the level, `info` if unset.
pub fn init_logging(env_var: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(env_var)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
}

/// A registry in the text format.
pub fn render(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("encoding to a Vec cannot fail");
    out
}

/// Serve `GET /metrics` (HTTP/1.1) until `stop` turns true.
pub async fn serve_metrics(
    listener: TcpListener,
    registry: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(_) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let registry = registry.clone();
                    async move {
                        let resp = if req.method() == hyper::Method::GET
                            && req.uri().path() == "/metrics"
                        {
                            hyper::Response::builder()
                                .header("content-type", CONTENT_TYPE)
                                .body(Full::new(Bytes::from(render(&registry))))
                        } else {
                            hyper::Response::builder().status(404).body(Full::new(
                                Bytes::from_static(b"the metrics port serves GET /metrics\n"),
                            ))
                        };
                        Ok::<_, std::convert::Infallible>(
                            resp.expect("static response parts are valid"),
                        )
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}
