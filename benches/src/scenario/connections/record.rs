//! What the `connections` scenario reports for one sidecar pair, and its tables: one row per
//! pair and repetition in each table, meshlite and its peer side by side.

use serde::Serialize;
use std::fmt::Write as _;

/// One pair's figures in one repetition. A part that could not run has `None` and its reason
/// in `failures`.
#[derive(Debug, Clone, Serialize)]
pub struct PairRecord {
    /// `meshlite` or `haproxy`.
    pub implementation: String,
    /// The implementation's version line, where known.
    pub version: String,
    /// 1-based repetition.
    pub repetition: u32,
    /// Many idle keep-alive connections.
    pub idle: Option<IdleRecord>,
    /// Closed loop over keep-alive connections: the most requests per second.
    pub closed_loop: Option<LoopRecord>,
    /// Closed loop with a new connection per request (`Connection: close`).
    pub churn: Option<LoopRecord>,
    /// New mutual-TLS connections into the server sidecar, one request each.
    pub mtls_handshakes: Option<HandshakeRecord>,
    /// Large bodies each way.
    pub bodies: Vec<BodyRecord>,
    /// Why parts did not run.
    pub failures: Vec<String>,
}

/// Many idle connections held through the client sidecar.
#[derive(Debug, Clone, Serialize)]
pub struct IdleRecord {
    /// Connections asked for.
    pub connections: usize,
    /// Connections that opened and answered their first request.
    pub opened: usize,
    /// Connections that answered every request without being reopened.
    pub held: usize,
    /// Requests answered (first ones and the slow rounds).
    pub requests_ok: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Seconds between two requests of one connection.
    pub interval_s: f64,
    /// Length of the held window, seconds.
    pub held_s: f64,
    /// Client sidecar: resident set before the connections, kB.
    pub client_rss_before_kb: u64,
    /// Client sidecar: resident set with every connection open, after the rounds, kB.
    pub client_rss_held_kb: u64,
    /// Client sidecar: resident set added per open connection, kB.
    pub client_kb_per_connection: f64,
    /// Server sidecar: the same, kB (it sees the client side's pooled connections only).
    pub server_rss_before_kb: u64,
    /// Server sidecar: resident set after the rounds, kB.
    pub server_rss_held_kb: u64,
    /// Server sidecar: resident set added per open downstream connection, kB.
    pub server_kb_per_connection: f64,
    /// Client sidecar CPU while holding (the slow requests included), cores.
    pub client_idle_cores: f64,
    /// Server sidecar CPU while holding, cores.
    pub server_idle_cores: f64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// A closed-loop run through the pair.
#[derive(Debug, Clone, Serialize)]
pub struct LoopRecord {
    /// Concurrent connections of the loop.
    pub connections: usize,
    /// Whether every request opened a new connection.
    pub fresh_connections: bool,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Requests per second.
    pub rps: f64,
    /// Latency p50, ms.
    pub p50_ms: f64,
    /// Latency p99, ms.
    pub p99_ms: f64,
    /// Connections the generator opened (one per request with `fresh_connections`).
    pub connections_opened: u64,
    /// Client sidecar CPU, cores.
    pub client_cores: f64,
    /// Server sidecar CPU, cores.
    pub server_cores: f64,
    /// Client sidecar CPU per request (per new connection with churn), ms.
    pub client_cpu_ms_per_request: f64,
    /// Server sidecar CPU per request, ms.
    pub server_cpu_ms_per_request: f64,
    /// The first failures, if any.
    pub error_samples: Vec<String>,
}

/// New mutual-TLS connections into the server sidecar.
#[derive(Debug, Clone, Serialize)]
pub struct HandshakeRecord {
    /// Connections at a time.
    pub concurrency: usize,
    /// Connections that completed and were answered.
    pub ok: u64,
    /// Of those, handshakes that resumed an earlier session (TLS 1.3 PSK).
    pub resumed: u64,
    /// Connections that failed.
    pub errors: u64,
    /// New connections per second.
    pub per_second: f64,
    /// Server sidecar CPU, cores.
    pub server_cores: f64,
    /// Server sidecar CPU per new connection (handshake, request, close), ms.
    pub server_cpu_ms_per_connection: f64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// Large bodies one way through the pair.
#[derive(Debug, Clone, Serialize)]
pub struct BodyRecord {
    /// `upload` (request body) or `download` (response body).
    pub direction: String,
    /// Bytes per body.
    pub size_bytes: u64,
    /// Transfers that arrived whole.
    pub ok: u32,
    /// Transfers that failed or came short.
    pub errors: u32,
    /// Body bytes moved by the whole transfers.
    pub bytes: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Throughput, Gbit/s.
    pub gbit_per_s: f64,
    /// Client sidecar CPU per GiB moved, seconds.
    pub client_cpu_s_per_gib: f64,
    /// Server sidecar CPU per GiB moved, seconds.
    pub server_cpu_s_per_gib: f64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

fn name(r: &PairRecord) -> String {
    format!("{} #{}", r.implementation, r.repetition)
}

/// Renders every table.
pub fn render(records: &[PairRecord]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nIdle keep-alive connections through the client sidecar (RSS added per open connection; CPU while held)"
    );
    let _ = writeln!(
        out,
        "{:<12} {:>7} {:>7} {:>7} {:>12} {:>12} {:>10} {:>12} {:>12} {:>10} {:>8}",
        "pair",
        "conns",
        "opened",
        "held",
        "client MB",
        "client KB/c",
        "cl. cores",
        "server MB",
        "server KB/c",
        "sv. cores",
        "errors"
    );
    for r in records {
        if let Some(i) = &r.idle {
            let _ = writeln!(
                out,
                "{:<12} {:>7} {:>7} {:>7} {:>5.1}->{:<6.1} {:>12.2} {:>10.3} {:>5.1}->{:<6.1} {:>12.2} {:>10.3} {:>8}",
                name(r),
                i.connections,
                i.opened,
                i.held,
                i.client_rss_before_kb as f64 / 1024.0,
                i.client_rss_held_kb as f64 / 1024.0,
                i.client_kb_per_connection,
                i.client_idle_cores,
                i.server_rss_before_kb as f64 / 1024.0,
                i.server_rss_held_kb as f64 / 1024.0,
                i.server_kb_per_connection,
                i.server_idle_cores,
                i.errors
            );
        }
    }
    for (title, pick) in [
        (
            "Closed loop, keep-alive (each connection sends its next request when the last is answered)",
            (|r: &PairRecord| r.closed_loop.as_ref()) as fn(&PairRecord) -> Option<&LoopRecord>,
        ),
        (
            "Connection churn (a new app connection per request, Connection: close; CPU per request = per new connection)",
            |r: &PairRecord| r.churn.as_ref(),
        ),
    ] {
        let _ = writeln!(out, "\n{title}");
        let _ = writeln!(
            out,
            "{:<12} {:>6} {:>10} {:>8} {:>9} {:>9} {:>10} {:>10} {:>12} {:>12}",
            "pair",
            "conns",
            "rps",
            "errors",
            "p50 ms",
            "p99 ms",
            "cl. cores",
            "sv. cores",
            "cl. ms/req",
            "sv. ms/req"
        );
        for r in records {
            if let Some(l) = pick(r) {
                let _ = writeln!(
                    out,
                    "{:<12} {:>6} {:>10.0} {:>8} {:>9.3} {:>9.3} {:>10.3} {:>10.3} {:>12.4} {:>12.4}",
                    name(r),
                    l.connections,
                    l.rps,
                    l.errors,
                    l.p50_ms,
                    l.p99_ms,
                    l.client_cores,
                    l.server_cores,
                    l.client_cpu_ms_per_request,
                    l.server_cpu_ms_per_request
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\nNew mutual-TLS connections into the server sidecar (the bench as the client sidecar, meshlite's TLS client; one request each)"
    );
    let _ = writeln!(
        out,
        "{:<12} {:>6} {:>10} {:>9} {:>8} {:>10} {:>14}",
        "pair", "conc.", "conns/s", "resumed", "errors", "sv. cores", "sv. ms/conn"
    );
    for r in records {
        if let Some(h) = &r.mtls_handshakes {
            let resumed = if h.ok > 0 {
                h.resumed as f64 * 100.0 / h.ok as f64
            } else {
                0.0
            };
            let _ = writeln!(
                out,
                "{:<12} {:>6} {:>10.0} {:>8.1}% {:>8} {:>10.3} {:>14.4}",
                name(r),
                h.concurrency,
                h.per_second,
                resumed,
                h.errors,
                h.server_cores,
                h.server_cpu_ms_per_connection
            );
        }
    }
    let _ = writeln!(
        out,
        "\nLarge bodies, one at a time over one keep-alive connection (CPU seconds per GiB moved)"
    );
    let _ = writeln!(
        out,
        "{:<12} {:<9} {:>9} {:>5} {:>7} {:>9} {:>12} {:>12}",
        "pair", "way", "size MiB", "ok", "errors", "Gbit/s", "cl. s/GiB", "sv. s/GiB"
    );
    for r in records {
        for b in &r.bodies {
            let _ = writeln!(
                out,
                "{:<12} {:<9} {:>9.0} {:>5} {:>7} {:>9.2} {:>12.3} {:>12.3}",
                name(r),
                b.direction,
                b.size_bytes as f64 / (1024.0 * 1024.0),
                b.ok,
                b.errors,
                b.gbit_per_s,
                b.client_cpu_s_per_gib,
                b.server_cpu_s_per_gib
            );
        }
    }
    for r in records {
        for f in &r.failures {
            let _ = writeln!(out, "{} failed: {f}", name(r));
        }
    }
    out
}
