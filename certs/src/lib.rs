//! TLS material for the rayshape webhook, in one place: reading what certificates say
//! (expiry for metrics and checks), and the `rayshape-certs` tool's generation, rotation
//! and checks.

pub mod check;
pub mod dir;
pub mod pki;
pub mod x509;
