//! Scenario `control`: how fast the control plane reaches every proxy, and what it costs.
//!
//! For each N of `--proxies` a fresh release `meshlite-control` serves a generated config of
//! `--services` MESH_INTERNAL ServiceEntries, 50 of them routed by a VirtualService with two
//! weighted subsets and a DestinationRule. N simulated proxies live in this process as tokio tasks:
//! each makes its own P-256 key and CSR and asks the CA for a certificate with a bootstrap token
//! (bounded concurrency; the wall time gives the signing rate), then opens a delta ADS stream over
//! mutual TLS with that certificate, announces a workload like a real sidecar (so it is also an
//! endpoint), subscribes to every type and ACKs every response, as `meshlite-proxy` does.
//!
//! Once every proxy holds its initial state and the pushes have settled, the benchmark edits one
//! VirtualService file at a time (`--changes`, `--change-interval` apart), flipping its weights.
//! Convergence of a proxy for an edit is the time from the file write to that proxy receiving the
//! RouteTable with the new weights: file watch, validation, debounce (Istio's 100 ms default),
//! translation and the push are all inside it, as they are in istiod's `pilot_proxy_convergence_time`.
//! The control plane's peak RSS (VmHWM) and CPU (utime + stime) come from `/proc`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use meshlite_proxy::control_client::{
    ControlEndpoint, Credential, node_metadata as keys, request_certificate,
};
use meshlite_proxy::identity::spiffe::SpiffeId;
use meshlite_proxy::identity::tls::Identity;
use meshlite_proxy::telemetry::metrics::TlsFailureCounter;
use meshlite_xds_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use meshlite_xds_proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use meshlite_xds_proto::{type_url, v1};
use prost::Message as _;
use prost_types::{ListValue, Struct, Value, value::Kind};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::cli::BenchArgs;
use crate::harness::{ControlPlaneLaunch, ControlPlaneProcess, HarnessError};
use crate::process::{self, BinaryError};
use crate::procfs::{self, ProcError, Snapshot};
use crate::report::{self, ReportError};

/// Proxies per run when `--proxies` is not given.
pub const DEFAULT_PROXIES: [u32; 2] = [100, 1_000];
/// Services that get a VirtualService and a DestinationRule (the rest are plain entries).
const ROUTED_SERVICES: u32 = 50;
/// Namespace of everything the benchmark makes.
const NAMESPACE: &str = "bench";
/// Trust domain of the control plane (its default).
const TRUST_DOMAIN: &str = "cluster.local";
/// Distinct proxy identities (service accounts); proxies share them round-robin.
const IDENTITIES: u32 = 10;
/// Certificate requests in flight at once.
const CSR_CONCURRENCY: usize = 16;
/// TLS handshakes of ADS streams in flight at once (stays well inside the listen backlog).
const CONNECT_CONCURRENCY: usize = 64;
/// Connect attempts of one simulated proxy before it counts as failed.
const CONNECT_ATTEMPTS: u32 = 6;
/// First retry delay; it doubles with every attempt (0.2 s .. 3.2 s).
const CONNECT_RETRY_BASE: Duration = Duration::from_millis(200);
/// Lifetime asked for the simulated proxies' certificates.
const CERT_TTL: Duration = Duration::from_secs(3600);
/// How long the control plane may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on the CSR phase.
const CSR_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on the initial sync: a base plus this much per proxy.
const SYNC_TIMEOUT_BASE: Duration = Duration::from_secs(30);
/// See [`SYNC_TIMEOUT_BASE`].
const SYNC_TIMEOUT_PER_PROXY: Duration = Duration::from_millis(60);
/// Pushes have settled when no proxy received anything for this long.
const SETTLE_QUIET: Duration = Duration::from_secs(1);
/// Bound on waiting for the pushes to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// An edit not seen by every proxy within this is reported as not converged.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the benchmark polls the shared counters (clients stamp their own times).
const POLL: Duration = Duration::from_millis(5);
/// File descriptors this process needs beyond one per proxy.
const SPARE_FDS: u64 = 256;

/// Our targets (issue): convergence p99 at 1,000 proxies, and control-plane RSS.
const TARGET_P99_MS: f64 = 1_000.0;
/// See [`TARGET_P99_MS`].
const TARGET_RSS_MB: f64 = 150.0;
/// Anchor: istiod's documented footprint (Istio performance and scalability page) for about
/// 1,000 services and 2,000 sidecars.
const ISTIOD_ANCHOR: &str = "istiod: ~1 vCPU and ~1.5 GB for ~1,000 services / 2,000 sidecars";

/// Why the scenario could not run.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The run directory or a config file could not be written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The control-plane binary could not be found or built.
    #[error("meshlite-control binary: {0}")]
    Binary(#[from] BinaryError),
    /// The control plane failed to start, or a token could not be made.
    #[error(transparent)]
    Harness(#[from] HarnessError),
    /// A step of the run failed (tokens, CSRs, streams, sync).
    #[error("{0}")]
    Run(String),
    /// /proc could not be read.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// The JSON could not be written.
    #[error(transparent)]
    Report(#[from] ReportError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ControlError {
    let what = what.into();
    move |source| ControlError::Io { what, source }
}

/// The figures of one run (one N).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ControlRun {
    /// Simulated proxies.
    pub proxies: u32,
    /// ServiceEntries in the config (the proxies' own workloads add a service per identity).
    pub services: u32,
    /// Services of the mesh as the control plane counts them.
    pub mesh_services: Option<u64>,
    /// Edits made.
    pub changes: u32,
    /// Convergence samples received (proxies x changes when everything converged).
    pub converged: usize,
    /// Samples expected.
    pub expected: usize,
    /// Convergence (edit written -> proxy received the new route), median, ms.
    pub convergence_p50_ms: f64,
    /// The same at p99, ms.
    pub convergence_p99_ms: f64,
    /// The slowest, ms.
    pub convergence_max_ms: f64,
    /// The control plane's own `pilot_proxy_convergence_time` (per proxy: change seen -> that
    /// proxy ACKed it) over the edits: mean, ms.
    pub control_reported_convergence_mean_ms: Option<f64>,
    /// From the first ADS connect until every proxy held every type, ms.
    pub initial_sync_ms: f64,
    /// Certificates signed per second (N requests, CSR_CONCURRENCY in flight, over TLS).
    pub csr_per_s: f64,
    /// Control-plane CPU per certificate, ms.
    pub control_cpu_ms_per_csr: f64,
    /// Peak RSS (VmHWM) of the control plane over the whole run, MB (10^6 bytes).
    pub control_rss_peak_mb: f64,
    /// RSS (VmRSS) of the control plane after the edits, MB: what it holds in steady state.
    pub control_rss_end_mb: f64,
    /// Control-plane CPU during the edits window, cores.
    pub control_cpu_cores: f64,
    /// Control-plane CPU per edit (the window's CPU divided by the edits), seconds.
    pub control_cpu_s_per_change: f64,
    /// Control-plane CPU during the initial sync, cores.
    pub control_cpu_cores_sync: f64,
    /// This process (all simulated proxies) during the edits window, cores.
    pub generator_cpu_cores: f64,
    /// Everything else on the machine during the edits window, cores.
    pub other_load_cores: f64,
    /// Responses received by all proxies during the whole run.
    pub responses: u64,
    /// ADS connects that failed (timed out) and were retried during the initial sync.
    pub connect_retries: u64,
}

/// Runs the scenario, prints the table, writes the JSON; returns false if some edit did not
/// reach every proxy in time.
pub fn run(args: &BenchArgs) -> Result<bool, ControlError> {
    let proxies: Vec<u32> = if args.proxies.is_empty() {
        DEFAULT_PROXIES.to_vec()
    } else {
        args.proxies.clone()
    };
    let most = proxies.iter().copied().max().unwrap_or(0);
    let limit = raise_fd_limit(2 * u64::from(most) + SPARE_FDS)?;
    let binary = process::locate_or_build("meshlite-control", "meshlite-control", CONTROL_BIN_ENV)?;
    let temp = tempfile::Builder::new()
        .prefix("meshlite-bench-control-")
        .tempdir()
        .map_err(io("cannot create the run directory"))?;
    println!(
        "meshlite-bench control: {} ({}); proxies {:?}, {} services ({} routed), {} edits {:?} apart; \
         {} CPUs; open files limit {limit} (inherited by the control plane)",
        binary.path.display(),
        binary.origin,
        proxies,
        args.services,
        ROUTED_SERVICES.min(args.services),
        args.changes,
        args.change_interval,
        procfs::cpu_count(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io("cannot start the runtime"))?;
    let mut runs = Vec::new();
    for &n in &proxies {
        let dir = temp.path().join(format!("n{n}"));
        let settings = Settings {
            binary: binary.path.clone(),
            dir,
            proxies: n,
            services: args.services,
            changes: args.changes,
            interval: args.change_interval,
        };
        let record = run_once(&runtime, &settings)?;
        runs.push(record);
    }
    println!("{}", render(&runs));
    if let Some(path) = &args.json {
        report::write_runs(path, "control", &runs)?;
    }
    if args.keep_dir {
        println!("run directory kept: {}", temp.keep().display());
    }
    Ok(runs.iter().all(|r| r.converged == r.expected))
}

/// Environment variable naming the control-plane binary to use (no build then).
pub const CONTROL_BIN_ENV: &str = "MESHLITE_CONTROL_BIN";

/// What one run needs.
struct Settings {
    binary: PathBuf,
    dir: PathBuf,
    proxies: u32,
    services: u32,
    changes: u32,
    interval: Duration,
}

/// Raises this process's open-file soft limit to the hard limit (children, the control plane
/// among them, inherit it); fails if even the hard limit is below `need`.
fn raise_fd_limit(need: u64) -> Result<u64, ControlError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let fail = |e: nix::Error| ControlError::Run(format!("RLIMIT_NOFILE: {e}"));
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(fail)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(fail)?;
    }
    if hard < need {
        return Err(ControlError::Run(format!(
            "this many proxies need about {need} open files, the hard limit is {hard} (raise it with `ulimit -Hn`)"
        )));
    }
    Ok(hard)
}

// ---------------------------------------------------------------- the generated configuration

fn service_name(i: u32) -> String {
    format!("svc-{i:04}")
}

fn service_host(i: u32) -> String {
    format!("{}.{NAMESPACE}.svc.cluster.local", service_name(i))
}

/// All ServiceEntries, one document each: port 8080 HTTP, one or two endpoints (two, labelled
/// `version: v1`/`v2`, for the routed ones) with a service account.
fn service_entries(services: u32) -> String {
    let mut out = String::new();
    for i in 0..services {
        let name = service_name(i);
        let (a, b) = (1 + i / 250, i % 250);
        let _ = write!(
            out,
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
             spec:\n  hosts: [{host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n\
             \x20 ports: [{{number: 8080, name: http, protocol: HTTP}}]\n  endpoints:\n\
             \x20 - {{address: 10.{a}.{b}.1, serviceAccount: {name}, labels: {{version: v1}}}}\n",
            host = service_host(i),
        );
        if i < ROUTED_SERVICES || i.is_multiple_of(2) {
            let _ = writeln!(
                out,
                "  - {{address: 10.{a}.{b}.2, serviceAccount: {name}, labels: {{version: v2}}}}"
            );
        }
    }
    out
}

/// The DestinationRules of the routed services: subsets `v1` and `v2` by the `version` label.
fn destination_rules(routed: u32) -> String {
    let mut out = String::new();
    for i in 0..routed {
        let _ = write!(
            out,
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
             spec:\n  host: {host}\n  subsets:\n\
             \x20 - {{name: v1, labels: {{version: v1}}}}\n\
             \x20 - {{name: v2, labels: {{version: v2}}}}\n",
            name = service_name(i),
            host = service_host(i),
        );
    }
    out
}

/// The VirtualService of routed service `i`: `v1_weight`% to v1, the rest to v2.
fn virtual_service(i: u32, v1_weight: u32) -> String {
    let host = service_host(i);
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
         spec:\n  hosts: [{host}]\n  http:\n  - route:\n\
         \x20   - {{destination: {{host: {host}, subset: v1}}, weight: {v1_weight}}}\n\
         \x20   - {{destination: {{host: {host}, subset: v2}}, weight: {}}}\n",
        100 - v1_weight,
        name = service_name(i),
    )
}

fn vs_file(i: u32) -> String {
    format!("vs-{}.yaml", service_name(i))
}

/// Initial `v1` weight of every VirtualService.
const INITIAL_V1_WEIGHT: u32 = 90;

/// The edits: edit `k` (0-based) flips the weights of routed service `k % routed`.
#[derive(Debug)]
struct Edits {
    weights: Vec<u32>,
}

/// One edit: which service, its new `v1` weight.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Edit {
    service: u32,
    v1_weight: u32,
}

impl Edits {
    fn new(routed: u32) -> Self {
        Self {
            weights: vec![INITIAL_V1_WEIGHT; routed as usize],
        }
    }

    /// Edit number `k`; always a content change (90/10 <-> 10/90).
    fn next(&mut self, k: u32) -> Edit {
        let service = k % self.weights.len().max(1) as u32;
        let w = &mut self.weights[service as usize];
        *w = 100 - *w;
        Edit {
            service,
            v1_weight: *w,
        }
    }
}

/// Writes the config directory.
fn write_config(dir: &Path, services: u32) -> Result<u32, ControlError> {
    std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let routed = ROUTED_SERVICES.min(services);
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(io(format!("cannot write {name}")))
    };
    write("services.yaml", service_entries(services))?;
    write("destination-rules.yaml", destination_rules(routed))?;
    for i in 0..routed {
        write(&vs_file(i), virtual_service(i, INITIAL_V1_WEIGHT))?;
    }
    Ok(routed)
}

/// Replaces a config file atomically.
fn replace_file(dir: &Path, name: &str, text: &str) -> Result<(), ControlError> {
    crate::harness::replace_config_file(dir, name, text)
        .map_err(io(format!("cannot replace {name}")))
}

// ---------------------------------------------------------------- the simulated proxies

/// What an edit must produce at every proxy.
#[derive(Debug, Clone)]
struct Expect {
    change: u32,
    host: String,
    v1_weight: u32,
    written: Instant,
}

/// State shared by the simulated proxies and the benchmark.
struct Shared {
    /// Proxies holding a first answer for every type.
    ready: AtomicUsize,
    /// Proxies whose stream failed.
    failed: AtomicUsize,
    /// Connect attempts that failed and were retried.
    retries: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// The edit in flight.
    expect: RwLock<Option<Expect>>,
    /// Proxies that received the edit in flight.
    converged: AtomicUsize,
    /// (edit, write -> received).
    samples: Mutex<Vec<(u32, Duration)>>,
    /// Responses received, and when the last one arrived (ns since `base`).
    responses: AtomicU64,
    last_response_ns: AtomicU64,
    base: Instant,
}

impl Shared {
    fn new() -> Self {
        Self {
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            retries: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
            expect: RwLock::new(None),
            converged: AtomicUsize::new(0),
            samples: Mutex::new(Vec::new()),
            responses: AtomicU64::new(0),
            last_response_ns: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    fn fail(&self, message: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() < 5 {
            f.push(message);
        }
    }

    fn first_failure(&self) -> String {
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.first().cloned().unwrap_or_default()
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_nanos(self.last_response_ns.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

fn account(k: u32) -> String {
    format!("client-{k}")
}

/// The node proxy `i` announces, as `meshlite-proxy` builds it: its workload is an endpoint of
/// service `client-K` (its service account), serving 8080/http at a unique fake address.
fn node(i: u32) -> Node {
    let sa = account(i % IDENTITIES);
    let version = if i.is_multiple_of(2) { "v1" } else { "v2" };
    let address = format!(
        "127.{}.{}.{}:15006",
        1 + (i >> 16) % 254,
        (i >> 8) & 0xff,
        i & 0xff
    );
    let fields = [
        (keys::NAME, string(&format!("proxy-{i}"))),
        (keys::NAMESPACE, string(NAMESPACE)),
        (keys::SERVICE_ACCOUNT, string(&sa)),
        (
            keys::LABELS,
            Value {
                kind: Some(Kind::StructValue(Struct {
                    fields: [("app", string(&sa)), ("version", string(version))]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                })),
            },
        ),
        (keys::INBOUND_ADDRESS, string(&address)),
        (
            keys::PORTS,
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![string("8080/http")],
                })),
            },
        ),
    ];
    Node {
        id: format!("proxy-{i}.{NAMESPACE}"),
        cluster: sa,
        metadata: Some(Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }),
        locality: None,
        user_agent_name: "meshlite-bench".into(),
    }
}

/// The `v1` weight of `host` in a RouteTable response, if the response carries it.
fn route_weight(resp: &DeltaDiscoveryResponse, host: &str) -> Option<u32> {
    let r = resp.resources.iter().find(|r| r.name == host)?;
    let table = v1::RouteTable::decode(r.resource.as_ref()?.value.as_slice()).ok()?;
    table
        .http
        .first()?
        .route
        .iter()
        .find(|d| d.subset == "v1")
        .map(|d| d.weight)
}

/// One simulated proxy: connects with its SVID, subscribes to every type, ACKs every response,
/// and stamps when it receives each edit.
async fn proxy(
    i: u32,
    endpoint: ControlEndpoint,
    identity: Arc<Identity>,
    connects: Arc<Semaphore>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    // Like meshlite-proxy, a failed connect is retried with a growing delay: when a thousand
    // proxies connect at once, some handshakes wait longer than the proxy's connect timeout.
    let mut attempt = 0;
    let channel = loop {
        let connected = {
            let _permit = connects.acquire().await.map_err(|e| e.to_string())?;
            endpoint.connect(Some(&identity)).await
        };
        match connected {
            Ok(c) => break c,
            Err(e) if attempt + 1 >= CONNECT_ATTEMPTS => {
                return Err(format!("{e} (after {CONNECT_ATTEMPTS} attempts)"));
            }
            Err(_) => {
                shared.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(CONNECT_RETRY_BASE * 2u32.pow(attempt)).await;
                attempt += 1;
            }
        }
    };
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    for (k, t) in type_url::ALL.iter().enumerate() {
        let req = DeltaDiscoveryRequest {
            node: (k == 0).then(|| node(i)),
            type_url: t.to_string(),
            ..Default::default()
        };
        tx.send(req).await.map_err(|_| "request channel closed")?;
    }
    let mut responses = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let mut answered: Vec<&str> = Vec::with_capacity(type_url::ALL.len());
    let mut last_change = None;
    loop {
        let resp = tokio::select! {
            r = responses.message() => r,
            _ = stop.changed() => return Ok(()),
        };
        let resp = match resp {
            Ok(Some(r)) => r,
            Ok(None) => return Err("the control plane closed the stream".into()),
            Err(s) => return Err(format!("stream: {:?}: {}", s.code(), s.message())),
        };
        let now = Instant::now();
        shared.responses.fetch_add(1, Ordering::Relaxed);
        shared.last_response_ns.store(
            u64::try_from(now.duration_since(shared.base).as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if resp.type_url == type_url::ROUTE_TABLE {
            let expect = shared
                .expect
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(e) = expect
                && last_change != Some(e.change)
                && route_weight(&resp, &e.host) == Some(e.v1_weight)
            {
                last_change = Some(e.change);
                shared
                    .samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((e.change, now.saturating_duration_since(e.written)));
                shared.converged.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(t) = type_url::ALL.iter().find(|t| **t == resp.type_url)
            && !answered.contains(t)
        {
            answered.push(t);
            if answered.len() == type_url::ALL.len() {
                shared.ready.fetch_add(1, Ordering::Relaxed);
            }
        }
        let ack = DeltaDiscoveryRequest {
            type_url: resp.type_url,
            response_nonce: resp.nonce,
            ..Default::default()
        };
        tx.send(ack).await.map_err(|_| "request channel closed")?;
    }
}

// ---------------------------------------------------------------- one run

/// Starts the control plane on `config`, its state in `state`, its log in the run directory.
fn start_plane(
    s: &Settings,
    config: &Path,
    state: &Path,
) -> Result<ControlPlaneProcess, ControlError> {
    Ok(ControlPlaneLaunch::new(&s.binary, &s.dir, config, state)
        .startup_timeout(START_TIMEOUT)
        .start()?)
}

/// Bootstrap tokens, one per identity, from `meshlite-control token create`.
fn tokens(plane: &ControlPlaneProcess) -> Result<Vec<String>, ControlError> {
    (0..IDENTITIES)
        .map(|k| {
            let app = format!("app={}", account(k));
            Ok(plane.token(NAMESPACE, &account(k), None, &[&app])?)
        })
        .collect()
}

/// Reads a counter-like sample (`name value`) from Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The control plane's `pilot_proxy_convergence_time` sum (s) and count so far.
fn reported_convergence(monitoring: SocketAddr) -> Option<(f64, f64)> {
    let text = http_get(monitoring, "/metrics")?;
    Some((
        metric(&text, "pilot_proxy_convergence_time_sum")?,
        metric(&text, "pilot_proxy_convergence_time_count")?,
    ))
}

/// GETs `path` from the monitoring port (HTTP/1.1, connection close).
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// Nearest-rank percentile of sorted values (`p` in 0..=100); 0 for none.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Convergence figures of the samples, in ms: p50, p99, max.
fn convergence(samples: &[(u32, Duration)]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = samples.iter().map(|(_, d)| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    (
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms.last().copied().unwrap_or(0.0),
    )
}

/// Polls `done` every [`POLL`] until it holds or `timeout` passes; returns whether it held.
async fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn cpu_seconds(ticks: u64) -> f64 {
    ticks as f64 / procfs::ticks_per_second()
}

fn run_once(runtime: &tokio::runtime::Runtime, s: &Settings) -> Result<ControlRun, ControlError> {
    let n = s.proxies;
    let config = s.dir.join("config");
    let state = s.dir.join("state");
    let routed = write_config(&config, s.services)?;
    eprintln!("[{n} proxies] starting meshlite-control");
    let plane = start_plane(s, &config, &state)?;
    let pid = plane.pid();
    let tokens = tokens(&plane)?;
    let roots_pem = std::fs::read(state.join("root-cert.pem"))
        .map_err(io("cannot read the control plane's root-cert.pem"))?;
    let roots = CertificateDer::pem_slice_iter(&roots_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ControlError::Run(format!("root-cert.pem: {e}")))?;
    let endpoint = ControlEndpoint::new(&format!("https://{}", plane.xds()), &roots)
        .map_err(|e| ControlError::Run(e.to_string()))?;
    let ids = (0..IDENTITIES)
        .map(|k| {
            SpiffeId::parse(&format!(
                "spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{}",
                account(k)
            ))
            .map_err(|e| ControlError::Run(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut record = ControlRun {
        proxies: n,
        services: s.services,
        changes: s.changes,
        ..Default::default()
    };
    let shared = Arc::new(Shared::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let result = runtime.block_on(async {
        // 1. Certificates: every proxy its own key and CSR, bounded concurrency.
        eprintln!("[{n} proxies] {n} certificate requests, {CSR_CONCURRENCY} in flight");
        let before = Snapshot::take(&[pid])?;
        let gate = Arc::new(Semaphore::new(CSR_CONCURRENCY));
        let mut csrs = tokio::task::JoinSet::new();
        for i in 0..n {
            let (endpoint, gate) = (endpoint.clone(), gate.clone());
            let id = ids[(i % IDENTITIES) as usize].clone();
            let token = tokens[(i % IDENTITIES) as usize].clone();
            let roots = roots.clone();
            csrs.spawn(async move {
                let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
                let issued =
                    request_certificate(&endpoint, &id, Credential::Token(&token), CERT_TTL)
                        .await
                        .map_err(|e| e.to_string())?;
                let identity = Identity::from_parts(
                    &id,
                    issued.chain,
                    issued.key.key_der(),
                    &roots,
                    TlsFailureCounter::default(),
                )
                .map_err(|e| e.to_string())?;
                Ok::<_, String>((i, Arc::new(identity)))
            });
        }
        let mut identities: HashMap<u32, Arc<Identity>> = HashMap::new();
        let collected = tokio::time::timeout(CSR_TIMEOUT, async {
            while let Some(r) = csrs.join_next().await {
                let (i, identity) = r.map_err(|e| e.to_string())??;
                identities.insert(i, identity);
            }
            Ok::<_, String>(())
        })
        .await;
        match collected {
            Err(_) => return Err(ControlError::Run(format!("CSRs took over {CSR_TIMEOUT:?}"))),
            Ok(Err(e)) => return Err(ControlError::Run(format!("certificate request: {e}"))),
            Ok(Ok(())) => {}
        }
        let after = Snapshot::take(&[pid])?;
        let seconds = after.at.duration_since(before.at).as_secs_f64();
        record.csr_per_s = f64::from(n) / seconds.max(1e-9);
        record.control_cpu_ms_per_csr =
            cpu_seconds(after.ticks[0].saturating_sub(before.ticks[0])) * 1e3 / f64::from(n);

        // 2. Streams: every proxy connects and takes its initial state.
        eprintln!("[{n} proxies] opening {n} ADS streams");
        let connects = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        let sync_start = Snapshot::take(&[pid])?;
        let mut streams = tokio::task::JoinSet::new();
        for i in 0..n {
            let identity = identities
                .remove(&i)
                .ok_or_else(|| ControlError::Run(format!("no identity for proxy {i}")))?;
            let (endpoint, connects, shared, stop) = (
                endpoint.clone(),
                connects.clone(),
                shared.clone(),
                stop_rx.clone(),
            );
            streams.spawn(async move {
                if let Err(e) = proxy(i, endpoint, identity, connects, shared.clone(), stop).await
                {
                    shared.fail(format!("proxy {i}: {e}"));
                }
            });
        }
        let sync_timeout = SYNC_TIMEOUT_BASE + SYNC_TIMEOUT_PER_PROXY * n;
        let synced = wait_for(sync_timeout, || {
            shared.ready.load(Ordering::Relaxed) == n as usize
                || shared.failed.load(Ordering::Relaxed) > 0
        })
        .await;
        if shared.failed.load(Ordering::Relaxed) > 0 {
            return Err(ControlError::Run(format!(
                "{} proxies failed, e.g. {}",
                shared.failed.load(Ordering::Relaxed),
                shared.first_failure()
            )));
        }
        if !synced {
            return Err(ControlError::Run(format!(
                "only {} of {n} proxies had their initial state after {sync_timeout:?}",
                shared.ready.load(Ordering::Relaxed)
            )));
        }
        let sync_end = Snapshot::take(&[pid])?;
        record.initial_sync_ms = sync_end.at.duration_since(sync_start.at).as_secs_f64() * 1e3;
        record.control_cpu_cores_sync = procfs::usage(&sync_start, &sync_end).cores[0];
        // Registrations keep publishing for a moment after the last proxy synced.
        wait_for(SETTLE_TIMEOUT, || shared.quiet_for() >= SETTLE_QUIET).await;

        // 3. Edits.
        eprintln!(
            "[{n} proxies] {} edits, {:?} apart",
            s.changes, s.interval
        );
        let mut edits = Edits::new(routed);
        let reported_before = reported_convergence(plane.monitoring());
        let window_start = Snapshot::take(&[pid])?;
        for k in 0..s.changes {
            let edit = edits.next(k);
            let started = Instant::now();
            shared.converged.store(0, Ordering::Relaxed);
            *shared.expect.write().unwrap_or_else(|p| p.into_inner()) = Some(Expect {
                change: k,
                host: service_host(edit.service),
                v1_weight: edit.v1_weight,
                written: Instant::now(),
            });
            replace_file(
                &config,
                &vs_file(edit.service),
                &virtual_service(edit.service, edit.v1_weight),
            )?;
            let all = wait_for(CONVERGE_TIMEOUT, || {
                shared.converged.load(Ordering::Relaxed) == n as usize
            })
            .await;
            if !all {
                eprintln!(
                    "[{n} proxies] edit {k}: only {} of {n} proxies received it within {CONVERGE_TIMEOUT:?}",
                    shared.converged.load(Ordering::Relaxed)
                );
            }
            if k + 1 < s.changes {
                tokio::time::sleep(s.interval.saturating_sub(started.elapsed())).await;
            }
        }
        let window_end = Snapshot::take(&[pid])?;
        let usage = procfs::usage(&window_start, &window_end);
        record.control_cpu_cores = usage.cores[0];
        record.control_cpu_s_per_change = cpu_seconds(
            window_end.ticks[0].saturating_sub(window_start.ticks[0]),
        ) / f64::from(s.changes.max(1));
        record.generator_cpu_cores = usage.own_cores;
        record.other_load_cores = usage.other_cores;
        if let (Some((sum0, count0)), Some((sum1, count1))) =
            (reported_before, reported_convergence(plane.monitoring()))
            && count1 > count0
        {
            record.control_reported_convergence_mean_ms =
                Some((sum1 - sum0) / (count1 - count0) * 1e3);
        }
        Ok(())
    });
    // Metrics and memory before anything stops.
    record.control_rss_peak_mb = procfs::peak_rss_kb(pid).unwrap_or(0) as f64 * 1024.0 / 1e6;
    record.control_rss_end_mb = procfs::rss_kb(pid).unwrap_or(0) as f64 * 1024.0 / 1e6;
    if let Some(status) = http_get(plane.monitoring(), "/debug/status")
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
    {
        record.mesh_services = status.get("services").and_then(serde_json::Value::as_u64);
    }
    let _ = stop_tx.send(true);
    // The streams end on the stop signal; the runtime keeps nothing of this run.
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
    let log_tail = plane.log_tail();
    let _ = plane.stop();
    if let Err(e) = result {
        return Err(ControlError::Run(format!(
            "{e}\nmeshlite-control log tail:\n{log_tail}"
        )));
    }
    let samples = std::mem::take(&mut *shared.samples.lock().unwrap_or_else(|p| p.into_inner()));
    record.expected = n as usize * s.changes as usize;
    record.converged = samples.len();
    (
        record.convergence_p50_ms,
        record.convergence_p99_ms,
        record.convergence_max_ms,
    ) = convergence(&samples);
    record.responses = shared.responses.load(Ordering::Relaxed);
    record.connect_retries = shared.retries.load(Ordering::Relaxed);
    eprintln!(
        "[{n} proxies] convergence p50 {:.0} ms p99 {:.0} ms; control RSS {:.1} MB",
        record.convergence_p50_ms, record.convergence_p99_ms, record.control_rss_peak_mb
    );
    Ok(record)
}

// ---------------------------------------------------------------- the report

/// The printed table, with the targets and the istiod anchor.
fn render(runs: &[ControlRun]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ncontrol plane: convergence = VirtualService file written -> proxy received the new route"
    );
    let _ = writeln!(
        out,
        "{:>7} {:>8} {:>9} {:>9} {:>9} {:>11} {:>9} {:>8} {:>7} {:>8} {:>9} {:>8} {:>7} {:>10} {:>8} {:>9}",
        "proxies",
        "services",
        "conv p50",
        "conv p99",
        "conv max",
        "converged",
        "plane avg",
        "sync",
        "retries",
        "CSR/s",
        "CPU/CSR",
        "RSS MB",
        "RSS end",
        "CPU cores",
        "CPU s/ch",
        "gen cores"
    );
    for r in runs {
        let _ = writeln!(
            out,
            "{:>7} {:>8} {:>7.0}ms {:>7.0}ms {:>7.0}ms {:>11} {:>9} {:>6.1}s {:>7} {:>8.0} {:>7.2}ms {:>8.1} {:>7.1} {:>10.2} {:>8.3} {:>9.2}",
            r.proxies,
            r.mesh_services
                .map_or_else(|| r.services.to_string(), |m| m.to_string()),
            r.convergence_p50_ms,
            r.convergence_p99_ms,
            r.convergence_max_ms,
            format!("{}/{}", r.converged, r.expected),
            r.control_reported_convergence_mean_ms
                .map_or_else(|| "-".to_string(), |m| format!("{m:.0}ms")),
            r.initial_sync_ms / 1e3,
            r.connect_retries,
            r.csr_per_s,
            r.control_cpu_ms_per_csr,
            r.control_rss_peak_mb,
            r.control_rss_end_mb,
            r.control_cpu_cores,
            r.control_cpu_s_per_change,
            r.generator_cpu_cores,
        );
    }
    let _ = writeln!(
        out,
        "columns: services = the mesh's (ServiceEntries + one per proxy identity); plane avg = the \
         control plane's own pilot_proxy_convergence_time mean over the edits (per proxy: change \
         seen -> that proxy ACKed); \
         sync = first connect -> every proxy holds every type; retries = ADS connects that timed out \
         (5 s) and were retried, as a proxy does; CPU/CSR = control-plane CPU per \
         signature; RSS = control-plane VmHWM, RSS end = its VmRSS after the edits; CPU cores, CPU s/ch = control plane over the edits \
         window; gen cores = this process (all simulated proxies)"
    );
    let _ = writeln!(
        out,
        "targets: convergence p99 < {TARGET_P99_MS:.0} ms at 1,000 proxies, control-plane RSS < \
         {TARGET_RSS_MB:.0} MB; anchor {ISTIOD_ANCHOR}"
    );
    for r in runs.iter().filter(|r| r.proxies >= 1_000) {
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        let _ = writeln!(
            out,
            "at {} proxies: p99 {:.0} ms ({}), RSS {:.1} MB ({})",
            r.proxies,
            r.convergence_p99_ms,
            verdict(r.convergence_p99_ms < TARGET_P99_MS && r.converged == r.expected),
            r.control_rss_peak_mb,
            verdict(r.control_rss_peak_mb < TARGET_RSS_MB),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        let samples: Vec<(u32, Duration)> = [30, 10, 20]
            .iter()
            .map(|ms| (0, Duration::from_millis(*ms)))
            .collect();
        assert_eq!(convergence(&samples), (20.0, 30.0, 30.0));
    }

    #[test]
    fn every_edit_changes_a_route_and_cycles_through_the_routed_services() {
        let mut e = Edits::new(2);
        assert_eq!(
            e.next(0),
            Edit {
                service: 0,
                v1_weight: 10
            }
        );
        assert_eq!(
            e.next(1),
            Edit {
                service: 1,
                v1_weight: 10
            }
        );
        assert_eq!(
            e.next(2),
            Edit {
                service: 0,
                v1_weight: 90
            }
        );
    }

    #[test]
    fn a_route_table_response_is_read_for_the_edited_host() {
        let table = v1::RouteTable {
            hostname: service_host(3),
            http: vec![v1::HttpRoute {
                route: ["v1", "v2"]
                    .iter()
                    .zip([10, 90])
                    .map(|(s, w)| v1::WeightedDestination {
                        host: service_host(3),
                        subset: s.to_string(),
                        weight: w,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            origin: String::new(),
            tcp: Vec::new(),
        };
        let resp = DeltaDiscoveryResponse {
            type_url: type_url::ROUTE_TABLE.into(),
            resources: vec![meshlite_xds_proto::discovery::Resource {
                name: service_host(3),
                resource: Some(prost_types::Any {
                    type_url: type_url::ROUTE_TABLE.into(),
                    value: table.encode_to_vec(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(route_weight(&resp, &service_host(3)), Some(10));
        assert_eq!(route_weight(&resp, &service_host(4)), None);
    }

    #[test]
    fn the_node_announces_a_unique_address_and_the_certificate_identity() {
        let n = node(70_000);
        let f = &n.metadata.as_ref().unwrap().fields;
        let s = |k: &str| match &f[k].kind {
            Some(Kind::StringValue(s)) => s.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(s(keys::SERVICE_ACCOUNT), account(70_000 % IDENTITIES));
        assert_eq!(s(keys::NAMESPACE), NAMESPACE);
        assert_eq!(s(keys::INBOUND_ADDRESS), "127.2.17.112:15006");
        assert_ne!(
            node(1).metadata.unwrap().fields[keys::INBOUND_ADDRESS],
            node(257).metadata.unwrap().fields[keys::INBOUND_ADDRESS]
        );
    }

    #[test]
    fn the_generated_config_is_valid_for_meshlite_control() {
        let dir = tempfile::tempdir().unwrap();
        let routed = write_config(dir.path(), 120).unwrap();
        assert_eq!(routed, ROUTED_SERVICES);
        let report = meshlite_control::validate::check_dir(dir.path());
        assert!(
            !report.has_errors() && report.problems.is_empty(),
            "{:#?}",
            report.problems
        );
        let set = report.set.unwrap();
        assert_eq!(set.service_entries.len(), 120);
        assert_eq!(set.virtual_services.len(), ROUTED_SERVICES as usize);
        assert_eq!(set.destination_rules.len(), ROUTED_SERVICES as usize);
        // An edit keeps it valid.
        replace_file(dir.path(), &vs_file(7), &virtual_service(7, 10)).unwrap();
        let report = meshlite_control::validate::check_dir(dir.path());
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
    }
}
