//! Many idle keep-alive connections, each used slowly: what an open connection costs a
//! sidecar while it waits.
//!
//! N HTTP/1.1 connections are opened (at most [`OPEN_AT_ONCE`] at a time) and each sends one
//! request, so every connection has carried traffic; then they are held for `rounds` rounds of
//! `interval`, each connection sending one request per round at its own offset (spread evenly
//! over the round), so the target sees `N / interval` requests per second in all and every
//! connection is mostly idle. The caller samples the target between the phases ([`IdlePhase`])
//! and releases the connections when it is done ([`RunningIdle::release`]). A connection that
//! was closed and had to be reopened is not counted as held. Bounded: every request has a
//! timeout and the rounds are fixed.

use futures_util::StreamExt;
use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::LoadError;
use super::client::{Protocol, Session};

/// Connections being opened at the same time.
pub const OPEN_AT_ONCE: usize = 256;

/// What to hold.
#[derive(Debug, Clone)]
pub struct IdleSpec {
    /// Where to connect.
    pub target: SocketAddr,
    /// Host of every request.
    pub authority: String,
    /// Connections to hold.
    pub connections: usize,
    /// One request per connection per interval.
    pub interval: Duration,
    /// Rounds held after the opening request.
    pub rounds: u32,
    /// Bound on one request (the opening one included).
    pub request_timeout: Duration,
}

/// The phases the caller samples at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdlePhase {
    /// Every connection was opened and answered one request (or failed).
    Opened {
        /// Connections open and answered.
        ok: usize,
    },
    /// The rounds are over; the connections are still open until released.
    Held,
}

/// What the run did.
#[derive(Debug, Clone, Default)]
pub struct IdleResult {
    /// Connections that opened and answered their first request.
    pub opened: usize,
    /// Connections that answered every request on their first TCP connection.
    pub held: usize,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests that failed.
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// A run in progress.
pub struct RunningIdle {
    phases: std_mpsc::Receiver<IdlePhase>,
    release: std_mpsc::Sender<()>,
    handle: thread::JoinHandle<Result<IdleResult, LoadError>>,
}

impl RunningIdle {
    /// Waits for the next phase (`None`: the run ended or `timeout` passed).
    pub fn next_phase(&self, timeout: Duration) -> Option<IdlePhase> {
        self.phases.recv_timeout(timeout).ok()
    }

    /// Lets the run close its connections and end.
    pub fn release(&self) {
        // A run that ended already needs no release.
        let _ = self.release.send(());
    }

    /// Waits for the run's end and returns its result.
    pub fn finish(self) -> Result<IdleResult, LoadError> {
        let _ = self.release.send(());
        self.handle.join().map_err(|_| LoadError::Lost)?
    }
}

/// Starts the run on its own thread.
pub fn start(spec: IdleSpec) -> Result<RunningIdle, LoadError> {
    if spec.connections == 0 || spec.interval.is_zero() {
        return Err(LoadError::Spec(
            "idle: connections and interval must be positive".into(),
        ));
    }
    let (phase_tx, phases) = std_mpsc::channel();
    let (release, release_rx) = std_mpsc::channel();
    let handle = thread::Builder::new()
        .name("idle-connections".into())
        .spawn(move || run(spec, phase_tx, release_rx))
        .map_err(LoadError::Start)?;
    Ok(RunningIdle {
        phases,
        release,
        handle,
    })
}

/// One connection's tally.
#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn record(&mut self, outcome: Result<(), String>) -> bool {
        match outcome {
            Ok(()) => {
                self.ok += 1;
                true
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
                false
            }
        }
    }
}

async fn request(session: &mut Session, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, session.request()).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => {
            session.reset();
            Err("timed out".into())
        }
    }
}

fn run(
    spec: IdleSpec,
    phases: std_mpsc::Sender<IdlePhase>,
    release: std_mpsc::Receiver<()>,
) -> Result<IdleResult, LoadError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(LoadError::Start)?;
    runtime.block_on(async move {
        let timeout = spec.request_timeout;
        let opened: Vec<(Session, Tally)> = futures_util::stream::iter(0..spec.connections)
            .map(|_| {
                let mut session = Session::new(spec.target, &spec.authority, Protocol::Http1);
                async move {
                    let mut tally = Tally::default();
                    let outcome = match session.connect().await {
                        Ok(()) => request(&mut session, timeout).await,
                        Err(e) => Err(e.to_string()),
                    };
                    tally.record(outcome);
                    (session, tally)
                }
            })
            .buffer_unordered(OPEN_AT_ONCE)
            .collect()
            .await;
        let ok = opened.iter().filter(|(_, t)| t.errors == 0).count();
        let _ = phases.send(IdlePhase::Opened { ok });

        let start = Instant::now();
        let n = opened.len().max(1) as f64;
        let tasks: Vec<_> = opened
            .into_iter()
            .enumerate()
            .map(|(i, (mut session, mut tally))| {
                let offset = spec.interval.mul_f64(i as f64 / n);
                let (interval, rounds) = (spec.interval, spec.rounds);
                tokio::spawn(async move {
                    for round in 0..rounds {
                        let at = start + interval * round + offset;
                        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                        tally.record(request(&mut session, timeout).await);
                    }
                    (session, tally)
                })
            })
            .collect();
        let mut result = IdleResult {
            opened: ok,
            ..IdleResult::default()
        };
        let mut sessions = Vec::with_capacity(tasks.len());
        for task in tasks {
            match task.await {
                Ok((session, tally)) => {
                    if tally.errors == 0 && session.opened() == 1 {
                        result.held += 1;
                    }
                    result.ok += tally.ok;
                    result.errors += tally.errors;
                    if result.first_error.is_none() {
                        result.first_error = tally.first_error;
                    }
                    sessions.push(session);
                }
                Err(_) => {
                    result.errors += 1;
                    result
                        .first_error
                        .get_or_insert("connection task failed".into());
                }
            }
        }
        let _ = phases.send(IdlePhase::Held);
        // Hold the connections open while the caller samples (bounded: it releases or goes).
        let _ = tokio::task::spawn_blocking(move || {
            let _ = release.recv_timeout(Duration::from_secs(60));
        })
        .await;
        drop(sessions);
        Ok(result)
    })
}
