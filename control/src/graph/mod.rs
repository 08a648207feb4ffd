//! The live service graph: who calls whom in the mesh, with request rate, error rate, p99
//! latency and mTLS status per edge, as Kiali draws it, computed from what the sidecars
//! themselves report.
//!
//! Kiali asks Prometheus; meshlite's control plane needs no Prometheus: it already knows every
//! connected sidecar, and each sidecar announces where its `/stats/prometheus` is
//! (`METRICS_ADDRESS` in its node metadata, accepted only on the IP of its inbound address, so
//! a sidecar can point the control plane at nothing but itself). The [`collect`] loop scrapes
//! them every interval (a timeout per scrape, a few at a time, a bounded body), reads Istio's
//! standard metrics ([`exposition`]), keeps two readings per sidecar and turns the difference
//! into rates ([`build`]):
//!
//! - nodes are workloads (`namespace/workload`), `unknown` for callers from outside the mesh,
//!   and destination services no workload answered for (external services, or requests that
//!   failed before reaching one);
//! - an edge is (source workload, destination workload, destination service), measured from
//!   the destination's reports when there are any and from the source's otherwise, as Kiali
//!   does; request rate, the share of 5xx (gRPC: non-OK status), p99 from the duration
//!   histogram's buckets (Prometheus' `histogram_quantile`), TCP bytes per second, and mTLS
//!   from `connection_security_policy` on destination reports.
//!
//! The monitoring port serves it as JSON (`/graph`), Graphviz DOT (`/graph.dot`) and a page
//! that draws it (`/graph.html`, [`PAGE`]); `meshlite-control graph` prints it.

pub mod build;
pub mod collect;
pub mod exposition;
pub mod render;

use serde::{Deserialize, Serialize};

pub use collect::{Collector, GraphSettings};

/// The page of `/graph.html`: self-contained (inline script and SVG, no external assets), it
/// fetches `/graph` every few seconds and draws it in layers, callers on the left.
pub const PAGE: &str = include_str!("page.html");

/// The id of the node for callers from outside the mesh (Istio's `unknown` source workload).
pub const UNKNOWN: &str = "unknown";

/// The service graph at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// When it was computed (RFC 3339, UTC); empty before the first round.
    pub generated_at: String,
    /// Seconds the rates are averaged over (the time between a sidecar's two readings, the
    /// longest of them); `None` until a sidecar has been read twice.
    pub window_s: Option<f64>,
    /// Workloads and services, sorted by id.
    pub nodes: Vec<Node>,
    /// Calls, sorted by source, destination and service.
    pub edges: Vec<Edge>,
    /// How the last round of scrapes went.
    pub scrapes: ScrapeSummary,
}

/// What a node stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A workload of the mesh.
    Workload,
    /// A destination service no workload of the mesh answered for.
    Service,
    /// Callers from outside the mesh.
    Unknown,
}

/// A node of the graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// `namespace/workload`, the service's host for a service, `unknown`.
    pub id: String,
    /// What it is.
    pub kind: NodeKind,
    /// Namespace (empty for `unknown`).
    pub namespace: String,
    /// Workload name, service host, or `unknown`.
    pub name: String,
    /// Its `app` label, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Its `version` label, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Whether a sidecar of it is connected to this control plane.
    pub sidecar: bool,
}

/// A call edge: source workload -> destination workload, for one destination service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    /// Source node id.
    pub source: String,
    /// Destination node id.
    pub destination: String,
    /// The destination service (FQDN, as `destination_service`).
    pub destination_service: String,
    /// `http`, `grpc` or `tcp`.
    pub protocol: String,
    /// Whose reports the figures are from: `destination` when its sidecar reported, else
    /// `source`.
    pub reporter: String,
    /// Requests per second over the window (0 for TCP).
    pub rps: f64,
    /// Share of those requests that failed (5xx; gRPC: non-OK status), 0 to 1; `None` when
    /// there were none.
    pub error_rate: Option<f64>,
    /// 99th percentile of request duration over the window, milliseconds.
    pub p99_ms: Option<f64>,
    /// TCP bytes per second from the source to the destination.
    pub tcp_sent_bps: f64,
    /// TCP bytes per second back to the source.
    pub tcp_received_bps: f64,
    /// TCP connections opened per second.
    pub tcp_connections_per_s: f64,
    /// Whether every request and connection the destination reported came over mutual TLS
    /// (false when it reported none, or any in plaintext).
    pub mtls: bool,
    /// The share the destination reported as mutual TLS; `None` without destination reports
    /// (a destination without a sidecar).
    pub mtls_share: Option<f64>,
}

impl Edge {
    /// Whether anything went over it during the window.
    pub fn active(&self) -> bool {
        self.rps > 0.0 || self.tcp_sent_bps > 0.0 || self.tcp_received_bps > 0.0
    }
}

/// How the last round of scrapes went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScrapeSummary {
    /// Seconds between rounds; `None` when the collector is off.
    pub interval_s: Option<f64>,
    /// Sidecars that announced a metrics address.
    pub targets: usize,
    /// Of those, read successfully.
    pub ok: usize,
    /// Those that could not be read, and why.
    pub failed: Vec<ScrapeFailure>,
}

/// A sidecar whose metrics could not be read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScrapeFailure {
    /// Its node id.
    pub proxy: String,
    /// The address tried.
    pub address: String,
    /// Why.
    pub error: String,
}
