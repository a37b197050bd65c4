//! What rayshape's programs share for operations: JSON log lines on stderr, and Prometheus
//! metrics in the text format on a plain-HTTP port.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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

/// A listening socket on `addr`. On `[::]`, every address, IPv4 as well as IPv6, whatever
/// the host's `net.ipv6.bindv6only`: pods on IPv6-only clusters have no IPv4 address, and
/// a `0.0.0.0` listener never answers them. Where the kernel has no IPv6, `[::]` falls back
/// to `0.0.0.0`, and the error that made it fall back is returned to be logged.
pub fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, Option<std::io::Error>)> {
    let every_v6 = addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    match bind_socket(addr, every_v6) {
        Ok(l) => Ok((l, None)),
        Err(e)
            if every_v6
                && matches!(
                    e.raw_os_error(),
                    Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
                ) =>
        {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
            Ok((bind_socket(v4, false)?, Some(e)))
        }
        Err(e) => Err(e),
    }
}

fn bind_socket(addr: SocketAddr, dual_stack: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    // As std's and tokio's listeners do: a restarted server binds while old connections
    // linger in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
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

#[cfg(test)]
mod tests {
    use super::bind;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// `[::]` answers on IPv4 and, where the host has it, on IPv6.
    #[tokio::test]
    async fn every_address_takes_ipv4_and_ipv6() {
        let (listener, fell_back) = bind("[::]:0".parse().unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        let v6 = std::net::TcpListener::bind("[::1]:0").is_ok();
        if v6 {
            assert!(fell_back.is_none(), "{fell_back:?}");
        }
        let mut peers: Vec<SocketAddr> = vec![SocketAddr::from(([127, 0, 0, 1], port))];
        if v6 {
            peers.push(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)));
        }
        for peer in peers {
            let mut c = tokio::net::TcpStream::connect(peer).await.unwrap();
            let (mut s, from) = listener.accept().await.unwrap();
            assert_eq!(from.ip().to_canonical(), peer.ip(), "{peer}");
            c.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
        }
    }
}
