//! `rayshape-sidecar`: `run` ships Ray's logs; `logs` reads them back from the store.

use clap::{Parser, Subcommand};
use object_store::{ObjectStoreExt, PutPayload};
use rayshape_sidecar::config::{Config, Sink as SinkConfig};
use rayshape_sidecar::logs;
use rayshape_sidecar::metrics::Metrics;
use rayshape_sidecar::shipper::Shipper;
use rayshape_sidecar::sink::{self, Sink};
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
    /// Configuration: the file (--config), then RAYSHAPE_* environment variables. Exit
    /// status: 0 after a complete final flush, 1 if the shutdown deadline left data unshipped,
    /// 2 if the configuration or the sink is wrong.
    Run {
        #[arg(long, env = "RAYSHAPE_CONFIG")]
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
    #[arg(long, env = "RAYSHAPE_SINK_URL")]
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
        /// Only pods under this prefix: NAMESPACE[/CLUSTER[/POD-UID]].
        #[arg(long)]
        pod: Option<String>,
    },
    /// Reassemble a pod's log files into a directory, as OUT/SESSION/NAME~ID.
    Get {
        #[command(flatten)]
        sink: SinkArgs,
        /// The pod, as `logs list` prints it: NAMESPACE/CLUSTER/POD-UID.
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
    rayshape_telemetry::init_logging("RAYSHAPE_LOG");
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
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
            Ok(s) => logs::get(&s, pod, session.as_deref(), file.as_deref(), out)
                .await
                .map(|written| {
                    for (f, size) in &written {
                        println!("{}\t{size}", out.join(f).display());
                    }
                    if written.is_empty() {
                        eprintln!("note: nothing matched");
                    }
                }),
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

async fn run(config: Option<PathBuf>) -> ExitCode {
    // First of all, so that a SIGTERM during start-up is a stop request, not a kill.
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot handle SIGTERM");
            return ExitCode::from(2);
        }
    };
    let cfg = match Config::load(config.as_deref(), &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "configuration refused");
            return ExitCode::from(2);
        }
    };
    let sink = match Sink::open(&cfg.sink) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "sink refused");
            return ExitCode::from(2);
        }
    };
    let metrics = Arc::new(Metrics::new());
    let listener = match tokio::net::TcpListener::bind(cfg.metrics_listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %cfg.metrics_listen, error = %e, "cannot listen for metrics");
            return ExitCode::from(2);
        }
    };
    let shipper = match Shipper::new(cfg.clone(), sink, metrics.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::from(2);
        }
    };
    // Prove we may write: wrong credentials or a missing bucket are a configuration error,
    // not an outage to wait out. The probe runs beside the shipper, which starts following
    // files at once: a store that is down must not leave rotations unwatched.
    let probe_sink = shipper.sink();
    let probe_path = probe_sink.path(&format!("{}/.rayshape-probe", cfg.pod_prefix()));
    let probe = async move {
        match probe_sink
            .store
            .put(&probe_path, PutPayload::from_static(b""))
            .await
        {
            Ok(_) => std::future::pending::<String>().await,
            Err(e) if sink::is_config_error(&e) => format!("{} ({e})", probe_sink.url),
            Err(e) => {
                tracing::warn!(sink = %probe_sink.url, error = %e, "the store is not reachable yet; shipping will retry");
                std::future::pending::<String>().await
            }
        }
    };
    tracing::info!(root = %cfg.root.display(), sink = %cfg.sink.url, prefix = %cfg.pod_prefix(), "shipping");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
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
    });
    let result = tokio::select! {
        r = shipper.run(stop_rx) => r,
        refused = probe => {
            tracing::error!(sink = %refused, "the store refuses writes: check the sink URL, bucket and credentials");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ rayshape_sidecar::shipper::ShipError::Deadline(_)) => {
            tracing::error!(error = %e, "stopped before everything was shipped");
            ExitCode::from(1)
        }
        Err(e) => {
            tracing::error!(error = %e, "stopped");
            ExitCode::from(2)
        }
    }
}
