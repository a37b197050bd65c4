//! The sidecar's Prometheus metrics.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
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
}

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
        Metrics {
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
