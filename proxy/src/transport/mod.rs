//! Connections to upstreams: other sidecars over mutual TLS, the local application, and
//! services outside the mesh (plaintext or TLS the sidecar originates).

pub mod coalesce;
pub mod connect;
pub mod egress;
pub mod external;
pub mod forward;
pub mod h1_pool;
pub mod h2;
