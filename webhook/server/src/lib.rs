//! rayshape's admission server (`rayshape-webhook serve`).
//!
//! HTTPS (TLS 1.2/1.3, HTTP/2 and HTTP/1.1 by ALPN) for `/mutate`, `/healthz` and `/readyz`;
//! plain HTTP for `/metrics`. The configuration directory and the certificate files are
//! re-read every `reload_interval`; a changed version that loads replaces the one in force
//! for the next request or handshake, one that does not is refused, logged and counted, and
//! the last good one stays. SIGTERM makes the server not ready, goes on serving for
//! `shutdown_delay`, then stops accepting, lets requests in flight finish, and exits 0.

pub mod bootstrap;
pub mod config_dir;
mod connections;
mod cork;
mod http;
mod idle;
pub mod metrics;
pub mod tls;

use connections::{Admitted, Table};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use metrics::Metrics;
use rayshape_engine::config::{Config, Sources};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// Everything `serve` is told on its command line.
#[derive(Clone, Debug)]
pub struct Options {
    pub config_dir: PathBuf,
    /// The CA bundle (PEM) injected into sidecars to check the bootstrap endpoint with,
    /// such as the `ca.crt` of the serving certificate's Secret.
    pub bootstrap_ca: Option<PathBuf>,
    pub tls: tls::Paths,
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    /// How often the configuration and certificate files are checked for changes.
    pub reload_interval: Duration,
    /// How long a client may take to send a request's headers (HTTP/1.1).
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body.
    pub body_timeout: Duration,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// After SIGTERM, how long the server goes on accepting, not ready, while the
    /// Service's endpoints drop this pod (connections still routed here are served).
    pub shutdown_delay: Duration,
    /// Then how long requests in flight get to finish.
    pub shutdown_timeout: Duration,
    pub max_connections: usize,
    /// Admissions decided at once; more wait their turn.
    pub max_in_flight: usize,
    /// Requests open at once, health checks aside; more are answered 503.
    pub max_requests: usize,
    /// Bytes of request bodies held at once, over all connections; a body that would go
    /// over is answered 503 (at least [`MAX_INPUT`](rayshape_engine::decode::MAX_INPUT)).
    pub max_body_memory: usize,
}

/// What every request handler shares.
pub struct State {
    config: RwLock<Arc<Config>>,
    pub metrics: Metrics,
    resolver: Arc<tls::Resolver>,
    config_loaded: AtomicBool,
    /// Set on SIGTERM: not ready any more.
    draining: AtomicBool,
    decisions: Semaphore,
    body_timeout: Duration,
    /// Request bodies held, in KiB, against `body_memory`.
    bodies: Semaphore,
    body_memory: usize,
    /// Requests open at once past which one is answered 503 (`--max-requests`).
    pub max_requests: usize,
    /// Requests open now, health checks aside.
    open_requests: std::sync::atomic::AtomicUsize,
    pub bootstrap: bootstrap::Bootstrap,
}

impl State {
    /// The state of a server with this configuration, before any certificate has loaded.
    pub fn new(
        cfg: Config,
        max_in_flight: usize,
        body_timeout: Duration,
        body_memory: usize,
        bootstrap: bootstrap::Bootstrap,
    ) -> State {
        let body_memory = body_memory.max(rayshape_engine::decode::MAX_INPUT);
        State {
            bodies: Semaphore::new(body_memory / 1024),
            body_memory,
            max_requests: usize::MAX,
            open_requests: std::sync::atomic::AtomicUsize::new(0),
            bootstrap,
            config: RwLock::new(Arc::new(cfg)),
            metrics: Metrics::new(),
            resolver: Arc::new(tls::Resolver::default()),
            config_loaded: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            decisions: Semaphore::new(max_in_flight.max(1)),
            body_timeout,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn ready(&self) -> bool {
        self.config_loaded.load(Ordering::Relaxed) && self.resolver.is_loaded() && !self.draining()
    }

    /// Whether SIGTERM came: the server answers as before but is not ready.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    fn install(&self, cfg: Config) {
        self.metrics
            .instance_types
            .set(cfg.instance_types.len() as i64);
        self.metrics.rules.set(cfg.rule_count() as i64);
        self.metrics.config_last_success.set(now());
        self.metrics.config_refused.set(0);
        self.metrics
            .config_reloads
            .with_label_values(&["success"])
            .inc();
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(cfg);
        self.config_loaded.store(true, Ordering::Relaxed);
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] rayshape_engine::config::problems::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// Run until SIGTERM or SIGINT. The configuration must load at start; the certificate may
/// appear later (the server is not ready until it does).
pub async fn run(opts: Options) -> Result<(), StartError> {
    // A panic is answered where it happens (a 500 for its review); the report goes to the
    // JSON log rather than raw stderr.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "panic");
    }));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let sources = read_sources(&opts)?;
    let cfg = Config::from_sources(&sources)?;
    for w in &cfg.warnings {
        tracing::warn!(problem = %w, "configuration note");
    }
    for w in config_dir::unknown_files(&opts.config_dir) {
        tracing::warn!(problem = %w, "configuration note");
    }
    if opts.bootstrap_ca.is_none() && cfg.settings.sidecar.enabled {
        tracing::warn!(
            "no --bootstrap-ca: injected sidecars get no CA to check the bootstrap endpoint with, cannot bootstrap and ship nothing; pass the serving certificate's CA bundle (the ca.crt of its Secret)"
        );
    }
    let api = bootstrap::api::KubeApi::infer().await;
    if let Err(e) = &api {
        tracing::warn!(error = %e, "bootstrap requests will be answered 503 until the webhook runs with API access");
    }
    let mut state = State::new(
        cfg.clone(),
        opts.max_in_flight,
        opts.body_timeout,
        opts.max_body_memory,
        bootstrap::Bootstrap::new(api),
    );
    state.max_requests = opts.max_requests;
    let state = Arc::new(state);
    state.install(cfg);
    tracing::info!(dir = %opts.config_dir.display(), "configuration loaded");
    let mut reloader = Reloader {
        state: state.clone(),
        opts: opts.clone(),
        provider: provider.clone(),
        seen_config: Some(sources),
        config_unreadable: false,
        seen_cert: None,
    };
    reloader.check_certificate();
    let tls_config = Arc::new(tls::server_config(provider, state.resolver.clone())?);

    let listen = |addr: SocketAddr| {
        let (l, fell_back) =
            rayshape_telemetry::bind(addr).map_err(|source| StartError::Listen { addr, source })?;
        if let Some(e) = fell_back {
            tracing::warn!(%addr, error = %e, "no IPv6 here: listening on IPv4 only");
        }
        Ok::<_, StartError>(l)
    };
    let listener = listen(opts.listen)?;
    let metrics_listener = listen(opts.metrics_listen)?;
    tracing::info!(listen = %listener.local_addr().map_or(opts.listen, |a| a), metrics = %metrics_listener.local_addr().map_or(opts.metrics_listen, |a| a), "serving");

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(reloader.run(stop_rx.clone()));
    tokio::spawn(rayshape_telemetry::serve_metrics(
        metrics_listener,
        state.metrics.registry.clone(),
        stop_rx.clone(),
    ));
    let accept = tokio::spawn(accept_loop(
        listener,
        tls_config,
        state.clone(),
        opts.clone(),
        stop_rx,
    ));

    shutdown_signal().await;
    // The Service's endpoints learn of the pod's termination a moment after the kubelet
    // sends SIGTERM; closing the listener at once would refuse admissions still routed here
    // (with failurePolicy Fail, Ray pods refused in every rollout and node drain).
    state.draining.store(true, Ordering::Relaxed);
    tracing::info!(
        delay_s = opts.shutdown_delay.as_secs_f64(),
        "shutting down: not ready; still serving while the endpoints drop this pod"
    );
    tokio::time::sleep(opts.shutdown_delay).await;
    tracing::info!("shutting down: no new connections; finishing requests in flight");
    let _ = stop_tx.send(true);
    match tokio::time::timeout(opts.shutdown_timeout, accept).await {
        Ok(_) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!(
            timeout_s = opts.shutdown_timeout.as_secs(),
            "connections still open at the shutdown deadline"
        ),
    }
    Ok(())
}

/// The configuration directory, and the bootstrap CA bundle when one is given.
pub fn read_sources(
    opts: &Options,
) -> Result<Sources, rayshape_engine::config::problems::ConfigError> {
    let mut sources = config_dir::read(&opts.config_dir)?;
    if let Some(path) = &opts.bootstrap_ca {
        sources.bootstrap_ca = Some(config_dir::read_ca(path)?);
    }
    Ok(sources)
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// How long an idle connection being closed gets to finish (at most its idle timeout).
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// How long a connection closed to make room for another gets to finish its requests.
const ROOM_GRACE: Duration = Duration::from_secs(2);

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<State>,
    opts: Options,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let table = Table::new(opts.max_connections, state.metrics.connections.clone());
    let mut conns = JoinSet::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        // What a client may send before its headers end is held: hyper's default of
        // 400 KiB, at --max-connections, would be 400 MiB.
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        // The API server's client opens another connection past it; a client holding
        // many requests open takes its share of --max-requests a connection at a time.
        .max_concurrent_streams(64);
    let builder = Arc::new(builder);
    // Refusals come in floods when they come: logged at most once a second (all counted).
    let mut refusal_logged: Option<tokio::time::Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let slot = match table.admit() {
            Admitted::Room(s) => s,
            Admitted::MadeRoom(s) => {
                state
                    .metrics
                    .connections_full
                    .with_label_values(&["closed_other"])
                    .inc();
                s
            }
            Admitted::Full => {
                state
                    .metrics
                    .connections_full
                    .with_label_values(&["refused"])
                    .inc();
                if refusal_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    refusal_logged = Some(tokio::time::Instant::now());
                    tracing::warn!(%peer, max = opts.max_connections, "connection refused: --max-connections open and a quarter of them already closing to make room (rayshape_webhook_connections_full_total counts every one)");
                }
                continue;
            }
        };
        // Small HTTP/2 frames must not wait for ACKs (Nagle): p99 went from 11 ms to 2 ms.
        let _ = tcp.set_nodelay(true);
        let (acceptor, state, builder, opts, stop) = (
            acceptor.clone(),
            state.clone(),
            builder.clone(),
            opts.clone(),
            stop.clone(),
        );
        conns.spawn(async move {
            let handshake = tokio::time::timeout(opts.handshake_timeout, acceptor.accept(tcp));
            let tls = tokio::select! {
                r = handshake => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                _ = slot.told_to_close() => {
                    tracing::debug!(%peer, "connection closed during its TLS handshake to make room for another");
                    return;
                }
            };
            let activity = slot.activity.clone();
            let (io, uncork) = cork::Corked::new(tls);
            let source = peer.ip();
            let requests = activity.clone();
            let service = hyper::service::service_fn(move |req| {
                let request = requests.begin();
                let answer = http::webhook(req, state.clone(), source);
                async move {
                    let r = answer.await;
                    drop(request);
                    r
                }
            });
            // Serve until the connection ends, goes idle, or the server stops.
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            let mut stop = stop;
            // Once closing, the connection gets this long to finish; a client that does
            // not read its answers (or keeps sending pipelined requests) is then dropped.
            let mut closing: Option<tokio::time::Instant> = None;
            let mut tick = tokio::time::interval(
                opts.idle_timeout
                    .clamp(Duration::from_millis(100), Duration::from_secs(1)),
            );
            loop {
                tokio::select! {
                    r = std::future::poll_fn(|cx| uncork.drive(&mut conn.as_mut(), cx)) => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        return;
                    }
                    _ = stop.changed(), if closing.is_none() => {
                        closing = Some(tokio::time::Instant::now() + opts.shutdown_timeout);
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = slot.told_to_close() => {
                        tracing::debug!(%peer, "closing the connection to make room for another");
                        let deadline = tokio::time::Instant::now() + ROOM_GRACE;
                        if closing.is_none() {
                            conn.as_mut().graceful_shutdown();
                        }
                        closing = Some(closing.map_or(deadline, |d| d.min(deadline)));
                    }
                    _ = tick.tick() => {
                        uncork.release();
                        match closing {
                            Some(deadline) if tokio::time::Instant::now() >= deadline => {
                                tracing::debug!(%peer, "connection dropped: it did not close in time");
                                return;
                            }
                            Some(_) => {}
                            None if activity.idle_for() >= opts.idle_timeout => {
                                closing = Some(tokio::time::Instant::now() + opts.idle_timeout.min(CLOSE_GRACE));
                                conn.as_mut().graceful_shutdown();
                            }
                            None => {}
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// The configuration files `before` had and `now` lacks: a ConfigMap key removed brings back
/// the built-in defaults (Anyscale's instance types, no rules) without a word otherwise.
fn gone(before: &Sources, now: &Sources) -> Vec<&'static str> {
    use rayshape_engine::config::{instance_types, rules, settings};
    [
        (
            &before.instance_types,
            &now.instance_types,
            instance_types::FILE,
        ),
        (&before.patches, &now.patches, rules::FILE),
        (&before.settings, &now.settings, settings::FILE),
    ]
    .into_iter()
    .filter(|(b, n, _)| b.is_some() && n.is_none())
    .map(|(_, _, f)| f)
    .collect()
}

/// Re-reads the configuration and certificate files and installs changed versions that load.
struct Reloader {
    state: Arc<State>,
    opts: Options,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The last sources seen, loaded or refused: a refused version is not retried (nor
    /// logged again) until the files change.
    seen_config: Option<Sources>,
    /// The directory could not be read at the last check (counted and logged once).
    config_unreadable: bool,
    seen_cert: Option<(Vec<u8>, Vec<u8>)>,
}

impl Reloader {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.opts.reload_interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            self.check_config();
            self.check_certificate();
        }
    }

    fn check_config(&mut self) {
        let sources = match read_sources(&self.opts) {
            Ok(s) => s,
            Err(e) => {
                // A half-written directory reads as an error; only count it once per state.
                // What was seen before stays, to tell which files went meanwhile.
                if !self.config_unreadable {
                    self.config_unreadable = true;
                    self.state.metrics.config_refused.set(1);
                    self.state
                        .metrics
                        .config_reloads
                        .with_label_values(&["failure"])
                        .inc();
                    tracing::error!(error = %e, "configuration refused; the last good one stays in force");
                }
                return;
            }
        };
        let recovered = std::mem::take(&mut self.config_unreadable);
        if self.seen_config.as_ref() == Some(&sources) && !recovered {
            return;
        }
        for w in config_dir::unknown_files(&self.opts.config_dir) {
            tracing::warn!(problem = %w, "configuration note");
        }
        if let Some(before) = &self.seen_config {
            for file in gone(before, &sources) {
                tracing::warn!(
                    file,
                    "configuration note: the file is gone, so its built-in default is in force"
                );
            }
        }
        match Config::from_sources(&sources) {
            Ok(cfg) => {
                tracing::info!(instance_types = cfg.instance_types.len(), rules = cfg.rule_count(), config = %cfg.fingerprint, "configuration reloaded");
                self.state.install(cfg);
            }
            Err(e) => {
                self.state.metrics.config_refused.set(1);
                self.state
                    .metrics
                    .config_reloads
                    .with_label_values(&["failure"])
                    .inc();
                tracing::error!(error = %e, "configuration refused; the last good one stays in force");
            }
        }
        self.seen_config = Some(sources);
    }

    fn check_certificate(&mut self) {
        let bytes = match self.opts.tls.read() {
            Ok(b) => b,
            Err(e) => {
                if self.seen_cert.take().is_some() || !self.state.resolver.is_loaded() {
                    tracing::warn!(error = %e, "serving certificate not readable");
                }
                return;
            }
        };
        if self.seen_cert.as_ref() == Some(&bytes) {
            return;
        }
        match self.opts.tls.load(&bytes.0, &bytes.1, &self.provider) {
            Ok(loaded) => {
                if let Some(t) = loaded.not_after {
                    self.state.metrics.cert_expiry.set(t as f64);
                }
                self.state.resolver.set(loaded.key);
                self.state
                    .metrics
                    .cert_reloads
                    .with_label_values(&["success"])
                    .inc();
                tracing::info!(cert = %self.opts.tls.cert.display(), not_after = loaded.not_after, "serving certificate loaded");
            }
            Err(e) => {
                self.state
                    .metrics
                    .cert_reloads
                    .with_label_values(&["failure"])
                    .inc();
                tracing::error!(error = %e, "serving certificate refused; the last good one stays in force");
            }
        }
        self.seen_cert = Some(bytes);
    }
}
