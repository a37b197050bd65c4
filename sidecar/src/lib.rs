//! rayshape's per-pod sidecar: ships Ray's log files to object storage, with no byte lost
//! or duplicated, and serves Prometheus metrics.
//!
//! [`tracker`] finds and follows the files, [`shipper`] plans, uploads and commits segments
//! ([`segment`]) to a [`sink`], recording progress in a [`checkpoint`]; [`logs`] reads them
//! back.

pub mod checkpoint;
pub mod config;
pub mod logs;
pub mod metrics;
pub mod random;
pub mod segment;
pub mod shipper;
pub mod sink;
pub mod tracker;
