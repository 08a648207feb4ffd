//! Workload identity: SPIFFE IDs, certificate loading, rustls configurations and peer checks.

pub mod csr;
pub mod dev_pki;
pub mod spiffe;
pub mod tls;
