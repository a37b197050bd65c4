//! The sidecar's Prometheus metrics.

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use std::sync::Arc;

pub struct Metrics {
    pub registry: Arc<Registry>,
    pub bytes_read: IntCounter,
    /// Log bytes whose segment upload succeeded.
    pub bytes_shipped: IntCounter,
    /// Compressed bytes uploaded.
    pub bytes_uploaded: IntCounter,
    pub segments: IntCounter,
    pub upload_errors: IntCounter,
    pub upload_seconds: Histogram,
    pub unshipped_bytes: IntGauge,
    pub oldest_unshipped_seconds: Gauge,
    pub files: IntGauge,
    /// All-time, carried across restarts in the checkpoint.
    pub lost_bytes: IntCounter,
    pub unreadable_files: IntCounter,
    /// 1 for the sidecar's current state, 0 for the others (see [`crate::shipper::State`]).
    pub state: IntGaugeVec,
    /// Checkpoints moved aside instead of adopted, by reason.
    pub checkpoints_set_aside: IntCounterVec,
    /// Log files held open.
    pub open_files: IntGauge,
    /// Files closed while their session was current and removed before they were looked
    /// at again (see [`crate::tracker`]).
    pub closed_files_removed: IntCounter,
    /// 1 for the identity bootstrap's state, 0 for the others (see [`BOOTSTRAP_STATES`]).
    pub bootstrap_state: IntGaugeVec,
    /// Bootstrap attempts, by outcome (verified, refused, unavailable).
    pub bootstrap_attempts: IntCounterVec,
}

/// The states of the identity bootstrap: not asked (no bootstrap URL), waiting for the
/// first answer, verified, refused by the webhook, the webhook unreachable or in trouble.
pub const BOOTSTRAP_STATES: [&str; 5] = [
    "not_configured",
    "pending",
    "verified",
    "refused",
    "unavailable",
];

const PREFIX: &str = "rayshape_sidecar_";

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(format!("{PREFIX}{name}"), help).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let upload_seconds = Histogram::with_opts(
            HistogramOpts::new(
                format!("{PREFIX}upload_duration_seconds"),
                "Time to upload one segment, successful or not.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )
        .expect("valid metric");
        r.register(Box::new(upload_seconds.clone()))
            .expect("unique metric");
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(format!("{PREFIX}{name}"), help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let oldest = Gauge::new(
            format!("{PREFIX}oldest_unshipped_seconds"),
            "Age of the oldest log byte not yet in the store.",
        )
        .expect("valid metric");
        r.register(Box::new(oldest.clone())).expect("unique metric");
        let state = IntGaugeVec::new(
            Opts::new(
                format!("{PREFIX}state"),
                "1 for what the sidecar is doing now, 0 for the other states: shipping, starting, no_sink, checkpoint_error, unauthorized, sink_not_found, store_unreachable.",
            ),
            &["state"],
        )
        .expect("valid metric");
        r.register(Box::new(state.clone())).expect("unique metric");
        for s in crate::shipper::State::ALL {
            state.with_label_values(&[s.label()]).set(0);
        }
        let checkpoints_set_aside = IntCounterVec::new(
            Opts::new(
                format!("{PREFIX}checkpoints_set_aside_total"),
                "Checkpoints moved aside instead of adopted: corrupt, old_version, other_pod, other_sink.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        r.register(Box::new(checkpoints_set_aside.clone()))
            .expect("unique metric");
        let bootstrap_state = IntGaugeVec::new(
            Opts::new(
                format!("{PREFIX}bootstrap_state"),
                "1 for the identity bootstrap's state, 0 for the others: not_configured, pending, verified, refused, unavailable.",
            ),
            &["state"],
        )
        .expect("valid metric");
        r.register(Box::new(bootstrap_state.clone()))
            .expect("unique metric");
        for s in BOOTSTRAP_STATES {
            bootstrap_state.with_label_values(&[s]).set(0);
        }
        let bootstrap_attempts = IntCounterVec::new(
            Opts::new(
                format!("{PREFIX}bootstrap_attempts_total"),
                "Identity bootstrap attempts, by outcome: verified, refused, unavailable.",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        r.register(Box::new(bootstrap_attempts.clone()))
            .expect("unique metric");
        Metrics {
            bootstrap_state,
            bootstrap_attempts,
            state,
            checkpoints_set_aside,
            open_files: int_gauge("open_files", "Log files held open."),
            closed_files_removed: counter(
                "closed_files_removed_total",
                "Log files closed while quiet (to stay under maxOpenFiles) and removed before they were looked at again: bytes written to them in between could be neither shipped nor counted.",
            ),
            bytes_read: counter(
                "bytes_read_total",
                "Log bytes read from files into segments.",
            ),
            bytes_shipped: counter(
                "bytes_shipped_total",
                "Log bytes in segments the store accepted.",
            ),
            bytes_uploaded: counter(
                "bytes_uploaded_total",
                "Compressed segment bytes the store accepted.",
            ),
            segments: counter("segments_uploaded_total", "Segments the store accepted."),
            upload_errors: counter(
                "upload_errors_total",
                "Segment uploads that failed (each is retried).",
            ),
            lost_bytes: counter(
                "lost_bytes_total",
                "Log bytes removed by rotation or truncation before they could be read, since the pod started.",
            ),
            unreadable_files: counter(
                "unreadable_files_total",
                "Log files that could not be opened.",
            ),
            unshipped_bytes: int_gauge(
                "unshipped_bytes",
                "Log bytes written but not yet in the store.",
            ),
            files: int_gauge("files_tracked", "Log files being followed."),
            oldest_unshipped_seconds: oldest,
            upload_seconds,
            registry: Arc::new(r),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Show the bootstrap's state (one of [`BOOTSTRAP_STATES`]).
    pub fn set_bootstrap_state(&self, now: &str) {
        for s in BOOTSTRAP_STATES {
            self.bootstrap_state
                .with_label_values(&[s])
                .set(i64::from(s == now));
        }
    }
}
