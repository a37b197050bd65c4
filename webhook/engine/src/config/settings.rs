//! `webhook.yaml`: the settings of the webhook itself.

use super::problems::Report;
use super::profiles;
use crate::primitives::quantity::Quantity;
use rayshape_contract::Sink;
use serde::Deserialize;
use std::collections::BTreeMap;

pub const FILE: &str = "webhook.yaml";

/// Settings, with the defaults that apply when `webhook.yaml` is absent.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Settings {
    /// Prefix of every label and annotation the webhook reads or writes.
    pub label_prefix: String,
    /// Placement profile: generic, eks, karpenter, gke or aks.
    pub profile: String,
    /// Kubernetes resource that carries an instance type's `GPU` count.
    pub gpu_resource_name: String,
    pub sidecar: SidecarSettings,
    pub namespaces: NamespaceSettings,
    pub bootstrap: BootstrapSettings,
}

/// The injected sidecar.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SidecarSettings {
    /// Inject the sidecar at all.
    pub enabled: bool,
    /// Inject as a native sidecar (an init container with `restartPolicy: Always`, Kubernetes
    /// 1.29+); `false` appends a regular container instead, for older clusters.
    pub native: bool,
    pub name: String,
    pub image: String,
    pub image_pull_policy: String,
    /// Requests and limits of the sidecar, taken out of the instance type's shape.
    pub resources: BTreeMap<String, String>,
    pub metrics_port: u16,
    /// Audience of the projected service-account token the sidecar proves itself with.
    pub token_audience: String,
    pub token_expiration_seconds: u32,
    /// Where the sidecar asks for its configuration.
    pub bootstrap_url: String,
    /// Where the sidecar ships logs, handed to it in its environment; empty: not set.
    pub log_sink: Sink,
    /// Batching handed to the sidecar at bootstrap; unset keeps the sidecar's defaults.
    pub flush: FlushSettings,
}

/// The sidecar's batching, as handed out at bootstrap.
#[derive(Clone, Debug, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FlushSettings {
    /// Size bound of a segment, a quantity such as `4Mi`.
    pub max_bytes: Option<String>,
    /// Age bound of the oldest waiting byte, in seconds.
    pub max_age_seconds: Option<f64>,
}

/// Who may bootstrap, and how the server protects the API server.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BootstrapSettings {
    /// Only pods in these namespaces, when not empty.
    pub namespaces: Vec<String>,
    /// Only pods running as these service accounts (`namespace/name`), when not empty.
    pub service_accounts: Vec<String>,
    /// How long a positive TokenReview is reused for the same token (never past its
    /// expiry); 0 asks the API server every time.
    pub cache_seconds: u32,
    /// Bootstrap requests per second allowed from one source address, on average...
    pub rate_per_second: f64,
    /// ...and at once.
    pub burst: u32,
}

impl Default for BootstrapSettings {
    fn default() -> Self {
        BootstrapSettings {
            namespaces: Vec::new(),
            service_accounts: Vec::new(),
            cache_seconds: 10,
            rate_per_second: 1.0,
            burst: 10,
        }
    }
}

/// Which namespaces' pods are shaped (the webhook configuration's selectors should agree).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NamespaceSettings {
    /// Only these namespaces, when not empty.
    pub include: Vec<String>,
    /// Never these namespaces.
    pub exclude: Vec<String>,
}

/// What each setting takes, for the parser's type errors (`invalid u16` says neither).
const KINDS: &[(&str, &str)] = &[
    (
        "labelPrefix",
        "a DNS subdomain, like rayshape.io or anyscale.com",
    ),
    (
        "profile",
        "the name of a placement profile: generic, eks, karpenter, gke or aks",
    ),
    (
        "gpuResourceName",
        "an extended resource name, like nvidia.com/gpu",
    ),
    ("sidecar", "a mapping of sidecar settings"),
    ("sidecar.enabled", "true or false"),
    ("sidecar.native", "true or false"),
    ("sidecar.name", "a container name"),
    ("sidecar.image", "an image reference"),
    ("sidecar.imagePullPolicy", "Always, IfNotPresent or Never"),
    (
        "sidecar.resources",
        "a mapping of resource names to quantities, like {cpu: 100m, memory: 64Mi}",
    ),
    ("sidecar.resources.*", "a quantity, like 100m or 64Mi"),
    (
        "sidecar.metricsPort",
        "a port: a whole number from 1 to 65535",
    ),
    ("sidecar.tokenAudience", "a string"),
    (
        "sidecar.tokenExpirationSeconds",
        "a whole number of seconds from 600 to 4294967295",
    ),
    ("sidecar.bootstrapUrl", "an https:// URL"),
    ("sidecar.logSink", "a mapping with url and options"),
    (
        "sidecar.logSink.url",
        "a URL: s3://bucket/prefix, gs://..., az://... or file:///dir",
    ),
    (
        "sidecar.logSink.options",
        "a mapping of option names to strings",
    ),
    ("sidecar.logSink.options.*", "a string"),
    ("sidecar.flush", "a mapping with maxBytes and maxAgeSeconds"),
    ("sidecar.flush.maxBytes", "a quantity of bytes, like 4Mi"),
    (
        "sidecar.flush.maxAgeSeconds",
        "a number of seconds above 0 and at most 86400, like 2.5",
    ),
    ("namespaces", "a mapping with include and exclude"),
    ("namespaces.include", "a list of namespace names"),
    ("namespaces.exclude", "a list of namespace names"),
    ("bootstrap", "a mapping of bootstrap settings"),
    ("bootstrap.namespaces", "a list of namespace names"),
    (
        "bootstrap.serviceAccounts",
        "a list of namespace/name service accounts",
    ),
    (
        "bootstrap.cacheSeconds",
        "a whole number of seconds from 0 to 4294967295",
    ),
    ("bootstrap.ratePerSecond", "a number above 0, like 1 or 0.5"),
    ("bootstrap.burst", "a whole number from 1 to 4294967295"),
];

/// What the setting at `place` takes: its own entry, its mapping's `*`, or, inside a list
/// or a value of the wrong shape, the nearest enclosing setting's.
fn kind_of(place: &str) -> Option<&'static str> {
    let mut at = place;
    loop {
        if let Some((_, kind)) = KINDS.iter().find(|(k, _)| *k == at) {
            return Some(kind);
        }
        let (parent, _) = at.rsplit_once('.')?;
        if at.len() == place.len()
            && let Some((_, kind)) = KINDS
                .iter()
                .find(|(k, _)| k.strip_suffix(".*") == Some(parent))
        {
            return Some(kind);
        }
        at = parent;
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            label_prefix: "rayshape.io".into(),
            profile: "generic".into(),
            gpu_resource_name: "nvidia.com/gpu".into(),
            sidecar: SidecarSettings::default(),
            namespaces: NamespaceSettings::default(),
            bootstrap: BootstrapSettings::default(),
        }
    }
}

impl Default for SidecarSettings {
    fn default() -> Self {
        SidecarSettings {
            enabled: true,
            native: true,
            name: "rayshape-sidecar".into(),
            image: concat!(
                "ghcr.io/rayshape/rayshape-sidecar:v",
                env!("CARGO_PKG_VERSION")
            )
            .into(),
            image_pull_policy: "IfNotPresent".into(),
            resources: [("cpu", "100m"), ("memory", "64Mi")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            metrics_port: rayshape_contract::SIDECAR_METRICS_PORT,
            token_audience: rayshape_contract::TOKEN_AUDIENCE.into(),
            token_expiration_seconds: 3600,
            bootstrap_url: "https://rayshape-webhook.rayshape-system.svc:443/v1/bootstrap".into(),
            log_sink: Sink::default(),
            flush: FlushSettings::default(),
        }
    }
}

impl Default for NamespaceSettings {
    fn default() -> Self {
        NamespaceSettings {
            include: Vec::new(),
            exclude: vec![
                "kube-system".into(),
                "kube-public".into(),
                "kube-node-lease".into(),
            ],
        }
    }
}

/// Every sidecar opens the sink with these options as the bootstrap hands them out, so a
/// misspelt one would stop every sidecar's shipping, and a secret would go to every Ray pod.
fn check_sink_options<'k>(
    url: &rayshape_contract::sink_url::SinkUrl<'_>,
    keys: impl Iterator<Item = &'k String>,
    r: &mut Report,
) {
    use rayshape_contract::sink_options::{self as so, Name};
    let names = so::of(url.kind);
    for key in keys {
        let place = format!("sidecar.logSink.options.{key}");
        match so::name(url.kind, key) {
            Name::Setting => {}
            Name::Credential => r.error(
                FILE,
                None,
                place,
                "holds a credential, and the bootstrap hands these options to every Ray pod's sidecar: give the Ray pods' service account its cloud's workload identity instead (IRSA or EKS Pod Identity, GKE Workload Identity, Azure Workload Identity), which the sidecar uses when no credential is set",
            ),
            Name::Unknown => {
                let Some(names) = &names else {
                    r.error(FILE, None, place, "file:// sinks take no options");
                    continue;
                };
                let prefix = names.prefix;
                let known: Vec<&str> = names
                    .settings
                    .iter()
                    .copied()
                    .filter(|n| n.starts_with(prefix))
                    .collect();
                r.error(
                    FILE,
                    None,
                    place,
                    format!(
                        "is not an option of {}:// sinks; accepted: {} (also without the `{prefix}` prefix), and the HTTP client's {}",
                        url.scheme,
                        known.join(", "),
                        so::CLIENT.join(", "),
                    ),
                );
            }
        }
    }
}

impl Settings {
    /// Parse and check `webhook.yaml`; problems go to `report`.
    pub fn load(text: &str, report: &mut Report) -> Option<Settings> {
        if text.trim().is_empty() {
            return Some(Settings::default());
        }
        let s: Settings = match serde_saphyr::from_str(text) {
            Ok(s) => s,
            Err(e) => {
                // The parser names the line; the setting and what it takes are ours to say.
                let place = e
                    .location()
                    .and_then(|l| super::problems::key_path_at(text, l.line(), l.column()))
                    .unwrap_or_default();
                let shape = match kind_of(&place) {
                    Some(kind) => kind.to_string(),
                    None => "a mapping of the settings the README lists under `webhook.yaml`, each of its type and range".into(),
                };
                report.yaml_at(FILE, &e, &place, &shape);
                return None;
            }
        };
        let before = report.errors.len();
        s.check(report);
        (report.errors.len() == before).then_some(s)
    }

    fn check(&self, r: &mut Report) {
        if !is_dns_subdomain(&self.label_prefix) {
            r.error(FILE, None, "labelPrefix", format!("{:?} is not a DNS subdomain; expected something like rayshape.io or anyscale.com", self.label_prefix));
        }
        if !profiles::names().any(|n| n == self.profile) {
            r.error(
                FILE,
                None,
                "profile",
                format!(
                    "unknown profile {:?}; accepted: {}",
                    self.profile,
                    profiles::names_text()
                ),
            );
        }
        if !is_resource_name(&self.gpu_resource_name) {
            r.error(FILE, None, "gpuResourceName", format!("{:?} is not an extended resource name; expected something like nvidia.com/gpu or amd.com/gpu", self.gpu_resource_name));
        }
        let sc = &self.sidecar;
        if !is_dns_label(&sc.name) {
            r.error(FILE, None, "sidecar.name", format!("{:?} is not a valid container name (lowercase letters, digits and `-`, at most 63)", sc.name));
        }
        if sc.image.trim().is_empty() {
            r.error(
                FILE,
                None,
                "sidecar.image",
                "is empty; expected an image reference",
            );
        }
        if !["Always", "IfNotPresent", "Never"].contains(&sc.image_pull_policy.as_str()) {
            r.error(
                FILE,
                None,
                "sidecar.imagePullPolicy",
                format!(
                    "{:?}; accepted: Always, IfNotPresent, Never",
                    sc.image_pull_policy
                ),
            );
        }
        for (k, v) in &sc.resources {
            if !is_resource_name(k) && !["cpu", "memory", "ephemeral-storage"].contains(&k.as_str())
            {
                r.error(FILE, None, format!("sidecar.resources.{k}"), "is not a resource name; expected cpu, memory, ephemeral-storage or an extended resource");
            }
            match Quantity::parse(v) {
                Ok(q) if q.millis() < 0 => r.error(
                    FILE,
                    None,
                    format!("sidecar.resources.{k}"),
                    "must not be negative",
                ),
                Ok(_) => {}
                Err(e) => r.error(FILE, None, format!("sidecar.resources.{k}"), e.to_string()),
            }
        }
        if sc.metrics_port == 0 {
            r.error(
                FILE,
                None,
                "sidecar.metricsPort",
                "must be a port from 1 to 65535",
            );
        }
        if sc.token_audience.is_empty() {
            r.error(
                FILE,
                None,
                "sidecar.tokenAudience",
                "is empty; expected an audience such as rayshape.io",
            );
        }
        if sc.token_expiration_seconds < 600 {
            r.error(
                FILE,
                None,
                "sidecar.tokenExpirationSeconds",
                format!(
                    "{} is below 600, the least Kubernetes accepts for a projected token",
                    sc.token_expiration_seconds
                ),
            );
        }
        // The sidecar sends its pod's token there: it only ever speaks TLS to it.
        if !sc.bootstrap_url.starts_with("https://") || sc.bootstrap_url.len() == "https://".len() {
            r.error(
                FILE,
                None,
                "sidecar.bootstrapUrl",
                format!(
                    "{:?} is not an https URL (the sidecar sends its pod's token there, so only over TLS), like https://rayshape-webhook.rayshape-system.svc:443/v1/bootstrap",
                    sc.bootstrap_url
                ),
            );
        }
        // Every sidecar opens this sink as the bootstrap hands it: one it cannot read would
        // leave every Ray pod's logs on disk.
        if !sc.log_sink.url.is_empty()
            && rayshape_contract::sink_url::parse(&sc.log_sink.url).is_none()
        {
            r.error(
                FILE,
                None,
                "sidecar.logSink.url",
                format!(
                    "{:?} is not a sink URL; expected one of {}",
                    sc.log_sink.url,
                    rayshape_contract::sink_url::FORMS
                ),
            );
        }
        if rayshape_contract::options::encode(&sc.log_sink.options).is_none() {
            r.error(
                FILE,
                None,
                "sidecar.logSink.options",
                "keys must be non-empty and without `,` or `=`, values without `,` (the sidecar receives them as key=value,key=value)",
            );
        }
        if let Some(url) = rayshape_contract::sink_url::parse(&sc.log_sink.url) {
            check_sink_options(&url, sc.log_sink.options.keys(), r);
        }
        if let Some(b) = &sc.flush.max_bytes {
            let max = rayshape_contract::MAX_FLUSH_BYTES;
            match Quantity::parse(b) {
                Ok(q)
                    if q.is_positive()
                        && q.millis() % 1000 == 0
                        && q.millis() / 1000 <= i128::from(max) => {}
                _ => r.error(
                    FILE,
                    None,
                    "sidecar.flush.maxBytes",
                    format!(
                        "{b:?} is not a number of bytes from 1 to 64Mi (a segment is held in the sidecar's memory while it uploads), like 4Mi"
                    ),
                ),
            }
        }
        let max_age = rayshape_contract::MAX_FLUSH_AGE_SECONDS;
        if let Some(a) = sc.flush.max_age_seconds
            && !(a > 0.0 && a <= max_age as f64)
        {
            r.error(
                FILE,
                None,
                "sidecar.flush.maxAgeSeconds",
                format!(
                    "{a} is not a number of seconds above 0 and at most {max_age} (a day: logs wait that long on the pod's disk at most)"
                ),
            );
        }
        let b = &self.bootstrap;
        for (i, ns) in b.namespaces.iter().enumerate() {
            if !is_dns_label(ns) {
                r.error(
                    FILE,
                    None,
                    format!("bootstrap.namespaces[{i}]"),
                    format!("{ns:?} is not a namespace name {NAMESPACE_NAME}"),
                );
            }
        }
        for (i, sa) in b.service_accounts.iter().enumerate() {
            let ok = sa.split_once('/').is_some_and(|(ns, name)| {
                is_dns_label(ns) && is_dns_subdomain(name) && !name.is_empty()
            });
            if !ok {
                r.error(
                    FILE,
                    None,
                    format!("bootstrap.serviceAccounts[{i}]"),
                    format!("{sa:?} is not namespace/name, like ml-team/ray-workers"),
                );
            }
        }
        for (i, ns) in b.namespaces.iter().enumerate() {
            if !self.manages_namespace(Some(ns)) {
                r.warn(
                    FILE,
                    None,
                    format!("bootstrap.namespaces[{i}]"),
                    format!("{ns:?} is not a namespace whose pods the webhook shapes (`namespaces`), so its pods may not bootstrap all the same"),
                );
            }
        }
        if !(b.rate_per_second.is_finite() && b.rate_per_second > 0.0) {
            r.error(
                FILE,
                None,
                "bootstrap.ratePerSecond",
                format!(
                    "{} is not a number of bootstraps per second above 0",
                    b.rate_per_second
                ),
            );
        }
        if b.burst == 0 {
            r.error(
                FILE,
                None,
                "bootstrap.burst",
                "0 is not a number of bootstraps above 0",
            );
        }
        for (list, names) in [
            ("include", &self.namespaces.include),
            ("exclude", &self.namespaces.exclude),
        ] {
            for (i, ns) in names.iter().enumerate() {
                if !is_dns_label(ns) {
                    r.error(
                        FILE,
                        None,
                        format!("namespaces.{list}[{i}]"),
                        format!("{ns:?} is not a namespace name {NAMESPACE_NAME}"),
                    );
                }
            }
        }
    }

    /// The sidecar's reservation, parsed (validated at load).
    pub fn sidecar_resources(&self) -> BTreeMap<String, Quantity> {
        self.sidecar
            .resources
            .iter()
            .filter_map(|(k, v)| Quantity::parse(v).ok().map(|q| (k.clone(), q)))
            .collect()
    }

    /// Whether pods in this namespace are managed.
    pub fn manages_namespace(&self, ns: Option<&str>) -> bool {
        let ns = ns.unwrap_or("default");
        !self.namespaces.exclude.iter().any(|x| x == ns)
            && (self.namespaces.include.is_empty()
                || self.namespaces.include.iter().any(|x| x == ns))
    }

    /// `<prefix>/<name>`.
    pub fn key(&self, name: &str) -> String {
        // Several per admission: concatenated, not formatted.
        let mut key = String::with_capacity(self.label_prefix.len() + 1 + name.len());
        key.push_str(&self.label_prefix);
        key.push('/');
        key.push_str(name);
        key
    }
}

/// What a namespace name may be, for messages.
const NAMESPACE_NAME: &str = "(a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63)";

pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// `domain/name`, as extended resources are named.
pub fn is_resource_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((d, n)) => {
            is_dns_subdomain(d)
                && !n.is_empty()
                && n.len() <= 63
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        None => false,
    }
}

/// A label key (a qualified name): `[prefix/]name`, the prefix a DNS subdomain, the name at
/// most 63 letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit.
pub fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(|p| !p.is_empty() && is_dns_subdomain(p))
        && !name.is_empty()
        && is_label_value(name)
}

/// A valid Kubernetes label value (empty allowed).
pub fn is_label_value(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let mut r = Report::default();
        let s = Settings::load(
            "labelPrefix: anyscale.com\nsidecar:\n  native: false\n",
            &mut r,
        )
        .unwrap();
        assert_eq!(s.label_prefix, "anyscale.com");
        assert!(!s.sidecar.native);
        assert_eq!(s.sidecar.name, "rayshape-sidecar");
        assert_eq!(s.key("zone"), "anyscale.com/zone");
    }

    #[test]
    fn every_problem_reported() {
        let mut r = Report::default();
        let s = Settings::load(
            "labelPrefix: Bad_Prefix\nprofile: azure\nsidecar:\n  resources: {cpu: lots}\n  tokenExpirationSeconds: 10\n",
            &mut r,
        );
        assert!(s.is_none());
        let all: Vec<String> = r.errors.iter().map(|p| p.to_string()).collect();
        assert_eq!(all.len(), 4, "{all:#?}");
        assert!(
            all[1].contains("accepted: generic, eks, karpenter, gke, aks"),
            "{all:#?}"
        );
    }

    /// Each bad value is reported at its own place, with what would be accepted.
    #[test]
    fn namespaces_and_rates_are_reported_where_they_are() {
        let mut r = Report::default();
        let yaml = "namespaces: {include: [a], exclude: [kube-system, Bad_NS]}\nbootstrap: {ratePerSecond: 0, burst: 0, namespaces: [-x]}\n";
        assert!(Settings::load(yaml, &mut r).is_none());
        let all: Vec<String> = r.errors.iter().map(|p| p.to_string()).collect();
        for want in [
            "namespaces.exclude[1]: \"Bad_NS\" is not a namespace name (a DNS label: lowercase",
            "bootstrap.namespaces[0]: \"-x\" is not a namespace name (a DNS label",
            "bootstrap.ratePerSecond: 0 is not a number of bootstraps per second above 0",
            "bootstrap.burst: 0 is not a number of bootstraps above 0",
        ] {
            assert!(
                all.iter().any(|e| e.contains(want)),
                "{want:?} not in {all:#?}"
            );
        }
    }

    #[test]
    fn the_bootstrap_is_only_reached_over_tls() {
        for url in [
            "http://rayshape-webhook.rayshape-system.svc/v1/bootstrap",
            "https://",
        ] {
            let mut r = Report::default();
            let yaml = format!("sidecar:\n  bootstrapUrl: {url:?}\n");
            assert!(Settings::load(&yaml, &mut r).is_none(), "{url}");
            assert!(
                r.errors[0].to_string().contains("is not an https URL"),
                "{:?}",
                r.errors
            );
        }
    }

    #[test]
    fn the_sink_and_batching_are_ones_every_sidecar_can_use() {
        let ok = "sidecar:\n  logSink: {url: \"s3://logs/ray\"}\n  flush: {maxBytes: 64Mi, maxAgeSeconds: 86400}\n";
        let mut r = Report::default();
        assert!(Settings::load(ok, &mut r).is_some(), "{:?}", r.errors);
        for ok in [
            "s3://l\", options: {aws_endpoint: \"http://minio:9000\", region: us-east-1, aws_allow_http: \"true\", aws_timeout: 30s, connect_timeout: 5s",
            "gs://l\", options: {google_service_account: /var/run/sa.json",
            "az://l\", options: {azure_storage_account_name: a, azure_storage_endpoint: \"http://127.0.0.1:10000/a\"",
        ] {
            let yaml = format!("sidecar:\n  logSink: {{url: \"{ok}}}}}\n");
            let mut r = Report::default();
            assert!(
                Settings::load(&yaml, &mut r).is_some(),
                "{yaml}: {:?}",
                r.errors
            );
        }
        for (yaml, key, says) in [
            (
                "logSink: {url: \"s3:/logs\"}",
                "sidecar.logSink.url",
                "expected one of s3://bucket[/prefix]",
            ),
            (
                "logSink: {url: \"https://logs.example.com/b\"}",
                "sidecar.logSink.url",
                "file:///dir",
            ),
            (
                "flush: {maxBytes: 65Mi}",
                "sidecar.flush.maxBytes",
                "from 1 to 64Mi",
            ),
            (
                "flush: {maxBytes: 0}",
                "sidecar.flush.maxBytes",
                "from 1 to 64Mi",
            ),
            (
                "flush: {maxAgeSeconds: 1e20}",
                "sidecar.flush.maxAgeSeconds",
                "at most 86400",
            ),
            (
                "flush: {maxAgeSeconds: -1}",
                "sidecar.flush.maxAgeSeconds",
                "above 0",
            ),
            (
                "logSink: {url: \"s3://logs\", options: {aws_region: eu-west-1, aws_secret_access_key: x}}",
                "sidecar.logSink.options.aws_secret_access_key",
                "holds a credential",
            ),
            (
                "logSink: {url: \"az://logs\", options: {sas_token: x}}",
                "sidecar.logSink.options.sas_token",
                "workload identity",
            ),
            (
                "logSink: {url: \"s3://logs\", options: {aws_regon: eu-west-1}}",
                "sidecar.logSink.options.aws_regon",
                "is not an option of s3:// sinks; accepted: aws_access_key_id, aws_default_region, aws_region",
            ),
            (
                "logSink: {url: \"s3://logs\", options: {azure_storage_account_name: a}}",
                "sidecar.logSink.options.azure_storage_account_name",
                "is not an option of s3://",
            ),
            (
                "logSink: {url: \"file:///var/log/x\", options: {aws_region: a}}",
                "sidecar.logSink.options.aws_region",
                "file:// sinks take no options",
            ),
        ] {
            let mut r = Report::default();
            let yaml = format!("sidecar:\n  {yaml}\n");
            assert!(Settings::load(&yaml, &mut r).is_none(), "{yaml}");
            let e = r.errors[0].to_string();
            assert!(e.contains(key) && e.contains(says), "{yaml}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_a_line() {
        let mut r = Report::default();
        assert!(Settings::load("labelprefix: x\n", &mut r).is_none());
        assert_eq!(r.errors[0].line, Some(1), "{:?}", r.errors);
    }

    /// The parser says `invalid u16`; the problem names the setting and what it takes.
    #[test]
    fn type_errors_name_the_setting_and_its_range() {
        for (yaml, place, says) in [
            (
                "sidecar:\n  metricsPort: 70000\n",
                "sidecar.metricsPort",
                "a whole number from 1 to 65535",
            ),
            (
                "sidecar: {enabled: 3}\n",
                "sidecar.enabled",
                "true or false",
            ),
            (
                "bootstrap:\n  burst: -1\n",
                "bootstrap.burst",
                "a whole number from 1 to 4294967295",
            ),
            (
                "sidecar: {flush: {maxBytes: [1]}}\n",
                "sidecar.flush.maxBytes",
                "a quantity of bytes, like 4Mi",
            ),
            (
                "sidecar:\n  resources: {cpu: [1]}\n",
                "sidecar.resources.cpu",
                "a quantity, like 100m or 64Mi",
            ),
            (
                "sidecar:\n  metricsPort:\n    70000\n",
                "sidecar.metricsPort",
                "a whole number from 1 to 65535",
            ),
            (
                "bootstrap:\n  namespaces: kube-system\n",
                "bootstrap.namespaces",
                "a list of namespace names",
            ),
        ] {
            let mut r = Report::default();
            assert!(Settings::load(yaml, &mut r).is_none(), "{yaml}");
            assert_eq!(r.errors[0].place, place, "{yaml}");
            assert!(
                r.errors[0].message.ends_with(says),
                "{yaml}: {}",
                r.errors[0]
            );
        }
        // Every setting the table names is one the file takes, and the table has them all.
        for (key, _) in KINDS.iter().filter(|(k, _)| !k.ends_with(".*")) {
            let mut yaml = String::new();
            for (i, part) in key.split('.').enumerate() {
                yaml.push_str(&format!("{}{part}:\n", "  ".repeat(i)));
            }
            let mut r = Report::default();
            // A value no setting takes: a list of lists.
            Settings::load(&format!("{} [[]]\n", yaml.trim_end()), &mut r);
            let e = r
                .errors
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(
                e.contains(&format!(": {key}: ")) && !e.contains("unknown field"),
                "{key}: {e}"
            );
        }
        // Serde's own list of each mapping's fields, from its unknown-field error.
        for (at, yaml) in [
            ("", "zzz: 1\n"),
            ("sidecar.", "sidecar:\n  zzz: 1\n"),
            ("sidecar.logSink.", "sidecar:\n  logSink:\n    zzz: 1\n"),
            ("sidecar.flush.", "sidecar:\n  flush:\n    zzz: 1\n"),
            ("namespaces.", "namespaces:\n  zzz: 1\n"),
            ("bootstrap.", "bootstrap:\n  zzz: 1\n"),
        ] {
            let mut r = Report::default();
            Settings::load(yaml, &mut r);
            let e = r.errors[0].message.clone();
            let fields = e
                .split("expected one of ")
                .nth(1)
                .and_then(|s| s.split(';').next())
                .unwrap_or_else(|| panic!("{yaml}: {e}"));
            for f in fields.split(", ") {
                let key = format!("{at}{}", f.trim_matches('`'));
                assert!(
                    KINDS.iter().any(|(k, _)| *k == key),
                    "{key} is not in KINDS"
                );
            }
        }
    }
}
