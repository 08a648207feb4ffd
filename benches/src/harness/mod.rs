//! The harness that runs meshlite's own binaries as real processes: one launcher for
//! `meshlite-proxy` ([`SidecarLaunch`] -> [`SidecarProcess`]) and one for `meshlite-control serve`
//! ([`ControlPlaneLaunch`] -> [`ControlPlaneProcess`]), used by every benchmark scenario and by
//! the end-to-end tests (`meshlite-tests`), so that both start, watch and stop the binaries the
//! same way.
//!
//! A launch names the binary, a run directory (the process's log, `<name>.log`, goes there) and
//! the config file. Static mode and control-plane mode differ only in that file (a static file
//! names its identity files and services, a control-plane one its `control` section and token),
//! which [`SidecarConfig`] writes for either [`Mode`], so one launcher serves both. Starting
//! waits for the process's JSON listening line, never a sleep, and reads the bound addresses
//! from it ([`Listening`]); a sidecar may also be awaited until `/healthz/ready` answers 200. A
//! process that exits or stays silent is reported as an error carrying the tail of its log.
//! Dropping a process kills it; `stop` is SIGTERM with a bounded wait, `kill` a crash, `restart`
//! the same launch again (same config, log and state; a control plane keeps its ports).
//!
//! Why here: the workspace's crates are fixed (DESIGN.md), and this crate was already the
//! library with a process spawner ([`crate::process`]). `meshlite-tests` depends on
//! `meshlite-bench` for it; this crate's library depends on neither the tests nor
//! `meshlite-control` (the control plane is only run as a binary; the control library is a
//! dev-dependency of the bench's own unit tests): one arrow, no cycle. The API is synchronous and
//! returns typed errors (the benchmark is a release binary that must not panic); async callers
//! (the tests) run a start on tokio's blocking pool.

pub mod config;
pub mod control;
pub mod sidecar;

pub use config::{AppProtocol, InboundPort, Mode, SidecarConfig, StaticService};
pub use control::{ControlPlaneLaunch, ControlPlaneProcess, create_token, replace_config_file};
pub use sidecar::{Listening, SidecarLaunch, SidecarProcess, StartingSidecar, connectable};

use crate::process::ProcessError;

/// Why a meshlite process could not be started, or a step around it failed.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The process failed to start, exited, or did not become ready.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A file or directory could not be written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The listening line was not what the binary's contract says.
    #[error("{name} printed an unexpected listening line ({problem}): {line}")]
    Announce {
        /// Which process.
        name: String,
        /// What is wrong with it.
        problem: String,
        /// The line.
        line: String,
    },
    /// `meshlite-control token create` failed.
    #[error("meshlite-control token create for {account}: {message}")]
    Token {
        /// `namespace/service account`.
        account: String,
        /// What went wrong.
        message: String,
    },
}

/// Reads the socket address `key` of a listening line.
fn announced_addr(
    name: &str,
    line: &str,
    value: &serde_json::Value,
    key: &str,
) -> Result<std::net::SocketAddr, HarnessError> {
    let bad = |problem: String| HarnessError::Announce {
        name: name.to_string(),
        problem,
        line: line.to_string(),
    };
    value
        .get(key)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| bad(format!("no string field `{key}`")))?
        .parse()
        .map_err(|e| bad(format!("`{key}` is not an address: {e}")))
}

/// Parses a listening line as JSON.
fn parse_line(name: &str, line: &str) -> Result<serde_json::Value, HarnessError> {
    serde_json::from_str(line).map_err(|e| HarnessError::Announce {
        name: name.to_string(),
        problem: format!("not JSON: {e}"),
        line: line.to_string(),
    })
}
