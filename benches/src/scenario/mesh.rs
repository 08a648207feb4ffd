//! Scenario `mesh`: a small application of 15 services under a real control plane, and the
//! latency the mesh adds per hop.
//!
//! The call graph is [`topology::SHOP`]: a frontend calling four mid-tier services which call ten
//! leaves, every service the bench app (fan-out mode: it calls its callees concurrently before
//! answering) and, in the meshed leg, its own sidecar. Each app sends its calls to its sidecar's
//! outbound port with `Host: <callee>:8080`, as an app in explicit mode does; the sidecars get
//! their identities by CSR and the whole mesh (services, endpoints, STRICT mTLS) over xDS from
//! `meshlite-control`. The load generator, outside the mesh, has an entry sidecar of its own
//! (workload `loadgen`), so every network hop of an entry request is a sidecar pair.
//!
//! Two legs at the same rate, fresh processes each: first the same graph without sidecars (each
//! app calls its callees' apps directly), then meshed. "Added per hop" is the entry latency's
//! difference (meshed minus direct, percentile by percentile) divided by the hops on the longest
//! path (3: generator -> frontend -> catalog -> products); the calls of one tier run
//! concurrently, so the longest path is what the entry waits for, and the slowest of its ten
//! paths: even the entry's median holds a single hop's tail. Per sidecar: CPU per 1,000
//! requests it proxied (its app's inbound requests plus its app's calls, from the apps' own
//! counters) and peak RSS, as min/median/max over the 15 service sidecars.

pub mod topology;

use serde::Serialize;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use self::topology::{Topology, TopologyError};
use super::measure::{self, LegCpu, Spread};
use crate::app::handle::{AppHandleError, AppProcess, AppSpec};
use crate::app::{AppStats, Downstream};
use crate::cli::BenchArgs;
use crate::load::{self, LoadError, LoadResult, LoadSpec};
use crate::probe;
use crate::process::{self, BinaryError};
use crate::procfs::{self, ProcError, Snapshot};
use crate::report::{self, LegRecord, LoadSettings, Percentiles, ReportError, SidecarRecord};
use crate::sidecar::SidecarError;
use crate::sidecar::controlled::{
    ControlPlane, MeshError, PendingSidecar, SERVICE_PORT, Sidecar, SidecarOptions, Workload,
    reserve_ports,
};
use crate::sidecar::meshlite;

/// Default rate at the entry (`--rate` overrides): what a 2-core machine sustains with 15 app
/// requests and 30 sidecar passes per entry request, with headroom. Measured on the quiet 2-core
/// VM: 200 RPS kept 1.0 of the 2 cores busy, 300 RPS 1.3 (entry p99 8 ms), 400 RPS 1.6 (p99
/// 13 ms), 500 RPS 1.9: saturated, the tail doubling again.
pub const DEFAULT_RATE: u32 = 300;
/// The workload name of the load generator's entry sidecar.
const ENTRY_WORKLOAD: &str = "loadgen";
/// Bound on waiting for a first successful entry request after start-up.
const REACH_TIMEOUT: Duration = Duration::from_secs(30);
/// Successful entry requests in a row that make the graph ready.
const REACH_STREAK: u32 = 3;
/// How the per-hop figure is made (printed and in the JSON).
const PER_HOP_METHOD: &str =
    "(meshed entry latency - direct entry latency) / hops on the longest path, per percentile";

/// Why the scenario could not run.
#[derive(Debug, thiserror::Error)]
pub enum MeshScenarioError {
    /// The run directory could not be made.
    #[error("cannot create the run directory: {0}")]
    RunDir(std::io::Error),
    /// The call graph is not usable.
    #[error("call graph: {0}")]
    Topology(#[from] TopologyError),
    /// The proxy binary is missing (or another sidecar problem).
    #[error(transparent)]
    Sidecar(Box<SidecarError>),
    /// The control-plane binary is missing and could not be built.
    #[error("meshlite-control binary: {0}")]
    ControlBinary(BinaryError),
    /// The control plane or a sidecar did not start.
    #[error(transparent)]
    Mesh(Box<MeshError>),
    /// An app did not start or answer.
    #[error(transparent)]
    App(Box<AppHandleError>),
    /// A leg's load could not run.
    #[error("{leg} leg: {source}")]
    Load {
        /// Which leg.
        leg: &'static str,
        /// What failed.
        source: LoadError,
    },
    /// /proc could not be read.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// The entry did not answer 200 after start-up.
    #[error("{0}")]
    NotReachable(String),
    /// The report could not be written.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// The JSON could not be encoded.
    #[error("cannot encode the JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<SidecarError> for MeshScenarioError {
    fn from(e: SidecarError) -> Self {
        Self::Sidecar(Box::new(e))
    }
}

impl From<MeshError> for MeshScenarioError {
    fn from(e: MeshError) -> Self {
        Self::Mesh(Box::new(e))
    }
}

impl From<AppHandleError> for MeshScenarioError {
    fn from(e: AppHandleError) -> Self {
        Self::App(Box::new(e))
    }
}

/// One row of the call graph in the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceRecord {
    /// The service.
    pub name: String,
    /// What it calls.
    pub calls: Vec<String>,
}

/// What the scenario measured (the JSON document).
#[derive(Debug, Clone, Serialize)]
pub struct MeshRecord {
    /// Always `mesh`.
    pub scenario: &'static str,
    /// The load at the entry, per leg (mTLS: STRICT PeerAuthentication).
    #[serde(flatten)]
    pub load: LoadSettings,
    /// Services in the graph.
    pub services: usize,
    /// Network hops on the longest path (the per-hop divisor).
    pub hops: usize,
    /// The longest path.
    pub longest_path: Vec<String>,
    /// App requests per entry request.
    pub app_requests_per_request: u64,
    /// Sidecar passes per entry request (two per app request, meshed).
    pub sidecar_passes_per_request: u64,
    /// The call graph.
    pub topology: Vec<ServiceRecord>,
    /// The graph without sidecars.
    pub direct: LegRecord,
    /// The graph through the sidecars.
    pub meshed: LegRecord,
    /// Meshed minus direct, at the entry.
    pub added: Percentiles,
    /// `added` divided by `hops`.
    pub added_per_hop: Percentiles,
    /// How `added_per_hop` is made.
    pub per_hop_method: &'static str,
    /// Errors through the mesh.
    pub errors: u64,
    /// Successful entry requests per second through the mesh.
    pub achieved_rps: f64,
    /// The direct or the meshed leg is disturbed.
    pub disturbed: bool,
    /// Every sidecar: the 15 services' (role = service), then the entry's (`loadgen`).
    /// `cpu_ms_per_1k_req`: per 1,000 requests it proxied (inbound plus its app's calls).
    pub sidecars: Vec<SidecarRecord>,
    /// Peak RSS over the 15 service sidecars, MB.
    pub sidecar_rss_peak_mb: Spread,
    /// CPU per 1,000 proxied requests over the 15 service sidecars, ms.
    pub sidecar_cpu_ms_per_1k_req: Spread,
    /// CPU over the 15 service sidecars, cores.
    pub sidecar_cpu_cores: Spread,
    /// All sidecars (entry included) together, cores.
    pub mesh_cpu_cores: f64,
    /// All sidecars together per 1,000 entry requests, CPU ms.
    pub mesh_cpu_ms_per_1k_entry_req: f64,
    /// The apps together during the meshed window, cores.
    pub apps_cpu_cores_meshed: f64,
    /// The control plane's peak RSS, MB.
    pub control_rss_peak_mb: f64,
    /// The whole machine during the direct window (interrupts included), cores.
    pub direct_machine_cores: f64,
    /// The whole machine during the meshed window (interrupts included), cores.
    pub machine_cores: f64,
    /// CPUs of the machine.
    pub cpus: usize,
    /// Notes (unclean exits, downstream call errors).
    pub notes: Vec<String>,
}

/// What the run shares.
struct Setup<'a> {
    args: &'a BenchArgs,
    rate: u32,
    topology: Topology,
    bench_exe: std::path::PathBuf,
}

impl Setup<'_> {
    /// `<service>:8080`, the Host a caller names.
    fn host(&self, i: usize) -> String {
        format!("{}:{SERVICE_PORT}", self.topology.services()[i].name)
    }

    fn load_spec(&self, target: SocketAddr) -> LoadSpec {
        LoadSpec {
            target,
            authority: self.host(0),
            protocol: self.args.protocol,
            connections: self.args.connections as usize,
            rate_rps: f64::from(self.rate),
            warmup: self.args.warmup,
            duration: self.args.duration,
            request_timeout: self.args.request_timeout,
            pin_cpu: None,
            netns: None,
        }
    }

    fn app_spec(&self, i: usize, calls: Vec<Downstream>) -> AppSpec {
        AppSpec {
            name: self.topology.services()[i].name.clone(),
            payload: self.args.payload,
            calls,
            pin_cpu: None,
        }
    }
}

/// Runs the scenario, prints the tables, writes the JSON; returns whether the meshed leg ran
/// without errors.
pub fn run(args: &BenchArgs) -> Result<bool, MeshScenarioError> {
    let setup = Setup {
        args,
        rate: args.rate.unwrap_or(DEFAULT_RATE),
        topology: Topology::shop()?,
        bench_exe: crate::process::own_executable().map_err(MeshScenarioError::RunDir)?,
    };
    let proxy = meshlite::locate_or_build()?;
    let control_bin = process::locate_or_build(
        "meshlite-control",
        "meshlite-control",
        super::control::CONTROL_BIN_ENV,
    )
    .map_err(MeshScenarioError::ControlBinary)?;
    let temp = tempfile::Builder::new()
        .prefix("meshlite-bench-mesh-")
        .tempdir()
        .map_err(MeshScenarioError::RunDir)?;
    print_header(&setup, &proxy.path, &control_bin.path);

    let direct_dir = temp.path().join("direct");
    std::fs::create_dir_all(&direct_dir).map_err(MeshScenarioError::RunDir)?;
    let direct = run_direct(&setup, &direct_dir)?;
    progress("direct", &direct.leg);

    let opts = SidecarOptions {
        binary: proxy.path.clone(),
        workers: args.workers,
        pin_cpu: None,
    };
    let meshed = run_meshed(&setup, &opts, &control_bin.path, temp.path())?;
    progress("meshed", &meshed.leg);

    let record = build_record(&setup, direct, meshed);
    println!("{}", render(&record));
    if let Some(path) = &args.json {
        report::write_json(path, &serde_json::to_string_pretty(&record)?)?;
        println!("JSON written to {}", path.display());
    }
    if args.keep_dir {
        println!("run directory kept: {}", temp.keep().display());
    }
    Ok(record.errors == 0)
}

fn print_header(setup: &Setup<'_>, proxy: &Path, control: &Path) {
    let t = &setup.topology;
    let per_request: u64 = t.requests_per_entry_request().iter().sum();
    let tiers: Vec<String> = t.tiers().iter().map(usize::to_string).collect();
    println!(
        "meshlite-bench, scenario mesh: {} services ({} per tier), {} hops on the longest path ({}), \
         {per_request} app requests per entry request",
        t.services().len(),
        tiers.join(" -> "),
        t.hops(),
        std::iter::once("load generator")
            .chain(t.longest_path())
            .collect::<Vec<_>>()
            .join(" -> ")
    );
    println!(
        "rate: {} RPS at the entry{} = {} app requests/s and {} sidecar passes/s; {:.1} s measured after {:.1} s warm-up per leg, {} connections",
        setup.rate,
        if setup.args.rate.is_none() {
            " (the default: what a 2-core machine sustains for this graph)"
        } else {
            ""
        },
        u64::from(setup.rate) * per_request,
        2 * u64::from(setup.rate) * per_request,
        setup.args.duration.as_secs_f64(),
        setup.args.warmup.as_secs_f64(),
        setup.args.connections
    );
    println!(
        "legs: direct (apps call each other's apps) then meshed ({} sidecars under meshlite-control, STRICT mTLS, \
         each app calls its own sidecar's outbound port with Host <service>:{SERVICE_PORT}); fresh processes each",
        t.services().len() + 1
    );
    println!("binaries: {} and {}", proxy.display(), control.display());
    if setup.args.pin {
        println!("note: --pin is not used by this scenario (every process shares the CPUs)");
    }
}

fn progress(name: &str, leg: &LegRecord) {
    eprintln!(
        "[mesh] {name:<6} p50 {:.3} p90 {:.3} p99 {:.3} ms, achieved {:.0} RPS, {} errors, generator {:.2} cores, apps {:.2}, other load {:.2}{}",
        leg.latency.p50_ms,
        leg.latency.p90_ms,
        leg.latency.p99_ms,
        leg.achieved_rps,
        leg.errors,
        leg.generator_cpu_cores,
        leg.app_cpu_cores,
        leg.other_load_cores,
        if leg.disturbed {
            format!(" (disturbed: {})", leg.disturbed_reasons.join("; "))
        } else {
            String::new()
        }
    );
}

fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

/// Sends `GET /` for the entry service to `addr` until [`REACH_STREAK`] answers in a row are 200.
fn wait_until_entry_answers(setup: &Setup<'_>, addr: SocketAddr) -> Result<(), MeshScenarioError> {
    let deadline = Instant::now() + REACH_TIMEOUT;
    let host = setup.host(0);
    let mut streak = 0;
    let mut last = String::from("no request sent");
    while Instant::now() < deadline {
        match probe::get(addr, &host, "/") {
            Ok(reply) if reply.status == 200 => {
                streak += 1;
                if streak >= REACH_STREAK {
                    return Ok(());
                }
                continue;
            }
            Ok(reply) => last = format!("status {}: {}", reply.status, reply.body.trim()),
            Err(e) => last = e.to_string(),
        }
        streak = 0;
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(MeshScenarioError::NotReachable(format!(
        "GET / for {host} at {addr} did not answer 200 {REACH_STREAK} times in a row within {REACH_TIMEOUT:?}; last: {last}"
    )))
}

/// What a leg measured.
struct LegOutcome {
    leg: LegRecord,
    result: LoadResult,
    /// The whole machine during the window, interrupts included, cores.
    machine_cores: f64,
}

/// Loads `target` and samples `pids` (the first `sidecars` of them sidecars, then apps, then
/// anything else) and the apps' counters at the window's edges.
struct Window {
    usage: procfs::CpuUsage,
    result: LoadResult,
    stats: Vec<(AppStats, AppStats)>,
}

fn load_window(
    setup: &Setup<'_>,
    leg: &'static str,
    target: SocketAddr,
    pids: &[u32],
    apps: &[AppProcess],
) -> Result<Window, MeshScenarioError> {
    let running = load::start(setup.load_spec(target))
        .map_err(|source| MeshScenarioError::Load { leg, source })?;
    sleep_until(running.measure_start);
    let start = Snapshot::take(pids);
    let stats_start = apps
        .iter()
        .map(AppProcess::stats)
        .collect::<Result<Vec<_>, _>>();
    sleep_until(running.measure_end);
    let end = Snapshot::take(pids);
    // Always collect the generator (it stops by itself) before judging the samples.
    let result = running
        .finish()
        .map_err(|source| MeshScenarioError::Load { leg, source })?;
    let stats_end = apps
        .iter()
        .map(AppProcess::stats)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Window {
        usage: procfs::usage(&start?, &end?),
        result,
        stats: stats_start?.into_iter().zip(stats_end).collect(),
    })
}

/// The graph without sidecars: apps started callees first, each calling its callees' apps.
fn run_direct(setup: &Setup<'_>, dir: &Path) -> Result<LegOutcome, MeshScenarioError> {
    let services = setup.topology.services();
    let mut started: Vec<Option<AppProcess>> = (0..services.len()).map(|_| None).collect();
    for &i in setup.topology.start_order() {
        let calls = services[i]
            .calls
            .iter()
            .filter_map(|&c| {
                started[c].as_ref().map(|app| Downstream {
                    host: setup.host(c),
                    addr: app.addr().to_string(),
                })
            })
            .collect();
        started[i] = Some(AppProcess::start(
            &setup.bench_exe,
            &setup.app_spec(i, calls),
            dir,
        )?);
    }
    let apps: Vec<AppProcess> = started.into_iter().flatten().collect();
    let entry = apps[0].addr();
    eprintln!("[mesh] direct: {} apps up", apps.len());
    wait_until_entry_answers(setup, entry)?;
    let pids: Vec<u32> = apps.iter().map(AppProcess::pid).collect();
    let window = load_window(setup, "direct", entry, &pids, &apps)?;
    for app in apps {
        app.stop();
    }
    let cpu = LegCpu {
        generator_cores: window.usage.own_cores,
        app_cores: window.usage.cores.iter().sum(),
        other_cores: window.usage.other_cores,
    };
    Ok(LegOutcome {
        leg: measure::leg_record(&window.result, f64::from(setup.rate), cpu, true),
        result: window.result,
        machine_cores: window.usage.machine_cores,
    })
}

/// What the meshed leg measured beyond the leg itself.
struct MeshedOutcome {
    outcome: LegOutcome,
    sidecars: Vec<SidecarRecord>,
    mesh_cpu_cores: f64,
    apps_cpu_cores: f64,
    control_rss_peak_mb: f64,
    notes: Vec<String>,
}

impl std::ops::Deref for MeshedOutcome {
    type Target = LegOutcome;
    fn deref(&self) -> &LegOutcome {
        &self.outcome
    }
}

/// The graph through the sidecars, under a fresh control plane.
fn run_meshed(
    setup: &Setup<'_>,
    opts: &SidecarOptions,
    control_bin: &Path,
    dir: &Path,
) -> Result<MeshedOutcome, MeshScenarioError> {
    let services = setup.topology.services();
    let n = services.len();
    let control = ControlPlane::start(
        control_bin,
        &dir.join("control"),
        &[(
            "mtls.yaml",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
             metadata: {name: default, namespace: istio-system}\n\
             spec:\n  mtls: {mode: STRICT}\n"
                .to_string(),
        )],
    )?;
    // Each app must know its sidecar's outbound port before the sidecar starts.
    let reservation = reserve_ports(n)?;
    let ports = reservation.ports();
    let meshed_dir = dir.join("meshed");
    std::fs::create_dir_all(&meshed_dir).map_err(MeshScenarioError::RunDir)?;
    let mut apps = Vec::with_capacity(n);
    for (i, service) in services.iter().enumerate() {
        let outbound = SocketAddr::from(([127, 0, 0, 1], ports[i]));
        let calls = service
            .calls
            .iter()
            .map(|&c| Downstream {
                host: setup.host(c),
                addr: outbound.to_string(),
            })
            .collect();
        apps.push(AppProcess::start(
            &setup.bench_exe,
            &setup.app_spec(i, calls),
            &meshed_dir,
        )?);
    }
    let mut workloads: Vec<(Workload, String)> = Vec::with_capacity(n + 1);
    for (i, service) in services.iter().enumerate() {
        let mut workload = Workload::service(&service.name, apps[i].addr());
        workload.outbound_port = Some(ports[i]);
        let token = control.token(&service.name)?;
        workloads.push((workload, token));
    }
    workloads.push((
        Workload::client(ENTRY_WORKLOAD),
        control.token(ENTRY_WORKLOAD)?,
    ));
    reservation.release();
    let pending = workloads
        .iter()
        .map(|(w, token)| PendingSidecar::spawn(opts, &control, w, token, &meshed_dir))
        .collect::<Result<Vec<_>, _>>()?;
    let mut sidecars = pending
        .into_iter()
        .map(PendingSidecar::ready)
        .collect::<Result<Vec<Sidecar>, _>>()?;
    let entry = sidecars
        .pop()
        .ok_or_else(|| MeshScenarioError::NotReachable("the entry sidecar did not start".into()))?;
    eprintln!(
        "[mesh] meshed: control plane, {} apps and {} sidecars up; waiting for the graph to answer",
        apps.len(),
        sidecars.len() + 1
    );
    wait_until_entry_answers(setup, entry.outbound())?;

    let mut pids: Vec<u32> = sidecars.iter().map(Sidecar::pid).collect();
    pids.push(entry.pid());
    pids.extend(apps.iter().map(AppProcess::pid));
    pids.push(control.pid());
    let window = load_window(setup, "meshed", entry.outbound(), &pids, &apps)?;
    let rss = sidecars
        .iter()
        .chain(std::iter::once(&entry))
        .map(|s| measure::peak_rss_mb(s.pid()))
        .collect::<Result<Vec<_>, _>>()?;
    let control_rss_peak_mb = measure::peak_rss_mb(control.pid())?;

    let seconds = window.usage.seconds;
    let mut records = Vec::with_capacity(n + 1);
    for (i, service) in services.iter().enumerate() {
        let (s, e) = window.stats[i];
        let proxied = e.requests.saturating_sub(s.requests) + e.calls.saturating_sub(s.calls);
        let cores = window.usage.cores[i];
        records.push(SidecarRecord {
            role: service.name.clone(),
            rss_peak_mb: rss[i],
            cpu_cores: cores,
            cpu_ms_per_1k_req: measure::per_1k(cores * seconds, proxied),
        });
    }
    let entry_cores = window.usage.cores[n];
    records.push(SidecarRecord {
        role: ENTRY_WORKLOAD.into(),
        rss_peak_mb: rss[n],
        cpu_cores: entry_cores,
        cpu_ms_per_1k_req: measure::per_1k(entry_cores * seconds, window.result.requests),
    });
    let mesh_cpu_cores: f64 = window.usage.cores[..=n].iter().sum();
    let apps_cpu_cores: f64 = window.usage.cores[n + 1..=2 * n].iter().sum();
    let call_errors: u64 = window
        .stats
        .iter()
        .map(|(s, e)| e.call_errors.saturating_sub(s.call_errors))
        .sum();
    let mut notes = Vec::new();
    if call_errors > 0 {
        notes.push(format!(
            "{call_errors} calls between apps failed during the meshed window"
        ));
    }
    let cpu = LegCpu {
        generator_cores: window.usage.own_cores,
        app_cores: apps_cpu_cores,
        other_cores: window.usage.other_cores,
    };
    let leg = measure::leg_record(&window.result, f64::from(setup.rate), cpu, true);

    for sidecar in sidecars.into_iter().chain(std::iter::once(entry)) {
        notes.extend(sidecar.stop());
    }
    for app in apps {
        app.stop();
    }
    control.stop();
    Ok(MeshedOutcome {
        outcome: LegOutcome {
            leg,
            result: window.result,
            machine_cores: window.usage.machine_cores,
        },
        sidecars: records,
        mesh_cpu_cores,
        apps_cpu_cores,
        control_rss_peak_mb,
        notes,
    })
}

/// `p / hops`, percentile by percentile.
fn per_hop(added: &Percentiles, hops: usize) -> Percentiles {
    let hops = hops.max(1) as f64;
    Percentiles {
        p50_ms: added.p50_ms / hops,
        p90_ms: added.p90_ms / hops,
        p99_ms: added.p99_ms / hops,
        p999_ms: added.p999_ms / hops,
    }
}

fn build_record(setup: &Setup<'_>, direct: LegOutcome, meshed: MeshedOutcome) -> MeshRecord {
    let t = &setup.topology;
    let services = t.services();
    let per_request: u64 = t.requests_per_entry_request().iter().sum();
    let added = meshed.leg.latency.minus(&direct.leg.latency);
    let service_sidecars = &meshed.sidecars[..services.len()];
    let values =
        |f: fn(&SidecarRecord) -> f64| -> Vec<f64> { service_sidecars.iter().map(f).collect() };
    let ok = meshed.result.ok;
    MeshRecord {
        scenario: "mesh",
        load: LoadSettings::of(setup.rate, setup.args),
        services: services.len(),
        hops: t.hops(),
        longest_path: t.longest_path().into_iter().map(str::to_string).collect(),
        app_requests_per_request: per_request,
        sidecar_passes_per_request: 2 * per_request,
        topology: services
            .iter()
            .map(|s| ServiceRecord {
                name: s.name.clone(),
                calls: s.calls.iter().map(|&c| services[c].name.clone()).collect(),
            })
            .collect(),
        added_per_hop: per_hop(&added, t.hops()),
        added,
        per_hop_method: PER_HOP_METHOD,
        errors: meshed.leg.errors,
        achieved_rps: meshed.leg.achieved_rps,
        disturbed: direct.leg.disturbed || meshed.leg.disturbed,
        sidecar_rss_peak_mb: measure::spread(&values(|s| s.rss_peak_mb)),
        sidecar_cpu_ms_per_1k_req: measure::spread(&values(|s| s.cpu_ms_per_1k_req)),
        sidecar_cpu_cores: measure::spread(&values(|s| s.cpu_cores)),
        mesh_cpu_cores: meshed.mesh_cpu_cores,
        mesh_cpu_ms_per_1k_entry_req: measure::per_1k(
            meshed.mesh_cpu_cores * setup.args.duration.as_secs_f64(),
            ok,
        ),
        apps_cpu_cores_meshed: meshed.apps_cpu_cores,
        control_rss_peak_mb: meshed.control_rss_peak_mb,
        direct_machine_cores: direct.machine_cores,
        machine_cores: meshed.machine_cores,
        cpus: procfs::cpu_count(),
        notes: meshed.notes.clone(),
        sidecars: meshed.sidecars.clone(),
        direct: direct.leg,
        meshed: meshed.outcome.leg,
    }
}

fn flags(leg: &LegRecord) -> String {
    if leg.disturbed {
        format!("DISTURBED: {}", leg.disturbed_reasons.join("; "))
    } else {
        String::new()
    }
}

/// The printed report.
fn render(r: &MeshRecord) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nmesh of {} services at {} RPS at the entry ({} app requests/s), {} hops on the longest path ({})",
        r.services,
        r.load.rate_rps,
        u64::from(r.load.rate_rps) * r.app_requests_per_request,
        r.hops,
        r.longest_path.join(" -> ")
    );
    let _ = writeln!(
        out,
        "{:<28} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7}  flags",
        "entry latency, ms", "p50", "p90", "p99", "p99.9", "max", "achieved", "errors"
    );
    for (name, leg) in [
        ("direct (no sidecars)", &r.direct),
        ("meshed (16 sidecars, mTLS)", &r.meshed),
    ] {
        let _ = writeln!(
            out,
            "{:<28} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9.0} {:>7}  {}",
            name,
            leg.latency.p50_ms,
            leg.latency.p90_ms,
            leg.latency.p99_ms,
            leg.latency.p999_ms,
            leg.max_ms,
            leg.achieved_rps,
            leg.errors,
            flags(leg)
        );
    }
    for (name, p) in [
        ("added (meshed - direct)".to_string(), &r.added),
        (format!("added per hop (/{})", r.hops), &r.added_per_hop),
    ] {
        let _ = writeln!(
            out,
            "{:<28} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            name, p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms
        );
    }
    let _ = writeln!(out, "per hop: {}", r.per_hop_method);
    let _ = writeln!(
        out,
        "(each tier's calls run concurrently and the entry waits for the slowest of its {} leaf paths, so even its p50 \
         holds a single hop's tail; on {} CPUs every sidecar pass is also a wake-up among {} processes)",
        r.topology.iter().filter(|s| s.calls.is_empty()).count(),
        r.cpus,
        2 * r.services + 2
    );
    let _ = writeln!(
        out,
        "\n{:<38} {:>8} {:>8} {:>8}",
        format!("per sidecar ({} services)", r.services),
        "min",
        "median",
        "max"
    );
    for (name, s, decimals) in [
        ("peak RSS, MB", &r.sidecar_rss_peak_mb, 1),
        (
            "CPU ms per 1,000 requests proxied",
            &r.sidecar_cpu_ms_per_1k_req,
            0,
        ),
        ("CPU, cores", &r.sidecar_cpu_cores, 3),
    ] {
        let _ = writeln!(
            out,
            "{:<38} {:>8.decimals$} {:>8.decimals$} {:>8.decimals$}",
            name, s.min, s.median, s.max
        );
    }
    if let Some(entry) = r.sidecars.last() {
        let _ = writeln!(
            out,
            "entry sidecar ({}): {:.1} MB, {:.2} cores, {:.0} CPU ms per 1,000 requests",
            entry.role, entry.rss_peak_mb, entry.cpu_cores, entry.cpu_ms_per_1k_req
        );
    }
    let _ = writeln!(
        out,
        "all {} sidecars: {:.2} cores, {:.0} CPU ms per 1,000 entry requests; apps {:.2} cores; generator {:.2}; \
         other load {:.2}; control plane peak RSS {:.1} MB",
        r.sidecars.len(),
        r.mesh_cpu_cores,
        r.mesh_cpu_ms_per_1k_entry_req,
        r.apps_cpu_cores_meshed,
        r.meshed.generator_cpu_cores,
        r.meshed.other_load_cores,
        r.control_rss_peak_mb
    );
    let _ = writeln!(
        out,
        "machine: {:.2} of {} cores busy during the meshed window ({:.2} during the direct one), interrupts included{}",
        r.machine_cores,
        r.cpus,
        r.direct_machine_cores,
        if r.machine_cores > 0.85 * r.cpus as f64 {
            ": near saturation, the latency tail is mostly waiting for a CPU (a lower --rate shows the proxies' own)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "per sidecar: {}",
        r.sidecars
            .iter()
            .map(|s| format!(
                "{} {:.1} MB {:.0} ms/1k",
                s.role, s.rss_peak_mb, s.cpu_ms_per_1k_req
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !r.meshed.error_samples.is_empty() {
        let _ = writeln!(out, "errors, e.g.: {}", r.meshed.error_samples.join(" | "));
    }
    for note in &r.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_latency_is_shared_by_the_hops() {
        let added = Percentiles {
            p50_ms: 0.9,
            p90_ms: 1.2,
            p99_ms: 3.0,
            p999_ms: 6.0,
        };
        let hop = per_hop(&added, 3);
        assert!((hop.p50_ms - 0.3).abs() < 1e-12);
        assert!((hop.p99_ms - 1.0).abs() < 1e-12);
        assert_eq!(per_hop(&added, 0).p50_ms, 0.9, "no division by zero");
    }
}
