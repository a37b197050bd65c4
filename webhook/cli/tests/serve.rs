//! The admission server as the API server meets it: the real binary, a certificate made for
//! the test, and clients that verify it, over HTTP/1.1 and HTTP/2.
//!
//! Prometheus tests need `promtool` and `prometheus` (Debian package `prometheus`, installed
//! by `tests/run.sh`); without them they are skipped, unless `RAYSHAPE_REQUIRE_TOOLS=1`
//! (set by `tests/run.sh`), which makes a missing tool a failure.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use rayshape_testkit::{Proc, free_port, repo, tool};

fn scratch(name: &str) -> PathBuf {
    rayshape_testkit::scratch("serve", name)
}

/// A CA and a serving certificate for localhost / 127.0.0.1 signed by it.
struct Pki {
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    leaf_der: Vec<u8>,
}

fn pki(name: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("rayshape test CA {name}"),
    );
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let leaf = leaf.signed_by(&key, &ca).unwrap();
    Pki {
        ca_der: ca.der().clone(),
        ca_pem: ca.pem(),
        cert_pem: leaf.pem() + &ca.pem(),
        key_pem: key.serialize_pem(),
        leaf_der: leaf.der().to_vec(),
    }
}

/// Write files the way the kubelet updates a mounted Secret or ConfigMap: a new timestamped
/// directory, then one atomic rename of the `..data` symlink.
fn kubelet_write(dir: &Path, files: &[(&str, &str)]) {
    static GEN: AtomicUsize = AtomicUsize::new(0);
    let version = format!("..2026_11_22_{}", GEN.fetch_add(1, Ordering::Relaxed));
    std::fs::create_dir_all(dir.join(&version)).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(&version).join(name), text).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link).unwrap();
        }
    }
}

struct Server {
    proc: Proc,
    addr: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
    ca: Vec<CertificateDer<'static>>,
}

impl Server {
    /// Start the binary on free ports and wait until it is ready; `certs` and `config` are
    /// kubelet-style directories.
    async fn start(
        certs: &Path,
        config: &Path,
        ca: Vec<CertificateDer<'static>>,
        extra: &[&str],
    ) -> Server {
        let s = Server::spawn(certs, config, ca, extra);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = s.client(Alpn::H1).await
                && let Ok((200, _)) = c.get("/readyz").await
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "server not ready; log:\n{}",
                s.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Start the binary on free ports.
    fn spawn(
        certs: &Path,
        config: &Path,
        ca: Vec<CertificateDer<'static>>,
        extra: &[&str],
    ) -> Server {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = certs
            .parent()
            .unwrap()
            .join(format!("server-{}.log", addr.port()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rayshape-webhook"));
        cmd.args(["serve", "--config"])
            .arg(config)
            .arg("--tls-cert")
            .arg(certs.join("tls.crt"))
            .arg("--tls-key")
            .arg(certs.join("tls.key"))
            .args([
                "--listen",
                &addr.to_string(),
                "--metrics-listen",
                &metrics.to_string(),
                "--reload-interval",
                "0.2",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        Server {
            proc: Proc::spawn(&mut cmd),
            addr,
            metrics,
            log,
            ca,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn client(&self, alpn: Alpn) -> Result<Client, String> {
        Client::connect(self.addr, &self.ca, alpn).await
    }

    async fn metrics_text(&self) -> String {
        let mut tcp = TcpStream::connect(self.metrics).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        out
    }

    fn metric(text: &str, line_prefix: &str) -> f64 {
        text.lines()
            .filter(|l| l.starts_with(line_prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Alpn {
    H1,
    H2,
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

struct Client {
    sender: Sender,
    /// The leaf certificate the server presented.
    peer: Vec<u8>,
}

impl Client {
    async fn connect(
        addr: SocketAddr,
        ca: &[CertificateDer<'static>],
        alpn: Alpn,
    ) -> Result<Client, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in ca {
            roots.add(c.clone()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![if alpn == Alpn::H2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        assert_eq!(
            conn.alpn_protocol(),
            Some(if alpn == Alpn::H2 {
                &b"h2"[..]
            } else {
                &b"http/1.1"[..]
            }),
            "ALPN"
        );
        let peer = conn.peer_certificates().unwrap()[0].to_vec();
        let io = TokioIo::new(tls);
        let sender = match alpn {
            Alpn::H1 => {
                let (s, c) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(c);
                Sender::H1(s)
            }
            Alpn::H2 => {
                let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(c);
                Sender::H2(s)
            }
        };
        Ok(Client { sender, peer })
    }

    async fn send(&mut self, req: Request<Body>) -> Result<(u16, Bytes), String> {
        let resp = match &mut self.sender {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
        .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    async fn get(&mut self, path: &str) -> Result<(u16, Bytes), String> {
        let req = Request::get(format!("https://localhost{path}"))
            .body(Full::new(Bytes::new()).boxed())
            .unwrap();
        self.send(req).await
    }

    async fn post(&mut self, body: impl Into<Bytes>) -> Result<(u16, Bytes), String> {
        let req = Request::post("https://localhost/mutate")
            .header("content-type", "application/json")
            .body(Full::new(body.into()).boxed())
            .unwrap();
        self.send(req).await
    }

    /// POST `total` bytes in 64 KiB chunks, with no declared length.
    async fn post_streamed(&mut self, total: usize) -> Result<(u16, Bytes), String> {
        let (mut tx, body) =
            http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(4);
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![b' '; 64 * 1024]);
            let mut sent = 0;
            while sent < total {
                // The server may stop reading once it has seen enough.
                if tx.send_data(chunk.clone()).await.is_err() {
                    return;
                }
                sent += chunk.len();
            }
        });
        let req = Request::post("https://localhost/mutate")
            .header("content-type", "application/json")
            .body(body.boxed())
            .unwrap();
        self.send(req).await
    }
}

/// A TLS connection to the server that checks its certificate against `ca`, offering
/// `alpn` if given: for clients that speak HTTP by hand.
async fn tls_to(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    alpn: Option<&[u8]>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.into_iter().map(<[u8]>::to_vec).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Kubelet-style directories with a first certificate and the built-in configuration.
fn setup(name: &str) -> (PathBuf, PathBuf, PathBuf, Pki) {
    let root = scratch(name);
    let (certs, config) = (root.join("certs"), root.join("config"));
    let p = pki("a");
    kubelet_write(&certs, &[("tls.crt", &p.cert_pem), ("tls.key", &p.key_pem)]);
    kubelet_write(&config, &[("webhook.yaml", "profile: generic\n")]);
    (root, certs, config, p)
}

fn review_for(obj: &Value, uid: &str) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
           "request": {"uid": uid, "operation": "CREATE", "namespace": obj.pointer("/metadata/namespace").cloned().unwrap_or(json!("default")),
                       "kind": {"group": "", "version": "v1", "kind": obj["kind"]}, "object": obj}})
}

/// Every fixture, as the AdmissionReview the API server would send.
fn reviews() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for dir in [
        "tests/fixtures/kuberay",
        "tests/fixtures/pods",
        "tests/fixtures/crds",
    ] {
        let mut files: Vec<_> = std::fs::read_dir(repo().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let Ok((docs, _)) =
                rayshape_engine::decode::parse_documents(&std::fs::read(&f).unwrap())
            else {
                continue;
            };
            let doc = &serde_json::Value::from(docs[0].clone());
            let r = if doc["kind"] == "AdmissionReview" {
                doc.clone()
            } else {
                review_for(
                    doc,
                    &format!("uid-{}", f.file_stem().unwrap().to_string_lossy()),
                )
            };
            out.push((f.display().to_string(), r));
        }
    }
    out
}

fn preview(review: &Value) -> Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rayshape-webhook"))
        .args(["mutate", "-o", "review", "--config"])
        .arg(repo().join("tests/fixtures/configs/gke"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(review.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn every_fixture_gets_the_preview_answer_over_h1_and_h2() {
    let (root, certs, _config, p) = setup("fixtures");
    let config = repo().join("tests/fixtures/configs/gke");
    let server = Server::start(&certs, &config, vec![p.ca_der.clone()], &[]).await;
    // The same answers from a work-stealing runtime (the default serves on one thread).
    let threaded =
        Server::start(&certs, &config, vec![p.ca_der.clone()], &["--threads", "3"]).await;
    let mut h1 = server.client(Alpn::H1).await.unwrap();
    let mut h2 = server.client(Alpn::H2).await.unwrap();
    let mut h2_threaded = threaded.client(Alpn::H2).await.unwrap();
    assert_eq!(h1.peer, p.leaf_der);
    let all = reviews();
    assert!(all.len() >= 18, "{}", all.len());
    for (name, review) in &all {
        let want = preview(review);
        for c in [&mut h1, &mut h2, &mut h2_threaded] {
            let (status, body) = c.post(review.to_string()).await.unwrap();
            assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&body));
            let got: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(got, want, "{name}");
        }
    }
    // One JSON log line per admission, with what an operator needs and no pod contents.
    let log = server.log_text();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let line = lines
        .iter()
        .find(|l| l["message"] == "admission" && l["uid"] == "uid-gpu-worker-typed")
        .unwrap_or_else(|| panic!("no admission line for uid-gpu-worker-typed:\n{log}"));
    assert_eq!(line["kind"], "Pod");
    assert_eq!(line["namespace"], "default");
    assert_eq!(
        line["generate_name"],
        "raycluster-kuberay-gpu-group-worker-"
    );
    assert_eq!(line["decision"], "shaped");
    assert!(line["duration_us"].is_u64());
    assert!(
        !log.contains("rayproject/ray"),
        "pod contents leaked into the log"
    );
    // dryRun is answered the same way: the webhook has no side effects.
    let (_, mut review) = all
        .iter()
        .find(|(n, _)| n.ends_with("gpu-worker-typed.json"))
        .unwrap()
        .clone();
    let wet = h2.post(review.to_string()).await.unwrap().1;
    review["request"]["dryRun"] = json!(true);
    assert_eq!(h2.post(review.to_string()).await.unwrap().1, wet);
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn tls_1_2_and_1_3_only() {
    let (root, certs, config, p) = setup("versions");
    let server = Server::start(&certs, &config, vec![p.ca_der.clone()], &[]).await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(p.ca_der.clone()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
    }
    // A TLS 1.0 ClientHello gets no session.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    let hello: &[u8] = &[
        0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x01, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x02,
        0x00, 0x2f, 0x01, 0x00,
    ];
    raw.write_all(hello).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf)).await;
    assert!(
        buf.is_empty() || buf[0] == 0x15,
        "expected an alert or a closed connection, got {buf:?}"
    );
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn certificate_rotation_without_failed_requests() {
    let (root, certs, config, a) = setup("rotation");
    let b = pki("b");
    let server = Server::start(
        &certs,
        &config,
        vec![a.ca_der.clone(), b.ca_der.clone()],
        &[],
    )
    .await;
    let body = Bytes::from(review_for(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"ray.io/node-type": "worker"}}, "spec": {"containers": [{"name": "r", "image": "x"}]}}), "u").to_string());
    // Requests keep flowing on old and new connections while the certificate changes.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for alpn in [Alpn::H1, Alpn::H2] {
        let mut c = server.client(alpn).await.unwrap();
        let (stop, ok, failed, body) = (stop.clone(), ok.clone(), failed.clone(), body.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c.post(body.clone()).await {
                    Ok((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    kubelet_write(&certs, &[("tls.crt", &b.cert_pem), ("tls.key", &b.key_pem)]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = server.client(Alpn::H2).await.unwrap();
        if c.peer == b.leaf_der {
            break;
        }
        assert_eq!(c.peer, a.leaf_der);
        assert!(
            Instant::now() < deadline,
            "new certificate not served; log:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A certificate whose key does not match is refused; the good one stays.
    let c = pki("c");
    kubelet_write(&certs, &[("tls.crt", &c.cert_pem), ("tls.key", &a.key_pem)]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(server.client(Alpn::H1).await.unwrap().peer, b.leaf_der);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during rotation"
    );
    assert!(ok.load(Ordering::Relaxed) > 20);
    let m = server.metrics_text().await;
    assert_eq!(
        Server::metric(
            &m,
            "rayshape_webhook_certificate_reloads_total{result=\"failure\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        Server::metric(
            &m,
            "rayshape_webhook_certificate_reloads_total{result=\"success\"}"
        ),
        2.0,
        "{m}"
    );
    assert!(server.log_text().contains("serving certificate refused"));
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn configuration_swaps_like_the_kubelet_does() {
    let (root, certs, config, p) = setup("config");
    let server = Server::start(&certs, &config, vec![p.ca_der.clone()], &[]).await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"rayshape.io/instance-type": "1CPU-4GB"}},
                     "spec": {"containers": [{"name": "ray", "image": "x", "args": ["ray start --block"]}]}});
    let body = review_for(&pod, "cfg").to_string();
    let mut c = server.client(Alpn::H2).await.unwrap();
    let allowed = |b: &Bytes| {
        serde_json::from_slice::<Value>(b).unwrap()["response"]["allowed"]
            .as_bool()
            .unwrap()
    };
    assert!(
        !allowed(&c.post(body.clone()).await.unwrap().1),
        "unknown type denied at first"
    );

    kubelet_write(
        &config,
        &[
            ("webhook.yaml", "profile: generic\n"),
            (
                "instance_types.yaml",
                "1CPU-4GB:\n  resources: {CPU: 1, memory: 4Gi}\n",
            ),
        ],
    );
    let swapped = Instant::now();
    while !allowed(&c.post(body.clone()).await.unwrap().1) {
        assert!(
            swapped.elapsed() < Duration::from_secs(2),
            "new configuration not in force after 2 s; log:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    kubelet_write(
        &config,
        &[
            ("webhook.yaml", "profile: nope\n"),
            ("instance_types.yaml", "broken: [\n"),
        ],
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        allowed(&c.post(body.clone()).await.unwrap().1),
        "a broken configuration must not replace the good one"
    );
    let m = server.metrics_text().await;
    assert_eq!(
        Server::metric(
            &m,
            "rayshape_webhook_config_reloads_total{result=\"failure\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        Server::metric(
            &m,
            "rayshape_webhook_config_reloads_total{result=\"success\"}"
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        Server::metric(&m, "rayshape_webhook_instance_types "),
        1.0,
        "{m}"
    );
    assert_eq!(
        Server::metric(&m, "rayshape_webhook_config_refused "),
        1.0,
        "an alert can see the refusal for as long as it lasts: {m}"
    );
    let log = server.log_text();
    assert!(
        log.contains("configuration refused") && log.contains("unknown profile"),
        "{log}"
    );
    // A version without instance_types.yaml loads, with the built-in types, and says so.
    kubelet_write(&config, &[("webhook.yaml", "profile: generic\n")]);
    let swapped = Instant::now();
    loop {
        let m = server.metrics_text().await;
        if Server::metric(&m, "rayshape_webhook_config_refused ") == 0.0 {
            assert_eq!(Server::metric(&m, "rayshape_webhook_instance_types "), 4.0);
            break;
        }
        assert!(swapped.elapsed() < Duration::from_secs(5), "{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.log_text();
    assert!(
        log.contains("the file is gone") && log.contains("\"file\":\"instance_types.yaml\""),
        "{log}"
    );
    // A file that goes while the directory cannot be read is still noticed.
    kubelet_write(
        &config,
        &[
            ("webhook.yaml", "profile: generic\n"),
            (
                "instance_types.yaml",
                "1CPU-4GB:\n  resources: {CPU: 1, memory: 4Gi}\n",
            ),
        ],
    );
    let metric = |m: &str, name: &str| Server::metric(m, name);
    let wait = |want: f64, name: &'static str| {
        let server = &server;
        async move {
            let t = Instant::now();
            loop {
                let m = server.metrics_text().await;
                if metric(&m, name) == want {
                    break;
                }
                assert!(t.elapsed() < Duration::from_secs(5), "{name} {m}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait(1.0, "rayshape_webhook_instance_types ").await;
    let failures = "rayshape_webhook_config_reloads_total{result=\"failure\"}";
    let failed = metric(&server.metrics_text().await, failures);
    let away = root.join("config-away");
    std::fs::rename(&config, &away).unwrap();
    wait(failed + 1.0, failures).await;
    std::fs::create_dir(&config).unwrap();
    kubelet_write(&config, &[("webhook.yaml", "profile: generic\n")]);
    wait(4.0, "rayshape_webhook_instance_types ").await;
    let log = server.log_text();
    assert_eq!(log.matches("the file is gone").count(), 2, "{log}");
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn bad_requests_get_clear_answers_and_the_server_keeps_serving() {
    let (root, certs, config, p) = setup("robust");
    let server = Server::start(
        &certs,
        &config,
        vec![p.ca_der.clone()],
        &["--header-timeout", "1", "--idle-timeout", "2"],
    )
    .await;
    // Over HTTP/2 the client gets the 413 while it is still sending, whether it declared
    // the length or not; then the connection goes on serving.
    let mut c = server.client(Alpn::H2).await.unwrap();
    let (s, b) = c.post(vec![b' '; 7 * 1024 * 1024 + 1]).await.unwrap();
    assert_eq!(s, 413, "{}", String::from_utf8_lossy(&b));
    for alpn in [Alpn::H2, Alpn::H1] {
        let mut c = server.client(alpn).await.unwrap();
        let (s, b) = c
            .post_streamed(8 * 1024 * 1024)
            .await
            .unwrap_or_else(|e| panic!("{alpn:?}: no response, {e}"));
        assert_eq!(s, 413, "{alpn:?}: {}", String::from_utf8_lossy(&b));
        let (s, _) = c
            .get("/healthz")
            .await
            .unwrap_or_else(|e| panic!("{alpn:?}: {e}"));
        assert_eq!(s, 200, "{alpn:?}: the connection still serves");
    }
    for alpn in [Alpn::H1, Alpn::H2] {
        let mut c = server.client(alpn).await.unwrap();
        let (s, b) = c.post("{\"apiVersion\": ").await.unwrap();
        assert!(
            s == 400 && String::from_utf8_lossy(&b).contains("not JSON"),
            "{s} {}",
            String::from_utf8_lossy(&b)
        );
        let (s, b) = c.post(json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}}).to_string()).await.unwrap();
        assert!(
            s == 400 && String::from_utf8_lossy(&b).contains("expected admission.k8s.io/v1"),
            "{}",
            String::from_utf8_lossy(&b)
        );
        let (s, b) = c
            .post(
                json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).to_string(),
            )
            .await
            .unwrap();
        assert!(
            s == 400 && String::from_utf8_lossy(&b).contains("`request` is missing"),
            "{}",
            String::from_utf8_lossy(&b)
        );
        assert_eq!(c.get("/mutate").await.unwrap().0, 405);
        assert_eq!(c.get("/nope").await.unwrap().0, 404);
        assert_eq!(c.get("/healthz").await.unwrap().0, 200);
    }
    let tls = || tls_to(server.addr, &p.ca_der, None);
    // Over HTTP/1.1: a declared oversize body is refused before it is read; an undeclared
    // (chunked) one when it passes the limit.
    let mut s = tls().await;
    s.write_all(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 8388608\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    let mut s = tls().await;
    s.write_all(b"POST /mutate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 65536, " ".repeat(65536));
    let mut head = vec![0u8; 12];
    // 8 MiB, well past the limit, and flushed: TLS keeps what the socket would not take,
    // and a body stopped short of the limit waits for the body timeout (408, seen in CI).
    for _ in 0..128 {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = s.flush().await;
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    // A body shorter than its Content-Length, then the client goes away.
    let mut s = tls().await;
    s.write_all(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"apiVersion\"")
        .await
        .unwrap();
    drop(s);
    // Headers that never finish: closed after the header timeout.
    let mut s = tls().await;
    s.write_all(b"POST /mutate HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "a slow client was not cut off");
    assert!(started.elapsed() < Duration::from_secs(5));
    // An idle keep-alive connection is closed after the idle timeout.
    let mut s = tls().await;
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(
        r.is_ok() && started.elapsed() >= Duration::from_millis(900),
        "idle connection handling: {:?}",
        started.elapsed()
    );
    // Not TLS at all.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n\x16\x03\x01\x00\x05garbage")
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "garbage connection left open");
    // Still serving.
    let mut c = server.client(Alpn::H2).await.unwrap();
    assert_eq!(c.get("/readyz").await.unwrap().0, 200);
    let m = server.metrics_text().await;
    assert_eq!(
        Server::metric(&m, "rayshape_webhook_http_responses_total{code=\"413\"}"),
        5.0,
        "{m}"
    );
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn sigterm_finishes_and_exits_zero() {
    let (root, certs, config, p) = setup("sigterm");
    let mut server = Server::start(
        &certs,
        &config,
        vec![p.ca_der.clone()],
        &["--shutdown-delay", "2"],
    )
    .await;
    let mut c = server.client(Alpn::H2).await.unwrap();
    assert_eq!(c.get("/healthz").await.unwrap().0, 200);
    server.proc.signal("TERM");
    // Not ready at once, yet still serving, new connections too, while the endpoints
    // drop the pod.
    let started = Instant::now();
    loop {
        let (s, b) = c.get("/readyz").await.unwrap();
        if s == 503 {
            assert!(String::from_utf8_lossy(&b).contains("shutting down"));
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "still ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut late = server.client(Alpn::H1).await.expect("still accepting");
    assert_eq!(late.get("/healthz").await.unwrap().0, 200);
    let st = server
        .proc
        .wait_for(Duration::from_secs(30))
        .expect("no exit after SIGTERM");
    assert!(started.elapsed() >= Duration::from_millis(1800));
    assert_eq!(st.code(), Some(0), "log:\n{}", server.log_text());
    assert!(server.log_text().contains("shutting down"));
    let _ = std::fs::remove_dir_all(root);
}

/// Request bodies held count against `--max-body-memory`: clients that send large bodies
/// and stop just short of their end cannot run the server out of memory; past the budget
/// a request gets 503 at once, and the budget comes back when the bodies go.
#[tokio::test]
async fn bodies_held_at_once_are_bounded() {
    let (root, certs, config, p) = setup("bodies");
    let server = Server::start(
        &certs,
        &config,
        vec![p.ca_der.clone()],
        &["--max-body-memory", "7"],
    )
    .await;
    let tls = || tls_to(server.addr, &p.ca_der, None);
    // 5 MiB of a 6 MiB body, and the client waits.
    let mut held = tls().await;
    held.write_all(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 6291456\r\n\r\n")
        .await
        .unwrap();
    held.write_all(&vec![b' '; 5 << 20]).await.unwrap();
    held.flush().await.unwrap();
    let m = || async {
        let m = server.metrics_text().await;
        Server::metric(&m, "rayshape_webhook_in_flight_requests ")
    };
    let started = Instant::now();
    while m().await < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A whole 3 MiB body does not fit beside it.
    let mut c = server.client(Alpn::H2).await.unwrap();
    let (s, b) = c.post(vec![b' '; 3 << 20]).await.unwrap();
    assert_eq!(s, 503, "{}", String::from_utf8_lossy(&b));
    assert!(
        String::from_utf8_lossy(&b).contains("7 MiB of request bodies"),
        "{}",
        String::from_utf8_lossy(&b)
    );
    // Small reviews still fit, and the connection goes on serving.
    let (s, _) = c.post("{}").await.unwrap();
    assert_eq!(s, 400);
    // The waiting client goes: its share comes back.
    drop(held);
    let started = Instant::now();
    loop {
        let (s, b) = c.post(vec![b' '; 3 << 20]).await.unwrap();
        if s == 400 {
            assert!(String::from_utf8_lossy(&b).contains("not JSON"));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "budget not returned: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(root);
}

/// Requests open at once are bounded by `--max-requests`: clients that open requests and
/// never send their bodies are turned away past it with 503, health checks still answer,
/// and the slots come back when those requests go.
#[tokio::test]
async fn requests_open_at_once_are_bounded() {
    let (root, certs, config, p) = setup("requests");
    let server = Server::start(
        &certs,
        &config,
        vec![p.ca_der.clone()],
        &["--max-requests", "2"],
    )
    .await;
    let tls = || tls_to(server.addr, &p.ca_der, None);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tls().await;
        s.write_all(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            .await
            .unwrap();
        s.flush().await.unwrap();
        held.push(s);
    }
    let started = Instant::now();
    loop {
        let m = server.metrics_text().await;
        if Server::metric(&m, "rayshape_webhook_in_flight_requests ") >= 2.0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = server.client(Alpn::H2).await.unwrap();
    let (s, b) = c.post("{}").await.unwrap();
    assert_eq!(s, 503, "{}", String::from_utf8_lossy(&b));
    assert!(
        String::from_utf8_lossy(&b).contains("2 requests open (--max-requests)"),
        "{}",
        String::from_utf8_lossy(&b)
    );
    assert_eq!(c.get("/healthz").await.unwrap().0, 200);
    drop(held);
    let started = Instant::now();
    loop {
        let (s, _) = c.post("{}").await.unwrap();
        if s == 400 {
            break;
        }
        assert_eq!(s, 503);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "slots not returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(root);
}

/// HTTP/1.1 headers are held only up to 64 KiB: a client that sends header lines without end
/// is answered 431 and cut off, not buffered up to hyper's default of 400 KiB.
#[tokio::test]
async fn endless_http1_headers_are_cut_off() {
    let (root, certs, config, p) = setup("headers");
    let server = Server::start(&certs, &config, vec![p.ca_der.clone()], &[]).await;
    let mut s = tls_to(server.addr, &p.ca_der, None).await;
    s.write_all(b"POST /mutate HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let line = format!("x-pad: {}\r\n", "a".repeat(1000));
    let mut sent = 0;
    while sent < 128 * 1024 {
        if s.write_all(line.as_bytes()).await.is_err() {
            break;
        }
        sent += line.len();
    }
    let _ = s.flush().await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "sent {sent} bytes, got {:?}",
        String::from_utf8_lossy(&answer)
    );
    let _ = std::fs::remove_dir_all(root);
}

/// Sockets held open do not lock the API server out: a full server closes the connection
/// longest without a finished request to make room, so a client that can reach the port
/// (every pod can, for the bootstrap) cannot hold every slot.
#[tokio::test]
async fn a_full_server_makes_room_for_a_new_connection() {
    let (root, certs, config, p) = setup("room");
    let server = Server::start(
        &certs,
        &config,
        vec![p.ca_der.clone()],
        &["--max-connections", "4"],
    )
    .await;
    let open = || async {
        let m = server.metrics_text().await;
        Server::metric(&m, "rayshape_webhook_connections ")
    };
    // Four sockets that never start TLS fill the server.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    while open().await < 4.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "sockets not accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A new client is served, and the socket held longest is closed for it.
    let mut c = tokio::time::timeout(Duration::from_secs(5), server.client(Alpn::H2))
        .await
        .expect("a full server did not take a new connection")
        .unwrap();
    assert_eq!(c.get("/healthz").await.unwrap().0, 200);
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), held[0].read(&mut buf))
        .await
        .expect("the socket held longest is still open");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let m = server.metrics_text().await;
    assert!(
        Server::metric(
            &m,
            "rayshape_webhook_connections_full_total{action=\"closed_other\"}"
        ) >= 1.0,
        "{m}"
    );
    // The client in use is not the next to go: three more sockets take the others' places.
    for _ in 0..3 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(c.get("/healthz").await.unwrap().0, 200);
    }
    let _ = std::fs::remove_dir_all(root);
}

/// Idle means no request in flight: an HTTP/2 client that only answers and sends PINGs
/// (bytes moving, no requests) is closed after the idle timeout, as one that sends
/// nothing is.
#[tokio::test]
async fn pings_do_not_keep_a_connection_open() {
    let (root, certs, config, p) = setup("pings");
    let server = Server::start(
        &certs,
        &config,
        vec![p.ca_der.clone()],
        &["--idle-timeout", "1"],
    )
    .await;
    let tls = tls_to(server.addr, &p.ca_der, Some(b"h2")).await;
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(200))
        .keep_alive_while_idle(true)
        .handshake::<_, Full<Bytes>>(TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("https://localhost/healthz")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    let closed = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        closed.is_ok(),
        "a connection with PINGs and no requests stayed open"
    );
    assert!(sender.is_closed());
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn not_ready_until_a_certificate_exists() {
    let root = scratch("nocert");
    let (certs, config) = (root.join("certs"), root.join("config"));
    std::fs::create_dir_all(&certs).unwrap();
    kubelet_write(&config, &[("webhook.yaml", "profile: generic\n")]);
    let p = pki("late");
    // Start without waiting for readiness, then provide the certificate.
    let server = Server::spawn(&certs, &config, vec![p.ca_der.clone()], &[]);
    let addr = server.addr;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        Client::connect(addr, std::slice::from_ref(&p.ca_der), Alpn::H1)
            .await
            .is_err(),
        "no handshake without a certificate"
    );
    kubelet_write(&certs, &[("tls.crt", &p.cert_pem), ("tls.key", &p.key_pem)]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(mut c) = Client::connect(addr, std::slice::from_ref(&p.ca_der), Alpn::H1).await {
            assert_eq!(c.get("/readyz").await.unwrap().0, 200);
            break;
        }
        assert!(Instant::now() < deadline, "certificate never picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server);
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn metrics_pass_promtool_and_prometheus_counts_admissions() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let (root, certs, config, p) = setup("metrics");
    let server = Server::start(&certs, &config, vec![p.ca_der.clone()], &[]).await;
    let mut c = server.client(Alpn::H2).await.unwrap();
    let sent = 37;
    for (i, (_, review)) in reviews().into_iter().cycle().take(sent).enumerate() {
        let mut review = review;
        review["request"]["uid"] = json!(format!("m-{i}"));
        assert_eq!(c.post(review.to_string()).await.unwrap().0, 200);
    }
    let raw = server.metrics_text().await;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    if let Err(e) = rayshape_testkit::promtool_check(&promtool, body) {
        panic!("promtool: {e}");
    }
    let prom =
        rayshape_testkit::Prometheus::start(&prometheus, &root, &[server.metrics.to_string()]);
    prom.wait_for(
        "sum(rayshape_webhook_admission_requests_total{operation=\"CREATE\"})",
        sent as f64,
        Duration::from_secs(60),
    );
    let _ = std::fs::remove_dir_all(root);
}

/// curl, like many HTTP/2 clients, fails a request whose stream is reset before the
/// response arrives; the 413 must reach it, with a declared length or without.
#[tokio::test]
async fn oversized_bodies_get_413_over_h2_and_h1_in_curl() {
    let Some(curl) = tool("curl") else {
        return;
    };
    let (root, certs, config, p) = setup("curl-413");
    let server = Server::start(&certs, &config, vec![p.ca_der.clone()], &[]).await;
    let ca = root.join("ca.pem");
    std::fs::write(&ca, &p.ca_pem).unwrap();
    let big = root.join("big.json");
    std::fs::write(&big, vec![b' '; 8 * 1024 * 1024]).unwrap();
    for version in ["--http2", "--http1.1"] {
        for chunked in [false, true] {
            let mut cmd = Command::new(&curl);
            cmd.args(["-sS", version, "-o", "/dev/null", "-w", "%{http_code}"])
                .arg("--cacert")
                .arg(&ca)
                .arg("--data-binary")
                .arg(format!("@{}", big.display()));
            if chunked {
                cmd.args(["-H", "Transfer-Encoding: chunked"]);
            }
            let out = cmd
                .arg(format!("https://127.0.0.1:{}/mutate", server.addr.port()))
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "413",
                "{version} chunked={chunked}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let _ = std::fs::remove_dir_all(root);
}

/// Label values come from requests; made-up ones must not become new series.
#[tokio::test]
async fn metric_labels_from_requests_are_bounded() {
    let (root, certs, config, p) = setup("labels");
    let server = Server::start(&certs, &config, vec![p.ca_der.clone()], &[]).await;
    let mut c = server.client(Alpn::H2).await.unwrap();
    for i in 0..20 {
        let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": format!("u-{i}"), "operation": format!("OP{i}"), "namespace": "ns",
                        "kind": {"group": "x", "version": "v1", "kind": format!("Kind{i}")},
                        "object": {"kind": format!("Kind{i}"), "metadata": {}}}});
        assert_eq!(c.post(review.to_string()).await.unwrap().0, 200);
    }
    let m = server.metrics_text().await;
    assert!(!m.contains("Kind1") && !m.contains("OP1"), "{m}");
    assert_eq!(
        Server::metric(
            &m,
            "rayshape_webhook_admission_requests_total{kind=\"other\",operation=\"other\",result=\"unchanged\"}"
        ),
        20.0,
        "{m}"
    );
    let _ = std::fs::remove_dir_all(root);
}

/// What `rayshape-certs` makes is what `serve` takes, and a CA rotation with overlap goes
/// through with no failed request for a client that trusts only the generated bundle.
#[tokio::test]
async fn rayshape_certs_output_serves_across_a_ca_rotation() {
    use rayshape_certs::{dir, pki};
    let root = scratch("certs-rotation");
    let (made, secret, config) = (root.join("made"), root.join("secret"), root.join("config"));
    let names = pki::Names::for_service(
        "rayshape-webhook",
        "rayshape-system",
        &["localhost".to_string()],
        &["127.0.0.1".parse().unwrap()],
    );
    dir::generate(&made, &names, 365, 3650, false).unwrap();
    let read = |f: &str| std::fs::read_to_string(made.join(f)).unwrap();
    let deploy = || {
        kubelet_write(
            &secret,
            &[
                ("tls.crt", &read("tls.crt")),
                ("tls.key", &read("tls.key")),
                ("ca.crt", &read("ca.crt")),
            ],
        )
    };
    deploy();
    kubelet_write(&config, &[("webhook.yaml", "profile: generic\n")]);
    let bundle = |pem: &str| pki::certificates(pem);
    let server = Server::start(&secret, &config, bundle(&read("ca.crt")), &[]).await;
    // The client's trust is what the admin last applied as caBundle.
    let trusted = Arc::new(std::sync::Mutex::new(bundle(&read("ca.crt"))));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let worker = {
        let (trusted, stop, ok, failed, addr) = (
            trusted.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            server.addr,
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ca = trusted.lock().unwrap().clone();
                // A new connection each time: every request is a handshake.
                let result = match Client::connect(addr, &ca, Alpn::H2).await {
                    Ok(mut c) => c.get("/readyz").await.map(|(s, _)| s),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let settle = || tokio::time::sleep(Duration::from_millis(600));
    settle().await;
    // 1. A new CA; the bundle trusts both; apply it (the client now trusts both).
    dir::rotate_ca(&made, 3650).unwrap();
    deploy();
    *trusted.lock().unwrap() = bundle(&read("ca.crt"));
    settle().await;
    // 2. The serving certificate from the new CA; the server picks it up.
    dir::renew(&made, &names, 365, false).unwrap();
    deploy();
    let new_leaf = bundle(&read("tls.crt"))[0].to_vec();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Client::connect(server.addr, &bundle(&read("ca.crt")), Alpn::H1)
        .await
        .map(|c| c.peer)
        != Ok(new_leaf.clone())
    {
        assert!(
            Instant::now() < deadline,
            "new certificate not served; log:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    settle().await;
    // 3. Only the new CA.
    dir::finish_rotation(&made).unwrap();
    deploy();
    *trusted.lock().unwrap() = bundle(&read("ca.crt"));
    settle().await;
    stop.store(true, Ordering::Relaxed);
    worker.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the rotation"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "{}",
        ok.load(Ordering::Relaxed)
    );
    let _ = std::fs::remove_dir_all(root);
}
