//! Open-loop, fixed-rate load generation without coordinated omission.
//!
//! The schedule is fixed before the first request: request `j` is *intended* at
//! `t0 + j / rate` and belongs to connection `j mod C`, so each of the C connections has its own
//! schedule at `rate / C` with start offsets staggered by `1 / rate`. A pacer thread sleeps with
//! microsecond precision (not tokio's millisecond timer wheel) and hands each request's intended
//! time to its connection; a connection that is still busy sends the next request back-to-back.
//! Latency is always `completion - intended`, so a stall shows up in the percentiles the way a user
//! behind an open-loop arrival process would feel it (as wrk2 does), instead of slowing the
//! generator down. The generator runs on its own single-threaded tokio runtime, optionally pinned.
//!
//! The other loads of the `connections` scenario live beside it: [`closed`] (closed loop, the
//! most a target carries, and connection churn), [`idle`] (many slow keep-alive connections),
//! [`transfer`] (large bodies each way) and [`handshake`] (new mTLS connections).
//!
//! Every run is bounded in count (`ceil(rate * (warm-up + duration))` requests) and in time
//! (requests still due after the drain deadline are counted as errors, not sent), so it always
//! stops by itself.

pub mod client;
pub mod closed;
pub mod handshake;
pub mod idle;
pub mod transfer;

pub use client::Protocol;

use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use client::Session;

/// Highest latency the histograms track (60 s, in microseconds); slower samples saturate.
const MAX_LATENCY_US: u64 = 60_000_000;
/// Time allowed for connections to open before the schedule starts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Delay between "all connected" and the first intended send time.
const START_DELAY: Duration = Duration::from_millis(20);
/// How many distinct error messages a result keeps as examples.
const ERROR_SAMPLES: usize = 5;
/// Extra time after the hard deadline before the generator gives up on stuck connection tasks.
const ABANDON_GRACE: Duration = Duration::from_secs(2);

/// What to send, where, and how fast.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Address the generator connects to (the app, or the client-side sidecar's outbound port).
    pub target: SocketAddr,
    /// Host / `:authority` of every request.
    pub authority: String,
    /// Protocol spoken to the target.
    pub protocol: Protocol,
    /// Number of connections.
    pub connections: usize,
    /// Target rate, requests per second, over all connections.
    pub rate_rps: f64,
    /// Warm-up at the target rate before the measured window (not recorded).
    pub warmup: Duration,
    /// Measured window.
    pub duration: Duration,
    /// A request slower than this is an error.
    pub request_timeout: Duration,
    /// Pin the generator's threads to this CPU.
    pub pin_cpu: Option<usize>,
    /// Run the generator inside this network namespace (a file under `/var/run/netns`: a
    /// pod's), so its connections are the pod's own and the pod's capture rules apply.
    pub netns: Option<std::path::PathBuf>,
}

/// Why a load run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The spec is unusable (zero rate, zero connections...).
    #[error("invalid load spec: {0}")]
    Spec(String),
    /// The latency histogram could not be made.
    #[error("cannot make the latency histogram: {0}")]
    Histogram(hdrhistogram::CreationError),
    /// The generator thread or runtime could not be started.
    #[error("cannot start the load generator: {0}")]
    Start(std::io::Error),
    /// Not every connection could be opened before the run.
    #[error("cannot open the generator's connections to {target}: {message}")]
    Connect {
        /// Target address.
        target: SocketAddr,
        /// First failure.
        message: String,
    },
    /// Entering the pod's network namespace failed.
    #[error("cannot enter the network namespace {path}: {source}")]
    Netns {
        /// The namespace's file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Pinning the generator to a CPU failed.
    #[error("cannot pin the load generator to CPU {cpu}: {source}")]
    Pin {
        /// Requested CPU.
        cpu: usize,
        /// The OS error.
        source: nix::Error,
    },
    /// The generator thread died.
    #[error("the load generator thread panicked or vanished")]
    Lost,
}

/// The outcome of one load run (measured window only, unless named otherwise).
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Latency from intended send time to completion of successful requests, microseconds.
    pub latency_us: Histogram<u64>,
    /// Requests due in the measured window.
    pub requests: u64,
    /// Successful requests due in the measured window.
    pub ok: u64,
    /// Failed requests due in the measured window (non-2xx, connection errors, timeouts, unsent).
    pub errors: u64,
    /// Requests due in the window that were never sent because the run's deadline had passed.
    pub unsent: u64,
    /// Successful responses completed inside the window, per second of window.
    pub achieved_rps: f64,
    /// Errors during the warm-up (not part of `errors`).
    pub warmup_errors: u64,
    /// A few distinct error messages, as examples.
    pub error_samples: Vec<String>,
    /// How late the pacer released each request after its intended time, microseconds: the
    /// generator's own lateness (a thread woken late, a descheduled VM), the same for every leg.
    /// Latency still counts from the intended time; this says how much of it the machine added.
    pub pacer_late_us: Histogram<u64>,
}

impl LoadResult {
    /// The pacer's lateness at quantile `q`, in milliseconds.
    pub fn pacer_late_ms(&self, q: f64) -> f64 {
        if self.pacer_late_us.is_empty() {
            return 0.0;
        }
        self.pacer_late_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// Latency at quantile `q` (0..=1) in milliseconds; 0 when nothing succeeded.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latency_us.is_empty() {
            return 0.0;
        }
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// Highest latency in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.latency_us.max() as f64 / 1000.0
    }
}

/// A load run in progress; its window is known in advance so /proc can be sampled at its edges.
pub struct RunningLoad {
    /// Start of the measured window (end of warm-up).
    pub measure_start: Instant,
    /// End of the measured window.
    pub measure_end: Instant,
    handle: thread::JoinHandle<Result<LoadResult, LoadError>>,
}

impl RunningLoad {
    /// Waits for the generator to finish and returns its result.
    pub fn finish(self) -> Result<LoadResult, LoadError> {
        self.handle.join().map_err(|_| LoadError::Lost)?
    }
}

/// One request due at `intended`.
#[derive(Debug, Clone, Copy)]
struct Due {
    intended: Instant,
}

/// The fixed timeline of a run.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    measure_start: Instant,
    measure_end: Instant,
    /// After this, requests still due are not sent.
    deadline: Instant,
}

/// Per-connection tally, merged at the end.
struct Tally {
    latency_us: Histogram<u64>,
    requests: u64,
    ok: u64,
    errors: u64,
    unsent: u64,
    ok_in_window: u64,
    warmup_errors: u64,
    error_samples: Vec<String>,
}

impl Tally {
    fn new(empty: &Histogram<u64>) -> Self {
        Self {
            latency_us: empty.clone(),
            requests: 0,
            ok: 0,
            errors: 0,
            unsent: 0,
            ok_in_window: 0,
            warmup_errors: 0,
            error_samples: Vec::new(),
        }
    }

    fn note_error(&mut self, message: String) {
        if self.error_samples.len() < ERROR_SAMPLES && !self.error_samples.contains(&message) {
            self.error_samples.push(message);
        }
    }

    fn merge(&mut self, other: Tally) {
        // Both histograms share bounds, so adding cannot fail; a failure would only lose samples.
        let _ = self.latency_us.add(&other.latency_us);
        self.requests += other.requests;
        self.ok += other.ok;
        self.errors += other.errors;
        self.unsent += other.unsent;
        self.ok_in_window += other.ok_in_window;
        self.warmup_errors += other.warmup_errors;
        for message in other.error_samples {
            self.note_error(message);
        }
    }
}

/// An empty latency histogram (1 µs .. 60 s, 3 significant digits); made once per run and
/// cloned, so every histogram of a run has the same bounds and adding them cannot fail.
fn new_histogram() -> Result<Histogram<u64>, LoadError> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).map_err(LoadError::Histogram)
}

/// Starts a load run on its own thread; returns once every connection is open and the schedule
/// (and so the measured window) is fixed.
pub fn start(spec: LoadSpec) -> Result<RunningLoad, LoadError> {
    if spec.connections == 0 {
        return Err(LoadError::Spec("connections must be at least 1".into()));
    }
    if !(spec.rate_rps.is_finite() && spec.rate_rps > 0.0) {
        return Err(LoadError::Spec("rate must be positive".into()));
    }
    if spec.duration.is_zero() {
        return Err(LoadError::Spec("duration must be positive".into()));
    }
    let empty = new_histogram()?;
    let (ready_tx, ready_rx) = std_mpsc::channel::<Result<Timeline, LoadError>>();
    let handle = thread::Builder::new()
        .name("load-generator".into())
        .spawn(move || generator_thread(spec, empty, ready_tx))
        .map_err(LoadError::Start)?;
    match ready_rx.recv() {
        Ok(Ok(timeline)) => Ok(RunningLoad {
            measure_start: timeline.measure_start,
            measure_end: timeline.measure_end,
            handle,
        }),
        Ok(Err(error)) => {
            let _ = handle.join();
            Err(error)
        }
        Err(_) => match handle.join() {
            Ok(Err(error)) => Err(error),
            _ => Err(LoadError::Lost),
        },
    }
}

/// Pins the calling thread to `cpu` (the generator's threads, and the trace collector's, which
/// shares the generator's CPU under `--pin`).
pub fn pin_current_thread(cpu: usize) -> Result<(), nix::Error> {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set)
}

fn generator_thread(
    spec: LoadSpec,
    empty: Histogram<u64>,
    ready: std_mpsc::Sender<Result<Timeline, LoadError>>,
) -> Result<LoadResult, LoadError> {
    let fail = |error: LoadError, ready: &std_mpsc::Sender<Result<Timeline, LoadError>>| {
        let message = error.to_string();
        let _ = ready.send(Err(error));
        Err(LoadError::Spec(message))
    };
    if let Some(cpu) = spec.pin_cpu
        && let Err(source) = pin_current_thread(cpu)
    {
        return fail(LoadError::Pin { cpu, source }, &ready);
    }
    // Before the runtime and the pacer: the threads this one starts share its namespace.
    if let Some(path) = &spec.netns
        && let Err(source) = crate::netns::enter(path)
    {
        let path = path.display().to_string();
        return fail(LoadError::Netns { path, source }, &ready);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => return fail(LoadError::Start(error), &ready),
    };
    runtime.block_on(async move {
        // Open every connection first: the schedule starts with all of them ready.
        let mut sessions = Vec::with_capacity(spec.connections);
        for _ in 0..spec.connections {
            sessions.push(Session::new(spec.target, &spec.authority, spec.protocol));
        }
        let opened = tokio::time::timeout(
            CONNECT_TIMEOUT,
            futures_util::future::join_all(sessions.iter_mut().map(|s| s.connect())),
        )
        .await;
        let first_failure = match opened {
            Err(_) => Some("timed out".to_string()),
            Ok(results) => results
                .into_iter()
                .find_map(|r| r.err())
                .map(|e| e.to_string()),
        };
        if let Some(message) = first_failure {
            return fail(
                LoadError::Connect {
                    target: spec.target,
                    message,
                },
                &ready,
            );
        }

        let t0 = Instant::now() + START_DELAY;
        let measure_start = t0 + spec.warmup;
        let measure_end = measure_start + spec.duration;
        let deadline = measure_end + spec.request_timeout;
        let timeline = Timeline {
            measure_start,
            measure_end,
            deadline,
        };
        let total = ((spec.warmup + spec.duration).as_secs_f64() * spec.rate_rps).ceil() as u64;

        let mut senders = Vec::with_capacity(spec.connections);
        let mut tasks = Vec::with_capacity(spec.connections);
        for session in sessions {
            let (tx, rx) = mpsc::unbounded_channel::<Due>();
            senders.push(tx);
            tasks.push(tokio::spawn(drive(
                session,
                rx,
                timeline,
                spec.request_timeout,
                empty.clone(),
            )));
        }
        let pacer = {
            let rate = spec.rate_rps;
            let pin = spec.pin_cpu;
            let late = empty.clone();
            thread::Builder::new()
                .name("load-pacer".into())
                .spawn(move || pace(t0, rate, total, senders, pin, late))
                .map_err(LoadError::Start)
        };
        let pacer = match pacer {
            Ok(p) => p,
            Err(error) => return fail(error, &ready),
        };
        if ready.send(Ok(timeline)).is_err() {
            // Nobody waits for the result any more; still let the bounded run end normally.
        }

        let mut tally = Tally::new(&empty);
        let abandon_at =
            tokio::time::Instant::from_std(deadline + spec.request_timeout + ABANDON_GRACE);
        for task in tasks {
            match tokio::time::timeout_at(abandon_at, task).await {
                Ok(Ok(part)) => tally.merge(part),
                Ok(Err(_)) => tally.note_error("connection task failed".into()),
                Err(_) => tally.note_error("connection task abandoned after the deadline".into()),
            }
        }
        // The pacer stops after its bounded count; it never blocks on the receivers.
        let pacer_late_us = pacer.join().unwrap_or_else(|_| empty.clone());

        let window = spec.duration.as_secs_f64();
        Ok(LoadResult {
            latency_us: tally.latency_us,
            requests: tally.requests,
            ok: tally.ok,
            errors: tally.errors,
            unsent: tally.unsent,
            achieved_rps: tally.ok_in_window as f64 / window,
            warmup_errors: tally.warmup_errors,
            error_samples: tally.error_samples,
            pacer_late_us,
        })
    })
}

/// Hands out intended send times at `rate` for `total` requests, round-robin over the connections;
/// returns how late each release was after its intended time.
fn pace(
    t0: Instant,
    rate: f64,
    total: u64,
    senders: Vec<mpsc::UnboundedSender<Due>>,
    pin: Option<usize>,
    mut late: Histogram<u64>,
) -> Histogram<u64> {
    if let Some(cpu) = pin {
        // Best effort: the runtime thread is pinned already; the pacer mostly sleeps.
        let _ = pin_current_thread(cpu);
    }
    // Ask for precise wake-ups (the default timer slack is 50 µs).
    let _ = nix::sys::prctl::set_timerslack(1_000);
    let period_ns = 1e9 / rate;
    let connections = senders.len() as u64;
    for j in 0..total {
        let intended = t0 + Duration::from_nanos((j as f64 * period_ns) as u64);
        let now = Instant::now();
        if intended > now {
            thread::sleep(intended - now);
        }
        let index = (j % connections) as usize;
        if let Some(sender) = senders.get(index) {
            // A closed receiver means its task already ended (deadline): nothing to do.
            let _ = sender.send(Due { intended });
        }
        let micros = Instant::now()
            .saturating_duration_since(intended)
            .as_micros();
        late.saturating_record(u64::try_from(micros).unwrap_or(MAX_LATENCY_US).max(1));
    }
    late
}

/// Runs one connection's share of the schedule.
async fn drive(
    mut session: Session,
    mut due: mpsc::UnboundedReceiver<Due>,
    timeline: Timeline,
    request_timeout: Duration,
    empty: Histogram<u64>,
) -> Tally {
    let mut tally = Tally::new(&empty);
    while let Some(Due { intended }) = due.recv().await {
        let measured = intended >= timeline.measure_start;
        if measured {
            tally.requests += 1;
        }
        if Instant::now() > timeline.deadline {
            if measured {
                tally.errors += 1;
                tally.unsent += 1;
            }
            continue;
        }
        let outcome = match tokio::time::timeout(request_timeout, session.request()).await {
            Ok(result) => result,
            Err(_) => {
                session.reset();
                Err(client::RequestError::Timeout)
            }
        };
        let done = Instant::now();
        let done_in_window = done >= timeline.measure_start && done <= timeline.measure_end;
        match outcome {
            Ok(()) => {
                if done_in_window {
                    tally.ok_in_window += 1;
                }
                if measured {
                    tally.ok += 1;
                    let micros = done.saturating_duration_since(intended).as_micros();
                    let micros = u64::try_from(micros).unwrap_or(MAX_LATENCY_US).max(1);
                    tally
                        .latency_us
                        .saturating_record(micros.min(MAX_LATENCY_US));
                }
            }
            Err(error) => {
                if measured {
                    tally.errors += 1;
                } else {
                    tally.warmup_errors += 1;
                }
                tally.note_error(error.to_string());
            }
        }
    }
    tally
}
