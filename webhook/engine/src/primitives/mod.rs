//! The building blocks every stage uses: Kubernetes quantities, label selectors, the
//! lenient RFC 6902 applier that patch rules run on, and accessors over pods held as JSON, and the small sorted map
//! resource lists are kept in.

pub mod pod;
pub mod quantity;
pub mod rfc6902;
pub mod selector;
pub mod vecmap;
