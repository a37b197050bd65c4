//! rayshape's per-pod sidecar: ships Ray's log files to object storage, with no byte lost
//! or duplicated, and serves Prometheus metrics.
//!
//! [`bootstrap`] proves which pod the sidecar belongs to and gets its configuration;
//! [`tracker`] finds and follows the files, [`shipper`] plans, uploads and commits segments
//! ([`segment`]) to a [`sink`], recording progress in a [`checkpoint`]; [`logs`] reads them
//! back.
//!
//! Without the default feature `ship`, only the formats and the tracker are built
//! ([`checkpoint`], [`segment`], [`tracker`], [`config`]): what the fuzz targets need.

#[cfg(feature = "ship")]
pub mod bootstrap;
pub mod checkpoint;
pub mod config;
pub mod idmap;
#[cfg(feature = "ship")]
pub mod logs;
#[cfg(feature = "ship")]
pub mod metrics;
pub mod random;
pub mod segment;
#[cfg(feature = "ship")]
pub mod shipper;
#[cfg(feature = "ship")]
pub mod sink;
pub mod tracker;
