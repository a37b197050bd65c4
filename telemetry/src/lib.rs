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

    /// On a kernel without IPv6 (booted with `ipv6.disable=1`), `socket(AF_INET6, ..)` fails
    /// with `EAFNOSUPPORT`; this thread is given that kernel's answer by a seccomp filter of
    /// its own, and `[::]` must then listen on every IPv4 address and say why.
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    #[test]
    fn without_ipv6_every_address_is_ipv4() {
        std::thread::spawn(|| {
            refuse_ipv6_sockets_in_this_thread();
            assert_eq!(
                std::net::TcpListener::bind("[::1]:0")
                    .err()
                    .and_then(|e| e.raw_os_error()),
                Some(libc::EAFNOSUPPORT),
                "the filter did not take"
            );
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .unwrap();
            rt.block_on(async {
                let (listener, fell_back) = bind("[::]:0".parse().unwrap()).unwrap();
                assert_eq!(
                    fell_back.and_then(|e| e.raw_os_error()),
                    Some(libc::EAFNOSUPPORT)
                );
                let at = listener.local_addr().unwrap();
                assert_eq!(at.ip(), std::net::Ipv4Addr::UNSPECIFIED, "{at}");
                let peer = SocketAddr::from(([127, 0, 0, 1], at.port()));
                let mut c = tokio::net::TcpStream::connect(peer).await.unwrap();
                let (mut s, _) = listener.accept().await.unwrap();
                c.write_all(b"x").await.unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.unwrap();
                // Any other address is not rewritten: its error is the caller's.
                let err = bind("[::1]:0".parse().unwrap()).unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::EAFNOSUPPORT));
            });
        })
        .join()
        .unwrap();
    }

    /// A seccomp filter on the calling thread alone (without `SECCOMP_FILTER_FLAG_TSYNC`, and
    /// `no_new_privs` is per thread too): `socket` with the `AF_INET6` family fails with
    /// `EAFNOSUPPORT`; every other call is allowed.
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    fn refuse_ipv6_sockets_in_this_thread() {
        #[cfg(target_arch = "x86_64")]
        const ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
        #[cfg(target_arch = "aarch64")]
        const ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
        // struct seccomp_data: nr at 0, arch at 4, args[0] at 16 (its low half, little-endian).
        let load = |k: u32| libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k,
        };
        let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt,
            jf,
            k,
        };
        let ret = |k: u32| libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k,
        };
        let mut program = [
            load(4),
            jeq(ARCH, 0, 4),
            load(0),
            jeq(libc::SYS_socket as u32, 0, 2),
            load(16),
            jeq(libc::AF_INET6 as u32, 1, 0),
            ret(libc::SECCOMP_RET_ALLOW),
            ret(libc::SECCOMP_RET_ERRNO | libc::EAFNOSUPPORT as u32),
        ];
        let prog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_mut_ptr(),
        };
        // SAFETY: plain system calls; `prog` and the program it points to outlive the call,
        // which copies them into the kernel.
        unsafe {
            assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
            let rc = libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            );
            assert_eq!(rc, 0, "seccomp: {}", std::io::Error::last_os_error());
        }
    }
}
