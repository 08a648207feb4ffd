//! The benchmark's side of an app process: starting `meshlite-bench app` for one service (its
//! payload and downstream calls), reading its announced address, and its counters and failure
//! switch (`/__bench/...`, read directly on the app's port, never through a sidecar).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::{AppStats, Downstream, FAIL_PATH, STATS_PATH};
use crate::probe::{self, ProbeError};
use crate::process::{ChildSpec, ManagedChild, ProcessError};

/// How long an app may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an app process could not be started or asked something.
#[derive(Debug, thiserror::Error)]
pub enum AppHandleError {
    /// The process failed to start or to announce itself.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// Its listening line was not understood.
    #[error("app {name} printed an unexpected line: {line}")]
    Announce {
        /// The app's name.
        name: String,
        /// The line.
        line: String,
    },
    /// A control request failed.
    #[error("app {name}: {source}")]
    Probe {
        /// The app's name.
        name: String,
        /// What failed.
        source: ProbeError,
    },
    /// The stats were not JSON of the expected shape.
    #[error("app {name}: unreadable stats: {source}")]
    Stats {
        /// The app's name.
        name: String,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// What to start.
#[derive(Debug, Clone)]
pub struct AppSpec {
    /// Name of the service it plays (log file `app-<name>.log`).
    pub name: String,
    /// Response body size.
    pub payload: usize,
    /// Downstream services it calls before answering.
    pub calls: Vec<Downstream>,
    /// CPU to pin it to.
    pub pin_cpu: Option<usize>,
}

/// A running app process; killed when dropped.
pub struct AppProcess {
    name: String,
    child: ManagedChild,
    addr: SocketAddr,
}

impl AppProcess {
    /// Starts `bench_exe app` for `spec`, logging into `log_dir`, and waits for its address.
    pub fn start(bench_exe: &Path, spec: &AppSpec, log_dir: &Path) -> Result<Self, AppHandleError> {
        let mut args = vec![
            "app".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--payload".into(),
            spec.payload.to_string().into(),
        ];
        for call in &spec.calls {
            args.push("--call".into());
            args.push(call.to_arg().into());
        }
        let mut child = ManagedChild::spawn(ChildSpec {
            name: format!("app-{}", spec.name),
            program: bench_exe.to_path_buf(),
            args,
            pin_cpu: spec.pin_cpu,
            log_dir: log_dir.to_path_buf(),
            stdin_pipe: true,
            announce: None,
            current_dir: None,
        })?;
        let line = child.first_line(START_TIMEOUT)?;
        let addr = super::announced_addr(&line).ok_or_else(|| AppHandleError::Announce {
            name: spec.name.clone(),
            line: line.clone(),
        })?;
        Ok(Self {
            name: spec.name.clone(),
            child,
            addr,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The service it plays.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its counters now.
    pub fn stats(&self) -> Result<AppStats, AppHandleError> {
        let body =
            probe::get_ok(self.addr, STATS_PATH).map_err(|source| AppHandleError::Probe {
                name: self.name.clone(),
                source,
            })?;
        serde_json::from_str(&body).map_err(|source| AppHandleError::Stats {
            name: self.name.clone(),
            source,
        })
    }

    /// From now on answers every request with `status` (`None`: healthy again).
    pub fn fail_with(&self, status: Option<u16>) -> Result<(), AppHandleError> {
        let path = format!("{FAIL_PATH}{}", status.unwrap_or(0));
        probe::get_ok(self.addr, &path)
            .map(drop)
            .map_err(|source| AppHandleError::Probe {
                name: self.name.clone(),
                source,
            })
    }

    /// SIGKILLs it (a crash, no goodbye).
    pub fn kill(self) {
        self.child.kill();
    }

    /// Stops it (SIGTERM, bounded wait).
    pub fn stop(self) {
        // The app is ours: how it exits changes no figure.
        let _ = self.child.stop();
    }
}
