//! Scenario `pair`: the latency, CPU and memory one sidecar pair adds to a call.
//!
//! For every rate (the ladder, or `--rate`) and every repetition, fresh processes are started: the
//! app; the generator loads it directly (the baseline); then a meshlite pair is started in front of
//! it and loaded at the same rate with the same connections; then, with `--peer haproxy`, an HAProxy
//! pair. Each leg has its own warm-up at the target rate, and /proc is sampled at the edges of its
//! measured window. A leg that fails (a proxy that does not start, a generator that cannot
//! connect) is reported as failed and the others still run.
//!
//! With `--tracing P1,P2,...` each repetition also runs one meshlite pair per sampling
//! percentage, both sidecars reporting spans to the [`TraceCollector`] this process runs; the
//! meshlite legs (untraced and traced) take turns going first from one repetition to the next,
//! so no variant always runs on the freshest app. After a traced leg's window the scenario waits
//! for the sidecars' last batches, counts the spans that started inside the window against the
//! requests due in it, reads the spans the sidecars dropped from their metrics, and only then
//! stops the pair. Each traced pair is compared with the untraced pair of its own repetition.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cli::{BenchArgs, PeerName};
use crate::collector::{CollectorError, SpanTally, TraceCollector, WallWindow};
use crate::load::{self, LoadError, LoadSpec};
use crate::process::{ChildSpec, ManagedChild, ProcessError, find_program};
use crate::procfs::{self, ProcError, Snapshot};
use crate::report::{
    self, LegRecord, LoadSettings, PeerRecord, RateRecord, ReportError, SidecarRecord, SpanCounts,
    TracedRecord, TracingDelta, TracingRecord,
};
use crate::sidecar::meshlite::{self, MeshliteOptions, ProxyBinary, TracingOptions};
use crate::sidecar::pki::{self, MeshPki};
use crate::sidecar::{RunningPair, SidecarError, haproxy};

/// The default ladder of rates (RPS).
pub const LADDER: [u32; 4] = [1_000, 2_000, 5_000, 10_000];
/// Repetitions for a single `--rate` unless `--repeat` says otherwise.
const DEFAULT_REPEAT_ONE_RATE: u32 = 3;
/// Repetitions per ladder step unless `--repeat` says otherwise (keeps the default run short).
const DEFAULT_REPEAT_LADDER: u32 = 1;
/// A leg whose achieved rate is below this fraction of the target is disturbed.
pub(crate) const MIN_ACHIEVED_FRACTION: f64 = 0.97;
/// A leg during which other processes used more CPU than this (cores) is disturbed.
pub(crate) const MAX_OTHER_LOAD_CORES: f64 = 0.25;
/// A generator using more CPU than this (cores) is near saturation: its own delays would show.
pub(crate) const MAX_GENERATOR_CORES: f64 = 0.9;
/// A leg whose pacer released 1% of its requests later than this (ms) is disturbed: on such a
/// machine the sub-millisecond differences this benchmark looks for are below its noise.
pub(crate) const MAX_PACER_LATE_MS: f64 = 1.0;
/// CPU for the generator and CPU for everything else, with `--pin`.
const GENERATOR_CPU: usize = 0;
/// See [`GENERATOR_CPU`].
const SERVICE_CPU: usize = 1;
/// Threads per HAProxy sidecar (`nbthread`).
const HAPROXY_THREADS: u32 = 1;

/// Why the scenario could not run at all (a failing leg is not an error: it is reported).
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    /// The arguments cannot be honoured on this machine.
    #[error("{0}")]
    Unsupported(String),
    /// The run directory could not be made.
    #[error("cannot create the run directory: {0}")]
    RunDir(std::io::Error),
    /// Certificates or files could not be prepared.
    #[error(transparent)]
    Sidecar(#[from] SidecarError),
    /// The app could not be started.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The app's listening line was not understood.
    #[error("the app printed an unexpected line: {0}")]
    AppAnnounce(String),
    /// The direct leg could not run (the baseline is needed by every other leg).
    #[error("direct leg: {0}")]
    Load(#[from] LoadError),
    /// /proc could not be read.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// The report could not be produced.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// `--tracing` was given and the trace collector could not start.
    #[error(transparent)]
    Collector(#[from] CollectorError),
}

/// How the traced sidecars' spans travel, as the report names it.
const COLLECTOR_NAME: &str = "otlp-grpc to the bench's own collector on loopback";

/// What every repetition shares.
struct Setup {
    run_dir: PathBuf,
    pki: MeshPki,
    bench_exe: PathBuf,
    proxy: Result<ProxyBinary, String>,
    haproxy: Option<(PathBuf, String)>,
    /// `--tracing`: the sampling percentages (each once, in the order given) and the collector.
    tracing: Option<(Vec<f64>, TraceCollector)>,
}

/// The sampling percentages of `--tracing`, each once, in the order first given.
fn distinct_percentages(given: &[f64]) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::with_capacity(given.len());
    for &p in given {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Runs the scenario, prints the tables, writes the JSON; returns false if any leg failed.
pub fn run(args: &BenchArgs) -> Result<bool, PairError> {
    if args.pin {
        if procfs::cpu_count() < 2 {
            return Err(PairError::Unsupported("--pin needs at least 2 CPUs".into()));
        }
        if find_program("taskset").is_none() {
            return Err(PairError::Unsupported(
                "--pin needs `taskset` (util-linux)".into(),
            ));
        }
    }
    let rates: Vec<u32> = args.rate.map_or_else(|| LADDER.to_vec(), |r| vec![r]);
    let repeat = args.repeat.unwrap_or(if args.rate.is_some() {
        DEFAULT_REPEAT_ONE_RATE
    } else {
        DEFAULT_REPEAT_LADDER
    });

    let temp = tempfile::Builder::new()
        .prefix("meshlite-bench-")
        .tempdir()
        .map_err(PairError::RunDir)?;
    let run_dir = temp.path().to_path_buf();
    let pki = pki::generate(&run_dir)?;
    let proxy = meshlite::locate_or_build().map_err(|e| e.to_string());
    let haproxy = match args.peer {
        Some(PeerName::Haproxy) => match haproxy::find() {
            Some(bin) => {
                let version =
                    haproxy::version(&bin).unwrap_or_else(|| "HAProxy (version unknown)".into());
                Some((bin, version))
            }
            None => {
                eprintln!(
                    "meshlite-bench: --peer haproxy: haproxy is not installed (Debian: `apt-get install -y haproxy`); running without the peer"
                );
                None
            }
        },
        None => None,
    };
    let tracing = if args.tracing.is_empty() {
        None
    } else {
        // Under --pin the collector shares the generator's CPU, not the sidecars'.
        let collector = TraceCollector::start(args.pin.then_some(GENERATOR_CPU))?;
        Some((distinct_percentages(&args.tracing), collector))
    };
    let setup = Setup {
        run_dir,
        pki,
        bench_exe: crate::process::own_executable().map_err(PairError::RunDir)?,
        proxy,
        haproxy,
        tracing,
    };
    print_header(args, &setup, &rates, repeat);

    let mut records = Vec::with_capacity(rates.len());
    let mut all_ran = true;
    for &rate in &rates {
        let mut reps = Vec::new();
        for rep in 1..=repeat {
            let record = run_repetition(args, &setup, rate, rep, repeat)?;
            all_ran &= record.meshed.is_some()
                && record.peer.as_ref().is_none_or(|p| p.meshed.is_some())
                && record
                    .tracing
                    .as_ref()
                    .is_none_or(|t| t.runs.iter().all(|r| r.meshed.is_some()));
            reps.push(record);
        }
        records.push(report::combine(&reps)?);
    }

    println!("{}", report::render(&records));
    for r in &records {
        for note in &r.proxy_notes {
            println!("note ({} RPS): {note}", r.load.rate_rps);
        }
        if let Some(failure) = &r.meshed_failure {
            println!("meshlite leg failed at {} RPS:\n{failure}", r.load.rate_rps);
        }
        if let Some(failure) = r.peer.as_ref().and_then(|p| p.failure.as_ref()) {
            println!("peer leg failed at {} RPS:\n{failure}", r.load.rate_rps);
        }
        for t in r.tracing.iter().flat_map(|t| &t.runs) {
            if let Some(failure) = &t.failure {
                println!(
                    "traced leg ({} % sampling) failed at {} RPS:\n{failure}",
                    t.sampling_percent, r.load.rate_rps
                );
            }
        }
    }
    if let Some(path) = &args.json {
        report::write_json(path, &report::to_json(&records, args.rate.is_some())?)?;
        println!("JSON written to {}", path.display());
    }
    if args.keep_dir {
        let kept = temp.keep();
        println!("run directory kept: {}", kept.display());
    }
    Ok(all_ran)
}

fn print_header(args: &BenchArgs, setup: &Setup, rates: &[u32], repeat: u32) {
    let rates_text: Vec<String> = rates.iter().map(u32::to_string).collect();
    println!(
        "meshlite-bench, scenario pair: {} RPS; {} repetition(s) per rate, fresh processes each; {:.1} s measured after {:.1} s warm-up",
        rates_text.join(", "),
        repeat,
        args.duration.as_secs_f64(),
        args.warmup.as_secs_f64()
    );
    println!(
        "load: open loop, {} connections speaking {}, {} B responses; latency counted from each request's intended send time",
        args.connections,
        args.protocol.name(),
        args.payload
    );
    match &setup.proxy {
        Ok(bin) => println!("meshlite-proxy: {} ({})", bin.path.display(), bin.origin),
        Err(e) => println!("meshlite-proxy: UNAVAILABLE: {e}"),
    }
    println!(
        "sidecars: mTLS between them; workers: {}; upstream protocol: {}",
        args.workers
            .map_or_else(|| "proxy default".to_string(), |w| w.to_string()),
        args.upstream.map_or(
            "proxy default (http1: HTTP/1.1 pooled, HTTP/2 and gRPC multiplexed)",
            |u| u.config_value()
        )
    );
    if let Some((percentages, collector)) = &setup.tracing {
        let list: Vec<String> = percentages.iter().map(|p| format!("{p} %")).collect();
        println!(
            "tracing: one more meshlite pair per sampling percentage ({}), both sidecars exporting spans over OTLP/gRPC to the bench's collector at {} (a thread of this process{}; its CPU reported apart); meshlite legs take turns going first",
            list.join(", "),
            collector.addr(),
            if args.pin {
                format!(", on CPU {GENERATOR_CPU}")
            } else {
                String::new()
            }
        );
    }
    if let Some((bin, version)) = &setup.haproxy {
        println!(
            "peer: {version} at {}, nbthread {HAPROXY_THREADS}, TLS 1.3, client certificates verified, http-reuse always",
            bin.display()
        );
    }
    if args.pin {
        println!(
            "pinning: generator on CPU {GENERATOR_CPU}, app and sidecars on CPU {SERVICE_CPU} (taskset)"
        );
    } else {
        println!(
            "pinning: off: generator, app and sidecars share the machine's {} CPUs (--pin to separate them)",
            procfs::cpu_count()
        );
    }
    println!(
        "note: idle CPUs in this VM are slow to wake, so low rates show extra latency on both paths; \
         a run is flagged DISTURBED when achieved < {:.0}% of target, other processes used > {MAX_OTHER_LOAD_CORES} cores, \
         or the generator used > {MAX_GENERATOR_CORES} cores",
        MIN_ACHIEVED_FRACTION * 100.0
    );
}

fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

/// Starts the app for one repetition.
fn start_app(
    args: &BenchArgs,
    setup: &Setup,
    dir: &Path,
) -> Result<(ManagedChild, SocketAddr), PairError> {
    let mut app = ManagedChild::spawn(ChildSpec {
        name: "app".into(),
        program: setup.bench_exe.clone(),
        args: vec![
            "app".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--payload".into(),
            args.payload.to_string().into(),
        ],
        pin_cpu: args.pin.then_some(SERVICE_CPU),
        log_dir: dir.to_path_buf(),
        stdin_pipe: true,
        announce: None,
        current_dir: None,
    })?;
    let line = app.first_line(Duration::from_secs(10))?;
    let addr =
        crate::app::announced_addr(&line).ok_or_else(|| PairError::AppAnnounce(line.clone()))?;
    Ok((app, addr))
}

/// What one leg measured.
pub(crate) struct LegOutcome {
    pub(crate) leg: LegRecord,
    pub(crate) sidecars: Vec<SidecarRecord>,
    /// The measured window in wall-clock time (what span start times are compared with).
    window: WallWindow,
    /// The trace collector's CPU over the window, cores (0 without one).
    collector_cores: f64,
    /// What a traced leg's sidecars sent the collector.
    spans: Option<SpanCounts>,
}

/// A pair's leg as run: what it measured (or why it failed) and the notes on its proxies' exit.
pub(crate) type LegRun = (Result<LegOutcome, String>, Vec<String>);

/// Why a leg failed (fail-soft legs keep the message).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LegError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Proc(#[from] ProcError),
}

/// Loads `target` at `rate` and samples the app and the given sidecars over the window; with
/// `collector`, its thread's CPU too, which is taken out of the generator's (same process).
pub(crate) fn measure_leg(
    args: &BenchArgs,
    rate: u32,
    target: (SocketAddr, Option<&Path>),
    authority: &str,
    app_pid: u32,
    sidecar_pids: &[u32],
    collector: Option<&TraceCollector>,
) -> Result<LegOutcome, LegError> {
    let (target, netns) = target;
    let spec = LoadSpec {
        target,
        authority: authority.to_string(),
        protocol: args.protocol,
        connections: args.connections as usize,
        rate_rps: f64::from(rate),
        warmup: args.warmup,
        duration: args.duration,
        request_timeout: args.request_timeout,
        pin_cpu: args.pin.then_some(GENERATOR_CPU),
        netns: netns.map(Path::to_path_buf),
    };
    let mut pids = vec![app_pid];
    pids.extend_from_slice(sidecar_pids);
    let collector_ticks = || collector.map_or(Ok(0), TraceCollector::cpu_ticks);
    let running = load::start(spec)?;
    let window = WallWindow::of(running.measure_start, running.measure_end);
    sleep_until(running.measure_start);
    let start = Snapshot::take(&pids);
    let collector_start = collector_ticks();
    sleep_until(running.measure_end);
    let end = Snapshot::take(&pids);
    let collector_end = collector_ticks();
    let rss: Vec<Result<u64, ProcError>> = sidecar_pids
        .iter()
        .map(|&pid| procfs::peak_rss_kb(pid))
        .collect();
    // Always collect the generator before judging the samples: it stops by itself.
    let result = running.finish()?;
    let (start, end) = (start?, end?);
    let usage = procfs::usage(&start, &end);
    let collector_cores = collector_end?.saturating_sub(collector_start?) as f64
        / procfs::ticks_per_second()
        / usage.seconds;

    let leg = super::measure::leg_record(
        &result,
        f64::from(rate),
        super::measure::LegCpu {
            generator_cores: (usage.own_cores - collector_cores).max(0.0),
            app_cores: usage.cores.first().copied().unwrap_or(0.0),
            other_cores: usage.other_cores,
        },
        true,
    );
    let mut sidecars = Vec::new();
    for (i, rss) in rss.into_iter().enumerate() {
        let cores = usage.cores.get(i + 1).copied().unwrap_or(0.0);
        let cpu_ms = cores * usage.seconds * 1000.0;
        // Per request served: when a pair falls behind, requests due but not served cost nothing.
        let per_1k = if result.ok > 0 {
            cpu_ms / (result.ok as f64 / 1000.0)
        } else {
            0.0
        };
        sidecars.push(SidecarRecord {
            role: if i == 0 {
                "client".into()
            } else {
                "server".into()
            },
            rss_peak_mb: rss? as f64 * 1024.0 / 1e6,
            cpu_cores: cores,
            cpu_ms_per_1k_req: per_1k,
        });
    }
    Ok(LegOutcome {
        leg,
        sidecars,
        window,
        collector_cores,
        spans: None,
    })
}

pub(crate) fn progress(rate: u32, rep: u32, repeat: u32, name: &str, leg: &LegRecord) {
    eprintln!(
        "[{rate} RPS, run {rep}/{repeat}] {name:<8} p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} ms, achieved {:.0} RPS, {} errors, generator {:.2} cores (released late p50 {:.3} / p99 {:.3} ms), other load {:.2} cores{}",
        leg.latency.p50_ms,
        leg.latency.p90_ms,
        leg.latency.p99_ms,
        leg.latency.p999_ms,
        leg.achieved_rps,
        leg.errors,
        leg.generator_cpu_cores,
        leg.pacer_late_p50_ms,
        leg.pacer_late_p99_ms,
        leg.other_load_cores,
        if leg.disturbed {
            format!(" (disturbed: {})", leg.disturbed_reasons.join("; "))
        } else {
            String::new()
        }
    );
}

/// Spans the sidecars at `metrics` dropped (`meshlite_spans_dropped_total`, every reason);
/// `None` when a sidecar's metrics could not be read.
fn spans_dropped(metrics: &[SocketAddr]) -> Option<u64> {
    let mut total = 0.0;
    for &addr in metrics {
        let text = crate::probe::get_ok(addr, "/stats/prometheus").ok()?;
        total +=
            crate::probe::metric_sum(&text, "meshlite_spans_dropped_total", &[]).unwrap_or(0.0);
    }
    Some(total as u64)
}

/// The counts of a traced leg: the collector's tally against the requests due in the window.
fn span_counts(tally: &SpanTally, requests: u64, dropped: Option<u64>) -> SpanCounts {
    SpanCounts {
        received: tally.received,
        client_in_window: tally.client_in_window,
        server_in_window: tally.server_in_window,
        sampled_percent: if requests > 0 {
            tally.client_in_window as f64 * 100.0 / requests as f64
        } else {
            0.0
        },
        batches: tally.batches,
        dropped,
    }
}

/// Runs a started pair's leg and stops the pair; returns the outcome and notes on its exit.
/// With `collector` (a traced pair), waits for the sidecars' last spans and reads what they
/// dropped before stopping them.
pub(crate) fn pair_leg(
    args: &BenchArgs,
    rate: u32,
    app_pid: u32,
    pair: RunningPair,
    collector: Option<&TraceCollector>,
) -> LegRun {
    let mut outcome = measure_leg(
        args,
        rate,
        (pair.entry, pair.netns.as_deref()),
        &pair.authority,
        app_pid,
        &pair.pids(),
        collector,
    );
    if let (Some(collector), Ok(o)) = (collector, outcome.as_mut()) {
        collector.wait_quiet();
        let dropped = spans_dropped(&pair.metrics);
        o.spans = Some(span_counts(
            &collector.tally(o.window),
            o.leg.requests,
            dropped,
        ));
    }
    let implementation = pair.implementation;
    let logs = format!(
        "logs: {} and {}",
        pair.client.log_path().display(),
        pair.server.log_path().display()
    );
    let client_tail = pair.client.log_tail();
    let server_tail = pair.server.log_tail();
    let notes = pair.stop();
    let outcome = outcome.map_err(|e| {
        format!("{implementation} leg: {e}; {logs}\n--- client log tail ---\n{client_tail}\n--- server log tail ---\n{server_tail}")
    });
    (outcome, notes)
}

/// Starts a meshlite pair (traced when `tracing` is given) and runs its leg.
fn meshlite_leg(
    args: &BenchArgs,
    setup: &Setup,
    dir: &Path,
    rate: u32,
    app: (u32, SocketAddr),
    tracing: Option<TracingOptions>,
) -> LegRun {
    let bin = match &setup.proxy {
        Err(e) => return (Err(e.clone()), Vec::new()),
        Ok(bin) => bin,
    };
    let opts = MeshliteOptions {
        binary: bin.path.clone(),
        workers: args.workers,
        upstream: args.upstream,
        protocol: args.protocol,
        pin_cpu: args.pin.then_some(SERVICE_CPU),
        authz: args.authz,
        tracing,
    };
    let collector = tracing.and(setup.tracing.as_ref().map(|(_, c)| c));
    if let Some(c) = collector {
        c.reset();
    }
    match meshlite::start_pair(dir, &setup.pki, app.1, &opts) {
        Err(e) => (Err(format!("meshlite pair did not start: {e}")), Vec::new()),
        Ok(pair) => pair_leg(args, rate, app.0, pair, collector),
    }
}

/// The meshlite variants of a repetition: the untraced pair (`None`), then one per sampling
/// percentage.
fn variants(setup: &Setup) -> Vec<Option<f64>> {
    let mut all = vec![None];
    if let Some((percentages, _)) = &setup.tracing {
        all.extend(percentages.iter().copied().map(Some));
    }
    all
}

/// The order the variants run in repetition `rep` (1-based): rotated by one each repetition,
/// so that each goes first in turn.
fn rotation(count: usize, rep: u32) -> Vec<usize> {
    let shift = usize::try_from(rep.saturating_sub(1)).unwrap_or(0) % count.max(1);
    (0..count).map(|i| (i + shift) % count).collect()
}

/// The span check of a traced leg: empty when the spans match the sampling percentage, else
/// what is off. Each sampled request makes one CLIENT and one SERVER span; the sampled count is
/// binomial, so the tolerance is 4 standard deviations, plus a little for the requests at the
/// window's edges (a span starts when its request reaches the sidecar, slightly after its
/// intended time).
pub fn span_check(percent: f64, requests: u64, spans: &SpanCounts) -> Vec<String> {
    let mut off = Vec::new();
    if percent == 0.0 {
        if spans.received > 0 {
            off.push(format!(
                "{} spans received at 0 % sampling (expected none)",
                spans.received
            ));
        }
        return off;
    }
    let n = requests as f64;
    let p = percent / 100.0;
    let expected = n * p;
    let tolerance = 4.0 * (n * p * (1.0 - p)).sqrt() + 0.01 * expected + 5.0;
    for (kind, got) in [
        ("CLIENT", spans.client_in_window),
        ("SERVER", spans.server_in_window),
    ] {
        if (got as f64 - expected).abs() > tolerance {
            off.push(format!(
                "{got} {kind} spans in the window for {requests} requests at {percent} % (expected {expected:.0} ± {tolerance:.0})"
            ));
        }
    }
    if let Some(dropped) = spans.dropped.filter(|&d| d > 0) {
        off.push(format!(
            "the sidecars dropped {dropped} spans (meshlite_spans_dropped_total)"
        ));
    }
    off
}

fn run_repetition(
    args: &BenchArgs,
    setup: &Setup,
    rate: u32,
    rep: u32,
    repeat: u32,
) -> Result<RateRecord, PairError> {
    let dir = setup.run_dir.join(format!("rate-{rate}-run-{rep}"));
    std::fs::create_dir_all(&dir).map_err(PairError::RunDir)?;
    let pin = args.pin.then_some(SERVICE_CPU);

    let (app, app_addr) = start_app(args, setup, &dir)?;
    let app_pid = app.pid();
    let direct = measure_leg(
        args,
        rate,
        (app_addr, None),
        meshlite::SERVICE_HOST,
        app_pid,
        &[],
        None,
    )
    .map_err(|e| match e {
        LegError::Load(e) => PairError::Load(e),
        LegError::Proc(e) => PairError::Proc(e),
    })?;
    progress(rate, rep, repeat, "direct", &direct.leg);

    // The meshlite legs: the untraced pair, and with --tracing one per percentage, in turn.
    let variants = variants(setup);
    let mut outcomes: Vec<Option<LegRun>> = variants.iter().map(|_| None).collect();
    for i in rotation(variants.len(), rep) {
        let Some(&variant) = variants.get(i) else {
            continue;
        };
        let tracing = variant
            .zip(setup.tracing.as_ref())
            .map(|(p, (_, c))| TracingOptions {
                collector: c.addr(),
                sampling_percent: p,
            });
        let name = variant.map_or_else(|| "meshlite".to_string(), |p| format!("trace {p}%"));
        let (outcome, notes) = meshlite_leg(args, setup, &dir, rate, (app_pid, app_addr), tracing);
        match &outcome {
            Ok(m) => progress(rate, rep, repeat, &name, &m.leg),
            Err(e) => eprintln!(
                "[{rate} RPS, run {rep}/{repeat}] {name} FAILED: {}",
                e.lines().next().unwrap_or("")
            ),
        }
        if let (Ok(m), Some(spans)) = (&outcome, outcome.as_ref().ok().and_then(|m| m.spans)) {
            eprintln!(
                "[{rate} RPS, run {rep}/{repeat}] {name:<8} spans: {} received, {} CLIENT + {} SERVER in the window for {} requests ({:.1} % sampled), {} dropped, collector {:.3} cores",
                spans.received,
                spans.client_in_window,
                spans.server_in_window,
                m.leg.requests,
                spans.sampled_percent,
                spans
                    .dropped
                    .map_or_else(|| "?".to_string(), |d| d.to_string()),
                m.collector_cores,
            );
        }
        if let Some(slot) = outcomes.get_mut(i) {
            *slot = Some((outcome, notes));
        }
    }
    let mut outcomes = outcomes.into_iter().flatten();
    let (meshed, proxy_notes) = outcomes
        .next()
        .unwrap_or_else(|| (Err("not run".into()), Vec::new()));
    let traced: Vec<(f64, Result<LegOutcome, String>, Vec<String>)> = variants
        .iter()
        .skip(1)
        .flatten()
        .zip(outcomes)
        .map(|(&p, (outcome, notes))| (p, outcome, notes))
        .collect();

    let peer = setup.haproxy.as_ref().map(|(bin, version)| {
        let outcome = match haproxy::start_pair(bin, &dir, &setup.pki, app_addr, args.protocol, pin)
        {
            Err(e) => Err(format!("haproxy pair did not start: {e}")),
            // HAProxy's exit on SIGTERM is its own business; only meshlite's is checked.
            Ok(pair) => pair_leg(args, rate, app_pid, pair, None).0,
        };
        match &outcome {
            Ok(m) => progress(rate, rep, repeat, "haproxy", &m.leg),
            Err(e) => eprintln!(
                "[{rate} RPS, run {rep}/{repeat}] haproxy FAILED: {}",
                e.lines().next().unwrap_or("")
            ),
        }
        peer_record(version, &direct.leg, outcome)
    });
    // The app is ours: a failure to stop it cleanly changes no figure.
    let _ = app.stop();

    let tracing = setup.tracing.as_ref().map(|_| TracingRecord {
        collector: COLLECTOR_NAME.into(),
        runs: traced
            .into_iter()
            .map(|(p, outcome, notes)| {
                traced_record(p, &direct.leg, meshed.as_ref().ok(), outcome, notes)
            })
            .collect(),
    });
    let (meshed_leg, sidecars, meshed_failure) = match meshed {
        Ok(m) => (Some(m.leg), m.sidecars, None),
        Err(e) => (None, Vec::new(), Some(e)),
    };
    let added = meshed_leg
        .as_ref()
        .map(|m| m.latency.minus(&direct.leg.latency));
    let reference = meshed_leg.as_ref().unwrap_or(&direct.leg);
    Ok(RateRecord {
        load: LoadSettings::of(rate, args),
        workers: args.workers,
        upstream_protocol: args.upstream.map_or("h2", |u| u.config_value()).into(),
        upstream_protocol_explicit: args.upstream.is_some(),
        pinned: args.pin,
        repetitions: 1,
        repetitions_used: 1,
        errors: meshed_leg.as_ref().map_or(0, |m| m.errors),
        achieved_rps: meshed_leg.as_ref().map_or(0.0, |m| m.achieved_rps),
        generator_cpu_cores: reference.generator_cpu_cores,
        other_load_cores: reference.other_load_cores,
        disturbed: direct.leg.disturbed || meshed_leg.as_ref().is_some_and(|m| m.disturbed),
        direct: direct.leg,
        meshed: meshed_leg,
        added,
        sidecars,
        meshed_failure,
        proxy_notes,
        peer,
        tracing,
        spread: None,
    })
}

/// A traced leg's record, compared with the untraced leg of the same repetition.
fn traced_record(
    percent: f64,
    direct: &LegRecord,
    untraced: Option<&LegOutcome>,
    outcome: Result<LegOutcome, String>,
    exit_notes: Vec<String>,
) -> TracedRecord {
    match outcome {
        Ok(m) => {
            let added = m.leg.latency.minus(&direct.latency);
            let untraced_added = untraced.map(|u| u.leg.latency.minus(&direct.latency));
            let vs_untraced = untraced.zip(untraced_added.as_ref()).and_then(|(u, ua)| {
                TracingDelta::between((&added, &m.sidecars), (ua, &u.sidecars))
            });
            let off = m
                .spans
                .as_ref()
                .map(|s| span_check(percent, m.leg.requests, s))
                .unwrap_or_default();
            TracedRecord {
                sampling_percent: percent,
                added: Some(added),
                errors: m.leg.errors,
                achieved_rps: m.leg.achieved_rps,
                disturbed: m.leg.disturbed
                    || direct.disturbed
                    || untraced.is_some_and(|u| u.leg.disturbed),
                spans_off: !off.is_empty(),
                notes: off.into_iter().chain(exit_notes).collect(),
                meshed: Some(m.leg),
                sidecars: m.sidecars,
                spans: m.spans,
                collector_cpu_cores: m.collector_cores,
                vs_untraced,
                failure: None,
            }
        }
        Err(e) => TracedRecord {
            sampling_percent: percent,
            meshed: None,
            added: None,
            errors: 0,
            achieved_rps: 0.0,
            sidecars: Vec::new(),
            spans: None,
            collector_cpu_cores: 0.0,
            vs_untraced: None,
            disturbed: false,
            spans_off: false,
            notes: exit_notes,
            failure: Some(e),
        },
    }
}

pub(crate) fn peer_record(
    version: &str,
    direct: &LegRecord,
    outcome: Result<LegOutcome, String>,
) -> PeerRecord {
    match outcome {
        Ok(m) => PeerRecord {
            name: "haproxy".into(),
            version: version.to_string(),
            threads: HAPROXY_THREADS,
            added: Some(m.leg.latency.minus(&direct.latency)),
            errors: m.leg.errors,
            achieved_rps: m.leg.achieved_rps,
            disturbed: m.leg.disturbed || direct.disturbed,
            meshed: Some(m.leg),
            sidecars: m.sidecars,
            failure: None,
        },
        Err(e) => PeerRecord {
            name: "haproxy".into(),
            version: version.to_string(),
            threads: HAPROXY_THREADS,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(received: u64, client: u64, server: u64, dropped: u64) -> SpanCounts {
        SpanCounts {
            received,
            client_in_window: client,
            server_in_window: server,
            sampled_percent: 0.0,
            batches: 1,
            dropped: Some(dropped),
        }
    }

    #[test]
    fn spans_are_checked_against_the_sampling_percentage() {
        assert!(span_check(0.0, 10_000, &counts(0, 0, 0, 0)).is_empty());
        assert_eq!(span_check(0.0, 10_000, &counts(3, 2, 1, 0)).len(), 1);
        assert!(span_check(100.0, 10_000, &counts(24_000, 10_003, 9_998, 0)).is_empty());
        assert!(
            span_check(10.0, 10_000, &counts(2_400, 1_040, 1_040, 0)).is_empty(),
            "within the binomial spread"
        );
        assert_eq!(
            span_check(10.0, 10_000, &counts(1_200, 600, 600, 0)).len(),
            2,
            "both kinds short"
        );
        assert_eq!(
            span_check(100.0, 10_000, &counts(20_000, 10_000, 10_000, 7)).len(),
            1,
            "spans the sidecars dropped are named"
        );
    }

    #[test]
    fn each_variant_goes_first_in_turn() {
        assert_eq!(rotation(1, 1), vec![0]);
        assert_eq!(rotation(1, 7), vec![0]);
        assert_eq!(rotation(3, 1), vec![0, 1, 2]);
        assert_eq!(rotation(3, 2), vec![1, 2, 0]);
        assert_eq!(rotation(3, 4), vec![0, 1, 2]);
    }

    #[test]
    fn percentages_are_run_once_each_in_the_order_given() {
        assert_eq!(
            distinct_percentages(&[10.0, 0.0, 10.0, 100.0, 0.0]),
            vec![10.0, 0.0, 100.0]
        );
    }
}
