//! Closed-loop load, as wrk drives it: each of C connections sends its next request as soon as
//! the previous one completed, so the rate is whatever the target sustains. This measures the
//! most requests per second a target carries (its saturation point), not latency under a fixed
//! arrival rate (that is the open-loop generator's job: a closed loop hides queueing).
//!
//! With `fresh_connections`, every request says `Connection: close` and opens a new connection
//! (connection churn). The run is bounded in time (`duration`) and count (`max_requests`), on
//! one single-threaded runtime on its own thread (one thread of load, as `wrk -t1`).

use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::client::{Protocol, Session};
use super::{LoadError, pin_current_thread};

/// How many distinct error messages a result keeps.
const ERROR_SAMPLES: usize = 5;
/// Time allowed for the connections to open before the loop starts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct ClosedSpec {
    /// Where to connect.
    pub target: SocketAddr,
    /// Host of every request.
    pub authority: String,
    /// Protocol spoken (HTTP/1.1 for churn).
    pub protocol: Protocol,
    /// Concurrent connections (each one request at a time).
    pub connections: usize,
    /// How long the loop runs.
    pub duration: Duration,
    /// At most this many requests in all.
    pub max_requests: u64,
    /// A request slower than this is an error.
    pub request_timeout: Duration,
    /// A new connection per request (`Connection: close`).
    pub fresh_connections: bool,
    /// Pin the generator's thread to this CPU.
    pub pin_cpu: Option<usize>,
}

/// What a closed-loop run did.
#[derive(Debug, Clone)]
pub struct ClosedResult {
    /// Requests answered 2xx with their whole body.
    pub ok: u64,
    /// Requests that failed (status, connection, timeout).
    pub errors: u64,
    /// Connections opened during the loop.
    pub connections_opened: u64,
    /// From the first request to the last completion, seconds.
    pub seconds: f64,
    /// Latency of the successful requests, microseconds.
    pub latency_us: Histogram<u64>,
    /// A few distinct error messages.
    pub error_samples: Vec<String>,
}

impl ClosedResult {
    /// Successful requests per second.
    pub fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ok as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Latency at quantile `q`, ms (0 when nothing succeeded).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latency_us.is_empty() {
            0.0
        } else {
            self.latency_us.value_at_quantile(q) as f64 / 1000.0
        }
    }
}

/// One connection's tally.
struct Part {
    ok: u64,
    errors: u64,
    opened: u64,
    latency_us: Histogram<u64>,
    samples: Vec<String>,
}

/// Runs the loop to its end (blocking the caller); returns once every connection stopped.
pub fn run(spec: ClosedSpec) -> Result<ClosedResult, LoadError> {
    if spec.connections == 0 || spec.max_requests == 0 || spec.duration.is_zero() {
        return Err(LoadError::Spec(
            "closed loop: connections, requests and duration must be positive".into(),
        ));
    }
    let empty = Histogram::new_with_bounds(1, 60_000_000, 3).map_err(LoadError::Histogram)?;
    let handle = thread::Builder::new()
        .name("closed-loop".into())
        .spawn(move || run_on_thread(spec, empty))
        .map_err(LoadError::Start)?;
    handle.join().map_err(|_| LoadError::Lost)?
}

fn run_on_thread(spec: ClosedSpec, empty: Histogram<u64>) -> Result<ClosedResult, LoadError> {
    if let Some(cpu) = spec.pin_cpu {
        pin_current_thread(cpu).map_err(|source| LoadError::Pin { cpu, source })?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(LoadError::Start)?;
    runtime.block_on(async move {
        let mut sessions = Vec::with_capacity(spec.connections);
        for _ in 0..spec.connections {
            let session = Session::new(spec.target, &spec.authority, spec.protocol);
            sessions.push(if spec.fresh_connections {
                session.closing()
            } else {
                session
            });
        }
        if !spec.fresh_connections {
            let opened = tokio::time::timeout(
                CONNECT_TIMEOUT,
                futures_util::future::join_all(sessions.iter_mut().map(Session::connect)),
            )
            .await;
            let failure = match opened {
                Err(_) => Some("timed out".to_string()),
                Ok(results) => results
                    .into_iter()
                    .find_map(|r| r.err())
                    .map(|e| e.to_string()),
            };
            if let Some(message) = failure {
                return Err(LoadError::Connect {
                    target: spec.target,
                    message,
                });
            }
        }
        let issued = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let end = start + spec.duration;
        let tasks: Vec<_> = sessions
            .into_iter()
            .map(|session| {
                let issued = issued.clone();
                let empty = empty.clone();
                let (max, timeout) = (spec.max_requests, spec.request_timeout);
                tokio::spawn(drive(session, issued, max, end, timeout, empty))
            })
            .collect();
        let mut total = Part {
            ok: 0,
            errors: 0,
            opened: 0,
            latency_us: empty.clone(),
            samples: Vec::new(),
        };
        for task in tasks {
            match task.await {
                Ok(part) => {
                    total.ok += part.ok;
                    total.errors += part.errors;
                    total.opened += part.opened;
                    // Same bounds: adding cannot fail.
                    let _ = total.latency_us.add(&part.latency_us);
                    for s in part.samples {
                        note(&mut total.samples, s);
                    }
                }
                Err(_) => note(&mut total.samples, "connection task failed".into()),
            }
        }
        Ok(ClosedResult {
            ok: total.ok,
            errors: total.errors,
            connections_opened: total.opened,
            seconds: start.elapsed().as_secs_f64(),
            latency_us: total.latency_us,
            error_samples: total.samples,
        })
    })
}

fn note(samples: &mut Vec<String>, message: String) {
    if samples.len() < ERROR_SAMPLES && !samples.contains(&message) {
        samples.push(message);
    }
}

/// One connection: requests back to back until the deadline or the shared count runs out.
async fn drive(
    mut session: Session,
    issued: Arc<AtomicU64>,
    max: u64,
    end: Instant,
    timeout: Duration,
    empty: Histogram<u64>,
) -> Part {
    let mut part = Part {
        ok: 0,
        errors: 0,
        opened: 0,
        latency_us: empty,
        samples: Vec::new(),
    };
    let before = session.opened();
    while Instant::now() < end && issued.fetch_add(1, Ordering::Relaxed) < max {
        let sent = Instant::now();
        let outcome = match tokio::time::timeout(timeout, session.request()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => {
                session.reset();
                Err("timed out".to_string())
            }
        };
        match outcome {
            Ok(()) => {
                part.ok += 1;
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                part.latency_us
                    .saturating_record(micros.clamp(1, 60_000_000));
            }
            Err(e) => {
                part.errors += 1;
                note(&mut part.samples, e);
            }
        }
    }
    part.opened = session.opened() - before;
    part
}
