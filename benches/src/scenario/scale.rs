//! Scenario `scale`: what the size of the mesh costs one sidecar.
//!
//! For each N of `--sizes` (default 1, 100, 1,000 and 5,000) a fresh release `meshlite-control`
//! serves N generated ServiceEntries of 5 endpoints each; one in five has a DestinationRule
//! (subsets `v1`/`v2`, outlier detection) and a VirtualService splitting 90/10 between them, the
//! mesh the issue describes. Their endpoints are addresses nothing answers: the sidecar must know
//! them, not call them. Beside them, one real service (`echo`: the bench app behind its own
//! sidecar) and [`PROBES`] ServiceEntries whose one endpoint is that sidecar, for calls.
//!
//! A client sidecar then joins, and the scenario reports:
//! - the time from its start to the whole config applied (every cluster present: certificate by
//!   CSR, the delta xDS stream, every push applied), and how many applies that took;
//! - its peak RSS (VmHWM) once the config is in, and again at the end, after the calls below;
//! - the first request to a service it never called (each probe once: a cluster built on first
//!   use plus a new mutual TLS connection), beside a second request to the same (warm);
//! - a one-service change: one ServiceEntry's endpoints edited ([`CHANGES`] times), with the
//!   sidecar's own apply time for that push (decode, build, swap; from its `/server_info`) and
//!   the convergence from the file write (control plane's debounce and push included);
//! - a pod moving in a service never called: one generated ServiceEntry's endpoint address
//!   edited ([`CHANGES`] times). Its Service resource carries its endpoints' IPs (for
//!   capture), so this reaches a sidecar on demand too; the sidecar's apply time;
//! - a Service added to the mesh and dropped again ([`CHANGES`] times each): a new
//!   ServiceEntry sorted into the middle of the generated ones, so every service after it
//!   moves up a place in the sidecar's list; the sidecar's apply time.

use serde::Serialize;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::app::handle::{AppHandleError, AppProcess, AppSpec};
use crate::cli::BenchArgs;
use crate::probe::{self, ProbeError};
use crate::process::{self, BinaryError};
use crate::procfs::{self, ProcError};
use crate::report::{self, ReportError};
use crate::sidecar::SidecarError;
use crate::sidecar::controlled::{
    ControlPlane, MeshError, NAMESPACE, PendingSidecar, SERVICE_PORT, Sidecar, SidecarOptions,
    Workload,
};
use crate::sidecar::meshlite;

/// Mesh sizes when `--sizes` is not given.
pub const DEFAULT_SIZES: [u32; 4] = [1, 100, 1_000, 5_000];
/// Endpoints per generated service.
pub const ENDPOINTS_PER_SERVICE: u32 = 5;
/// One generated service in this many has subsets, outlier detection and a 90/10 split.
const ROUTED_EVERY: u32 = 5;
/// Services with a real endpoint (the echo sidecar) that nothing calls before the probe.
pub const PROBES: u32 = 5;
/// One-service changes per size.
pub const CHANGES: u32 = 3;
/// The real service's name.
const ECHO: &str = "echo";
/// Bound on any wait for the sidecar to show a config.
const CONFIG_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the sidecar's `/server_info` is read while waiting.
const POLL: Duration = Duration::from_millis(20);

/// Why the scenario failed.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// A binary could not be found or built.
    #[error(transparent)]
    Binary(#[from] BinaryError),
    /// The control plane or a sidecar failed.
    #[error(transparent)]
    Mesh(#[from] MeshError),
    /// A sidecar failed.
    #[error(transparent)]
    Sidecar(#[from] SidecarError),
    /// The app failed to start.
    #[error(transparent)]
    App(#[from] AppHandleError),
    /// A request or an admin read failed.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// `/proc` could not be read.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// The report could not be written.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// A file or directory could not be written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The run did not go as it must (a timeout, an unexpected answer).
    #[error("{0}")]
    Run(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ScaleError {
    let what = what.into();
    move |source| ScaleError::Io { what, source }
}

/// The figures of one mesh size.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleRecord {
    /// Whether the client fetched services on demand (`control.on_demand`), or the whole
    /// mesh up front.
    pub on_demand: bool,
    /// Generated services.
    pub services: u32,
    /// Their endpoints.
    pub endpoints: u32,
    /// Clusters the sidecar holds (service ports and subsets, the real ones included).
    pub clusters: u64,
    /// Sidecar start to the whole config applied, ms.
    pub full_config_ms: f64,
    /// Pushes the sidecar applied to get there.
    pub applies: u64,
    /// Peak RSS once the config is in, MB.
    pub rss_peak_config_mb: f64,
    /// Peak RSS at the end (after the probes and changes), MB.
    pub rss_peak_end_mb: f64,
    /// Clusters built at the end (the probes' and echo's; the rest never built).
    pub built_clusters: u64,
    /// First request to a never-called service, ms: median and max over the probes.
    pub first_request_ms: (f64, f64),
    /// The second request to the same service, ms (median).
    pub warm_request_ms: f64,
    /// The sidecar's own apply time of a one-service change to a service it called (a probe's
    /// endpoint relabelled), µs (median of the changes).
    pub change_apply_us: f64,
    /// File write to the change applied at the sidecar, ms (median).
    pub change_convergence_ms: f64,
    /// The sidecar's apply time of a pod moving in a service it never called (an endpoint's
    /// address edited: its Service resource changes), µs (median of the changes).
    pub pod_move_apply_us: f64,
    /// The sidecar's apply time of a Service added to the mesh and dropped again (a new
    /// ServiceEntry it never calls, sorted among the others so every later service moves
    /// up a place), µs (median of the adds and drops).
    pub service_add_drop_apply_us: f64,
}

/// Runs every size, prints the table, writes the JSON; true when every size ran.
pub fn run(args: &BenchArgs) -> Result<bool, ScaleError> {
    let sizes: Vec<u32> = if args.sizes.is_empty() {
        DEFAULT_SIZES.to_vec()
    } else {
        args.sizes.clone()
    };
    let proxy = meshlite::locate_or_build()?;
    let control_bin = process::locate_or_build(
        "meshlite-control",
        "meshlite-control",
        super::control::CONTROL_BIN_ENV,
    )?;
    let bench_exe = process::own_executable().map_err(io("cannot find the bench executable"))?;
    let temp = tempfile::Builder::new()
        .prefix("meshlite-bench-scale-")
        .tempdir()
        .map_err(io("cannot create the run directory"))?;
    println!(
        "meshlite-bench scale: sizes {sizes:?} (services of {ENDPOINTS_PER_SERVICE} endpoints, one in \
         {ROUTED_EVERY} with subsets, outlier detection and a 90/10 split); {PROBES} probe services; \
         {CHANGES} one-service changes; meshlite-proxy {}, meshlite-control {}",
        proxy.path.display(),
        control_bin.path.display()
    );
    let opts = SidecarOptions {
        binary: proxy.path.clone(),
        workers: args.workers,
        pin_cpu: None,
    };
    let mut records = Vec::new();
    for on_demand in args.fetch.modes() {
        for &n in &sizes {
            let mode = if on_demand { "on-demand" } else { "whole" };
            let dir = temp.path().join(format!("n{n}-{mode}"));
            let record = run_size(n, on_demand, &opts, &control_bin.path, &bench_exe, &dir)?;
            println!(
                "  {n} services, {mode}: RSS {:.1} MB, config in {:.0} ms, first request {:.2} ms",
                record.rss_peak_end_mb, record.full_config_ms, record.first_request_ms.0
            );
            records.push(record);
        }
    }
    println!("{}", render(&records));
    if let Some(path) = &args.json {
        report::write_runs(path, "scale", &records)?;
    }
    if args.keep_dir {
        println!("run directory kept: {}", temp.keep().display());
    }
    Ok(true)
}

/// One mesh size, in fresh processes.
fn run_size(
    n: u32,
    on_demand: bool,
    opts: &SidecarOptions,
    control_bin: &Path,
    bench_exe: &Path,
    dir: &Path,
) -> Result<ScaleRecord, ScaleError> {
    std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let mut files = vec![("services.yaml", generated_services(n, 0))];
    files.push(("routed.yaml", routed_policies(n)));
    let control = ControlPlane::start(control_bin, &dir.join("control"), &files)?;

    // The one real service, and the probe entries pointing at its sidecar.
    let app = AppProcess::start(
        bench_exe,
        &AppSpec {
            name: ECHO.to_string(),
            payload: 64,
            calls: Vec::new(),
            pin_cpu: None,
        },
        dir,
    )?;
    let echo_workload = Workload::service(ECHO, app.addr());
    let echo = PendingSidecar::spawn(opts, &control, &echo_workload, &control.token(ECHO)?, dir)?
        .ready()?;
    let echo_inbound = echo.listening().inbound;
    write_atomically(
        control.config_dir(),
        "probes.yaml",
        &probe_entries(echo_inbound, 1),
    )?;

    let client_workload = Workload {
        on_demand: Some(on_demand),
        ..Workload::client("client")
    };
    let token = control.token("client")?;
    let expected = expected_clusters(n, on_demand);
    let started = Instant::now();
    let client = PendingSidecar::spawn(opts, &control, &client_workload, &token, dir)?.ready()?;
    let admin = client.listening().admin;
    let info = wait_info(admin, "the whole config", |i| i.clusters >= expected)?;
    let full_config_ms = ms(started.elapsed());
    // Let pushes still in flight (the echo endpoint, the probes) settle before reading.
    std::thread::sleep(Duration::from_millis(500));
    let rss_peak_config_mb = kb_to_mb(procfs::peak_rss_kb(client.pid())?);

    let (first_request_ms, warm_request_ms) = probe_first_requests(&client)?;
    let (change_apply_us, change_convergence_ms) =
        one_service_changes(echo_inbound, &control, admin)?;
    let pod_move_apply_us = pod_moves(n, &control, admin)?;
    let service_add_drop_apply_us = services_added_and_dropped(n, &control, admin)?;
    let end = server_info(admin)?;
    let rss_peak_end_mb = kb_to_mb(procfs::peak_rss_kb(client.pid())?);
    let record = ScaleRecord {
        on_demand,
        services: n,
        endpoints: n * ENDPOINTS_PER_SERVICE,
        clusters: end.clusters,
        full_config_ms,
        applies: info.applies,
        rss_peak_config_mb,
        rss_peak_end_mb,
        built_clusters: end.built,
        first_request_ms,
        warm_request_ms,
        change_apply_us,
        change_convergence_ms,
        pod_move_apply_us,
        service_add_drop_apply_us,
    };
    let _ = client.stop();
    let _ = echo.stop();
    app.stop();
    control.stop();
    Ok(record)
}

/// Clusters a client holds once everything is in: every service port, echo and the probes;
/// and, when the whole mesh is pushed, two subsets per routed service (on demand, a service's
/// subsets come with its policy, when it is first called).
fn expected_clusters(n: u32, on_demand: bool) -> u64 {
    let subsets = if on_demand {
        0
    } else {
        2 * u64::from(n.div_ceil(ROUTED_EVERY))
    };
    u64::from(n) + subsets + 1 + u64::from(PROBES)
}

/// The generated ServiceEntries; the first service's first endpoint has moved `moved` times
/// (a new address each time).
fn generated_services(n: u32, moved: u32) -> String {
    let mut out = String::new();
    for i in 0..n {
        let name = service_name(i);
        let (a, b) = (1 + i / 250, i % 250);
        let _ = write!(
            out,
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
             spec:\n  hosts: [{host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n\
             \x20 ports: [{{number: {SERVICE_PORT}, name: http, protocol: HTTP}}]\n  endpoints:\n",
            host = service_host(i),
        );
        for k in 0..ENDPOINTS_PER_SERVICE {
            let host = if i == 0 && k == 0 {
                1 + 50 * moved
            } else {
                1 + k
            };
            let _ = writeln!(
                out,
                "  - {{address: 10.{a}.{b}.{host}, serviceAccount: {name}, labels: {{version: v{}}}}}",
                1 + k % 2
            );
        }
    }
    out
}

/// DestinationRules and VirtualServices of the routed services.
fn routed_policies(n: u32) -> String {
    let mut out = String::new();
    for i in (0..n).step_by(ROUTED_EVERY as usize) {
        let (name, host) = (service_name(i), service_host(i));
        let _ = write!(
            out,
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
             spec:\n  host: {host}\n  trafficPolicy:\n\
             \x20   outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}}\n\
             \x20 subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n\
             ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
             spec:\n  hosts: [{host}]\n  http:\n  - route:\n\
             \x20   - {{destination: {{host: {host}, subset: v1}}, weight: 90}}\n\
             \x20   - {{destination: {{host: {host}, subset: v2}}, weight: 10}}\n"
        );
    }
    out
}

/// The probe services: one endpoint each, the echo sidecar's inbound listener, labelled
/// with `generation` (a change moves probe-0's label only).
fn probe_entries(echo_inbound: SocketAddr, generation: u32) -> String {
    let mut out = String::new();
    for k in 0..PROBES {
        let generation = if k == 0 { generation } else { 1 };
        let _ = write!(
            out,
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: probe-{k}, namespace: {NAMESPACE}}}\n\
             spec:\n  hosts: [probe-{k}.{NAMESPACE}.svc.cluster.local]\n  location: MESH_INTERNAL\n\
             \x20 resolution: STATIC\n  ports: [{{number: {SERVICE_PORT}, name: http, protocol: HTTP}}]\n\
             \x20 endpoints:\n  - {{address: {ip}, ports: {{http: {port}}}, serviceAccount: {ECHO}, \
             labels: {{generation: \"{generation}\"}}}}\n",
            ip = echo_inbound.ip(),
            port = echo_inbound.port(),
        );
    }
    out
}

fn service_name(i: u32) -> String {
    format!("svc-{i:05}")
}

fn service_host(i: u32) -> String {
    format!("{}.{NAMESPACE}.svc.cluster.local", service_name(i))
}

/// Replaces a config file atomically.
fn write_atomically(dir: &Path, name: &str, text: &str) -> Result<(), ScaleError> {
    crate::harness::replace_config_file(dir, name, text)
        .map_err(io(format!("cannot replace {name}")))
}

/// What the sidecar's `/server_info` says.
#[derive(Debug, Clone, Copy, Default)]
struct Info {
    clusters: u64,
    built: u64,
    applies: u64,
    last_apply_us: u64,
}

fn server_info(admin: SocketAddr) -> Result<Info, ScaleError> {
    let text = probe::get_ok(admin, "/server_info")?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ScaleError::Run(format!("/server_info is not JSON: {e}")))?;
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    Ok(Info {
        clusters: n(&v["clusters"]) + n(&v["subset_clusters"]),
        built: n(&v["built_clusters"]),
        applies: n(&v["control"]["applies"]),
        last_apply_us: n(&v["control"]["last_apply_us"]),
    })
}

/// Polls `/server_info` until `done`, within [`CONFIG_TIMEOUT`].
fn wait_info(
    admin: SocketAddr,
    what: &str,
    done: impl Fn(&Info) -> bool,
) -> Result<Info, ScaleError> {
    let deadline = Instant::now() + CONFIG_TIMEOUT;
    loop {
        let info = server_info(admin)?;
        if done(&info) {
            return Ok(info);
        }
        if Instant::now() > deadline {
            return Err(ScaleError::Run(format!(
                "the sidecar did not show {what} within {CONFIG_TIMEOUT:?} (now {info:?})"
            )));
        }
        std::thread::sleep(POLL);
    }
}

/// Each probe called twice through the client sidecar: the first request (its cluster built
/// on this use, a new mutual TLS connection) and the second. Returns (median, max) of the
/// first and the median of the second, ms.
fn probe_first_requests(client: &Sidecar) -> Result<((f64, f64), f64), ScaleError> {
    let mut first = Vec::new();
    let mut warm = Vec::new();
    for k in 0..PROBES {
        let host = format!("probe-{k}:{SERVICE_PORT}");
        for times in [&mut first, &mut warm] {
            let t = Instant::now();
            let reply = probe::get(client.outbound(), &host, "/")?;
            times.push(ms(t.elapsed()));
            if reply.status != 200 {
                return Err(ScaleError::Run(format!(
                    "{host} answered {} through the client sidecar: {}",
                    reply.status, reply.body
                )));
            }
        }
    }
    let max = first.iter().copied().fold(0.0, f64::max);
    Ok(((median(&mut first), max), median(&mut warm)))
}

/// [`CHANGES`] edits of a service the sidecar called (probe-0's endpoint relabelled: the
/// sidecar holds its endpoints whether it fetches on demand or not); returns the median of
/// the sidecar's apply time (µs) and of write-to-applied (ms).
fn one_service_changes(
    echo_inbound: SocketAddr,
    control: &ControlPlane,
    admin: SocketAddr,
) -> Result<(f64, f64), ScaleError> {
    let mut apply = Vec::new();
    let mut converge = Vec::new();
    for generation in 2..2 + CHANGES {
        let (after, took) = applied(admin, "the changed service", || {
            write_atomically(
                control.config_dir(),
                "probes.yaml",
                &probe_entries(echo_inbound, generation),
            )
        })?;
        converge.push(ms(took));
        apply.push(after.last_apply_us as f64);
    }
    Ok((median(&mut apply), median(&mut converge)))
}

/// Makes `change` to the mesh's files and waits for the sidecar to apply a push; returns
/// what `/server_info` then says and the time from the change to the push applied. Then
/// waits past the control plane's debounce, so that the next change is a push of its own.
fn applied(
    admin: SocketAddr,
    what: &str,
    change: impl FnOnce() -> Result<(), ScaleError>,
) -> Result<(Info, Duration), ScaleError> {
    let before = server_info(admin)?;
    let started = Instant::now();
    change()?;
    let after = wait_info(admin, what, |i| i.applies > before.applies)?;
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    Ok((after, took))
}

/// [`CHANGES`] moves of a pod in a service the sidecar never called; returns the median of
/// the sidecar's apply time (µs).
fn pod_moves(n: u32, control: &ControlPlane, admin: SocketAddr) -> Result<f64, ScaleError> {
    let mut apply = Vec::new();
    for moved in 1..=CHANGES {
        let (after, _) = applied(admin, "the moved pod", || {
            write_atomically(
                control.config_dir(),
                "services.yaml",
                &generated_services(n, moved),
            )
        })?;
        apply.push(after.last_apply_us as f64);
    }
    Ok(median(&mut apply))
}

/// [`CHANGES`] times, a new service (sorted into the middle of the mesh) added and then
/// dropped; returns the median of the sidecar's apply times (µs).
fn services_added_and_dropped(
    n: u32,
    control: &ControlPlane,
    admin: SocketAddr,
) -> Result<f64, ScaleError> {
    let name = format!("{}-new", service_name(n / 2));
    let entry = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
         spec:\n  hosts: [{name}.{NAMESPACE}.svc.cluster.local]\n  location: MESH_INTERNAL\n\
         \x20 resolution: STATIC\n  ports: [{{number: {SERVICE_PORT}, name: http, protocol: HTTP}}]\n\
         \x20 endpoints:\n  - {{address: 10.250.0.1, serviceAccount: {name}}}\n"
    );
    let path = control.config_dir().join("added.yaml");
    let mut apply = Vec::new();
    for _ in 0..CHANGES {
        let (added, _) = applied(admin, "the added service", || {
            write_atomically(control.config_dir(), "added.yaml", &entry)
        })?;
        let (dropped, _) = applied(admin, "the dropped service", || {
            std::fs::remove_file(&path).map_err(io("cannot remove added.yaml"))
        })?;
        apply.extend([added.last_apply_us as f64, dropped.last_apply_us as f64]);
    }
    Ok(median(&mut apply))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn kb_to_mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// The table of every size.
pub fn render(records: &[ScaleRecord]) -> String {
    let mut out = String::from(
        "\n| fetch | services | endpoints | clusters | peak RSS MB (config / end) | full config ms (applies) \
         | one-service change: apply µs, converged ms | pod moved, service not called: apply µs \
         | service added / dropped: apply µs | first request ms (median / max) | warm ms | built |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in records {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} / {:.1} | {:.0} ({}) | {:.0}, {:.0} | {:.0} | {:.0} | {:.2} / {:.2} | {:.2} | {} |",
            if r.on_demand { "on demand" } else { "whole" },
            r.services,
            r.endpoints,
            r.clusters,
            r.rss_peak_config_mb,
            r.rss_peak_end_mb,
            r.full_config_ms,
            r.applies,
            r.change_apply_us,
            r.change_convergence_ms,
            r.pod_move_apply_us,
            r.service_add_drop_apply_us,
            r.first_request_ms.0,
            r.first_request_ms.1,
            r.warm_request_ms,
            r.built_clusters,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_mesh_has_the_announced_shape() {
        let text = generated_services(10, 0);
        assert_eq!(text.matches("kind: ServiceEntry").count(), 10);
        assert_eq!(text.matches("address: 10.").count(), 50);
        // A move changes one address of the first service, a new one each time.
        let (moved, again) = (generated_services(10, 1), generated_services(10, 2));
        let lines = |t: &str| t.lines().map(str::to_string).collect::<Vec<_>>();
        for other in [&moved, &again] {
            let differ = lines(&text)
                .iter()
                .zip(lines(other))
                .filter(|(a, b)| **a != *b)
                .count();
            assert_eq!(differ, 1, "{other}");
        }
        assert!(moved.contains("10.1.0.51,") && again.contains("10.1.0.101,"));
        let routed = routed_policies(10);
        assert_eq!(routed.matches("kind: DestinationRule").count(), 2);
        assert_eq!(routed.matches("weight: 90").count(), 2);
        assert_eq!(expected_clusters(10, false), 10 + 4 + 1 + u64::from(PROBES));
        assert_eq!(expected_clusters(10, true), 10 + 1 + u64::from(PROBES));
    }

    #[test]
    fn a_change_moves_only_probe_zero() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 15006));
        let (one, two) = (probe_entries(addr, 1), probe_entries(addr, 2));
        let differ: Vec<_> = one
            .split("---")
            .zip(two.split("---"))
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(differ.len(), 1);
        assert!(differ[0].0.contains("probe-0"));
    }
}
