//! Scenario `pair`: the latency, CPU and memory one sidecar pair adds to a call.
//!
//! For every rate (the ladder, or `--rate`) and every repetition, fresh processes are started: the
//! app; the generator loads it directly (the baseline); then a meshlite pair is started in front of
//! it and loaded at the same rate with the same connections; then, with `--peer haproxy`, an HAProxy
//! pair. Each leg has its own warm-up at the target rate, and /proc is sampled at the edges of its
//! measured window. A leg that fails (a proxy that does not start, a generator that cannot
//! connect) is reported as failed and the others still run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cli::{BenchArgs, PeerName};
use crate::load::{self, LoadError, LoadSpec};
use crate::process::{ChildSpec, ManagedChild, ProcessError, find_program};
use crate::procfs::{self, ProcError, Snapshot};
use crate::report::{
    self, LegRecord, LoadSettings, PeerRecord, RateRecord, ReportError, SidecarRecord,
};
use crate::sidecar::meshlite::{self, MeshliteOptions, ProxyBinary};
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
}

/// What every repetition shares.
struct Setup {
    run_dir: PathBuf,
    pki: MeshPki,
    bench_exe: PathBuf,
    proxy: Result<ProxyBinary, String>,
    haproxy: Option<(PathBuf, String)>,
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
    let setup = Setup {
        run_dir,
        pki,
        bench_exe: crate::process::own_executable().map_err(PairError::RunDir)?,
        proxy,
        haproxy,
    };
    print_header(args, &setup, &rates, repeat);

    let mut records = Vec::with_capacity(rates.len());
    let mut all_ran = true;
    for &rate in &rates {
        let mut reps = Vec::new();
        for rep in 1..=repeat {
            let record = run_repetition(args, &setup, rate, rep, repeat)?;
            all_ran &=
                record.meshed.is_some() && record.peer.as_ref().is_none_or(|p| p.meshed.is_some());
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
struct LegOutcome {
    leg: LegRecord,
    sidecars: Vec<SidecarRecord>,
}

/// Why a leg failed (fail-soft legs keep the message).
#[derive(Debug, thiserror::Error)]
enum LegError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Proc(#[from] ProcError),
}

/// Loads `target` at `rate` and samples the app and the given sidecars over the window.
fn measure_leg(
    args: &BenchArgs,
    rate: u32,
    target: SocketAddr,
    authority: &str,
    app_pid: u32,
    sidecar_pids: &[u32],
) -> Result<LegOutcome, LegError> {
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
    };
    let mut pids = vec![app_pid];
    pids.extend_from_slice(sidecar_pids);
    let running = load::start(spec)?;
    sleep_until(running.measure_start);
    let start = Snapshot::take(&pids);
    sleep_until(running.measure_end);
    let end = Snapshot::take(&pids);
    let rss: Vec<Result<u64, ProcError>> = sidecar_pids
        .iter()
        .map(|&pid| procfs::peak_rss_kb(pid))
        .collect();
    // Always collect the generator before judging the samples: it stops by itself.
    let result = running.finish()?;
    let (start, end) = (start?, end?);
    let usage = procfs::usage(&start, &end);

    let leg = super::measure::leg_record(
        &result,
        f64::from(rate),
        super::measure::LegCpu {
            generator_cores: usage.own_cores,
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
    Ok(LegOutcome { leg, sidecars })
}

fn progress(rate: u32, rep: u32, repeat: u32, name: &str, leg: &LegRecord) {
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

/// Runs a started pair's leg and stops the pair; returns the outcome and notes on its exit.
fn pair_leg(
    args: &BenchArgs,
    rate: u32,
    app_pid: u32,
    pair: RunningPair,
) -> (Result<LegOutcome, String>, Vec<String>) {
    let outcome = measure_leg(
        args,
        rate,
        pair.entry,
        &pair.authority,
        app_pid,
        &pair.pids(),
    );
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
    let direct = measure_leg(args, rate, app_addr, meshlite::SERVICE_HOST, app_pid, &[]).map_err(
        |e| match e {
            LegError::Load(e) => PairError::Load(e),
            LegError::Proc(e) => PairError::Proc(e),
        },
    )?;
    progress(rate, rep, repeat, "direct", &direct.leg);

    let mut proxy_notes = Vec::new();
    let meshed: Result<LegOutcome, String> = match &setup.proxy {
        Err(e) => Err(e.clone()),
        Ok(bin) => {
            let opts = MeshliteOptions {
                binary: bin.path.clone(),
                workers: args.workers,
                upstream: args.upstream,
                protocol: args.protocol,
                pin_cpu: pin,
                authz: args.authz,
            };
            match meshlite::start_pair(&dir, &setup.pki, app_addr, &opts) {
                Err(e) => Err(format!("meshlite pair did not start: {e}")),
                Ok(pair) => {
                    let (outcome, notes) = pair_leg(args, rate, app_pid, pair);
                    proxy_notes.extend(notes);
                    outcome
                }
            }
        }
    };
    match &meshed {
        Ok(m) => progress(rate, rep, repeat, "meshlite", &m.leg),
        Err(e) => eprintln!(
            "[{rate} RPS, run {rep}/{repeat}] meshlite FAILED: {}",
            e.lines().next().unwrap_or("")
        ),
    }

    let peer = setup.haproxy.as_ref().map(|(bin, version)| {
        let outcome = match haproxy::start_pair(bin, &dir, &setup.pki, app_addr, args.protocol, pin)
        {
            Err(e) => Err(format!("haproxy pair did not start: {e}")),
            // HAProxy's exit on SIGTERM is its own business; only meshlite's is checked.
            Ok(pair) => pair_leg(args, rate, app_pid, pair).0,
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
        spread: None,
    })
}

fn peer_record(
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
