//! What the rayshape webhook and the rayshape sidecar agree on, and nothing else.
//!
//! The webhook injects the sidecar into Ray pods with an environment, volumes and a port;
//! the sidecar reads them. Both sides take every name from here, so a rename is one edit
//! that both programs see. The sidecar depends on this crate and never on the engine.

use std::collections::BTreeMap;

/// Environment variables the webhook sets on the sidecar container.
pub mod env {
    /// The pod's name (downward API `metadata.name`).
    pub const POD_NAME: &str = "RAYSHAPE_POD_NAME";
    /// The pod's namespace (downward API `metadata.namespace`).
    pub const POD_NAMESPACE: &str = "RAYSHAPE_POD_NAMESPACE";
    /// The pod's UID (downward API `metadata.uid`).
    pub const POD_UID: &str = "RAYSHAPE_POD_UID";
    /// The node the pod runs on (downward API `spec.nodeName`).
    pub const NODE_NAME: &str = "RAYSHAPE_NODE_NAME";
    /// The Ray cluster (downward API `metadata.labels['ray.io/cluster']`).
    pub const RAY_CLUSTER: &str = "RAYSHAPE_RAY_CLUSTER";
    /// Where the sidecar asks for its configuration (`https://…/v1/bootstrap`).
    pub const BOOTSTRAP_URL: &str = "RAYSHAPE_BOOTSTRAP_URL";
    /// The projected service-account token the sidecar proves itself with.
    pub const TOKEN_FILE: &str = "RAYSHAPE_TOKEN_FILE";
    /// The CA certificates (PEM) the bootstrap endpoint's certificate must chain to.
    pub const BOOTSTRAP_CA: &str = "RAYSHAPE_BOOTSTRAP_CA";
    /// Ray's temp directory, shared with the Ray container.
    pub const LOG_ROOT: &str = "RAYSHAPE_LOG_ROOT";
    /// `ADDRESS:PORT` of the sidecar's metrics endpoint.
    pub const METRICS_LISTEN: &str = "RAYSHAPE_METRICS_LISTEN";
    /// The log sink's URL, when the webhook hands it over directly.
    pub const SINK_URL: &str = "RAYSHAPE_SINK_URL";
    /// The log sink's options, in the [`options`](crate::options) format.
    pub const SINK_OPTIONS: &str = "RAYSHAPE_SINK_OPTIONS";
}

/// Ray's temp directory (`/tmp/ray`): where Ray writes `session_*/logs`, and where the
/// sidecar mounts the same volume as the Ray container.
pub const RAY_ROOT: &str = "/tmp/ray";

/// Where the projected service-account token is mounted in the sidecar.
pub const TOKEN_DIR: &str = "/var/run/secrets/rayshape.io/serviceaccount";

/// The token's file name inside [`TOKEN_DIR`].
pub const TOKEN_FILE_NAME: &str = "token";

/// The port the sidecar serves `/metrics` on, unless the webhook settings say otherwise.
pub const SIDECAR_METRICS_PORT: u16 = 9108;

/// The audience of the sidecar's projected token, unless the settings say otherwise.
pub const TOKEN_AUDIENCE: &str = "rayshape.io";

/// The path of the bootstrap endpoint on the webhook's TLS listener.
pub const BOOTSTRAP_PATH: &str = "/v1/bootstrap";

/// Label and annotation keys, as suffixes of the configured prefix (`rayshape.io/…` by
/// default; `anyscale.com` makes Anyscale rules work unchanged).
pub mod keys {
    /// The user's choice of instance type (label or annotation).
    pub const INSTANCE_TYPE: &str = "instance-type";
    /// `ON_DEMAND`, `SPOT` or `PREFER_SPOT`.
    pub const MARKET_TYPE: &str = "market-type";
    /// The zone to pin the pod to.
    pub const ZONE: &str = "zone";
    /// The Ray accelerator of the instance type, written by the webhook.
    pub const ACCELERATOR_TYPE: &str = "accelerator-type";
    /// `disabled` opts a pod out of the sidecar.
    pub const SIDECAR: &str = "sidecar";
    /// The value of [`SIDECAR`] that opts out.
    pub const SIDECAR_DISABLED: &str = "disabled";
    /// Annotation naming the Ray container of a pod not made by KubeRay.
    pub const RAY_CONTAINER: &str = "ray-container";
    /// Annotation the webhook writes on every pod it shaped: the proof the bootstrap checks.
    pub const SHAPED: &str = "shaped";
    /// Annotation on a KubeRay group's template, and so on its pods: `<type>@<definition>`,
    /// the instance type and the hash of its definition the template was sized for.
    pub const SIZED_FOR: &str = "sized-for";
    /// KubeRay's label naming the Ray cluster of a pod.
    pub const KUBERAY_CLUSTER: &str = "ray.io/cluster";
}

/// The `key=value,key=value` format of [`env::SINK_OPTIONS`].
///
/// Keys and values may not contain `,`; keys may not contain `=` (values may: the first `=`
/// splits). Object-store option names and values (regions, endpoints, booleans) fit.
pub mod options {
    use std::collections::BTreeMap;

    /// Why an options string does not parse.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct OptionsError {
        /// The offending `key=value` pair, as written.
        pub pair: String,
    }

    impl std::fmt::Display for OptionsError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "{:?} is not key=value (expected comma-separated pairs such as aws_region=eu-west-1,aws_allow_http=true)",
                self.pair
            )
        }
    }

    impl std::error::Error for OptionsError {}

    /// Render options; `None` when a key or value cannot be represented.
    pub fn encode(options: &BTreeMap<String, String>) -> Option<String> {
        let mut out = String::new();
        for (k, v) in options {
            if k.is_empty() || k.contains([',', '=']) || v.contains(',') {
                return None;
            }
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(k);
            out.push('=');
            out.push_str(v);
        }
        Some(out)
    }

    /// Parse options; empty pairs (`a=1,,b=2`, a trailing comma) are ignored.
    pub fn decode(text: &str) -> Result<Vec<(String, String)>, OptionsError> {
        text.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    Ok((k.trim().to_string(), v.trim().to_string()))
                }
                _ => Err(OptionsError {
                    pair: pair.to_string(),
                }),
            })
            .collect()
    }
}

/// Where a sidecar ships logs: an `object_store` URL and its options (never secrets:
/// credentials come from the pod's identity, such as IRSA or workload identity).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Sink {
    /// `s3://bucket/prefix`, `gs://…`, `az://…` or `file:///dir`; empty when not set.
    pub url: String,
    pub options: BTreeMap<String, String>,
}

/// Sink URLs, read alike by the webhook (to refuse a bad one in its configuration) and the
/// sidecar (to open it).
pub mod sink_url {
    /// The kind of store a sink URL names.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Kind {
        /// `s3://` or `s3a://`: S3 and S3-compatible stores.
        S3,
        /// `gs://`: Google Cloud Storage.
        Gcs,
        /// `az://` or `azure://`: Azure Blob Storage.
        Azure,
        /// `file:///dir`: a local directory.
        File,
    }

    /// A sink URL taken apart.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct SinkUrl<'a> {
        pub kind: Kind,
        /// The URL's scheme as written (`s3a`, `azure`, ...).
        pub scheme: &'a str,
        /// Bucket or container; empty for `file`.
        pub bucket: &'a str,
        /// The key prefix inside it (for `file`, the directory without its leading `/`),
        /// without leading or trailing `/`.
        pub prefix: &'a str,
    }

    /// What a sink URL may look like, for error messages.
    pub const FORMS: &str = "s3://bucket[/prefix] (or s3a://), gs://bucket[/prefix], az://container[/prefix] (or azure://), file:///dir";

    /// Take a sink URL apart; `None` when it is none of [`FORMS`].
    pub fn parse(url: &str) -> Option<SinkUrl<'_>> {
        let (scheme, rest) = url.split_once("://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        let kind = match scheme {
            "s3" | "s3a" => Kind::S3,
            "gs" => Kind::Gcs,
            "az" | "azure" => Kind::Azure,
            "file" => Kind::File,
            _ => return None,
        };
        let fits = if kind == Kind::File {
            bucket.is_empty() && !prefix.is_empty()
        } else {
            !bucket.is_empty()
        };
        fits.then_some(SinkUrl {
            kind,
            scheme,
            bucket,
            prefix,
        })
    }
}

/// The option names each kind of sink reads: `object_store` 0.14's configuration keys, their
/// aliases included (the sidecar's tests check every one against `object_store`), so the
/// webhook can refuse a misspelt option before every sidecar does, and refuse credentials,
/// which the bootstrap would hand to every Ray pod.
pub mod sink_options {
    use super::sink_url::Kind;

    /// What an option name is to a kind of sink.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Name {
        /// An option that says where or how to reach the store.
        Setting,
        /// An option that holds a secret (a key, a token, a password).
        Credential,
        /// Not an option of this kind of sink.
        Unknown,
    }

    /// HTTP client options every cloud backend reads, also with its prefix (`aws_timeout`).
    pub const CLIENT: &[&str] = &[
        "allow_http",
        "allow_invalid_certificates",
        "disable_system_certificates",
        "connect_timeout",
        "default_content_type",
        "http1_only",
        "http2_only",
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
        "http2_keep_alive_while_idle",
        "http2_max_frame_size",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_url",
        "proxy_ca_certificate",
        "proxy_excludes",
        "randomize_addresses",
        "read_timeout",
        "timeout",
        "user_agent",
    ];

    /// S3 settings.
    pub const S3: &[&str] = &[
        "aws_access_key_id",
        "access_key_id",
        "aws_default_region",
        "default_region",
        "aws_region",
        "region",
        "aws_bucket",
        "aws_bucket_name",
        "bucket_name",
        "bucket",
        "aws_endpoint_url",
        "aws_endpoint",
        "endpoint_url",
        "endpoint",
        "aws_endpoint_url_s3",
        "aws_virtual_hosted_style_request",
        "virtual_hosted_style_request",
        "aws_s3_express",
        "s3_express",
        "aws_imdsv1_fallback",
        "imdsv1_fallback",
        "aws_metadata_endpoint",
        "metadata_endpoint",
        "aws_unsigned_payload",
        "unsigned_payload",
        "aws_checksum_algorithm",
        "checksum_algorithm",
        "aws_container_credentials_relative_uri",
        "container_credentials_relative_uri",
        "aws_container_credentials_full_uri",
        "container_credentials_full_uri",
        "aws_container_authorization_token_file",
        "container_authorization_token_file",
        "aws_web_identity_token_file",
        "web_identity_token_file",
        "aws_role_arn",
        "role_arn",
        "aws_role_session_name",
        "role_session_name",
        "aws_endpoint_url_sts",
        "endpoint_url_sts",
        "aws_skip_signature",
        "skip_signature",
        "aws_copy_if_not_exists",
        "copy_if_not_exists",
        "aws_conditional_put",
        "conditional_put",
        "aws_disable_tagging",
        "disable_tagging",
        "aws_disable_bulk_delete",
        "disable_bulk_delete",
        "aws_request_payer",
        "request_payer",
        "aws_allow_http",
        "aws_server_side_encryption",
        "server_side_encryption",
        "aws_sse_kms_key_id",
        "sse_kms_key_id",
        "aws_sse_bucket_key_enabled",
        "sse_bucket_key_enabled",
    ];

    /// S3 secrets.
    pub const S3_CREDENTIALS: &[&str] = &[
        "aws_secret_access_key",
        "secret_access_key",
        "aws_session_token",
        "aws_token",
        "session_token",
        "token",
        "aws_sse_customer_key_base64",
        "sse_customer_key_base64",
    ];

    /// Google Cloud Storage settings.
    pub const GCS: &[&str] = &[
        "google_service_account",
        "service_account",
        "google_service_account_path",
        "service_account_path",
        "google_bucket",
        "google_bucket_name",
        "bucket",
        "bucket_name",
        "google_base_url",
        "base_url",
        "google_application_credentials",
        "application_credentials",
        "google_skip_signature",
        "skip_signature",
    ];

    /// Google Cloud Storage secrets.
    pub const GCS_CREDENTIALS: &[&str] = &[
        "google_service_account_key",
        "service_account_key",
        "google_bearer_token",
        "bearer_token",
    ];

    /// Azure Blob Storage settings.
    pub const AZURE: &[&str] = &[
        "azure_storage_account_name",
        "account_name",
        "azure_storage_client_id",
        "azure_client_id",
        "client_id",
        "azure_storage_tenant_id",
        "azure_storage_authority_id",
        "azure_tenant_id",
        "azure_authority_id",
        "tenant_id",
        "authority_id",
        "azure_storage_authority_host",
        "azure_authority_host",
        "authority_host",
        "azure_storage_use_emulator",
        "use_emulator",
        "azure_storage_endpoint",
        "azure_endpoint",
        "endpoint",
        "azure_msi_endpoint",
        "azure_identity_endpoint",
        "identity_endpoint",
        "msi_endpoint",
        "azure_object_id",
        "object_id",
        "azure_msi_resource_id",
        "msi_resource_id",
        "azure_federated_token_file",
        "federated_token_file",
        "azure_use_fabric_endpoint",
        "use_fabric_endpoint",
        "azure_use_azure_cli",
        "use_azure_cli",
        "azure_skip_signature",
        "skip_signature",
        "azure_container_name",
        "container_name",
        "azure_disable_tagging",
        "disable_tagging",
        "azure_fabric_token_service_url",
        "fabric_token_service_url",
        "azure_fabric_workload_host",
        "fabric_workload_host",
        "azure_fabric_cluster_identifier",
        "fabric_cluster_identifier",
        "azure_credential_type",
        "credential_type",
        "azure_allow_http",
    ];

    /// Azure Blob Storage secrets.
    pub const AZURE_CREDENTIALS: &[&str] = &[
        "azure_storage_account_key",
        "azure_storage_access_key",
        "azure_storage_master_key",
        "master_key",
        "account_key",
        "access_key",
        "azure_storage_client_secret",
        "azure_client_secret",
        "client_secret",
        "azure_storage_sas_key",
        "azure_storage_sas_token",
        "sas_key",
        "sas_token",
        "azure_storage_token",
        "bearer_token",
        "token",
        "azure_fabric_session_token",
        "fabric_session_token",
        "azure_storage_encryption_key",
        "encryption_key",
    ];

    /// The option names of a kind of sink.
    pub struct Names {
        pub settings: &'static [&'static str],
        pub credentials: &'static [&'static str],
        /// The prefix of its canonical names (`aws_`), which [`CLIENT`]'s names may take.
        pub prefix: &'static str,
    }

    /// The option names of `kind`; `None` for `file://`, which reads no options.
    pub fn of(kind: Kind) -> Option<Names> {
        let (settings, credentials, prefix) = match kind {
            Kind::S3 => (S3, S3_CREDENTIALS, "aws_"),
            Kind::Gcs => (GCS, GCS_CREDENTIALS, "google_"),
            Kind::Azure => (AZURE, AZURE_CREDENTIALS, "azure_"),
            Kind::File => return None,
        };
        Some(Names {
            settings,
            credentials,
            prefix,
        })
    }

    /// What `key` is to a sink of `kind`. A `file://` sink reads no options.
    pub fn name(kind: Kind, key: &str) -> Name {
        let Some(Names {
            settings,
            credentials,
            prefix,
        }) = of(kind)
        else {
            return Name::Unknown;
        };
        if credentials.contains(&key) {
            Name::Credential
        } else if settings.contains(&key)
            || CLIENT.contains(&key.strip_prefix(prefix).unwrap_or(key))
        {
            Name::Setting
        } else {
            Name::Unknown
        }
    }
}

/// The largest segment the sidecar builds, uncompressed: it is held in memory while it
/// uploads, so `flush.maxBytes` may not be larger.
pub const MAX_FLUSH_BYTES: u64 = 64 << 20;

/// The longest `flush.maxAge`, in seconds (a day): how long a byte may wait on the pod's
/// disk before it is shipped.
pub const MAX_FLUSH_AGE_SECONDS: u64 = 86_400;

/// The `POST /v1/bootstrap` exchange: the sidecar sends its projected token as
/// `Authorization: Bearer`, and nothing in the body is trusted.
pub mod bootstrap {
    use super::Sink;

    /// What the webhook answers a verified sidecar: its node's configuration.
    #[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "camelCase", default)]
    pub struct NodeConfig {
        /// Where to ship logs; an empty URL means the cluster has no sink configured.
        pub sink: Sink,
        /// The key prefix under the sink that belongs to this pod alone.
        pub key_prefix: String,
        pub flush: Flush,
        pub identity: Identity,
    }

    /// Batching settings; `None` leaves the sidecar's own default.
    #[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "camelCase", default)]
    pub struct Flush {
        pub max_bytes: Option<u64>,
        pub max_age_seconds: Option<f64>,
    }

    /// Who the webhook verified the caller to be (from TokenReview and the pod itself).
    #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "camelCase", default)]
    pub struct Identity {
        pub namespace: String,
        pub pod: String,
        pub pod_uid: String,
        pub service_account: String,
        pub node: String,
        /// `ray.io/cluster`, empty for a pod outside a KubeRay cluster.
        pub ray_cluster: String,
        /// `ray.io/node-type` (`head`, `worker`), empty when absent.
        pub ray_node_type: String,
    }

    /// The body of a refusal (401, 403) or of API-server trouble (503).
    #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "camelCase", default)]
    pub struct Refusal {
        /// What was wrong, for the sidecar's log; never contains the token.
        pub reason: String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_and_errors() {
        let m: BTreeMap<String, String> = [("aws_region", "eu-west-1"), ("x", "a=b")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let text = options::encode(&m).unwrap();
        assert_eq!(text, "aws_region=eu-west-1,x=a=b");
        let back: BTreeMap<_, _> = options::decode(&text).unwrap().into_iter().collect();
        assert_eq!(back, m);
        assert_eq!(
            options::decode(" a = 1 ,, ").unwrap(),
            [("a".into(), "1".into())]
        );
        let e = options::decode("a=1,oops").unwrap_err();
        assert!(e.to_string().contains("\"oops\" is not key=value"), "{e}");
        let bad: BTreeMap<String, String> = [("k".to_string(), "a,b".to_string())].into();
        assert_eq!(options::encode(&bad), None);
    }

    #[test]
    fn sink_urls() {
        use sink_url::{Kind, parse};
        let p = parse("s3a://logs/ray/clusters/").unwrap();
        assert_eq!(
            (p.kind, p.scheme, p.bucket, p.prefix),
            (Kind::S3, "s3a", "logs", "ray/clusters")
        );
        assert_eq!(
            parse("gs://b").map(|p| (p.kind, p.prefix)),
            Some((Kind::Gcs, ""))
        );
        assert_eq!(parse("azure://c/p").map(|p| p.kind), Some(Kind::Azure));
        let f = parse("file:///var/log/ray").unwrap();
        assert_eq!(
            (f.kind, f.bucket, f.prefix),
            (Kind::File, "", "var/log/ray")
        );
        for bad in [
            "",
            "s3:/logs",
            "s3://",
            "s3:///p",
            "http://host/b",
            "file://host/dir",
            "file:///",
            "S3://logs",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
