//! meshlite-control: the control plane of the meshlite service mesh.
//!
//! It holds the mesh's configuration (Istio's VirtualService, DestinationRule,
//! PeerAuthentication, RequestAuthentication, AuthorizationPolicy, ServiceEntry and Telemetry,
//! read from a directory of YAML files, with the key sets of `jwksUri` rules fetched and inlined), the registry of workloads (announced by their sidecars), and the CA that issues
//! every workload its SPIFFE identity. Each connected `meshlite-proxy` receives, over an
//! xDS-style gRPC stream, only the part of the mesh it needs.
#![forbid(unsafe_code)]

pub mod admin;
pub mod ca;
pub mod graph;
pub mod inject;
pub mod jwks;
pub mod metrics;
pub mod model;
pub mod plane;
pub mod registry;
pub mod serve;
pub mod source;
pub mod translate;
pub mod validate;
pub mod xds;
