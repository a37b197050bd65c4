//! rayshape's admission engine: it turns a Ray pod into its shaped form.
//!
//! Data flows one way: decode ([`input`]) → classify ([`classify`]) → plan and apply
//! ([`shape`]: vocabulary, sidecar, rules, sizing, Ray's view) → diff → respond ([`review`]).
//! Everything here is pure; the binary does the I/O.

pub mod classify;
pub mod config;
pub mod diff;
pub mod input;
pub mod patch;
pub mod pod;
pub mod profile;
pub mod quantity;
pub mod raycluster;
pub mod rayview;
pub mod review;
pub mod selector;
pub mod serve;
pub mod shape;
pub mod sidecar;
pub mod sizing;
