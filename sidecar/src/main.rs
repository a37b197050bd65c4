//! `rayshape-sidecar`: `run` ships Ray's logs; `logs` reads them back from the store.

use clap::{Parser, Subcommand};
use rayshape_sidecar::config::{Config, Sink as SinkConfig, env};
use rayshape_sidecar::logs;
use rayshape_sidecar::metrics::Metrics;
use rayshape_sidecar::shipper::{ShipError, Shipper};
use rayshape_sidecar::sink::{Sink, SinkError};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "rayshape-sidecar",
    version,
    about = "Ships Ray's log files to object storage, exactly once, and serves Prometheus metrics"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ship the Ray node's logs until SIGTERM, then flush and exit.
    ///
    /// Configuration: the file (--config), then RAYSHAPE_* environment variables. A sink
    /// that is missing, unreachable or refuses our credentials does not stop it: it stays
    /// up, says why in the rayshape_sidecar_state metric, and retries. Exit status: 0 after
    /// a complete final flush (or a stop without a sink), 1 if the shutdown deadline left
    /// data unshipped, 2 if the configuration cannot be parsed or the metrics address
    /// cannot be listened on, 3 on an internal error (a bug).
    Run {
        #[arg(long, env = env::CONFIG)]
        config: Option<PathBuf>,
    },
    /// Read shipped logs back from a store, also for pods that no longer exist.
    Logs {
        #[command(subcommand)]
        command: LogsCommand,
    },
}

#[derive(clap::Args)]
struct SinkArgs {
    /// s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or file:///dir.
    #[arg(long, env = env::SINK_URL)]
    sink: String,
    /// A backend option, KEY=VALUE (aws_endpoint, aws_region, aws_allow_http, ...); repeatable.
    #[arg(short = 'o', long = "option", value_parser = parse_kv)]
    options: Vec<(String, String)>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(Subcommand)]
enum LogsCommand {
    /// List pods and sessions in the store, with their segment counts.
    List {
        #[command(flatten)]
        sink: SinkArgs,
        /// Only pods under this prefix: NAMESPACE[/CLUSTER[/POD_NAME-POD_UID]].
        #[arg(long)]
        pod: Option<String>,
    },
    /// Reassemble a pod's log files into a directory, as OUT/SESSION/NAME~ID.
    Get {
        #[command(flatten)]
        sink: SinkArgs,
        /// The pod, as `logs list` prints it: NAMESPACE/CLUSTER/POD_NAME-POD_UID.
        #[arg(long)]
        pod: String,
        #[arg(long)]
        session: Option<String>,
        /// Only files of this name (as first seen, like raylet.out) or stream (raylet.out~3).
        #[arg(long)]
        file: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    rayshape_telemetry::init_logging(env::LOG);
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // One malloc arena, the main heap's, for both threads: glibc's `malloc_trim`, which the
    // shipper calls once memory settles, returns free pages from anywhere in the main heap
    // but never the top of another thread's arena, where a segment's buffers were freed.
    // With 10,000 files that is 1.5 MiB resident for nothing. The threads rarely allocate
    // at the same moment, so sharing the arena's lock costs nothing measurable.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    // One thread serves metrics and talks to the store; file work (scans, compression,
    // checkpoint writes) goes to one blocking thread at a time, which it never needs more
    // of: a thread per task would give each its own malloc arena, and with ten thousand
    // files followed that doubles the resident memory.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .thread_keep_alive(std::time::Duration::from_secs(3600))
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Run { config } => runtime.block_on(run(config)),
        Command::Logs { command } => runtime.block_on(logs_command(command)),
    }
}

fn open_sink(args: &SinkArgs) -> Result<Sink, ExitCode> {
    Sink::open(&SinkConfig {
        url: args.sink.clone(),
        options: args.options.iter().cloned().collect(),
    })
    .map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

async fn logs_command(cmd: LogsCommand) -> ExitCode {
    let result = match &cmd {
        LogsCommand::List { sink, pod } => match open_sink(sink) {
            Ok(s) => logs::list(&s, pod.as_deref())
                .await
                .map(|text| print!("{text}")),
            Err(code) => return code,
        },
        LogsCommand::Get {
            sink,
            pod,
            session,
            file,
            out,
        } => match open_sink(sink) {
            Ok(s) => match logs::get(&s, pod, session.as_deref(), file.as_deref(), out).await {
                Ok(written) => {
                    for (f, size) in &written {
                        println!("{}\t{size}", out.join(f).display());
                    }
                    if written.is_empty() {
                        eprintln!("note: nothing matched");
                    }
                    // Advisory: everything is written, whatever this finds.
                    match logs::reshipped(out, &written) {
                        Ok(groups) => {
                            let path = |rel: &String| out.join(rel).display().to_string();
                            for g in groups {
                                eprintln!(
                                    "note: {} and {} begin with the same bytes: probably one file, shipped again from its beginning after the sidecar's checkpoint was lost or set aside; {} holds all their bytes",
                                    g[1..].iter().map(path).collect::<Vec<_>>().join(", "),
                                    path(&g[0]),
                                    path(&g[0])
                                );
                            }
                        }
                        Err(e) => eprintln!(
                            "warning: could not compare the streams written for files shipped twice: {e}"
                        ),
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Err(code) => return code,
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Ask for the pod's configuration until the webhook verifies it or a stop comes (`None`).
/// Failures are retried with backoff and jitter; each new outcome is logged once.
async fn bootstrap(
    b: &rayshape_sidecar::config::Bootstrap,
    metrics: &Metrics,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<rayshape_contract::bootstrap::NodeConfig> {
    use rayshape_sidecar::bootstrap::{Client, Outcome};
    metrics.set_bootstrap_state("pending");
    let mut retry = rayshape_sidecar::bootstrap::Retry::default();
    let mut last: Option<String> = None;
    let client = Client::new(&b.url, &b.ca, b.token_file.clone());
    loop {
        let (state, reason, wait) = match &client {
            // A setup problem is the configuration's: said, and looked at again later.
            Err(e) => ("unavailable", e.to_string(), retry.after_setup_error()),
            Ok(c) => {
                let outcome = c.attempt().await;
                let wait = retry.after(&outcome);
                match outcome {
                    Outcome::Verified(node) => {
                        metrics
                            .bootstrap_attempts
                            .with_label_values(&["verified"])
                            .inc();
                        metrics.set_bootstrap_state("verified");
                        return Some(*node);
                    }
                    Outcome::Refused { status, reason } => {
                        metrics
                            .bootstrap_attempts
                            .with_label_values(&["refused"])
                            .inc();
                        ("refused", format!("HTTP {status}: {reason}"), wait)
                    }
                    Outcome::Unavailable { reason, .. } => {
                        metrics
                            .bootstrap_attempts
                            .with_label_values(&["unavailable"])
                            .inc();
                        ("unavailable", reason, wait)
                    }
                }
            }
        };
        metrics.set_bootstrap_state(state);
        if last.as_deref() != Some(reason.as_str()) {
            if state == "refused" {
                tracing::error!(reason = %reason, url = %b.url, "bootstrap refused; retrying (Ray's logs stay on disk)");
            } else {
                tracing::warn!(reason = %reason, url = %b.url, "bootstrap not possible yet; retrying (Ray's logs stay on disk)");
            }
            last = Some(reason);
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return None;
        }
    }
}

/// How long a sidecar without a sink first waits to ask the webhook again (jittered down to
/// half); each turn without one doubles it, up to [`ASK_AGAIN_MAX`]. A cluster that sets no
/// sink has every sidecar asking, and each ask costs the API server a TokenReview and a pod
/// read: 2,000 pods asking every minute would be 33 of each a second.
const ASK_AGAIN: std::time::Duration = std::time::Duration::from_secs(60);
const ASK_AGAIN_MAX: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// The sink a later bootstrap answer gave, for a shipper that started without one.
#[derive(Default)]
struct LaterSink {
    sink: std::sync::Mutex<Option<SinkConfig>>,
    /// When the shipper last asked for a sink: it asks only while it has none.
    asked: std::sync::Mutex<Option<std::time::Instant>>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Ask the webhook for the node's configuration, after [`ASK_AGAIN`] and then less and less
/// often, while the shipper has no sink, and keep the latest sink it names. Ends when the
/// shipper stops asking (it has a sink) or on stop. Refusals and outages are left to the
/// next turn, quietly: the first bootstrap already said how to fix them, and the shipper's
/// state says there is no sink.
async fn ask_again(
    b: rayshape_sidecar::config::Bootstrap,
    later: Arc<LaterSink>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use rayshape_sidecar::bootstrap::{Client, Outcome};
    let Ok(client) = Client::new(&b.url, &b.ca, b.token_file.clone()) else {
        return;
    };
    let mut wait = ASK_AGAIN;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(rayshape_sidecar::random::jitter(wait)) => {}
            _ = stop.changed() => return,
        }
        wait = (wait * 2).min(ASK_AGAIN_MAX);
        let shipper_waits = lock(&later.asked)
            .is_some_and(|t| t.elapsed() < rayshape_sidecar::shipper::SINK_RELOAD * 3);
        if !shipper_waits {
            return;
        }
        if let Outcome::Verified(node) = client.attempt().await {
            let sink = (!node.sink.url.is_empty()).then(|| SinkConfig {
                url: node.sink.url.clone(),
                options: node.sink.options.clone(),
            });
            if sink.is_some() && *lock(&later.sink) != sink {
                tracing::info!(sink = %node.sink.url, "the webhook now names a sink");
            }
            *lock(&later.sink) = sink;
        }
    }
}

async fn run(config: Option<PathBuf>) -> ExitCode {
    // First of all, so that a SIGTERM during start-up is a stop request, not a kill.
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot handle SIGTERM");
            return ExitCode::from(3);
        }
    };
    let getenv = |k: &str| std::env::var(k).ok();
    let mut cfg = match Config::load(config.as_deref(), &getenv) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "configuration refused");
            return ExitCode::from(2);
        }
    };
    let metrics = Arc::new(Metrics::new());
    let listener = match rayshape_telemetry::bind(cfg.metrics_listen) {
        Ok((l, fell_back)) => {
            if let Some(e) = fell_back {
                tracing::warn!(addr = %cfg.metrics_listen, error = %e, "no IPv6 here: metrics on IPv4 only");
            }
            l
        }
        Err(e) => {
            tracing::error!(addr = %cfg.metrics_listen, error = %e, "cannot listen for metrics");
            return ExitCode::from(2);
        }
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    // The metrics stay up through the final flush: the process exits right after it.
    let (_metrics_stop, metrics_stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(rayshape_telemetry::serve_metrics(
        listener,
        metrics.registry.clone(),
        metrics_stop_rx,
    ));
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stop requested");
        let _ = stop_tx.send(true);
        // Keep the sender: a dropped one would read as a stop forever.
        std::future::pending::<()>().await;
    });
    // Nothing is shipped before the pod's identity is verified: until then Ray's logs wait
    // on disk, and the metrics say why.
    match cfg.bootstrap.clone() {
        None => metrics.set_bootstrap_state("not_configured"),
        Some(b) => match bootstrap(&b, &metrics, &mut stop_rx).await {
            Some(node) => {
                let adopted = cfg.adopt(&node);
                tracing::info!(prefix = %cfg.pod_prefix(), node = %cfg.pod.node, sink = cfg.sink.as_ref().map_or("(none)", |s| s.url.as_str()), "identity verified; configuration received");
                if !adopted.kept.is_empty() {
                    tracing::info!(kept = %adopted.kept.join(", "), "settings given here win over the bootstrap's");
                }
                for problem in &adopted.refused {
                    tracing::warn!(problem = %problem, "a setting from the bootstrap was not taken; the sidecar's default stays");
                }
            }
            None => {
                tracing::info!("stopped before the identity was verified: nothing was shipped");
                return ExitCode::SUCCESS;
            }
        },
    }
    // A sink given here that cannot be parsed is this container's configuration error. One
    // the bootstrap gave is the cluster's: exiting would put every Ray pod's sidecar in a
    // crash loop, so it is said and waited out like one that cannot be reached (the shipper
    // says why in its state metric) while Ray's logs stay on disk.
    let sink = match cfg.sink.as_ref().map(Sink::open) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e @ SinkError::Dir { .. })) => {
            tracing::warn!(error = %e, "the sink cannot be used yet; trying again");
            None
        }
        Some(Err(e)) if !cfg.explicit.sink => {
            tracing::error!(error = %e, "the sink the bootstrap gave cannot be used: fix sidecar.logSink in the webhook's configuration (rayshape-webhook check-config says what is wrong); Ray's logs stay on disk until then");
            cfg.sink = None;
            None
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "sink refused");
            return ExitCode::from(2);
        }
    };
    // Without a sink, the configuration file is read again now and then, and the webhook
    // asked again: one may come (an admin who sets sidecar.logSink after Ray clusters
    // started expects their sidecars to ship too).
    let later = Arc::new(LaterSink::default());
    if sink.is_none()
        && let Some(b) = cfg.bootstrap.clone()
    {
        tokio::spawn(ask_again(b, later.clone(), stop_rx.clone()));
    }
    let source: rayshape_sidecar::shipper::SinkSource = Box::new(move || {
        *lock(&later.asked) = Some(std::time::Instant::now());
        let local = Config::load(config.as_deref(), &|k| std::env::var(k).ok())
            .map(|c| c.sink)
            .map_err(|e| e.to_string())?;
        Ok(local.or_else(|| lock(&later.sink).clone()))
    });
    tracing::info!(
        root = %cfg.root.display(),
        sink = cfg.sink.as_ref().map_or("(none)", |s| s.url.as_str()),
        prefix = %cfg.pod_prefix(),
        max_open_files = cfg.max_open_files,
        "starting"
    );
    let shipper = Shipper::new(cfg, sink, Some(source), metrics.clone());
    match shipper.run(stop_rx).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ (ShipError::Deadline(_) | ShipError::NoCheckpoint(_))) => {
            tracing::error!(error = %e, "stopped before everything was shipped");
            ExitCode::from(1)
        }
        Err(e) => {
            tracing::error!(error = %e, "stopped");
            ExitCode::from(3)
        }
    }
}
