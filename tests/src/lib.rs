//! End-to-end test harness for meshlite.
//!
//! The tests in `tests/e2e/` start real `meshlite-proxy` processes on loopback, put small test
//! applications behind them and drive them with real clients (hyper, tonic, tungstenite and raw
//! TCP sockets). This library holds what those tests share, one module per job:
//!
//! - [`control`] runs `meshlite-control` and the sidecars that join the mesh through it;
//! - [`fake_control`] stands in for the control plane where a test must push what the real one
//!   never would (an invalid resource);
//! - [`mesh`] builds sidecar configurations and starts, stops and inspects proxy processes;
//! - [`netns`] makes pods of network namespaces on a bridge of their own, for transparent
//!   capture, and runs processes and sockets inside them; [`pods`] runs a control plane on
//!   such a node and sidecars (as uid 1337, after `meshlite-proxy init`) in its pods;
//! - [`apps`] runs the upstream applications (HTTP echo, TCP echo) the sidecars front;
//! - [`grpc`] is a tiny gRPC echo service (hand-written prost messages) and its tonic client;
//! - [`jwt`] is an end users' identity provider: signing keys, tokens, a `jwksUri` server;
//! - [`ext_authz`] runs external authorizers speaking Envoy's ext_authz protocols (gRPC and
//!   HTTP), for AuthorizationPolicy CUSTOM actions;
//! - [`pki`] issues SPIFFE certificates with the proxy's own development CA;
//! - [`clients`] sends HTTP/1.1, h2c and gRPC requests through a sidecar;
//! - [`compose`] builds meshlite's images and runs `docker/compose.yaml` on a Docker engine;
//! - [`wire`] speaks raw HTTP/1.1 on a socket for requests no well-behaved client would send;
//! - [`payload`] makes and checks the deterministic bytes of large streamed bodies;
//! - [`prometheus`] reads the proxies' metrics text;
//! - [`tracing`] runs trace collectors (OTLP/gRPC and Zipkin) and an app that calls on;
//! - [`log_collector`] runs an OpenTelemetry logs collector (OTLP/gRPC), for access logs;
//! - [`tls_peers`] stands in for a sidecar whose certificate no sidecar would start with;
//! - [`deadline`] polls for a condition with a deadline instead of sleeping and hoping.
//!
//! The processes of [`control`] and [`mesh`] are started by `meshlite_bench::harness`, the one
//! launcher of meshlite's binaries that the benchmark uses too (it lives in `meshlite-bench`,
//! which depends on neither this crate nor the control plane's library, so the arrow goes one
//! way). Neither module reaches into the proxy's or the control plane's internals.
#![forbid(unsafe_code)]
// A test harness: a failed expectation here is a failed test, so unwrap, expect and panic are
// how it reports (as in the tests themselves), and it times real processes with the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

pub mod apps;
pub mod clients;
pub mod compose;
pub mod control;
pub mod deadline;
pub mod ext_authz;
pub mod fake_control;
pub mod grpc;
pub mod jwt;
pub mod log_collector;
pub mod mesh;
pub mod netns;
pub mod payload;
pub mod pki;
pub mod pods;
pub mod prometheus;
pub mod tls_peers;
pub mod tracing;
pub mod wire;
