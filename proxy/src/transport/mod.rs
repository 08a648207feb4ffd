//! Connections to upstreams: other sidecars over mutual TLS, the local application, and
//! services outside the mesh (plaintext or TLS the sidecar originates).

pub mod connect;
pub mod egress;
pub mod external;
pub mod forward;
pub mod h1_pool;
pub mod h2;

/// The former name of [`external`], kept only so `snapshot.rs` (being split in parallel)
/// builds unchanged: remove once it names `external::{ExternalClient, egress_client}`.
pub mod http1 {
    pub use super::external::ExternalClient as LocalHttp1Client;
    pub use super::external::egress_client;
}
