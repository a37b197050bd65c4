//! The object store segments go to: S3 and S3-compatible stores, GCS, Azure Blob, or a local
//! directory, chosen by URL, with credentials from each cloud's standard chain (environment,
//! web identity / IRSA, workload identity) and options in `object_store`'s names.

use crate::config::Sink as SinkConfig;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use rayshape_contract::sink_url::{self, Kind};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("sink URL {0:?} is not one of {forms}", forms = sink_url::FORMS)]
    Url(String),
    #[error("sink option {key:?} is not an option of the {scheme} backend ({reason})")]
    Option {
        scheme: String,
        key: String,
        reason: String,
    },
    #[error("cannot set up the {scheme} sink: {source}")]
    Build {
        scheme: String,
        source: object_store::Error,
    },
    #[error("cannot create the local sink directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
}

/// A store and the key prefix inside it.
#[derive(Clone)]
pub struct Sink {
    pub store: Arc<dyn ObjectStore>,
    prefix: String,
    pub url: String,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("url", &self.url).finish()
    }
}

impl Sink {
    pub fn open(cfg: &SinkConfig) -> Result<Sink, SinkError> {
        let url = sink_url::parse(&cfg.url).ok_or_else(|| SinkError::Url(cfg.url.clone()))?;
        let (scheme, bucket) = (url.scheme, url.bucket);
        let prefix = url.prefix.to_string();
        // Our own retries (with backoff for as long as data remains) are around every upload;
        // the client's are kept short so an outage shows in our metrics quickly.
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(20),
            ..Default::default()
        };
        let client = ClientOptions::new()
            .with_timeout(Duration::from_secs(60))
            .with_connect_timeout(Duration::from_secs(10));
        let opt_err = |key: &str, e: object_store::Error| SinkError::Option {
            scheme: scheme.to_string(),
            key: key.to_string(),
            reason: e.to_string(),
        };
        let build_err = |source| SinkError::Build {
            scheme: scheme.to_string(),
            source,
        };
        let store: Arc<dyn ObjectStore> = match url.kind {
            Kind::S3 => {
                // Defaults first: options the user gives (such as allow_http) must win.
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry.clone())
                    .with_client_options(client.clone());
                for (k, v) in &cfg.options {
                    b = b.with_config(
                        object_store::aws::AmazonS3ConfigKey::from_str(k)
                            .map_err(|e| opt_err(k, e))?,
                        v,
                    );
                }
                Arc::new(b.build().map_err(build_err)?)
            }
            Kind::Gcs => {
                // Defaults first: options the user gives (such as allow_http) must win.
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry.clone())
                    .with_client_options(client.clone());
                for (k, v) in &cfg.options {
                    b = b.with_config(
                        object_store::gcp::GoogleConfigKey::from_str(k)
                            .map_err(|e| opt_err(k, e))?,
                        v,
                    );
                }
                Arc::new(b.build().map_err(build_err)?)
            }
            Kind::Azure => {
                // Defaults first: options the user gives (such as allow_http) must win.
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(bucket)
                    .with_retry(retry.clone())
                    .with_client_options(client.clone());
                for (k, v) in &cfg.options {
                    b = b.with_config(
                        object_store::azure::AzureConfigKey::from_str(k)
                            .map_err(|e| opt_err(k, e))?,
                        v,
                    );
                }
                Arc::new(b.build().map_err(build_err)?)
            }
            Kind::File => {
                let dir = format!("/{prefix}");
                std::fs::create_dir_all(&dir).map_err(|source| SinkError::Dir {
                    path: dir.clone(),
                    source,
                })?;
                // A segment and its directory reach the disk before the checkpoint that
                // marks them shipped does: a node's power cut must not lose them.
                let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(build_err)?
                    .with_fsync(true);
                return Ok(Sink {
                    store: Arc::new(store),
                    prefix: String::new(),
                    url: cfg.url.clone(),
                });
            }
        };
        Ok(Sink {
            store,
            prefix,
            url: cfg.url.clone(),
        })
    }

    /// The store path of a key relative to the sink's prefix.
    pub fn path(&self, rel: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// The key relative to the sink's prefix, for a store path.
    pub fn relative<'a>(&self, p: &'a str) -> &'a str {
        if self.prefix.is_empty() {
            p
        } else {
            p.strip_prefix(&self.prefix)
                .map_or(p, |r| r.trim_start_matches('/'))
        }
    }
}

/// `<pod prefix>/<session>/<epoch>-<sequence>.tar.zst`. The epoch is the checkpoint's
/// (random, 16 hex digits) and a sequence number is used by one plan only, so a key never
/// names two different byte strings: a retried upload writes the same bytes to it, and a
/// lost or replaced checkpoint writes under another epoch.
pub fn segment_key(pod_prefix: &str, session: &str, epoch: &str, sequence: u64) -> String {
    format!("{pod_prefix}/{session}/{epoch}-{sequence:012}.tar.zst")
}

/// What a checkpoint records of its sink: the URL and the options that say where it is
/// (endpoints, account names), never credentials. Another sink's checkpoint is not adopted.
pub fn identity(cfg: &SinkConfig) -> String {
    let mut id = cfg.url.trim_end_matches('/').to_string();
    for (k, v) in &cfg.options {
        let k = k.to_ascii_lowercase();
        if k.contains("endpoint") || k.ends_with("account_name") || k.ends_with("_url") {
            id.push_str(&format!(" {k}={v}"));
        }
    }
    id
}

/// Why the store did not take a request, as the sidecar's state says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 401/403: credentials or permissions. Retried: they may be fixed (or rotated) later.
    Unauthorized,
    /// The bucket or container does not exist.
    NotFound,
    /// Anything else: network, timeouts, 5xx, ...
    Unreachable,
}

/// Sort a store error by what would fix it.
pub fn classify(e: &object_store::Error) -> Refusal {
    match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => Refusal::Unauthorized,
        object_store::Error::NotFound { .. } => Refusal::NotFound,
        // A local directory's refusals come as generic errors around the system's: a
        // directory the sidecar's user may not write, or a volume mounted read-only, is
        // fixed by permissions, as a cloud store's 403 is; neither is an outage. (Only
        // there: a cloud store's connection refused by a local policy is not a 403.)
        object_store::Error::Generic {
            store: "LocalFileSystem",
            ..
        } if refused_locally(e) => Refusal::Unauthorized,
        _ => Refusal::Unreachable,
    }
}

/// Whether a system error in `e`'s chain of sources says the write was not permitted.
fn refused_locally(e: &object_store::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            )
        {
            return true;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cfg(url: &str, opts: &[(&str, &str)]) -> SinkConfig {
        SinkConfig {
            url: url.into(),
            options: opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    /// The webhook checks option names against the contract's lists, without linking
    /// `object_store`: every name there must be one `object_store` reads for that kind, and
    /// names it reads for no kind must be unknown there too.
    #[test]
    fn the_contracts_option_names_are_object_stores() {
        use object_store::{aws::AmazonS3ConfigKey, azure::AzureConfigKey, gcp::GoogleConfigKey};
        use rayshape_contract::sink_options::{self as so, Name};
        use rayshape_contract::sink_url::Kind;
        let reads = |kind: Kind, key: &str| match kind {
            Kind::S3 => AmazonS3ConfigKey::from_str(key).is_ok(),
            Kind::Gcs => GoogleConfigKey::from_str(key).is_ok(),
            Kind::Azure => AzureConfigKey::from_str(key).is_ok(),
            Kind::File => false,
        };
        for kind in [Kind::S3, Kind::Gcs, Kind::Azure] {
            let names = so::of(kind).expect("a cloud sink has option names");
            let prefix = names.prefix;
            for key in [names.settings, names.credentials].concat() {
                assert!(reads(kind, key), "{kind:?} {key}");
                assert_ne!(so::name(kind, key), Name::Unknown, "{kind:?} {key}");
            }
            for key in so::CLIENT {
                assert!(reads(kind, key) && reads(kind, &format!("{prefix}{key}")));
            }
            for typo in [
                "aws_regon",
                "endpiont",
                "google_service_acount",
                "azure_acount_name",
                "",
            ] {
                assert!(!reads(kind, typo), "{kind:?} {typo}");
                assert_eq!(so::name(kind, typo), Name::Unknown, "{kind:?} {typo}");
            }
        }
    }

    #[test]
    fn urls_and_options() {
        let s = Sink::open(&cfg(
            "s3://logs/ray/prod/",
            &[
                ("aws_endpoint", "http://127.0.0.1:9"),
                ("aws_allow_http", "true"),
                ("aws_region", "us-east-1"),
            ],
        ))
        .unwrap();
        assert_eq!(s.path("a/b").as_ref(), "ray/prod/a/b");
        assert_eq!(s.relative("ray/prod/a/b"), "a/b");
        let e = Sink::open(&cfg("s3://logs", &[("aws_endpiont", "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("aws_endpiont") && e.contains("s3"), "{e}");
        assert!(matches!(
            Sink::open(&cfg("ftp://x/y", &[])),
            Err(SinkError::Url(_))
        ));
        assert!(matches!(
            Sink::open(&cfg("s3://", &[])),
            Err(SinkError::Url(_))
        ));
        assert_eq!(
            segment_key("ns/c/p-u", "session_1", "00000000000000ff", 7),
            "ns/c/p-u/session_1/00000000000000ff-000000000007.tar.zst"
        );
        let with_secret = cfg(
            "s3://logs/ray/",
            &[
                ("aws_endpoint", "http://127.0.0.1:9"),
                ("aws_secret_access_key", "hunter2"),
            ],
        );
        let id = identity(&with_secret);
        assert_eq!(id, "s3://logs/ray aws_endpoint=http://127.0.0.1:9");
        assert_ne!(id, identity(&cfg("s3://logs/other", &[])));
    }
}
