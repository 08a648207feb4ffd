//! Scenario `pods`: the pair measurement over captured traffic, beside the explicit mode, so the
//! cost of capture is a figure.
//!
//! Each repetition builds two pods as network namespaces on a bridge ([`crate::netns`]): the
//! app (this binary's `app`) in the server pod on port 80, the load generator in the client pod
//! (its thread enters the pod's namespace, so its connections are the pod's). Three legs, each
//! loaded at the same rate with the same connections as the pair scenario's:
//!
//! 1. **direct**: the generator calls the server pod's address, no rules, no sidecars;
//! 2. then `meshlite-proxy init` installs the capture rules in both pods (Istio's REDIRECT
//!    rules) and, per leg, a fresh static-identity sidecar pair starts in the pods as uid 1337;
//!    - **explicit**: the generator sends to its sidecar at `127.0.0.1:15001` naming `Host: app`
//!      (loopback is never redirected);
//!    - **captured**: the generator calls the server pod's address, as an app with no proxy
//!      settings does; the rules redirect it to the sidecar, which finds the destination with
//!      `SO_ORIGINAL_DST`.
//!
//!    The two take turns going first from one repetition to the next.
//!
//! Both meshlite legs cross the same veth pairs and bridge as the direct one, so captured minus
//! explicit is what capture costs (the redirect, conntrack's NAT, the original-destination
//! lookup), latency percentile by percentile, CPU per 1,000 requests and peak RSS per sidecar.
//! The report has the pair scenario's shape (`meshlite` is the explicit pair, `captured` the
//! captured one) and adds the capture cost and the time from pod start (init begins) to the
//! first request served through the captured path.
//!
//! Needs root, `ip`, `setpriv` and `iptables` (Debian's, nft backend): without them the scenario
//! says what is missing and runs nothing. Every namespace is deleted when the repetition ends,
//! failed or not.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::pair::{self, LegError, LegOutcome, LegRun};
use crate::cli::BenchArgs;
use crate::harness::{SidecarConfig, SidecarLaunch};
use crate::load::LoadError;
use crate::netns::{self, Node, Pod};
use crate::process::{ChildSpec, ManagedChild, ProcessError};
use crate::procfs::ProcError;
use crate::report::{
    self, LegRecord, LoadSettings, PeerRecord, Percentiles, RateRecord, ReportError, SidecarRecord,
};
use crate::sidecar::meshlite::{self, ProxyBinary, SERVICE_HOST, SERVICE_PORT};
use crate::sidecar::pki::{self, MeshPki};
use crate::sidecar::{READY_TIMEOUT, RunningPair, SidecarError, write_text};

/// Rate when `--rate` is not given (RPS).
pub const DEFAULT_RATE: u32 = 1_000;
/// Repetitions unless `--repeat` says otherwise (as the pair scenario's for one rate).
const DEFAULT_REPEAT: u32 = 3;
/// The uid and gid the sidecars run as (Istio's).
pub const PROXY_UID: u32 = 1337;
/// The sidecar's outbound listener in a pod, where the rules redirect.
const OUTBOUND: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15001);
/// The sidecar's inbound listener port in a pod.
const INBOUND_PORT: u16 = 15006;
/// The sidecar's health port in a pod.
const HEALTH_PORT: u16 = 15021;
/// How long `meshlite-proxy init` may run.
const INIT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the first request through the captured path may take to succeed after the
/// sidecars are ready.
const FIRST_SERVED_TIMEOUT: Duration = Duration::from_secs(20);
/// Between two probes of a starting pod.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// The name the captured pair has in the report (beside `meshlite`, the explicit one).
pub const CAPTURED_NAME: &str = "captured";

/// Why the scenario could not run at all (a failing meshlite leg is reported, not an error).
#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    /// This machine cannot make pods.
    #[error(
        "--scenario pods builds pods as network namespaces with iptables capture and needs: {0}"
    )]
    Unsupported(String),
    /// An option the scenario does not take.
    #[error("{0}")]
    Option(String),
    /// The run directory could not be made or prepared.
    #[error("run directory: {0}")]
    RunDir(std::io::Error),
    /// A pod or its network could not be made.
    #[error("cannot make the pods: {0}")]
    Netns(std::io::Error),
    /// Certificates or files could not be prepared, or the proxy is missing.
    #[error(transparent)]
    Sidecar(#[from] SidecarError),
    /// The app could not be started.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The app's listening line was not understood.
    #[error("the app printed an unexpected line: {0}")]
    AppAnnounce(String),
    /// The direct leg could not run (the baseline every other leg needs).
    #[error("direct leg: {0}")]
    Load(#[from] LoadError),
    /// /proc could not be read.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// The report could not be produced.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// The JSON could not be written.
    #[error("cannot serialise the report: {0}")]
    Json(#[from] serde_json::Error),
}

/// How long a pod took to serve, measured from the moment `meshlite-proxy init` started in
/// both pods (ms).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct PodStart {
    /// `meshlite-proxy init` in both pods (the rules installed).
    pub init_ms: f64,
    /// Both sidecars listening and answering 200 on `/healthz/ready`.
    pub ready_ms: f64,
    /// The first request the client pod's app sent to the server pod's address answered 200
    /// through both sidecars: pod start to first served request.
    pub first_served_ms: f64,
}

/// What capture costs: the captured pair minus the explicit one of the same repetitions.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct CaptureCost {
    /// Added latency, captured minus explicit, ms, percentile by percentile.
    pub latency: Percentiles,
    /// Client sidecar CPU per 1,000 requests, captured minus explicit, ms.
    pub client_cpu_ms_per_1k: f64,
    /// Server sidecar CPU per 1,000 requests, captured minus explicit, ms.
    pub server_cpu_ms_per_1k: f64,
    /// Client sidecar peak RSS, captured minus explicit, MB.
    pub client_rss_mb: f64,
    /// Server sidecar peak RSS, captured minus explicit, MB.
    pub server_rss_mb: f64,
}

impl CaptureCost {
    /// The cost in `record`: its peer (the captured pair) against its meshlite pair.
    pub fn of(record: &RateRecord) -> Option<Self> {
        let peer = record.peer.as_ref()?;
        Self::between(
            (peer.added.as_ref()?, &peer.sidecars),
            (record.added.as_ref()?, &record.sidecars),
        )
    }

    /// `captured` against `explicit`: added latencies and both sidecars (client, server).
    pub fn between(
        captured: (&Percentiles, &[SidecarRecord]),
        explicit: (&Percentiles, &[SidecarRecord]),
    ) -> Option<Self> {
        let ([cc, cs], [ec, es]) = (captured.1, explicit.1) else {
            return None;
        };
        Some(Self {
            latency: captured.0.minus(explicit.0),
            client_cpu_ms_per_1k: cc.cpu_ms_per_1k_req - ec.cpu_ms_per_1k_req,
            server_cpu_ms_per_1k: cs.cpu_ms_per_1k_req - es.cpu_ms_per_1k_req,
            client_rss_mb: cc.rss_peak_mb - ec.rss_peak_mb,
            server_rss_mb: cs.rss_peak_mb - es.rss_peak_mb,
        })
    }
}

/// Everything measured at one rate: the pair scenario's record (`meshed`: explicit, `peer`:
/// captured), the capture cost, and the pod start (median over the repetitions, with its range).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodsRecord {
    /// The pair-shaped record.
    #[serde(flatten)]
    pub pair: RateRecord,
    /// Captured minus explicit; `None` when a meshlite leg failed.
    pub capture_cost: Option<CaptureCost>,
    /// Pod start to first served request (median of the repetitions that got there).
    pub pod_start: Option<PodStart>,
    /// `[min, max]` of `pod_start.first_served_ms` over those repetitions.
    pub pod_start_range_ms: Option<[f64; 2]>,
}

/// What every repetition shares.
struct Setup {
    run_dir: PathBuf,
    pki: MeshPki,
    bench_exe: PathBuf,
    proxy: ProxyBinary,
    ip: PathBuf,
    setpriv: PathBuf,
}

/// The two ways the client pod's app reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// To its sidecar at 127.0.0.1:15001, `Host: app`.
    Explicit,
    /// To the server pod's address, redirected by the rules.
    Captured,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Explicit => "explicit",
            Mode::Captured => CAPTURED_NAME,
        }
    }
}

/// Says what keeps pods from being made here; `Ok` when they can be.
pub fn check_supported() -> Result<(), PodsError> {
    let missing = netns::missing_tools();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PodsError::Unsupported(missing.join(", ")))
    }
}

/// Runs the scenario, prints the tables, writes the JSON; returns false if a meshlite leg
/// failed.
pub fn run(args: &BenchArgs) -> Result<bool, PodsError> {
    check_supported()?;
    if args.pin || args.peer.is_some() || args.authz {
        return Err(PodsError::Option(
            "the pods scenario takes neither --pin, --peer nor --authz".into(),
        ));
    }
    let rate = args.rate.unwrap_or(DEFAULT_RATE);
    let repeat = args.repeat.unwrap_or(DEFAULT_REPEAT);
    let temp = tempfile::Builder::new()
        .prefix("meshlite-bench-pods-")
        .tempdir()
        .map_err(PodsError::RunDir)?;
    let run_dir = temp.path().to_path_buf();
    let pki = pki::generate(&run_dir)?;
    // The sidecars run as 1337: they must reach their configs and read their keys.
    open_to_proxy(&run_dir, &pki).map_err(PodsError::RunDir)?;
    let tool = |name: &str| netns::find_tool(name).unwrap_or_else(|| PathBuf::from(name));
    let setup = Setup {
        run_dir,
        pki,
        bench_exe: crate::process::own_executable().map_err(PodsError::RunDir)?,
        proxy: meshlite::locate_or_build()?,
        ip: tool("ip"),
        setpriv: tool("setpriv"),
    };
    print_header(args, &setup, rate, repeat);

    let mut reps = Vec::new();
    let mut starts = Vec::new();
    let mut all_ran = true;
    for rep in 1..=repeat {
        let (record, start) = run_repetition(args, &setup, rate, rep, repeat)?;
        all_ran &=
            record.meshed.is_some() && record.peer.as_ref().is_some_and(|p| p.meshed.is_some());
        reps.push(record);
        starts.extend(start);
    }
    let pair = report::combine(&reps)?;
    let record = PodsRecord {
        capture_cost: CaptureCost::of(&pair),
        pod_start: median_start(&starts),
        pod_start_range_ms: range(starts.iter().map(|s| s.first_served_ms)),
        pair,
    };

    println!("{}", report::render(std::slice::from_ref(&record.pair)));
    println!("{}", render(&record));
    if let Some(failure) = &record.pair.meshed_failure {
        println!("explicit leg failed:\n{failure}");
    }
    if let Some(failure) = record.pair.peer.as_ref().and_then(|p| p.failure.as_ref()) {
        println!("captured leg failed:\n{failure}");
    }
    for note in &record.pair.proxy_notes {
        println!("note: {note}");
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&record)?;
        report::write_json(path, &text)?;
        println!("JSON written to {}", path.display());
    }
    if args.keep_dir {
        let kept = temp.keep();
        println!("run directory kept: {}", kept.display());
    }
    Ok(all_ran)
}

/// Lets uid 1337 traverse the run directory and read the sidecars' certificates and keys.
fn open_to_proxy(run_dir: &Path, pki: &MeshPki) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o711))?;
    for file in [
        &pki.root,
        &pki.client_cert,
        &pki.client_key,
        &pki.server_cert,
        &pki.server_key,
    ] {
        std::os::unix::fs::chown(file, Some(PROXY_UID), Some(PROXY_UID))?;
    }
    Ok(())
}

fn print_header(args: &BenchArgs, setup: &Setup, rate: u32, repeat: u32) {
    println!(
        "meshlite-bench, scenario pods: {rate} RPS; {repeat} repetition(s), fresh pods and processes each; {:.1} s measured after {:.1} s warm-up",
        args.duration.as_secs_f64(),
        args.warmup.as_secs_f64()
    );
    println!(
        "load: open loop, {} connections speaking {}, {} B responses, from inside the client pod; latency counted from each request's intended send time",
        args.connections,
        args.protocol.name(),
        args.payload
    );
    println!(
        "meshlite-proxy: {} ({}); sidecars as uid {PROXY_UID}, static identities, mTLS between them; workers: {}",
        setup.proxy.path.display(),
        setup.proxy.origin,
        args.workers
            .map_or_else(|| "proxy default".to_string(), |w| w.to_string()),
    );
    println!(
        "pods: two network namespaces on a bridge, veth each; direct = client pod -> server pod's app, no rules; \
         after `meshlite-proxy init` in both: meshlite = explicit (app -> 127.0.0.1:15001, Host: {SERVICE_HOST}), \
         {CAPTURED_NAME} = the same pair with the app calling the server pod's address, redirected by iptables"
    );
}

/// Runs `meshlite-proxy init` in `pod` to completion.
fn init(setup: &Setup, pod: &Pod) -> Result<(), String> {
    let mut command = pod.ns.command(&setup.proxy.path, &["init"]);
    command.stdin(Stdio::null());
    let output = run_bounded(command, INIT_TIMEOUT)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "meshlite-proxy init in {} failed ({}): {}",
            pod.ns.name(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Runs `command` to completion, killing it after `timeout`.
fn run_bounded(mut command: Command, timeout: Duration) -> Result<std::process::Output, String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    let until = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{command:?} ran past {timeout:?}"));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    child.wait_with_output().map_err(|e| e.to_string())
}

/// Starts the app in the server pod on `0.0.0.0:80`.
fn start_app(
    args: &BenchArgs,
    setup: &Setup,
    pod: &Pod,
    dir: &Path,
) -> Result<ManagedChild, PodsError> {
    let listen = SocketAddr::from(([0, 0, 0, 0], SERVICE_PORT));
    let mut app = ManagedChild::spawn(ChildSpec {
        name: "app".into(),
        program: setup.ip.clone(),
        args: vec![
            "netns".into(),
            "exec".into(),
            pod.ns.name().into(),
            setup.bench_exe.clone().into(),
            "app".into(),
            "--listen".into(),
            listen.to_string().into(),
            "--payload".into(),
            args.payload.to_string().into(),
        ],
        pin_cpu: None,
        log_dir: dir.to_path_buf(),
        stdin_pipe: true,
        announce: None,
        current_dir: None,
    })?;
    let line = app.first_line(Duration::from_secs(10))?;
    crate::app::announced_addr(&line).ok_or_else(|| PodsError::AppAnnounce(line.clone()))?;
    Ok(app)
}

/// `GET path` with `Host: host` to `addr` from inside `pod`; the status.
fn probe_from(pod: &Pod, addr: SocketAddr, host: &str, path: &str) -> Result<u16, String> {
    let (host, path) = (host.to_string(), path.to_string());
    pod.ns
        .inside_blocking(move || {
            crate::probe::get(addr, &host, &path)
                .map(|r| r.status)
                .map_err(std::io::Error::other)
        })
        .map_err(|e| e.to_string())
}

/// Polls `GET path` from inside `pod` until it answers 200; false after `timeout`.
fn until_ok(pod: &Pod, addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if probe_from(pod, addr, host, path) == Ok(200) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(PROBE_INTERVAL);
    }
}

/// One sidecar of a pod: written config, started as uid 1337 in the pod, awaited ready.
fn start_sidecar(
    setup: &Setup,
    args: &BenchArgs,
    dir: &Path,
    name: &str,
    pod: &Pod,
    mut config: SidecarConfig,
) -> Result<crate::harness::SidecarProcess, String> {
    config.outbound = OUTBOUND;
    config.pod_listeners = true;
    let path = dir.join(format!("{name}.yaml"));
    write_text(&path, &config.to_yaml()).map_err(|e| e.to_string())?;
    let through: Vec<OsString> = vec![
        "netns".into(),
        "exec".into(),
        pod.ns.name().into(),
        setup.setpriv.clone().into(),
        format!("--reuid={PROXY_UID}").into(),
        format!("--regid={PROXY_UID}").into(),
        "--clear-groups".into(),
    ];
    let mut sidecar = SidecarLaunch::new(&setup.proxy.path, name, dir, &path)
        .workers(args.workers)
        .through(&setup.ip, &through)
        .startup_timeout(READY_TIMEOUT)
        .start()
        .map_err(|e| format!("{name} did not start: {e}"))?;
    let health = SocketAddr::new(IpAddr::V4(pod.ip), HEALTH_PORT);
    if !until_ok(pod, health, "localhost", "/healthz/ready", READY_TIMEOUT) {
        let exited = sidecar.try_exit().ok().flatten();
        return Err(format!(
            "{name} not ready within {READY_TIMEOUT:?} (exited: {exited:?}):\n{}",
            sidecar.log_tail()
        ));
    }
    Ok(sidecar)
}

/// Starts a fresh pair in the pods; with `start` (the pods' first pair), also times the pods'
/// start from `start.0` (init began; init took `start.1`) to the first request served through
/// the captured path.
fn start_pod_pair(
    args: &BenchArgs,
    setup: &Setup,
    dir: &Path,
    pods: (&Pod, &Pod),
    mode: Mode,
    start: Option<(Instant, Duration)>,
) -> Result<(RunningPair, Option<PodStart>), String> {
    let (client_pod, server_pod) = pods;
    let suffix = mode.name();
    let app = SocketAddr::from(([127, 0, 0, 1], SERVICE_PORT));
    let server_cfg = meshlite::server_sidecar(&setup.pki, app, args.protocol, false);
    let server = start_sidecar(
        setup,
        args,
        dir,
        &format!("{suffix}-server"),
        server_pod,
        server_cfg,
    )?;
    let inbound = SocketAddr::new(IpAddr::V4(server_pod.ip), INBOUND_PORT);
    let client_cfg = meshlite::client_sidecar(&setup.pki, inbound, args.protocol, args.upstream);
    let client = start_sidecar(
        setup,
        args,
        dir,
        &format!("{suffix}-client"),
        client_pod,
        client_cfg,
    )?;
    let captured = SocketAddr::new(IpAddr::V4(server_pod.ip), SERVICE_PORT);
    let ready = start.map(|(t0, _)| t0.elapsed());
    if !until_ok(
        client_pod,
        captured,
        SERVICE_HOST,
        "/",
        FIRST_SERVED_TIMEOUT,
    ) {
        return Err(format!(
            "no request through the captured path answered 200 within {FIRST_SERVED_TIMEOUT:?}:\n--- client ---\n{}\n--- server ---\n{}",
            client.log_tail(),
            server.log_tail()
        ));
    }
    let pod_start = start.zip(ready).map(|((t0, init), ready)| PodStart {
        init_ms: init.as_secs_f64() * 1000.0,
        ready_ms: ready.as_secs_f64() * 1000.0,
        first_served_ms: t0.elapsed().as_secs_f64() * 1000.0,
    });
    let entry = match mode {
        Mode::Explicit => OUTBOUND,
        Mode::Captured => captured,
    };
    let pair = RunningPair {
        implementation: "meshlite",
        client: client.into_child(),
        server: server.into_child(),
        entry,
        authority: SERVICE_HOST.to_string(),
        metrics: Vec::new(),
        server_mtls: None,
        netns: Some(client_pod.ns.path()),
    };
    Ok((pair, pod_start))
}

fn run_repetition(
    args: &BenchArgs,
    setup: &Setup,
    rate: u32,
    rep: u32,
    repeat: u32,
) -> Result<(RateRecord, Option<PodStart>), PodsError> {
    let dir = setup.run_dir.join(format!("rate-{rate}-run-{rep}"));
    std::fs::create_dir_all(&dir).map_err(PodsError::RunDir)?;
    // Dropped last: the pods and their processes go first (declared after it).
    let node = Node::create().map_err(PodsError::Netns)?;
    let server_pod = node.add_pod("server").map_err(PodsError::Netns)?;
    let client_pod = node.add_pod("client").map_err(PodsError::Netns)?;
    let app = start_app(args, setup, &server_pod, &dir)?;
    let app_pid = app.pid();
    let server_addr = SocketAddr::new(IpAddr::V4(server_pod.ip), SERVICE_PORT);
    let client_ns = client_pod.ns.path();

    let direct = pair::measure_leg(
        args,
        rate,
        (server_addr, Some(client_ns.as_path())),
        SERVICE_HOST,
        app_pid,
        &[],
        None,
    )
    .map_err(|e| match e {
        LegError::Load(e) => PodsError::Load(e),
        LegError::Proc(e) => PodsError::Proc(e),
    })?;
    pair::progress(rate, rep, repeat, "direct", &direct.leg);

    // The pods start: rules first, as an init container does, then the sidecars.
    let t0 = Instant::now();
    let inits = init(setup, &server_pod).and_then(|()| init(setup, &client_pod));
    let init_took = t0.elapsed();

    let modes = if rep % 2 == 1 {
        [Mode::Explicit, Mode::Captured]
    } else {
        [Mode::Captured, Mode::Explicit]
    };
    let mut pod_start = None;
    let mut explicit: Option<LegRun> = None;
    let mut captured: Option<LegRun> = None;
    for (i, mode) in modes.into_iter().enumerate() {
        let run: LegRun = match &inits {
            Err(e) => (Err(e.clone()), Vec::new()),
            Ok(()) => {
                let start = (i == 0).then_some((t0, init_took));
                match start_pod_pair(args, setup, &dir, (&client_pod, &server_pod), mode, start) {
                    Err(e) => (Err(format!("{} pair: {e}", mode.name())), Vec::new()),
                    Ok((pair, started)) => {
                        if let Some(s) = started {
                            eprintln!(
                                "[{rate} RPS, run {rep}/{repeat}] pod start: init {:.0} ms, sidecars ready {:.0} ms, first served {:.0} ms",
                                s.init_ms, s.ready_ms, s.first_served_ms
                            );
                            pod_start = Some(s);
                        }
                        pair::pair_leg(args, rate, app_pid, pair, None)
                    }
                }
            }
        };
        match &run.0 {
            Ok(m) => pair::progress(rate, rep, repeat, mode.name(), &m.leg),
            Err(e) => eprintln!(
                "[{rate} RPS, run {rep}/{repeat}] {} FAILED: {}",
                mode.name(),
                e.lines().next().unwrap_or("")
            ),
        }
        match mode {
            Mode::Explicit => explicit = Some(run),
            Mode::Captured => captured = Some(run),
        }
    }
    // The app is ours: a failure to stop it cleanly changes no figure.
    let _ = app.stop();
    drop((client_pod, server_pod, node));

    let (explicit, mut notes) = explicit.unwrap_or_else(|| (Err("not run".into()), Vec::new()));
    let (captured, captured_notes) =
        captured.unwrap_or_else(|| (Err("not run".into()), Vec::new()));
    notes.extend(captured_notes);
    let peer = captured_record(&direct.leg, captured, args.workers);
    let (meshed_leg, sidecars, meshed_failure) = match explicit {
        Ok(m) => (Some(m.leg), m.sidecars, None),
        Err(e) => (None, Vec::new(), Some(e)),
    };
    let added = meshed_leg
        .as_ref()
        .map(|m| m.latency.minus(&direct.leg.latency));
    let reference = meshed_leg.as_ref().unwrap_or(&direct.leg);
    let record = RateRecord {
        load: LoadSettings::of(rate, args),
        workers: args.workers,
        upstream_protocol: args.upstream.map_or("h2", |u| u.config_value()).into(),
        upstream_protocol_explicit: args.upstream.is_some(),
        pinned: false,
        repetitions: 1,
        repetitions_used: 1,
        errors: meshed_leg.as_ref().map_or(0, |m| m.errors),
        achieved_rps: meshed_leg.as_ref().map_or(0.0, |m| m.achieved_rps),
        generator_cpu_cores: reference.generator_cpu_cores,
        other_load_cores: reference.other_load_cores,
        disturbed: direct.leg.disturbed
            || meshed_leg.as_ref().is_some_and(|m| m.disturbed)
            || peer.disturbed,
        direct: direct.leg,
        meshed: meshed_leg,
        added,
        sidecars,
        meshed_failure,
        proxy_notes: notes,
        peer: Some(peer),
        tracing: None,
        spread: None,
    };
    Ok((record, pod_start))
}

/// The captured pair's record, in the peer's place.
fn captured_record(
    direct: &LegRecord,
    outcome: Result<LegOutcome, String>,
    workers: Option<u32>,
) -> PeerRecord {
    let version = "meshlite-proxy, app traffic redirected by meshlite-proxy init's iptables rules"
        .to_string();
    let threads = workers.unwrap_or(0);
    match outcome {
        Ok(m) => PeerRecord {
            name: CAPTURED_NAME.into(),
            version,
            threads,
            added: Some(m.leg.latency.minus(&direct.latency)),
            errors: m.leg.errors,
            achieved_rps: m.leg.achieved_rps,
            disturbed: m.leg.disturbed || direct.disturbed,
            meshed: Some(m.leg),
            sidecars: m.sidecars,
            failure: None,
        },
        Err(e) => PeerRecord {
            name: CAPTURED_NAME.into(),
            version,
            threads,
            meshed: None,
            added: None,
            errors: 0,
            achieved_rps: 0.0,
            sidecars: Vec::new(),
            disturbed: false,
            failure: Some(e),
        },
    }
}

/// The median of `values` (the upper one of an even count); `None` when empty.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

/// `[min, max]` of `values`; `None` when empty.
fn range(values: impl Iterator<Item = f64>) -> Option<[f64; 2]> {
    values.fold(None, |acc, v| match acc {
        None => Some([v, v]),
        Some([lo, hi]) => Some([lo.min(v), hi.max(v)]),
    })
}

/// Each figure's median over the repetitions' pod starts.
fn median_start(starts: &[PodStart]) -> Option<PodStart> {
    Some(PodStart {
        init_ms: median(starts.iter().map(|s| s.init_ms).collect())?,
        ready_ms: median(starts.iter().map(|s| s.ready_ms).collect())?,
        first_served_ms: median(starts.iter().map(|s| s.first_served_ms).collect())?,
    })
}

/// The pods scenario's own lines: the capture cost and the pod start.
pub fn render(record: &PodsRecord) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Cost of capture ({CAPTURED_NAME} minus explicit `meshlite`, same pods, same rate, {} RPS)",
        record.pair.load.rate_rps
    );
    match &record.capture_cost {
        Some(c) => {
            let _ = writeln!(
                out,
                "  latency added: p50 {:+.3} ms, p90 {:+.3} ms, p99 {:+.3} ms, p99.9 {:+.3} ms",
                c.latency.p50_ms, c.latency.p90_ms, c.latency.p99_ms, c.latency.p999_ms
            );
            let _ = writeln!(
                out,
                "  CPU per 1,000 requests: client sidecar {:+.0} ms, server sidecar {:+.0} ms; peak RSS: client {:+.1} MB, server {:+.1} MB",
                c.client_cpu_ms_per_1k, c.server_cpu_ms_per_1k, c.client_rss_mb, c.server_rss_mb
            );
        }
        None => {
            let _ = writeln!(out, "  - (a meshlite leg failed)");
        }
    }
    match (&record.pod_start, &record.pod_start_range_ms) {
        (Some(s), range) => {
            let spread = range
                .filter(|[lo, hi]| hi > lo)
                .map_or_else(String::new, |[lo, hi]| format!(" [{lo:.0}/{hi:.0}]"));
            let _ = writeln!(
                out,
                "Pod start to first served request: {:.0} ms{spread} (init rules {:.0} ms, both sidecars ready at {:.0} ms; static identities, no control plane)",
                s.first_served_ms, s.init_ms, s.ready_ms
            );
        }
        (None, _) => {
            let _ = writeln!(out, "Pod start to first served request: - (not reached)");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(role: &str, ms: f64, mb: f64) -> SidecarRecord {
        SidecarRecord {
            role: role.into(),
            rss_peak_mb: mb,
            cpu_cores: 0.1,
            cpu_ms_per_1k_req: ms,
        }
    }

    #[test]
    fn medians_and_ranges_of_pod_starts() {
        let s = |ms| PodStart {
            init_ms: 10.0,
            ready_ms: ms - 5.0,
            first_served_ms: ms,
        };
        let m = median_start(&[s(300.0), s(100.0), s(200.0)]);
        assert_eq!(m.map(|m| m.first_served_ms), Some(200.0));
        assert_eq!(
            range([300.0, 100.0, 200.0].into_iter()),
            Some([100.0, 300.0])
        );
        assert!(median_start(&[]).is_none());
    }

    #[test]
    fn the_capture_cost_is_captured_minus_explicit() {
        let added = |p50| Percentiles {
            p50_ms: p50,
            p90_ms: p50 * 2.0,
            p99_ms: p50 * 3.0,
            p999_ms: p50 * 4.0,
        };
        let captured = [
            sidecar("client", 120.0, 12.0),
            sidecar("server", 100.0, 10.0),
        ];
        let explicit = [
            sidecar("client", 100.0, 11.0),
            sidecar("server", 100.0, 10.0),
        ];
        let c = CaptureCost::between((&added(0.5), &captured), (&added(0.4), &explicit));
        assert!(c.is_some_and(|c| (c.latency.p50_ms - 0.1).abs() < 1e-9
            && (c.latency.p99_ms - 0.3).abs() < 1e-9
            && c.client_cpu_ms_per_1k == 20.0
            && c.server_cpu_ms_per_1k == 0.0
            && c.client_rss_mb == 1.0));
        assert!(
            CaptureCost::between((&added(0.5), &[]), (&added(0.4), &explicit)).is_none(),
            "a leg without its sidecars' figures has no cost"
        );
    }
}
