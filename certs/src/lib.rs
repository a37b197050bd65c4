//! TLS material for the rayshape webhook, in one place: reading what certificates say
//! (expiry for metrics and checks) and, with the `rayshape-certs` tool, generating and
//! rotating them.

pub mod x509;
