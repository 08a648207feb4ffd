//! meshlite-bench: the end-to-end benchmark of the meshlite data plane.
//!
//! The binary starts real processes on loopback (an upstream app it ships, a client-side and a
//! server-side sidecar) and drives open-loop, fixed-rate load through them, first directly to the
//! app and then through the mutual-TLS sidecar pair, so that the difference is the latency the mesh
//! adds. Latency is counted from each request's *intended* send time (no coordinated omission),
//! CPU and peak memory of every sidecar come from `/proc`, and the figures are printed beside the
//! targets of the decision record (and optionally beside an HAProxy sidecar pair run the same way).
//!
//! Layout: one module per scenario under [`scenario`], and shared modules for load generation
//! ([`load`]), process management ([`process`]), the launcher of meshlite's own binaries that the
//! end-to-end tests use too ([`harness`]), `/proc` sampling ([`procfs`]), the sidecars under
//! test ([`sidecar`]), the upstream app ([`app`]), one-shot HTTP probes of apps and sidecars
//! ([`probe`]), the trace collector traced sidecars report to ([`collector`]) and the report
//! ([`report`]); [`netns`] makes pods as network namespaces (the `pods` scenario, and the
//! capture tests of `meshlite-tests`).
#![forbid(unsafe_code)]
// The benchmark times real processes: the real clock (`std::time::Instant`) is the one meant.
#![allow(clippy::disallowed_methods)]

pub mod app;
pub mod callgrind;
pub mod cli;
pub mod collector;
pub mod harness;
pub mod load;
pub mod netns;
pub mod probe;
pub mod process;
pub mod procfs;
pub mod report;
pub mod scenario;
pub mod sidecar;
