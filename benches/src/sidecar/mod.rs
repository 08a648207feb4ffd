//! The sidecar pairs under test: meshlite's own and the HAProxy peer.
//!
//! A pair is a client-side sidecar (plain traffic in from the generator, mutual TLS out) and a
//! server-side sidecar (mutual TLS in, plain traffic to the app), started fresh for every run with
//! certificates from [`pki`]. Whatever the implementation, a started pair is a [`RunningPair`]:
//! where the generator sends, what `Host` it names, and the two processes to sample and stop.
//! The scenarios with a real control plane (`chaos`, `mesh`) start their sidecars through
//! [`controlled`] instead: identity by CSR, config over xDS. Either way meshlite's processes
//! are run by [`crate::harness`].

pub mod controlled;
pub mod haproxy;
pub mod meshlite;
pub mod pki;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::process::{ManagedChild, ProcessError};

/// How long a sidecar may take to announce itself and become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a sidecar pair could not be prepared or started.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// Certificates could not be made.
    #[error(transparent)]
    Pki(#[from] meshlite_proxy::identity::dev_pki::DevPkiError),
    /// A process failed to start or become ready.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A meshlite process failed to start, announce itself or become ready.
    #[error(transparent)]
    Harness(#[from] crate::harness::HarnessError),
    /// A file could not be written or a port reserved.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The proxy binary is missing and could not be built.
    #[error("meshlite-proxy binary: {0}")]
    Binary(String),
}

/// A started pair of sidecars.
pub struct RunningPair {
    /// Which implementation (`meshlite`, `haproxy`).
    pub implementation: &'static str,
    /// The client-side (outbound) sidecar.
    pub client: ManagedChild,
    /// The server-side (inbound) sidecar.
    pub server: ManagedChild,
    /// Where the generator sends: the client sidecar's outbound listener.
    pub entry: SocketAddr,
    /// Host / `:authority` the generator names.
    pub authority: String,
    /// The sidecars' Prometheus endpoints (client, server), where they serve one (meshlite).
    pub metrics: Vec<SocketAddr>,
    /// The server-side sidecar's mutual-TLS listener, where the client side connects (where
    /// the pair's harness knows it).
    pub server_mtls: Option<SocketAddr>,
    /// The network namespace the generator runs in (a pod's, `/var/run/netns/...`); `None`:
    /// this process's own.
    pub netns: Option<PathBuf>,
}

impl RunningPair {
    /// PIDs of (client, server).
    pub fn pids(&self) -> [u32; 2] {
        [self.client.pid(), self.server.pid()]
    }

    /// Stops both sidecars (client first, so the server sees its clients leave) and returns a
    /// note for each that did not exit cleanly with status 0 after SIGTERM.
    pub fn stop(self) -> Vec<String> {
        [self.client, self.server]
            .into_iter()
            .filter_map(crate::harness::sidecar::stop_note)
            .collect()
    }
}

/// Reserves a free loopback port (bind to port 0, read it, release it).
pub fn free_port() -> Result<u16, SidecarError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| SidecarError::Io {
        what: "reserve a loopback port".into(),
        source,
    })?;
    let port = listener
        .local_addr()
        .map_err(|source| SidecarError::Io {
            what: "reserve a loopback port".into(),
            source,
        })?
        .port();
    Ok(port)
}

/// Waits until `addr` accepts TCP connections, or the child exits, or `timeout` passes.
pub fn wait_for_port(
    child: &mut ManagedChild,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), SidecarError> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_exit()? {
            return Err(child.early_exit(Some(status)).into());
        }
        if Instant::now() >= deadline {
            return Err(child
                .not_ready(timeout, &format!("a listener on {addr}"))
                .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes a text file, naming it in the error.
pub fn write_text(path: &PathBuf, text: &str) -> Result<(), SidecarError> {
    std::fs::write(path, text).map_err(|source| SidecarError::Io {
        what: format!("write {}", path.display()),
        source,
    })
}
