//! The webhook's Prometheus metrics, served in text format on their own plain-HTTP port.

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use std::sync::Arc;

pub struct Metrics {
    pub registry: Arc<Registry>,
    /// Admissions by object kind, operation and result (shaped, unchanged, denied).
    pub admissions: IntCounterVec,
    /// Seconds spent deciding an admission, from the request body to the response body.
    pub admission_seconds: HistogramVec,
    /// HTTP responses by status code, including requests that never reached a decision.
    pub responses: IntCounterVec,
    pub in_flight: IntGauge,
    /// Reviews whose decision panicked (answered 500; the server goes on).
    pub panics: IntCounter,
    /// Configuration reloads by result (success, failure).
    pub config_reloads: IntCounterVec,
    pub config_last_success: Gauge,
    /// 1 while the configuration files were refused and an older version is in force.
    pub config_refused: IntGauge,
    pub instance_types: IntGauge,
    pub rules: IntGauge,
    /// Rules that failed on a pod, by rule and by what happened (denied, skipped).
    pub rule_failures: IntCounterVec,
    /// Certificate reloads by result.
    pub cert_reloads: IntCounterVec,
    pub cert_expiry: Gauge,
    /// Bootstrap requests by result (verified, unauthenticated, forbidden, rate_limited,
    /// bad_request, unavailable).
    pub bootstrap_requests: IntCounterVec,
    /// Seconds per Kubernetes API call of a bootstrap, by call (tokenreview, pod).
    pub bootstrap_api_seconds: HistogramVec,
    /// Bootstraps answered from the review cache.
    pub bootstrap_cache_hits: IntCounter,
    /// Events recorded on pods by bootstraps, by result (created, failed).
    pub bootstrap_events: IntCounterVec,
    /// Connections open on the webhook port.
    pub connections: IntGauge,
    /// New connections that found the server full, by what was done: `closed_other` (the
    /// connection quiet longest was closed to make room) or `refused`.
    pub connections_full: IntCounterVec,
}

const PREFIX: &str = "rayshape_webhook_";

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(format!("{PREFIX}{name}"), help), labels)
        .expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let admission_seconds = HistogramVec::new(
            HistogramOpts::new(
                format!("{PREFIX}admission_duration_seconds"),
                "Time to decide one admission review, from request body to response body.",
            )
            .buckets(vec![
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 1.0,
            ]),
            &["kind"],
        )
        .expect("valid metric");
        r.register(Box::new(admission_seconds.clone()))
            .expect("unique metric");
        let gauge = |name: &str, help: &str| {
            let g = Gauge::new(format!("{PREFIX}{name}"), help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(format!("{PREFIX}{name}"), help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let panics = IntCounter::new(
            format!("{PREFIX}panics_total"),
            "Reviews whose reading, decision or answer hit an internal error (a bug); each was answered 500.",
        )
        .expect("valid metric");
        r.register(Box::new(panics.clone())).expect("unique metric");
        let bootstrap_api_seconds = HistogramVec::new(
            HistogramOpts::new(
                format!("{PREFIX}bootstrap_api_duration_seconds"),
                "Time of one Kubernetes API call made for a bootstrap, by call.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["call"],
        )
        .expect("valid metric");
        r.register(Box::new(bootstrap_api_seconds.clone()))
            .expect("unique metric");
        let bootstrap_cache_hits = IntCounter::new(
            format!("{PREFIX}bootstrap_cache_hits_total"),
            "Bootstraps whose token was found in the cache of positive TokenReviews.",
        )
        .expect("valid metric");
        r.register(Box::new(bootstrap_cache_hits.clone()))
            .expect("unique metric");
        let bootstrap_requests = counter(
            &r,
            "bootstrap_requests_total",
            "Bootstrap requests, by result.",
            &["result"],
        );
        for result in crate::bootstrap::RESULTS {
            bootstrap_requests.with_label_values(&[result]);
        }
        let connections_full = counter(
            &r,
            "connections_full_total",
            "New connections that found --max-connections open, by what was done: closed_other (the connection longest without a finished request was closed to make room) or refused.",
            &["action"],
        );
        for action in ["closed_other", "refused"] {
            connections_full.with_label_values(&[action]);
        }
        Metrics {
            connections_full,
            connections: int_gauge("connections", "Connections open on the webhook port."),
            bootstrap_requests,
            bootstrap_api_seconds,
            bootstrap_cache_hits,
            bootstrap_events: counter(
                &r,
                "bootstrap_events_total",
                "Events recorded on pods by bootstraps, by result: created, failed, skipped (too many under way), unchanged (the pod's last Event said the same).",
                &["result"],
            ),
            panics,
            admissions: counter(
                &r,
                "admission_requests_total",
                "Admission reviews answered, by object kind, operation and result.",
                &["kind", "operation", "result"],
            ),
            responses: counter(
                &r,
                "http_responses_total",
                "HTTP responses on the webhook port, by status code.",
                &["code"],
            ),
            config_reloads: counter(
                &r,
                "config_reloads_total",
                "Configuration loads, by result; a failed one leaves the last good configuration in force.",
                &["result"],
            ),
            rule_failures: counter(
                &r,
                "rule_failures_total",
                "Patch rules that failed on an object, by rule and outcome (denied or skipped).",
                &["rule", "outcome"],
            ),
            cert_reloads: counter(
                &r,
                "certificate_reloads_total",
                "Serving certificate loads, by result; a failed one leaves the last good certificate in force.",
                &["result"],
            ),
            in_flight: int_gauge(
                "in_flight_requests",
                "Requests being handled on the webhook port.",
            ),
            config_refused: int_gauge(
                "config_refused",
                "1 while the configuration files on disk were refused and an older version stays in force (alert on it: a restart would not start), else 0.",
            ),
            config_last_success: gauge(
                "config_last_reload_success_timestamp_seconds",
                "When the configuration in force was loaded.",
            ),
            instance_types: int_gauge(
                "instance_types",
                "Instance types in the configuration in force.",
            ),
            rules: int_gauge(
                "rules",
                "Patch rules in the configuration in force (profile, per instance type and admin).",
            ),
            cert_expiry: gauge(
                "certificate_expiry_timestamp_seconds",
                "notAfter of the serving certificate in force.",
            ),
            admission_seconds,
            registry: Arc::new(r),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
