//! The building blocks every stage uses: Kubernetes quantities, label selectors, the
//! lenient RFC 6902 applier that patch rules run on, and accessors over pods held as JSON.

pub mod pod;
pub mod quantity;
pub mod rfc6902;
pub mod selector;
