//! The parts of the `connections` scenario, each run on a fresh pair: idle connections, the
//! closed loop and churn, new mTLS connections, bodies. Each samples the pair's sidecars from
//! `/proc` at the edges of its load and returns its record, or why it could not run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshlite_proxy::identity::spiffe::SpiffeId;
use meshlite_proxy::identity::tls::Identity;
use meshlite_proxy::telemetry::metrics::TlsFailureCounter;
use rustls_pki_types::ServerName;

use super::record::{BodyRecord, HandshakeRecord, IdleRecord, LoopRecord};
use super::{
    BODY_BUDGET, BODY_TIMEOUT, BODY_TRANSFERS, CHURN_CONNECTIONS, HANDSHAKE_CONCURRENCY,
    Implementation, MAX_LOOP_RPS, Setup, body_sizes,
};
use crate::load::closed::{self, ClosedSpec};
use crate::load::handshake::{self, HandshakeSpec};
use crate::load::idle::{self, IdlePhase, IdleSpec};
use crate::load::transfer::{self, Direction, TransferSpec};
use crate::load::{LoadError, Protocol};
use crate::procfs::{self, ProcError, Snapshot};
use crate::sidecar::RunningPair;
use crate::sidecar::pki::{CLIENT_ID, MeshPki, SERVER_DNS, SERVER_ID};

/// CPU seconds of (client, server) over a window, and its length.
struct Window {
    start: Snapshot,
}

impl Window {
    fn open(pair: &RunningPair) -> Result<Self, String> {
        Ok(Self {
            start: Snapshot::take(&pair.pids()).map_err(|e| e.to_string())?,
        })
    }

    /// (client, server) cores and the window's seconds.
    fn close(self, pair: &RunningPair) -> Result<([f64; 2], f64), String> {
        let end = Snapshot::take(&pair.pids()).map_err(|e| e.to_string())?;
        let usage = procfs::usage(&self.start, &end);
        let core = |i: usize| usage.cores.get(i).copied().unwrap_or(0.0);
        Ok(([core(0), core(1)], usage.seconds))
    }
}

fn rss(pair: &RunningPair) -> Result<[u64; 2], ProcError> {
    let [c, s] = pair.pids();
    Ok([procfs::rss_kb(c)?, procfs::rss_kb(s)?])
}

fn load_err(e: LoadError) -> String {
    e.to_string()
}

/// A few requests through the pair, so its pools and caches exist before a baseline.
fn warm(setup: &Setup, pair: &RunningPair) -> Result<(), String> {
    let warm = closed::run(ClosedSpec {
        target: pair.entry,
        authority: pair.authority.clone(),
        protocol: Protocol::Http1,
        connections: 1,
        duration: Duration::from_secs(5),
        max_requests: 50,
        request_timeout: setup.args.request_timeout,
        fresh_connections: false,
        pin_cpu: None,
    })
    .map_err(load_err)?;
    if warm.ok == 0 {
        return Err(format!("warm-up requests failed: {:?}", warm.error_samples));
    }
    Ok(())
}

pub(super) fn per_connection(before: u64, after: u64, connections: usize) -> f64 {
    if connections == 0 {
        return 0.0;
    }
    (after as f64 - before as f64) / connections as f64
}

/// Many idle keep-alive connections through the client sidecar.
pub(super) fn idle_part(setup: &Setup, pair: &RunningPair) -> Result<IdleRecord, String> {
    let args = setup.args;
    warm(setup, pair)?;
    let before = rss(pair).map_err(|e| e.to_string())?;
    let connections = args.idle_connections as usize;
    let running = idle::start(IdleSpec {
        target: pair.entry,
        authority: pair.authority.clone(),
        connections,
        interval: args.idle_interval,
        rounds: args.idle_rounds,
        request_timeout: args.request_timeout,
    })
    .map_err(load_err)?;
    let open_bound = args.request_timeout * (connections / idle::OPEN_AT_ONCE + 2) as u32
        + Duration::from_secs(30);
    let opened = running.next_phase(open_bound);
    let window = match opened {
        Some(IdlePhase::Opened { .. }) => Window::open(pair),
        _ => Err("the connections did not open in time".to_string()),
    };
    let held_bound = args.idle_interval * args.idle_rounds + args.request_timeout * 2;
    let held = running.next_phase(held_bound + Duration::from_secs(30));
    let sampled = match (window, held) {
        (Ok(w), Some(IdlePhase::Held)) => {
            let cpu = w.close(pair);
            let after = rss(pair).map_err(|e| e.to_string());
            cpu.and_then(|c| after.map(|a| (c, a)))
        }
        (Err(e), _) => Err(e),
        _ => Err("the held rounds did not end in time".to_string()),
    };
    running.release();
    let result = running.finish().map_err(load_err)?;
    let (([client_cores, server_cores], seconds), after) = sampled?;
    Ok(IdleRecord {
        connections,
        opened: result.opened,
        held: result.held,
        requests_ok: result.ok,
        errors: result.errors,
        interval_s: args.idle_interval.as_secs_f64(),
        held_s: seconds,
        client_rss_before_kb: before[0],
        client_rss_held_kb: after[0],
        client_kb_per_connection: per_connection(before[0], after[0], result.opened),
        server_rss_before_kb: before[1],
        server_rss_held_kb: after[1],
        server_kb_per_connection: per_connection(before[1], after[1], result.opened),
        client_idle_cores: client_cores,
        server_idle_cores: server_cores,
        first_error: result.first_error,
    })
}

pub(super) fn ms_per(cores: f64, seconds: f64, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        cores * seconds * 1000.0 / count as f64
    }
}

/// A closed loop through the pair; with `fresh`, a new app connection per request.
pub(super) fn loop_part(
    setup: &Setup,
    pair: &RunningPair,
    fresh: bool,
) -> Result<LoopRecord, String> {
    let args = setup.args;
    warm(setup, pair)?;
    let connections = if fresh {
        CHURN_CONNECTIONS
    } else {
        args.connections as usize
    };
    let window = Window::open(pair)?;
    let result = closed::run(ClosedSpec {
        target: pair.entry,
        authority: pair.authority.clone(),
        protocol: Protocol::Http1,
        connections,
        duration: args.duration,
        max_requests: (args.duration.as_secs_f64().ceil() as u64).max(1) * MAX_LOOP_RPS,
        request_timeout: args.request_timeout,
        fresh_connections: fresh,
        pin_cpu: None,
    })
    .map_err(load_err)?;
    let ([client, server], seconds) = window.close(pair)?;
    Ok(LoopRecord {
        connections,
        fresh_connections: fresh,
        ok: result.ok,
        errors: result.errors,
        seconds: result.seconds,
        rps: result.rps(),
        p50_ms: result.quantile_ms(0.5),
        p99_ms: result.quantile_ms(0.99),
        connections_opened: result.connections_opened,
        client_cores: client,
        server_cores: server,
        client_cpu_ms_per_request: ms_per(client, seconds, result.ok),
        server_cpu_ms_per_request: ms_per(server, seconds, result.ok),
        error_samples: result.error_samples,
    })
}

/// The client sidecar's TLS configuration, made by meshlite's own code from the client's files.
fn client_tls(pki: &MeshPki, alpn: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
    let id = SpiffeId::parse(CLIENT_ID).map_err(|e| e.to_string())?;
    let server = SpiffeId::parse(SERVER_ID).map_err(|e| e.to_string())?;
    let identity = Identity::from_files(
        &id,
        &pki.client_cert,
        &pki.client_key,
        &pki.root,
        TlsFailureCounter::default(),
    )
    .map_err(|e| format!("client identity: {e}"))?;
    Ok(Arc::new(identity).client_config(Arc::from([server]), alpn))
}

/// New mutual-TLS connections into the server sidecar.
pub(super) fn handshake_part(
    setup: &Setup,
    imp: &Implementation,
    pair: &RunningPair,
) -> Result<HandshakeRecord, String> {
    let args = setup.args;
    let target = pair
        .server_mtls
        .ok_or("the server sidecar's mTLS address is unknown")?;
    let server_name = ServerName::try_from(SERVER_DNS)
        .map_err(|e| e.to_string())?
        .to_owned();
    let window = Window::open(pair)?;
    let result = handshake::run(&HandshakeSpec {
        target,
        server_name,
        authority: pair.authority.clone(),
        tls: client_tls(&setup.pki, imp.alpn())?,
        concurrency: HANDSHAKE_CONCURRENCY,
        duration: args.duration,
        max_connections: (args.duration.as_secs_f64().ceil() as u64).max(1) * 20_000,
        timeout: args.request_timeout,
    })
    .map_err(load_err)?;
    let ([_, server], seconds) = window.close(pair)?;
    Ok(HandshakeRecord {
        concurrency: HANDSHAKE_CONCURRENCY,
        ok: result.ok,
        resumed: result.resumed,
        errors: result.errors,
        per_second: result.per_second(),
        server_cores: server,
        server_cpu_ms_per_connection: ms_per(server, seconds, result.ok),
        first_error: result.first_error,
    })
}

/// Large bodies each way through the pair.
pub(super) fn bodies_part(setup: &Setup, pair: &RunningPair) -> Result<Vec<BodyRecord>, String> {
    warm(setup, pair)?;
    let mut out = Vec::new();
    for size in body_sizes(setup.args) {
        for direction in [Direction::Upload, Direction::Download] {
            let count = (BODY_BUDGET / size.max(1)).clamp(BODY_TRANSFERS.0, BODY_TRANSFERS.1);
            let window = Window::open(pair)?;
            let result = transfer::run(&TransferSpec {
                target: pair.entry,
                authority: pair.authority.clone(),
                direction,
                size,
                count: u32::try_from(count).unwrap_or(u32::MAX),
                deadline: Instant::now() + BODY_TIMEOUT,
                timeout: BODY_TIMEOUT,
            })
            .map_err(load_err)?;
            let ([client, server], seconds) = window.close(pair)?;
            let gib = result.bytes as f64 / (1024.0 * 1024.0 * 1024.0);
            let per_gib = |cores: f64| {
                if gib > 0.0 {
                    cores * seconds / gib
                } else {
                    0.0
                }
            };
            out.push(BodyRecord {
                direction: direction.name().into(),
                size_bytes: size,
                ok: result.ok,
                errors: result.errors,
                bytes: result.bytes,
                seconds: result.seconds,
                gbit_per_s: if result.seconds > 0.0 {
                    result.bytes as f64 * 8.0 / result.seconds / 1e9
                } else {
                    0.0
                },
                client_cpu_s_per_gib: per_gib(client),
                server_cpu_s_per_gib: per_gib(server),
                first_error: result.first_error,
            });
        }
    }
    Ok(out)
}
