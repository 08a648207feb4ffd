//! Scenario `chaos`: a backend that starts failing and then dies under open-loop load; what the
//! client sees, what the backends receive, and how fast the client's sidecar routes around it.
//!
//! A real `meshlite-control` pushes, over xDS, a DestinationRule for `echo` with outlier
//! detection (`consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 30s,
//! maxEjectionPercent: 50`: Envoy checks the percentage after the prospective ejection, so with
//! three hosts its default of 10% would never eject one) and a VirtualService retrying
//! (`attempts: 2, retryOn: 5xx,reset,connect-failure`). Three versions of `echo`, each the bench
//! app behind its own sidecar, and a client sidecar join it with bootstrap tokens. The generator
//! sends `GET /` with `Host: echo:8080` to the client sidecar at a fixed rate (default 1,000 RPS).
//! At 30% of the measured window `echo-v3` starts answering 503 to everything (the app's switch);
//! [`KILL_AFTER_FAIL`] later its sidecar and its app are SIGKILLed.
//!
//! Time to eject runs from the switch to the client sidecar's
//! `envoy_cluster_outlier_detection_ejections_enforced_total{cluster_name="outbound|8080||echo..."}`
//! reading 1, polled every [`EJECT_POLL`] (an upper bound: the reply's arrival). The failing
//! app's own clock gives a second, finer figure: switch -> the last 503 it answered.
//! `upstream_attempts` is what the three apps counted over the window (the killed one until its
//! kill), so `upstream_attempts - requests` is what retries added.

use serde::Serialize;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::measure::{self, CpuMark, LegCpu};
use crate::app::AppStats;
use crate::app::handle::{AppHandleError, AppProcess, AppSpec};
use crate::cli::BenchArgs;
use crate::load::{self, LoadError, LoadSpec};
use crate::probe::{self, ProbeError};
use crate::process::{self, BinaryError};
use crate::procfs::{self, ProcError, Snapshot};
use crate::report::{self, LegRecord, LoadSettings, ReportError, SidecarRecord};
use crate::sidecar::SidecarError;
use crate::sidecar::controlled::{
    ControlPlane, MeshError, PendingSidecar, SERVICE_PORT, Sidecar, SidecarOptions, Workload,
};
use crate::sidecar::meshlite;

/// Default rate at the client sidecar (`--rate` overrides).
pub const DEFAULT_RATE: u32 = 1_000;
/// The service every backend is a version of.
const SERVICE: &str = "echo";
/// The backends' versions (workloads `echo-v1`..).
const VERSIONS: [&str; 3] = ["v1", "v2", "v3"];
/// Which backend fails and dies (index into [`VERSIONS`]).
const VICTIM: usize = 2;
/// What the failing backend answers.
const FAILURE_STATUS: u16 = 503;
/// Outlier detection: consecutive 5xx before an ejection (Envoy's default).
const CONSECUTIVE_5XX: u32 = 5;
/// Outlier detection: ejections allowed, percent of hosts, counted after the prospective one.
const MAX_EJECTION_PERCENT: u32 = 50;
/// Retries per request (VirtualService `retries.attempts`).
const RETRY_ATTEMPTS: u32 = 2;
/// Retry conditions (Envoy's names).
const RETRY_ON: &str = "5xx,reset,connect-failure";
/// Where in the measured window the backend starts failing.
const FAIL_AT_FRACTION: f64 = 0.3;
/// How long after the first failure the backend is killed (less when the window is short).
const KILL_AFTER_FAIL: Duration = Duration::from_secs(3);
/// How often the client sidecar's metrics are read while waiting for the ejection.
const EJECT_POLL: Duration = Duration::from_millis(10);
/// Bound on waiting for the client sidecar to reach every backend before the load.
const REACH_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on the requests sent while waiting for that.
const REACH_MAX_REQUESTS: u32 = 2_000;

/// The outlier-ejection counter of the client sidecar.
const EJECTIONS_ENFORCED: &str = "envoy_cluster_outlier_detection_ejections_enforced_total";
/// Hosts ejected right now.
const EJECTIONS_ACTIVE: &str = "envoy_cluster_outlier_detection_ejections_active";
/// Retries sent.
const RETRIES: &str = "envoy_cluster_upstream_rq_retry";
/// Retries refused by the budget or `maxRetries`.
const RETRY_OVERFLOW: &str = "envoy_cluster_upstream_rq_retry_overflow";

/// Why the scenario could not run.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// The run directory could not be made.
    #[error("cannot create the run directory: {0}")]
    RunDir(std::io::Error),
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
    /// The load could not run.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// /proc could not be read.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// A sidecar's metrics could not be read.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// The client sidecar did not reach every backend.
    #[error("{0}")]
    NotReachable(String),
    /// The report could not be written.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// The JSON could not be encoded.
    #[error("cannot encode the JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<SidecarError> for ChaosError {
    fn from(e: SidecarError) -> Self {
        Self::Sidecar(Box::new(e))
    }
}

impl From<MeshError> for ChaosError {
    fn from(e: MeshError) -> Self {
        Self::Mesh(Box::new(e))
    }
}

impl From<AppHandleError> for ChaosError {
    fn from(e: AppHandleError) -> Self {
        Self::App(Box::new(e))
    }
}

/// The cluster name of `echo` in the client sidecar's metrics.
fn cluster_name() -> String {
    format!("outbound|{SERVICE_PORT}||{SERVICE}.default.svc.cluster.local")
}

/// The config directory: mesh-wide STRICT mTLS, the DestinationRule and the VirtualService.
fn config_files() -> Vec<(&'static str, String)> {
    vec![
        (
            "mtls.yaml",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
             metadata: {name: default, namespace: istio-system}\n\
             spec:\n  mtls: {mode: STRICT}\n"
                .to_string(),
        ),
        (
            "echo-destinationrule.yaml",
            format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                 metadata: {{name: {SERVICE}, namespace: default}}\n\
                 spec:\n  host: {SERVICE}\n  trafficPolicy:\n    outlierDetection:\n\
                 \x20     consecutive5xxErrors: {CONSECUTIVE_5XX}\n      interval: 1s\n\
                 \x20     baseEjectionTime: 30s\n      maxEjectionPercent: {MAX_EJECTION_PERCENT}\n"
            ),
        ),
        (
            "echo-virtualservice.yaml",
            format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
                 metadata: {{name: {SERVICE}, namespace: default}}\n\
                 spec:\n  hosts: [{SERVICE}]\n  http:\n  - route:\n    - destination: {{host: {SERVICE}}}\n\
                 \x20   retries:\n      attempts: {RETRY_ATTEMPTS}\n      retryOn: \"{RETRY_ON}\"\n"
            ),
        ),
    ]
}

/// When, inside the measured window, the backend fails and is killed.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Timeline {
    fail_at: Duration,
    kill_at: Duration,
}

/// The failure at [`FAIL_AT_FRACTION`] of the window, the kill [`KILL_AFTER_FAIL`] later or
/// halfway to the window's end, whichever comes first.
fn timeline(window: Duration) -> Timeline {
    let fail_at = window.mul_f64(FAIL_AT_FRACTION);
    let kill_at = fail_at + KILL_AFTER_FAIL.min((window - fail_at) / 2);
    Timeline { fail_at, kill_at }
}

/// Time to eject in ms: from the switch to the first poll that saw the counter reach 1.
fn time_to_eject_ms(failed_at: Instant, seen_at: Option<Instant>) -> Option<f64> {
    seen_at.map(|t| t.saturating_duration_since(failed_at).as_secs_f64() * 1e3)
}

/// One backend's share of the window.
#[derive(Debug, Clone, Serialize)]
pub struct BackendRecord {
    /// Workload name (`echo-v1`...).
    pub name: String,
    /// Requests its app received in the window (until the kill for the victim).
    pub attempts: u64,
    /// Of those, answered with the injected failure.
    pub failed: u64,
    /// It was the one that failed and was killed.
    pub victim: bool,
}

/// What the scenario measured (the JSON document).
#[derive(Debug, Clone, Serialize)]
pub struct ChaosRecord {
    /// Always `chaos`.
    pub scenario: &'static str,
    /// The load at the client sidecar (mTLS: STRICT PeerAuthentication).
    #[serde(flatten)]
    pub load: LoadSettings,
    /// Seconds into the window when the victim started answering 503.
    pub fail_at_s: f64,
    /// Seconds into the window when its sidecar and app were killed.
    pub kill_at_s: f64,
    /// Latency and counts at the load generator.
    pub meshed: LegRecord,
    /// Requests due in the window.
    pub requests: u64,
    /// Non-2xx answers and transport errors the load generator saw.
    pub client_errors: u64,
    /// The same as `client_errors` (the pair scenario's key).
    pub errors: u64,
    /// Successful responses per second.
    pub achieved_rps: f64,
    /// Requests the three apps received in the window (their own counters).
    pub upstream_attempts: u64,
    /// Per backend.
    pub backends: Vec<BackendRecord>,
    /// Failure switch -> the client's ejection counter read 1, ms (`null`: no ejection seen).
    pub time_to_eject_ms: Option<f64>,
    /// The metric's poll interval, ms (the resolution of `time_to_eject_ms`).
    pub eject_poll_ms: f64,
    /// Failure switch -> the last 503 the victim answered, by the victim's clock, ms.
    pub last_503_after_ms: Option<f64>,
    /// Retries the client sidecar sent in the window.
    pub retries: f64,
    /// Retries it refused (budget, `maxRetries`) in the window.
    pub retry_overflow: f64,
    /// Ejections enforced by the end of the run.
    pub ejections_enforced: f64,
    /// Hosts ejected at the end of the run.
    pub ejections_active: f64,
    /// The sidecars: client, then `echo-v1`..`v3` (`cpu_ms_per_1k_req` is per request it
    /// handled: the window's requests for the client, its app's attempts for a backend).
    pub sidecars: Vec<SidecarRecord>,
    /// The control plane's peak RSS, MB.
    pub control_rss_peak_mb: f64,
    /// Notes (unclean exits, missing ejection).
    pub notes: Vec<String>,
}

/// Runs the scenario, prints the table, writes the JSON; returns whether the failing backend was
/// ejected.
pub fn run(args: &BenchArgs) -> Result<bool, ChaosError> {
    let rate = args.rate.unwrap_or(DEFAULT_RATE);
    let proxy = meshlite::locate_or_build()?;
    let control_bin = process::locate_or_build(
        "meshlite-control",
        "meshlite-control",
        super::control::CONTROL_BIN_ENV,
    )
    .map_err(ChaosError::ControlBinary)?;
    let temp = tempfile::Builder::new()
        .prefix("meshlite-bench-chaos-")
        .tempdir()
        .map_err(ChaosError::RunDir)?;
    let dir = temp.path();
    let bench_exe = crate::process::own_executable().map_err(ChaosError::RunDir)?;
    let times = timeline(args.duration);
    println!(
        "meshlite-bench, scenario chaos: {rate} RPS of GET / (Host {SERVICE}:{SERVICE_PORT}) at a client sidecar, \
         {:.1} s measured after {:.1} s warm-up, {} connections",
        args.duration.as_secs_f64(),
        args.warmup.as_secs_f64(),
        args.connections
    );
    println!(
        "mesh: meshlite-control ({}) pushing outlierDetection {{consecutive5xxErrors: {CONSECUTIVE_5XX}, interval: 1s, \
         baseEjectionTime: 30s, maxEjectionPercent: {MAX_EJECTION_PERCENT}}} and retries {{attempts: {RETRY_ATTEMPTS}, \
         retryOn: {RETRY_ON}}}; mTLS STRICT; meshlite-proxy {}",
        control_bin.path.display(),
        proxy.path.display()
    );
    println!(
        "events: echo-{} answers {FAILURE_STATUS} from {:.2} s into the window; its sidecar and app are SIGKILLed at {:.2} s",
        VERSIONS[VICTIM],
        times.fail_at.as_secs_f64(),
        times.kill_at.as_secs_f64()
    );
    if args.pin {
        println!("note: --pin is not used by this scenario (every process shares the CPUs)");
    }

    let control = ControlPlane::start(&control_bin.path, &dir.join("control"), &config_files())?;
    let opts = SidecarOptions {
        binary: proxy.path.clone(),
        workers: args.workers,
        pin_cpu: None,
    };
    let mut apps = Vec::with_capacity(VERSIONS.len());
    for v in VERSIONS {
        let spec = AppSpec {
            name: format!("{SERVICE}-{v}"),
            payload: args.payload,
            calls: Vec::new(),
            pin_cpu: None,
        };
        apps.push(AppProcess::start(&bench_exe, &spec, dir)?);
    }
    let echo_token = control.token(SERVICE)?;
    let mut pending = Vec::with_capacity(VERSIONS.len());
    for (app, v) in apps.iter().zip(VERSIONS) {
        let workload = Workload::version_of(SERVICE, v, app.addr());
        pending.push(PendingSidecar::spawn(
            &opts,
            &control,
            &workload,
            &echo_token,
            dir,
        )?);
    }
    let client_pending = PendingSidecar::spawn(
        &opts,
        &control,
        &Workload::client("client"),
        &control.token("client")?,
        dir,
    )?;
    let mut backends = pending
        .into_iter()
        .map(PendingSidecar::ready)
        .collect::<Result<Vec<_>, _>>()?;
    let client = client_pending.ready()?;
    eprintln!(
        "[chaos] control plane, 4 sidecars and 3 apps up; waiting for the client to reach every backend"
    );
    wait_until_every_backend_serves(&client, &apps)?;

    let victim_app = apps.remove(VICTIM);
    let victim_sidecar = backends.remove(VICTIM);
    let mut record = measure_run(
        args,
        rate,
        times,
        &control,
        &client,
        (&backends, &apps),
        (victim_sidecar, victim_app),
    )?;

    for sidecar in std::iter::once(client).chain(backends) {
        record.notes.extend(sidecar.stop());
    }
    for app in apps {
        app.stop();
    }
    control.stop();

    println!("{}", render(&record));
    if let Some(path) = &args.json {
        report::write_json(path, &serde_json::to_string_pretty(&record)?)?;
        println!("JSON written to {}", path.display());
    }
    if args.keep_dir {
        println!("run directory kept: {}", temp.keep().display());
    }
    Ok(record.time_to_eject_ms.is_some())
}

/// Sends requests through the client sidecar until every backend's app has received one.
fn wait_until_every_backend_serves(
    client: &Sidecar,
    apps: &[AppProcess],
) -> Result<(), ChaosError> {
    let deadline = Instant::now() + REACH_TIMEOUT;
    let host = format!("{SERVICE}:{SERVICE_PORT}");
    let mut last = String::from("no request sent");
    for sent in 1..=REACH_MAX_REQUESTS {
        match probe::get(client.outbound(), &host, "/") {
            Ok(reply) if reply.status == 200 => last = "200".into(),
            Ok(reply) => last = format!("status {}: {}", reply.status, reply.body.trim()),
            Err(e) => last = e.to_string(),
        }
        if sent % 3 == 0 {
            let served = apps
                .iter()
                .map(|a| a.stats().map(|s| s.requests > 0))
                .collect::<Result<Vec<_>, _>>()?;
            if served.iter().all(|s| *s) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let counts: Vec<String> = apps
        .iter()
        .map(|a| {
            a.stats().map_or_else(
                |e| format!("{}: {e}", a.name()),
                |s| format!("{}: {}", a.name(), s.requests),
            )
        })
        .collect();
    Err(ChaosError::NotReachable(format!(
        "the client sidecar did not reach every {SERVICE} backend within {REACH_TIMEOUT:?} \
         (requests per app: {}; last answer: {last}); client log tail:\n{}",
        counts.join(", "),
        client.log_tail()
    )))
}

fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

/// A counter of the client sidecar for the echo cluster (0 when it has no sample yet).
fn cluster_metric(text: &str, name: &str) -> f64 {
    probe::metric_sum(text, name, &[("cluster_name", &cluster_name())]).unwrap_or(0.0)
}

/// Runs the load with its events and returns the record (without the stop notes).
fn measure_run(
    args: &BenchArgs,
    rate: u32,
    times: Timeline,
    control: &ControlPlane,
    client: &Sidecar,
    (backends, apps): (&[Sidecar], &[AppProcess]),
    (victim_sidecar, victim_app): (Sidecar, AppProcess),
) -> Result<ChaosRecord, ChaosError> {
    let spec = LoadSpec {
        target: client.outbound(),
        authority: format!("{SERVICE}:{SERVICE_PORT}"),
        protocol: args.protocol,
        connections: args.connections as usize,
        rate_rps: f64::from(rate),
        warmup: args.warmup,
        duration: args.duration,
        request_timeout: args.request_timeout,
        pin_cpu: None,
        netns: None,
    };
    // Watched for the whole window: client, surviving sidecars, surviving apps, control plane.
    let mut pids = vec![client.pid()];
    pids.extend(backends.iter().map(Sidecar::pid));
    pids.extend(apps.iter().map(AppProcess::pid));
    pids.push(control.pid());
    let surviving = backends.len();

    let running = load::start(spec)?;
    sleep_until(running.measure_start);
    let start = Snapshot::take(&pids)?;
    let victim_sidecar_start = CpuMark::take(victim_sidecar.pid())?;
    let victim_app_start = CpuMark::take(victim_app.pid())?;
    let stats_start = apps
        .iter()
        .map(AppProcess::stats)
        .collect::<Result<Vec<_>, _>>()?;
    let victim_stats_start = victim_app.stats()?;
    let metrics_start = client.metrics_text()?;

    sleep_until(running.measure_start + times.fail_at);
    let failed_at = Instant::now();
    victim_app.fail_with(Some(FAILURE_STATUS))?;
    eprintln!(
        "[chaos] echo-{} answers {FAILURE_STATUS} now",
        VERSIONS[VICTIM]
    );
    let kill_at = running.measure_start + times.kill_at;
    let mut seen_at = None;
    while Instant::now() < kill_at {
        // A failed scrape is retried at the next poll; the kill ends the wait either way.
        if let Ok(text) = client.metrics_text()
            && cluster_metric(&text, EJECTIONS_ENFORCED) >= 1.0
        {
            seen_at = Some(Instant::now());
            break;
        }
        std::thread::sleep(EJECT_POLL);
    }
    let time_to_eject_ms = time_to_eject_ms(failed_at, seen_at);
    match time_to_eject_ms {
        Some(ms) => eprintln!("[chaos] ejection seen {ms:.1} ms after the first {FAILURE_STATUS}"),
        None => eprintln!("[chaos] no ejection seen before the kill"),
    }

    sleep_until(kill_at);
    let victim_stats_end = victim_app.stats()?;
    let victim_sidecar_end = CpuMark::take(victim_sidecar.pid())?;
    let victim_app_end = CpuMark::take(victim_app.pid())?;
    let victim_rss = measure::peak_rss_mb(victim_sidecar.pid())?;
    victim_sidecar.kill();
    victim_app.kill();
    eprintln!("[chaos] echo-{}'s sidecar and app killed", VERSIONS[VICTIM]);

    sleep_until(running.measure_end);
    let end = Snapshot::take(&pids)?;
    let rss = std::iter::once(client.pid())
        .chain(backends.iter().map(Sidecar::pid))
        .map(measure::peak_rss_mb)
        .collect::<Result<Vec<_>, _>>()?;
    let result = running.finish()?;
    let stats_end = apps
        .iter()
        .map(AppProcess::stats)
        .collect::<Result<Vec<_>, _>>()?;
    let metrics_end = client.metrics_text()?;
    let control_rss_peak_mb = measure::peak_rss_mb(control.pid())?;

    // Backends in version order, the victim at its place.
    let mut backend_records = Vec::with_capacity(VERSIONS.len());
    for (i, v) in VERSIONS.iter().enumerate() {
        let survivor = if i < VICTIM { i } else { i.saturating_sub(1) };
        let (s, e): (&AppStats, &AppStats) =
            match (stats_start.get(survivor), stats_end.get(survivor)) {
                _ if i == VICTIM => (&victim_stats_start, &victim_stats_end),
                (Some(s), Some(e)) => (s, e),
                _ => (&victim_stats_start, &victim_stats_start),
            };
        backend_records.push(BackendRecord {
            name: format!("{SERVICE}-{v}"),
            attempts: e.requests.saturating_sub(s.requests),
            failed: e.failed.saturating_sub(s.failed),
            victim: i == VICTIM,
        });
    }
    let upstream_attempts = backend_records.iter().map(|b| b.attempts).sum();

    let usage = procfs::usage(&start, &end);
    let window_s = usage.seconds;
    let victim_sidecar_cpu = victim_sidecar_start.cpu_seconds_until(&victim_sidecar_end);
    let victim_app_cpu = victim_app_start.cpu_seconds_until(&victim_app_end);
    let app_cores = usage.cores[1 + surviving..1 + 2 * surviving]
        .iter()
        .sum::<f64>()
        + victim_app_cpu / window_s;
    let cpu = LegCpu {
        generator_cores: usage.own_cores,
        app_cores,
        other_cores: (usage.other_cores - (victim_sidecar_cpu + victim_app_cpu) / window_s)
            .max(0.0),
    };
    let leg = measure::leg_record(&result, f64::from(rate), cpu, false);

    let mut sidecars = vec![SidecarRecord {
        role: "client".into(),
        rss_peak_mb: rss[0],
        cpu_cores: usage.cores[0],
        cpu_ms_per_1k_req: measure::per_1k(usage.cores[0] * window_s, result.requests),
    }];
    let mut survivor_index = 0;
    for b in &backend_records {
        if b.victim {
            sidecars.push(SidecarRecord {
                role: format!("{} (killed)", b.name),
                rss_peak_mb: victim_rss,
                cpu_cores: victim_sidecar_cpu
                    / victim_sidecar_start
                        .seconds_until(&victim_sidecar_end)
                        .max(1e-6),
                cpu_ms_per_1k_req: measure::per_1k(victim_sidecar_cpu, b.attempts),
            });
        } else {
            survivor_index += 1;
            let cores = usage.cores[survivor_index];
            sidecars.push(SidecarRecord {
                role: b.name.clone(),
                rss_peak_mb: rss[survivor_index],
                cpu_cores: cores,
                cpu_ms_per_1k_req: measure::per_1k(cores * window_s, b.attempts),
            });
        }
    }

    let mut notes = Vec::new();
    if time_to_eject_ms.is_none() {
        notes.push(format!(
            "no ejection: {EJECTIONS_ENFORCED} for {} stayed 0 until the kill",
            cluster_name()
        ));
    }
    Ok(ChaosRecord {
        scenario: "chaos",
        load: LoadSettings::of(rate, args),
        fail_at_s: times.fail_at.as_secs_f64(),
        kill_at_s: times.kill_at.as_secs_f64(),
        requests: result.requests,
        client_errors: result.errors,
        errors: result.errors,
        achieved_rps: result.achieved_rps,
        meshed: leg,
        upstream_attempts,
        backends: backend_records,
        time_to_eject_ms,
        eject_poll_ms: EJECT_POLL.as_secs_f64() * 1e3,
        last_503_after_ms: victim_stats_end.last_failure_after_ms,
        retries: cluster_metric(&metrics_end, RETRIES) - cluster_metric(&metrics_start, RETRIES),
        retry_overflow: cluster_metric(&metrics_end, RETRY_OVERFLOW)
            - cluster_metric(&metrics_start, RETRY_OVERFLOW),
        ejections_enforced: cluster_metric(&metrics_end, EJECTIONS_ENFORCED),
        ejections_active: cluster_metric(&metrics_end, EJECTIONS_ACTIVE),
        sidecars,
        control_rss_peak_mb,
        notes,
    })
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.1} ms"))
}

/// The printed report.
fn render(r: &ChaosRecord) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nchaos at {} RPS, {:.1} s window: echo-{} failing from {:.2} s, killed at {:.2} s",
        r.load.rate_rps, r.load.duration_s, VERSIONS[VICTIM], r.fail_at_s, r.kill_at_s
    );
    let _ = writeln!(
        out,
        "{:>9} {:>14} {:>18} {:>10} {:>8} {:>9} {:>16} {:>15} {:>8} {:>8} {:>9}",
        "requests",
        "client_errors",
        "upstream_attempts",
        "503s sent",
        "retries",
        "overflow",
        "time_to_eject",
        "last 503 after",
        "p50 ms",
        "p99 ms",
        "achieved"
    );
    let failed: u64 = r.backends.iter().map(|b| b.failed).sum();
    let _ = writeln!(
        out,
        "{:>9} {:>14} {:>18} {:>10} {:>8.0} {:>9.0} {:>16} {:>15} {:>8.3} {:>8.3} {:>9.0}",
        r.requests,
        r.client_errors,
        r.upstream_attempts,
        failed,
        r.retries,
        r.retry_overflow,
        ms(r.time_to_eject_ms),
        ms(r.last_503_after_ms),
        r.meshed.latency.p50_ms,
        r.meshed.latency.p99_ms,
        r.achieved_rps
    );
    let _ = writeln!(
        out,
        "attempts per backend: {}; ejections enforced {:.0}, active at the end {:.0}",
        r.backends
            .iter()
            .map(|b| format!("{} {}", b.name, b.attempts))
            .collect::<Vec<_>>()
            .join(", "),
        r.ejections_enforced,
        r.ejections_active
    );
    let _ = writeln!(
        out,
        "time_to_eject: failure switch -> the client sidecar's {EJECTIONS_ENFORCED} read 1 (polled every {:.0} ms); \
         last 503 after: the failing app's own clock",
        r.eject_poll_ms
    );
    let _ = writeln!(
        out,
        "latency p90 {:.3} / p99.9 {:.3} / max {:.3} ms; generator {:.2} cores, apps {:.2}, other load {:.2}{}",
        r.meshed.latency.p90_ms,
        r.meshed.latency.p999_ms,
        r.meshed.max_ms,
        r.meshed.generator_cpu_cores,
        r.meshed.app_cpu_cores,
        r.meshed.other_load_cores,
        if r.meshed.disturbed {
            format!(" DISTURBED: {}", r.meshed.disturbed_reasons.join("; "))
        } else {
            String::new()
        }
    );
    if !r.meshed.error_samples.is_empty() {
        let _ = writeln!(
            out,
            "client errors, e.g.: {}",
            r.meshed.error_samples.join(" | ")
        );
    }
    let _ = writeln!(
        out,
        "\n{:<18} {:>7} {:>14} {:>12}",
        "sidecar", "cores", "CPU ms/1k req", "peak RSS MB"
    );
    for s in &r.sidecars {
        let _ = writeln!(
            out,
            "{:<18} {:>7.2} {:>14.0} {:>12.1}",
            s.role, s.cpu_cores, s.cpu_ms_per_1k_req, s.rss_peak_mb
        );
    }
    let _ = writeln!(
        out,
        "(CPU ms/1k req: per request the sidecar handled: all of them for the client, its app's attempts for a backend; \
         control plane peak RSS {:.1} MB)",
        r.control_rss_peak_mb
    );
    for note in &r.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `path` holds, once written, a config the control plane accepts.
    fn config_is_valid(path: &std::path::Path) -> Result<(), String> {
        for (name, text) in config_files() {
            std::fs::write(path.join(name), text).map_err(|e| e.to_string())?;
        }
        let report = meshlite_control::validate::check_dir(path);
        if report.has_errors() || !report.problems.is_empty() {
            return Err(format!("{:#?}", report.problems));
        }
        Ok(())
    }

    #[test]
    fn the_backend_fails_at_30_percent_and_dies_a_few_seconds_later() {
        let t = timeline(Duration::from_secs(20));
        assert_eq!(t.fail_at, Duration::from_secs(6));
        assert_eq!(t.kill_at, Duration::from_secs(9));
        // A short window keeps the kill inside it, halfway to its end.
        let t = timeline(Duration::from_secs(4));
        assert_eq!(t.fail_at, Duration::from_millis(1200));
        assert_eq!(t.kill_at, Duration::from_millis(2600));
    }

    #[test]
    fn time_to_eject_runs_from_the_switch_to_the_poll_that_saw_it() {
        let failed = Instant::now();
        assert_eq!(time_to_eject_ms(failed, None), None);
        let seen = failed + Duration::from_millis(25);
        assert_eq!(time_to_eject_ms(failed, Some(seen)), Some(25.0));
        // A clock read before the switch gives 0, never a negative time.
        assert_eq!(time_to_eject_ms(seen, Some(failed)), Some(0.0));
    }

    #[test]
    fn the_ejection_counter_is_read_for_the_echo_cluster_only() {
        let text = format!(
            "{EJECTIONS_ENFORCED}{{cluster_name=\"{}\"}} 1\n{EJECTIONS_ENFORCED}{{cluster_name=\"outbound|8080||x\"}} 3\n",
            cluster_name()
        );
        assert_eq!(cluster_metric(&text, EJECTIONS_ENFORCED), 1.0);
        assert_eq!(cluster_metric("", EJECTIONS_ENFORCED), 0.0);
    }

    #[test]
    fn max_ejection_percent_lets_one_of_three_hosts_go() {
        // Envoy: ejected hosts after the prospective ejection, over all hosts, must not exceed it.
        let after = 100.0 / VERSIONS.len() as f64;
        assert!(after <= f64::from(MAX_EJECTION_PERCENT));
        assert!(
            2.0 * after > f64::from(MAX_EJECTION_PERCENT),
            "never two of three"
        );
    }

    #[test]
    fn the_pushed_config_is_valid_for_meshlite_control() {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let checked = dir.and_then(|d| config_is_valid(d.path()));
        assert_eq!(checked, Ok(()));
    }
}
