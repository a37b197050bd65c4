//! `rayshape-webhook`: the offline preview, configuration checks and profiles.

use clap::{Parser, Subcommand, ValueEnum};
use rayshape_engine::config::{Config, profiles};
use rayshape_engine::decode::{self as input, Format};
use rayshape_engine::json::{Value, json};
use rayshape_engine::review::{Decision, Outcome};
use rayshape_server as serve;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

mod alloc;

// Shaping allocates many small JSON nodes; glibc's allocator spent half the time on them.
#[global_allocator]
static ALLOC: alloc::Mi = alloc::Mi;

#[derive(Parser)]
#[command(
    name = "rayshape-webhook",
    version,
    about = "Shapes Ray pods on Kubernetes: instance types, placement, patch rules and the rayshape sidecar"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show offline what the webhook would do to a Pod or an AdmissionReview.
    ///
    /// Exit status: 0 admitted, 1 denied (the reason on stderr), 2 unusable input or config.
    Mutate {
        /// The input: a file, or `-` for standard input. JSON or YAML; a YAML stream or a
        /// `kind: List` is shaped document by document.
        #[arg(short = 'f', long = "filename", default_value = "-")]
        file: PathBuf,
        /// Directory with instance_types.yaml, patches.yaml and webhook.yaml (each optional).
        /// Without it, the built-in defaults apply.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The CA bundle the server injects into sidecars (serve --bootstrap-ca), to
        /// preview exactly what it sends.
        #[arg(long)]
        bootstrap_ca: Option<PathBuf>,
        /// What to print.
        #[arg(short, long, value_enum, default_value_t = Output::Object)]
        output: Output,
        /// Syntax of printed objects; defaults to the input's. Patches and reviews are JSON.
        #[arg(long, value_enum)]
        format: Option<OutFormat>,
    },
    /// Serve admission reviews over HTTPS, and metrics over HTTP.
    ///
    /// Configuration and certificate files are re-read while running; a bad new version is
    /// refused and the last good one stays in force. Logs are JSON lines on stderr
    /// (RAYSHAPE_LOG sets the level: error, warn, info, debug).
    Serve {
        /// Directory with instance_types.yaml, patches.yaml and webhook.yaml (a mounted ConfigMap).
        #[arg(long)]
        config: PathBuf,
        /// CA bundle (PEM) the injected sidecars check the bootstrap endpoint against,
        /// such as the ca.crt of the serving certificate's Secret.
        #[arg(long)]
        bootstrap_ca: Option<PathBuf>,
        /// PEM certificate chain for the webhook Service.
        #[arg(long)]
        tls_cert: PathBuf,
        /// PEM private key of that certificate.
        #[arg(long)]
        tls_key: PathBuf,
        /// Address of the webhook port (admission, bootstrap, health). `[::]` is every
        /// address, IPv4 and IPv6 (IPv4 only where the kernel has no IPv6).
        #[arg(long, default_value = "[::]:8443")]
        listen: std::net::SocketAddr,
        /// Address of the metrics port (plain HTTP, `GET /metrics`).
        #[arg(long, default_value = "[::]:9090")]
        metrics_listen: std::net::SocketAddr,
        /// Seconds between checks of the configuration and certificate files.
        #[arg(long, default_value_t = 1.0)]
        reload_interval: f64,
        /// Seconds after SIGTERM the server goes on serving, not ready, while the Service's
        /// endpoints drop the pod (0: stop accepting at once).
        #[arg(long, default_value_t = 5.0)]
        shutdown_delay: f64,
        /// Seconds after that for requests in flight to finish.
        #[arg(long, default_value_t = 25.0)]
        shutdown_timeout: f64,
        /// Seconds a connection may sit with no request in flight.
        #[arg(long, default_value_t = 120.0)]
        idle_timeout: f64,
        /// Seconds a client may take to send request headers, or a TLS handshake.
        #[arg(long, default_value_t = 10.0)]
        header_timeout: f64,
        /// Seconds a client may take to send a request body.
        #[arg(long, default_value_t = 30.0)]
        body_timeout: f64,
        /// Connections open at once; a new one past this closes the connection longest
        /// without a finished request.
        #[arg(long, default_value_t = 1024)]
        max_connections: usize,
        /// Admission reviews decided at once; more wait.
        #[arg(long, default_value_t = 64)]
        max_in_flight: usize,
        /// Requests open at once over all connections (waiting for their body, waiting
        /// their turn, being answered); past it a request is answered 503 with
        /// Retry-After. Health checks are not counted.
        #[arg(long, default_value_t = 4096)]
        max_requests: usize,
        /// MiB of request bodies held at once over all connections (at least 7, the
        /// largest body); a request that would go over is answered 503 with Retry-After.
        #[arg(long, default_value_t = 64)]
        max_body_memory: usize,
        /// Threads serving requests. One serves about 15,000 admissions a second, far
        /// beyond what an API server sends, and costs a quarter less CPU per admission
        /// than a work-stealing runtime on the same core (BENCHMARKS.md).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Check a configuration directory and report every problem at once.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print a placement profile as patch rules, in patches.yaml syntax.
    Profile {
        /// generic, eks, karpenter, gke or aks.
        name: String,
        /// The label prefix the rules select on (webhook.yaml labelPrefix).
        #[arg(long, default_value = "rayshape.io")]
        label_prefix: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    /// The shaped object.
    Object,
    /// The RFC 6902 patch from the input to the shaped object.
    Patch,
    /// The AdmissionReview response the webhook would send.
    Review,
    /// The plan, explained: which container is Ray's and why, which rules matched, what
    /// each container gets, what Ray sees.
    Plan,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutFormat {
    Json,
    Yaml,
}

fn main() -> ExitCode {
    // 2 MiB transparent huge pages under mimalloc's arenas kept 8–9 MiB resident for
    // nothing (BENCHMARKS.md). Its `no_thp` feature stops it asking for them (THP mode
    // `madvise`); this flag keeps a kernel in mode `always` from giving them anyway.
    // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    alloc::set_purge_delay();
    // A bug is reported in one line, not a backtrace; `mutate` then exits 2 and `serve`
    // answers the one review with 500.
    std::panic::set_hook(Box::new(|info| eprintln!("internal error: {info}")));
    let cli = Cli::parse();
    match cli.command {
        Command::Mutate {
            file,
            config,
            bootstrap_ca,
            output,
            format,
        } => mutate(
            &file,
            config.as_deref(),
            bootstrap_ca.as_deref(),
            output,
            format,
        ),
        Command::CheckConfig { config } => check_config(&config),
        Command::Serve {
            config,
            bootstrap_ca,
            tls_cert,
            tls_key,
            listen,
            metrics_listen,
            reload_interval,
            shutdown_delay,
            shutdown_timeout,
            idle_timeout,
            header_timeout,
            body_timeout,
            max_connections,
            max_in_flight,
            max_requests,
            max_body_memory,
            threads,
        } => {
            let secs = |name: &str, v: f64| {
                if v.is_finite() && v > 0.0 && v < 86400.0 {
                    Ok(std::time::Duration::from_secs_f64(v))
                } else {
                    Err(format!(
                        "--{name} must be a number of seconds above 0 and below 86400 (a day), got {v}"
                    ))
                }
            };
            let count = |name: &str, v: usize| {
                if v > 0 {
                    Ok(v)
                } else {
                    Err(format!("--{name} must be 1 or more, got 0"))
                }
            };
            let opts = (|| {
                Ok::<_, String>(serve::Options {
                    config_dir: config,
                    bootstrap_ca,
                    tls: serve::tls::Paths {
                        cert: tls_cert,
                        key: tls_key,
                    },
                    listen,
                    metrics_listen,
                    reload_interval: secs("reload-interval", reload_interval)?,
                    header_timeout: secs("header-timeout", header_timeout)?,
                    body_timeout: secs("body-timeout", body_timeout)?,
                    handshake_timeout: secs("header-timeout", header_timeout)?,
                    idle_timeout: secs("idle-timeout", idle_timeout)?,
                    shutdown_delay: if shutdown_delay == 0.0 {
                        std::time::Duration::ZERO
                    } else {
                        secs("shutdown-delay", shutdown_delay).map_err(|_| {
                            format!(
                                "--shutdown-delay must be a number of seconds from 0 to below 86400 (a day), got {shutdown_delay}"
                            )
                        })?
                    },
                    shutdown_timeout: secs("shutdown-timeout", shutdown_timeout)?,
                    max_connections: count("max-connections", max_connections)?,
                    max_in_flight: count("max-in-flight", max_in_flight)?,
                    max_requests: count("max-requests", max_requests)?,
                    max_body_memory: max_body_memory.saturating_mul(1 << 20),
                })
            })();
            if !(7..=65536).contains(&max_body_memory) {
                eprintln!(
                    "error: --max-body-memory must be between 7 and 65536 MiB (7 MiB holds the largest body), got {max_body_memory}"
                );
                return ExitCode::from(2);
            }
            if !(1..=256).contains(&threads) {
                eprintln!("error: --threads must be between 1 and 256, got {threads}");
                return ExitCode::from(2);
            }
            match opts {
                Ok(o) => serve_main(o, threads),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Profile { name, label_prefix } => match profiles::render(&name, &label_prefix) {
            Some(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            None => {
                eprintln!(
                    "error: unknown profile {name:?}; accepted: {}",
                    profiles::names_text()
                );
                ExitCode::from(2)
            }
        },
    }
}

fn serve_main(opts: serve::Options, threads: usize) -> ExitCode {
    rayshape_telemetry::init_logging("RAYSHAPE_LOG");
    // One thread by default: an admission is tens of microseconds of work, and on one
    // thread tokio's scheduler skips the cross-thread wake-ups and queues a work-stealing
    // runtime pays for on every request.
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    // Threads tokio starts (workers, blocking) empty their block cache before they end; a
    // single-threaded runtime serves on this thread, which ends with the process.
    builder
        .on_thread_start(alloc::cache_this_thread)
        .on_thread_stop(alloc::stop_caching);
    if threads == 1 {
        alloc::cache_this_thread();
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.spawn(alloc::return_freed_pages());
    match runtime.block_on(serve::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            ExitCode::from(2)
        }
    }
}

fn load_config(
    dir: Option<&std::path::Path>,
    bootstrap_ca: Option<&std::path::Path>,
) -> Result<Config, ExitCode> {
    let loaded = (|| {
        let mut sources = match dir {
            Some(d) => serve::config_dir::read(d)?,
            None => rayshape_engine::config::Sources::default(),
        };
        if let Some(ca) = bootstrap_ca {
            sources.bootstrap_ca = Some(serve::config_dir::read_ca(ca)?);
        }
        Config::from_sources(&sources)
    })();
    loaded.map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn read_input(file: &std::path::Path) -> Result<Vec<u8>, String> {
    let limit = input::MAX_INPUT as u64 + 1;
    let mut buf = Vec::new();
    if file.as_os_str() == "-" {
        if std::io::stdin().is_terminal() {
            return Err(
                "no input: pass -f FILE, or pipe a Pod or AdmissionReview into standard input"
                    .into(),
            );
        }
        std::io::stdin()
            .take(limit)
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
    } else {
        let f = std::fs::File::open(file)
            .map_err(|e| format!("cannot open {}: {e}", file.display()))?;
        f.take(limit)
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    }
    Ok(buf)
}

fn mutate(
    file: &std::path::Path,
    config: Option<&std::path::Path>,
    bootstrap_ca: Option<&std::path::Path>,
    output: Output,
    format: Option<OutFormat>,
) -> ExitCode {
    let cfg = match load_config(config, bootstrap_ca) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (docs, in_format) = match read_input(file)
        .map_err(|e| e.to_string())
        .and_then(|b| input::parse_documents(&b).map_err(|e| e.to_string()))
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut decisions = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let is_review = doc.get("kind").and_then(Value::as_str) == Some("AdmissionReview");
        let review_doc = if is_review {
            doc.clone()
        } else {
            synthetic_review(doc, i)
        };
        let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rayshape_engine::decide(&review_doc, &cfg)
        }));
        match decided {
            Ok(Ok(d)) => decisions.push((d, review_doc)),
            Ok(Err(e)) => {
                eprintln!("error: document {}: {e}", i + 1);
                return ExitCode::from(2);
            }
            Err(panic) => {
                drop(panic);
                eprintln!(
                    "error: document {}: rayshape hit an internal error (above); this is a bug, please report it with the input",
                    i + 1
                );
                return ExitCode::from(2);
            }
        }
    }
    let mut denied = false;
    let mut out_docs = Vec::new();
    for (d, review_doc) in &decisions {
        let label = describe(d);
        match &d.outcome {
            Outcome::Denied(den) => {
                denied = true;
                eprintln!("denied: {label}: {}", den.message);
            }
            Outcome::Allowed { shaped, .. } => {
                for w in &shaped.warnings {
                    eprintln!("warning: {label}: {w}");
                }
                if let Some(why) = shaped.skipped {
                    eprintln!("note: {label}: unchanged ({why})");
                }
            }
        }
        match (output, &d.outcome) {
            (Output::Review, _) => out_docs.push(d.response()),
            (Output::Plan, _) => {
                let object = review_doc
                    .pointer("/request/object")
                    .unwrap_or(&Value::Null);
                let ns = Some(d.namespace.as_str()).filter(|n| !n.is_empty());
                out_docs.push(rayshape_engine::explain::explain(object, ns, &cfg));
            }
            (Output::Patch, Outcome::Allowed { patch, .. }) => {
                out_docs.push(serde_json::from_slice(patch).expect("the engine writes valid JSON"))
            }
            (Output::Object, Outcome::Allowed { shaped, .. }) if shaped.object.is_null() => {
                // Not a CREATE review: the object goes through as it came.
                if let Some(o) = review_doc.pointer("/request/object") {
                    out_docs.push(o.clone());
                }
            }
            (Output::Object, Outcome::Allowed { shaped, .. }) => {
                out_docs.push(shaped.object.clone())
            }
            (_, Outcome::Denied(_)) => {}
        }
    }
    let fmt = match (output, format) {
        (Output::Object | Output::Plan, Some(OutFormat::Yaml)) => Format::Yaml,
        (Output::Object | Output::Plan, Some(OutFormat::Json)) => Format::Json,
        (Output::Object | Output::Plan, None) => in_format,
        _ => Format::Json,
    };
    let text = input::render(&out_docs, fmt);
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write output: {e}");
        return ExitCode::from(2);
    }
    if denied {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Wrap an object in the CREATE review the API server would send for it.
fn synthetic_review(obj: &Value, i: usize) -> Value {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let namespace = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("rayshape-preview-{}", i + 1),
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": namespace,
            "object": obj,
            "dryRun": true,
        }
    })
}

fn describe(d: &Decision) -> String {
    let name = match (d.name.as_str(), d.generate_name.as_str()) {
        ("", "") => "(unnamed)".to_string(),
        ("", g) => format!("{g}*"),
        (n, _) => n.to_string(),
    };
    format!(
        "{} {}/{}",
        d.kind,
        if d.namespace.is_empty() {
            "default"
        } else {
            &d.namespace
        },
        name
    )
}

/// Read and load a config directory, as the server does.
fn load_dir(
    dir: &std::path::Path,
) -> Result<Config, rayshape_engine::config::problems::ConfigError> {
    Config::from_sources(&serve::config_dir::read(dir)?)
}

/// Shape a plain Ray worker of every instance type, and say which would be denied: a
/// configuration can load and still deny every pod of a type (a sidecar larger than the
/// type, a rule that cannot apply). Warnings, since real pods may differ from the trial one
/// (more containers, labels rules select on).
fn trial_pods(cfg: &Config) -> Vec<String> {
    let label = cfg.settings.key(rayshape_contract::keys::INSTANCE_TYPE);
    cfg.instance_types
        .keys()
        .filter_map(|name| {
            let pod = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "trial", "namespace": "default", "labels": {(label.as_str()): name}},
                "spec": {"containers": [{"name": "ray", "image": "rayproject/ray", "command": ["ray", "start", "--block"]}]}});
            rayshape_engine::shape(&pod, Some("default"), cfg)
                .err()
                .map(|d| format!("instance_types.yaml: {name}: a plain Ray worker pod of this type would be denied: {}", d.message))
        })
        .collect()
}

fn check_config(dir: &std::path::Path) -> ExitCode {
    for w in serve::config_dir::unknown_files(dir) {
        eprintln!("warning: {w}");
    }
    match load_dir(dir) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                eprintln!("warning: {w}");
            }
            for w in trial_pods(&cfg) {
                eprintln!("warning: {w}");
            }
            println!(
                "ok: {} instance types, {} rules ({} from profile {}, {} per instance type, {} from patches.yaml), label prefix {}",
                cfg.instance_types.len(),
                cfg.rule_count(),
                cfg.profile_rules.len(),
                cfg.settings.profile,
                cfg.type_rules.len(),
                cfg.admin_rules.len(),
                cfg.settings.label_prefix
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
