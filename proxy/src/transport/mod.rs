//! Connections to upstreams: other sidecars over mutual TLS, and the local application.

pub mod connect;
pub mod h1_pool;
pub mod h2;
pub mod http1;
