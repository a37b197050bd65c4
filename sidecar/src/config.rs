//! The sidecar's configuration: a YAML file (`--config`), overridden by the environment
//! variables the webhook injects (`RAYSHAPE_*`), with defaults for everything but the sink.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// The environment variables the sidecar reads, all in one place: those the webhook injects
/// come from the contract both programs share; the rest are the sidecar's own.
pub mod env {
    pub use rayshape_contract::env::{
        BOOTSTRAP_CA, BOOTSTRAP_URL, LOG_ROOT, METRICS_LISTEN, NODE_NAME, POD_NAME, POD_NAMESPACE,
        POD_UID, RAY_CLUSTER, SINK_OPTIONS, SINK_URL, TOKEN_FILE,
    };
    /// The configuration file (`--config`).
    pub const CONFIG: &str = "RAYSHAPE_CONFIG";
    /// The log level (`info` by default).
    pub const LOG: &str = "RAYSHAPE_LOG";
    pub const CHECKPOINT: &str = "RAYSHAPE_CHECKPOINT";
    pub const FLUSH_BYTES: &str = "RAYSHAPE_FLUSH_BYTES";
    pub const FLUSH_AGE: &str = "RAYSHAPE_FLUSH_AGE";
    pub const SCAN_INTERVAL: &str = "RAYSHAPE_SCAN_INTERVAL";
    pub const SHUTDOWN_DEADLINE: &str = "RAYSHAPE_SHUTDOWN_DEADLINE";
    pub const MAX_OPEN_FILES: &str = "RAYSHAPE_MAX_OPEN_FILES";
}

/// Everything the shipper needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Ray's temp directory: sessions are `<root>/session_*/logs`.
    pub root: PathBuf,
    /// Where the checkpoint lives; on the shared volume so it survives a sidecar restart.
    pub checkpoint: PathBuf,
    /// Where segments go; `None` until one is configured (the sidecar then waits, see
    /// `shipper`).
    pub sink: Option<Sink>,
    pub pod: Pod,
    /// Flush when this many new bytes (uncompressed) are waiting...
    pub flush_bytes: u64,
    /// ...or when the oldest waiting byte is this old.
    pub flush_age: Duration,
    /// How often the log directories are scanned for new files and new bytes.
    pub scan_interval: Duration,
    /// Backoff between upload attempts: from `retry_initial`, doubling, up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// After SIGTERM, how long the final flush may take.
    pub shutdown_deadline: Duration,
    pub metrics_listen: SocketAddr,
    /// zstd level, 1 (fastest) to 19.
    pub zstd_level: i32,
    /// At most this many log files are held open at once.
    pub max_open_files: usize,
    /// Where to prove the pod's identity and get its configuration; `None`: not asked.
    pub bootstrap: Option<Bootstrap>,
    /// The key prefix the bootstrap handed out, which then replaces [`Self::pod_prefix`]'s own.
    pub key_prefix: Option<String>,
    /// Which settings were set here (file or environment), and so win over the bootstrap's.
    pub explicit: Explicit,
}

/// The identity bootstrap's endpoint, the CA its certificate must chain to, and the token.
#[derive(Clone, Debug, PartialEq)]
pub struct Bootstrap {
    pub url: String,
    /// PEM certificates.
    pub ca: String,
    pub token_file: PathBuf,
}

/// Settings given locally, which the bootstrap's answer does not override.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Explicit {
    pub sink: bool,
    pub flush_bytes: bool,
    pub flush_age: bool,
}

/// An object store location and its options.
#[derive(Clone, Debug, PartialEq)]
pub struct Sink {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`, `file:///dir`.
    pub url: String,
    /// Backend options, in `object_store`'s names (`aws_endpoint`, `aws_region`,
    /// `aws_allow_http`, `azure_storage_account_name`, ...).
    pub options: BTreeMap<String, String>,
}

/// The pod whose logs these are; it names the objects.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The Ray cluster (`ray.io/cluster`), or `none` for pods outside KubeRay.
    pub cluster: String,
    /// The node the pod runs on, for the log; empty when not known.
    pub node: String,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Yaml { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The file's syntax; every field optional.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    root: Option<PathBuf>,
    checkpoint: Option<PathBuf>,
    sink: Option<FileSink>,
    pod: Option<FilePod>,
    flush: Option<FileFlush>,
    scan_interval: Option<String>,
    retry: Option<FileRetry>,
    shutdown_deadline: Option<String>,
    metrics_listen: Option<String>,
    zstd_level: Option<i32>,
    max_open_files: Option<usize>,
    bootstrap: Option<FileBootstrap>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileBootstrap {
    url: Option<String>,
    ca_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSink {
    url: Option<String>,
    #[serde(default)]
    options: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FilePod {
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
    cluster: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileFlush {
    max_bytes: Option<String>,
    max_age: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileRetry {
    initial: Option<String>,
    max: Option<String>,
}

/// The default bound on log files held open (`maxOpenFiles`).
pub const DEFAULT_MAX_OPEN_FILES: usize = 256;
/// The smallest `maxOpenFiles` accepted.
pub const MIN_OPEN_FILES: usize = 16;
pub use rayshape_contract::{MAX_FLUSH_AGE_SECONDS, MAX_FLUSH_BYTES};

/// What [`Config::adopt`] did not take from the bootstrap's answer.
#[derive(Debug, Default, PartialEq)]
pub struct Adopted {
    /// Settings given here, which win over the bootstrap's.
    pub kept: Vec<&'static str>,
    /// The bootstrap's settings outside what the sidecar accepts: its own default stays.
    pub refused: Vec<String>,
}

/// `250ms`, `30s`, `5m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.trim().parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    if secs > 0.0 {
        Duration::try_from_secs_f64(secs).ok()
    } else {
        None
    }
}

/// `4Mi`, `512Ki`, `1G`, or plain bytes.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let i = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(i);
    let n: u64 = num.trim().parse().ok()?;
    let mult: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult).filter(|b| *b > 0)
}

impl Config {
    /// Load the file (if any), then apply `env` (name → value) on top.
    pub fn load(
        path: Option<&std::path::Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file: File = match path {
            None => File::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                serde_saphyr::from_str::<Option<File>>(&text)
                    .map_err(|e| ConfigError::Yaml {
                        path: p.display().to_string(),
                        message: e
                            .to_string()
                            .lines()
                            .next()
                            .unwrap_or("invalid YAML")
                            .to_string(),
                    })?
                    .unwrap_or_default()
            }
        };
        let mut problems = Vec::new();
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        let duration = |problems: &mut Vec<String>,
                        what: &str,
                        v: Option<String>,
                        default: Duration| match v {
            None => default,
            Some(s) => parse_duration(&s).unwrap_or_else(|| {
                problems.push(format!(
                    "{what}: {s:?} is not a duration; expected e.g. 500ms, 30s, 5m"
                ));
                default
            }),
        };
        let root = var(env::LOG_ROOT)
            .map(PathBuf::from)
            .or(file.root)
            .unwrap_or_else(|| PathBuf::from(rayshape_contract::RAY_ROOT));
        let checkpoint = var(env::CHECKPOINT)
            .map(PathBuf::from)
            .or(file.checkpoint)
            .unwrap_or_else(|| root.join("rayshape").join("checkpoint.json"));
        let fsink = file.sink.unwrap_or_default();
        let url = var(env::SINK_URL).or(fsink.url);
        let mut options = fsink.options;
        // RAYSHAPE_SINK_OPTIONS: comma-separated key=value pairs, on top of the file's.
        if let Some(extra) = var(env::SINK_OPTIONS) {
            match rayshape_contract::options::decode(&extra) {
                Ok(pairs) => options.extend(pairs),
                Err(e) => problems.push(format!("{}: {e}", env::SINK_OPTIONS)),
            }
        }
        // No sink is not an error: the sidecar waits for one without hurting Ray.
        let sink = url.map(|url| Sink { url, options });
        let fpod = file.pod.unwrap_or_default();
        let pod = Pod {
            namespace: var(env::POD_NAMESPACE)
                .or(fpod.namespace)
                .unwrap_or_else(|| "default".into()),
            name: var(env::POD_NAME).or(fpod.name).unwrap_or_default(),
            uid: var(env::POD_UID).or(fpod.uid).unwrap_or_default(),
            cluster: var(env::RAY_CLUSTER)
                .or(fpod.cluster)
                .unwrap_or_else(|| "none".into()),
            node: var(env::NODE_NAME).unwrap_or_default(),
        };
        if pod.name.is_empty() || pod.uid.is_empty() {
            problems.push("the pod's name and UID are needed to name its objects: set RAYSHAPE_POD_NAME and RAYSHAPE_POD_UID (the webhook injects them from the downward API) or pod.name and pod.uid".into());
        }
        for (what, v) in [
            ("pod.namespace", &pod.namespace),
            ("pod.name", &pod.name),
            ("pod.uid", &pod.uid),
            ("pod.cluster", &pod.cluster),
        ] {
            if v.contains('/') || v.starts_with('.') {
                problems.push(format!(
                    "{what}: {v:?} cannot be part of an object key (no `/`, no leading `.`)"
                ));
            }
        }
        let flush = file.flush.unwrap_or_default();
        let explicit = Explicit {
            sink: sink.is_some(),
            flush_bytes: var(env::FLUSH_BYTES).is_some() || flush.max_bytes.is_some(),
            flush_age: var(env::FLUSH_AGE).is_some() || flush.max_age.is_some(),
        };
        let fboot = file.bootstrap.unwrap_or_default();
        let bootstrap = match var(env::BOOTSTRAP_URL).or(fboot.url) {
            None => None,
            Some(url) => {
                let ca = match (var(env::BOOTSTRAP_CA), &fboot.ca_file) {
                    (Some(pem), _) => pem,
                    (None, Some(f)) => std::fs::read_to_string(f).unwrap_or_else(|e| {
                        problems.push(format!(
                            "bootstrap.caFile: cannot read {}: {e}",
                            f.display()
                        ));
                        String::new()
                    }),
                    (None, None) => String::new(),
                };
                let token_file = var(env::TOKEN_FILE)
                    .map(PathBuf::from)
                    .or(fboot.token_file)
                    .unwrap_or_else(|| {
                        PathBuf::from(rayshape_contract::TOKEN_DIR)
                            .join(rayshape_contract::TOKEN_FILE_NAME)
                    });
                Some(Bootstrap {
                    url,
                    ca,
                    token_file,
                })
            }
        };
        let flush_bytes = match var(env::FLUSH_BYTES).or(flush.max_bytes) {
            None => 4 << 20,
            Some(s) => parse_bytes(&s).unwrap_or_else(|| {
                problems.push(format!(
                    "flush.maxBytes: {s:?} is not a size; expected e.g. 4Mi, 512Ki"
                ));
                4 << 20
            }),
        };
        let flush_age = duration(
            &mut problems,
            "flush.maxAge",
            var(env::FLUSH_AGE).or(flush.max_age),
            Duration::from_secs(30),
        );
        let scan_interval = duration(
            &mut problems,
            "scanInterval",
            var(env::SCAN_INTERVAL).or(file.scan_interval),
            Duration::from_secs(1),
        );
        let retry = file.retry.unwrap_or_default();
        let retry_initial = duration(
            &mut problems,
            "retry.initial",
            retry.initial,
            Duration::from_millis(200),
        );
        let retry_max = duration(
            &mut problems,
            "retry.max",
            retry.max,
            Duration::from_secs(30),
        );
        let shutdown_deadline = duration(
            &mut problems,
            "shutdownDeadline",
            var(env::SHUTDOWN_DEADLINE).or(file.shutdown_deadline),
            Duration::from_secs(20),
        );
        // Every address, IPv4 and IPv6 (rayshape_telemetry::bind).
        let default_listen = SocketAddr::from((
            std::net::Ipv6Addr::UNSPECIFIED,
            rayshape_contract::SIDECAR_METRICS_PORT,
        ));
        let listen = var(env::METRICS_LISTEN)
            .or(file.metrics_listen)
            .unwrap_or_else(|| default_listen.to_string());
        let metrics_listen = listen.parse().unwrap_or_else(|_| {
            problems.push(format!(
                "metricsListen: {listen:?} is not an address like {default_listen}"
            ));
            default_listen
        });
        let zstd_level = file.zstd_level.unwrap_or(3);
        if !(1..=19).contains(&zstd_level) {
            problems.push(format!("zstdLevel: {zstd_level} is outside 1..=19"));
        }
        let max_open_files = match var(env::MAX_OPEN_FILES) {
            Some(s) => s.trim().parse::<usize>().unwrap_or_else(|_| {
                problems.push(format!(
                    "maxOpenFiles: {s:?} is not a whole number; expected e.g. 256"
                ));
                DEFAULT_MAX_OPEN_FILES
            }),
            None => file.max_open_files.unwrap_or(DEFAULT_MAX_OPEN_FILES),
        };
        if max_open_files < MIN_OPEN_FILES {
            problems.push(format!(
                "maxOpenFiles: {max_open_files} is below {MIN_OPEN_FILES}; the sidecar needs a few descriptors to make progress"
            ));
        }
        if flush_age > Duration::from_secs(MAX_FLUSH_AGE_SECONDS) {
            problems.push(format!(
                "flush.maxAge: {flush_age:?} is over a day ({MAX_FLUSH_AGE_SECONDS}s); logs would wait that long on the pod's disk"
            ));
        }
        if flush_bytes > MAX_FLUSH_BYTES {
            problems.push(format!("flush.maxBytes: {flush_bytes} is over 64Mi; a segment is held in memory while it uploads"));
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems.join("\n")));
        }
        Ok(Config {
            root,
            checkpoint,
            sink,
            pod,
            flush_bytes,
            flush_age,
            scan_interval,
            retry_initial,
            retry_max,
            shutdown_deadline,
            metrics_listen,
            zstd_level,
            max_open_files,
            bootstrap,
            key_prefix: None,
            explicit,
        })
    }

    /// The key prefix of this pod's objects, below the sink's own prefix: the one the
    /// bootstrap handed out, else `namespace/cluster/pod-uid`.
    pub fn pod_prefix(&self) -> String {
        match &self.key_prefix {
            Some(p) => p.clone(),
            None => format!(
                "{}/{}/{}-{}",
                self.pod.namespace, self.pod.cluster, self.pod.name, self.pod.uid
            ),
        }
    }

    /// Fill in what this configuration leaves open from the bootstrap's answer: the sink
    /// and the batching, unless set here (an explicit local setting wins); the key prefix
    /// and the pod's identity are the verified ones. Says what was kept and what was
    /// refused, for the log.
    pub fn adopt(&mut self, node: &rayshape_contract::bootstrap::NodeConfig) -> Adopted {
        let mut kept = Vec::new();
        let mut refused = Vec::new();
        if self.explicit.sink {
            kept.push("sink");
        } else if !node.sink.url.is_empty() {
            self.sink = Some(Sink {
                url: node.sink.url.clone(),
                options: node.sink.options.clone(),
            });
        }
        match node.flush.max_bytes {
            Some(_) if self.explicit.flush_bytes => kept.push("flush.maxBytes"),
            Some(b) if b > 0 && b <= MAX_FLUSH_BYTES => self.flush_bytes = b,
            Some(b) => refused.push(format!(
                "flush.maxBytes: {b} is not between 1 and {MAX_FLUSH_BYTES} (64Mi)"
            )),
            None => {}
        }
        match node.flush.max_age_seconds {
            Some(_) if self.explicit.flush_age => kept.push("flush.maxAge"),
            Some(a) if a > 0.0 && a <= MAX_FLUSH_AGE_SECONDS as f64 => {
                self.flush_age = Duration::from_secs_f64(a);
            }
            Some(a) => refused.push(format!(
                "flush.maxAgeSeconds: {a} is not a number of seconds above 0 and at most {MAX_FLUSH_AGE_SECONDS} (a day)"
            )),
            None => {}
        }
        if !node.key_prefix.is_empty() {
            self.key_prefix = Some(node.key_prefix.clone());
        }
        let id = &node.identity;
        if !id.pod.is_empty() {
            self.pod.namespace = id.namespace.clone();
            self.pod.name = id.pod.clone();
            self.pod.uid = id.pod_uid.clone();
            if !id.ray_cluster.is_empty() {
                self.pod.cluster = id.ray_cluster.clone();
            }
            if !id.node.is_empty() {
                self.pod.node = id.node.clone();
            }
        }
        Adopted { kept, refused }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn durations_too_long_are_refused_not_a_panic() {
        assert_eq!(parse_duration("99999999999999999999999"), None);
        assert_eq!(parse_duration("1e300h"), None);
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        let e = Config::load(
            None,
            &env(&[
                ("RAYSHAPE_FLUSH_AGE", "25h"),
                ("RAYSHAPE_POD_NAME", "w"),
                ("RAYSHAPE_POD_UID", "u"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("flush.maxAge") && e.contains("over a day"),
            "{e}"
        );
    }

    #[test]
    fn the_bootstraps_batching_outside_the_bounds_is_said_and_not_taken() {
        let mut c = Config::load(
            None,
            &env(&[("RAYSHAPE_POD_NAME", "w"), ("RAYSHAPE_POD_UID", "u")]),
        )
        .unwrap();
        let before = (c.flush_bytes, c.flush_age);
        let mut node = rayshape_contract::bootstrap::NodeConfig::default();
        node.flush.max_bytes = Some(MAX_FLUSH_BYTES + 1);
        node.flush.max_age_seconds = Some(1e20);
        let a = c.adopt(&node);
        assert_eq!((c.flush_bytes, c.flush_age), before);
        assert_eq!(a.refused.len(), 2, "{a:?}");
        assert!(a.refused[1].contains("at most 86400"), "{a:?}");
        node.flush.max_bytes = Some(1 << 20);
        node.flush.max_age_seconds = Some(86_400.0);
        assert_eq!(c.adopt(&node), Adopted::default());
        assert_eq!(
            (c.flush_bytes, c.flush_age),
            (1 << 20, Duration::from_secs(86_400))
        );
    }

    #[test]
    fn env_over_file_and_defaults() {
        let dir = std::env::temp_dir().join(format!("rs-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.yaml");
        std::fs::write(&f, "sink:\n  url: s3://b/p\n  options: {aws_region: eu-west-1}\nflush: {maxBytes: 1Mi, maxAge: 5s}\npod: {name: from-file, uid: u1}\n").unwrap();
        let c = Config::load(
            Some(&f),
            &env(&[
                ("RAYSHAPE_POD_NAME", "w-1"),
                (
                    "RAYSHAPE_SINK_OPTIONS",
                    "aws_endpoint=http://127.0.0.1:9000, aws_allow_http=true",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(c.pod.name, "w-1");
        assert_eq!(c.pod.cluster, "none");
        assert_eq!(c.flush_bytes, 1 << 20);
        assert_eq!(c.flush_age, Duration::from_secs(5));
        assert_eq!(c.sink.as_ref().map(|s| s.options.len()), Some(3));
        assert_eq!(
            c.checkpoint,
            PathBuf::from("/tmp/ray/rayshape/checkpoint.json")
        );
        assert_eq!(c.pod_prefix(), "default/none/w-1-u1");
        assert_eq!(c.max_open_files, DEFAULT_MAX_OPEN_FILES);
    }

    #[test]
    fn every_problem_at_once() {
        let e = Config::load(
            None,
            &env(&[("RAYSHAPE_FLUSH_AGE", "soon"), ("RAYSHAPE_POD_NAME", "a/b")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("RAYSHAPE_POD_UID"), "{e}");
        assert!(e.contains("flush.maxAge: \"soon\""), "{e}");
        assert!(e.contains("pod.name: \"a/b\""), "{e}");
    }

    #[test]
    fn no_sink_is_not_an_error() {
        let c = Config::load(
            None,
            &env(&[
                ("RAYSHAPE_POD_NAME", "w"),
                ("RAYSHAPE_POD_UID", "u"),
                ("RAYSHAPE_SINK_URL", ""),
                ("RAYSHAPE_MAX_OPEN_FILES", "1000"),
            ]),
        )
        .unwrap();
        assert_eq!(c.sink, None);
        assert_eq!(c.max_open_files, 1000);
        let e = Config::load(
            None,
            &env(&[
                ("RAYSHAPE_POD_NAME", "w"),
                ("RAYSHAPE_POD_UID", "u"),
                ("RAYSHAPE_MAX_OPEN_FILES", "3"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("maxOpenFiles: 3"), "{e}");
    }

    #[test]
    fn units() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_bytes("512Ki"), Some(512 * 1024));
        assert_eq!(parse_bytes("x"), None);
    }
}
