//! meshlite sidecars that join a real `meshlite-control`, as an operator runs them: the control
//! plane process, one bootstrap token per service account, and one sidecar per workload that
//! gets its certificate by CSR and its whole config (services, endpoints, routes, policies) over
//! xDS.
//!
//! `meshlite-control serve` watches a config directory of Istio YAML (written before it starts,
//! or replaced atomically while it runs) with its CA state in a directory of its own;
//! `meshlite-control token create` makes the tokens. Each sidecar gets a config file with its
//! identity and labels (the `app` label makes it an endpoint of that service), its listeners,
//! the port its app serves, and a `control` section naming the token file and the control
//! plane's root, the same as `meshlite-proxy --control ... --token-file ... --root-cert ...`.
//! Every listener binds port 0, except an outbound port the scenario fixed because the app must
//! know where to send before its sidecar starts ([`reserve_ports`]); the proxy's listening line
//! gives the bound addresses. Sidecars are started in two steps ([`PendingSidecar`]) so that many
//! can get their certificates at once. The processes are run by [`crate::harness`].

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{READY_TIMEOUT, SidecarError, write_text};
use crate::harness::{
    AppProtocol, ControlPlaneLaunch, ControlPlaneProcess, HarnessError, InboundPort, Mode,
    SidecarConfig, SidecarLaunch, SidecarProcess, StartingSidecar,
};
use crate::probe::{self, ProbeError};
use crate::process::ProcessError;

/// Namespace of every workload the scenarios start.
pub const NAMESPACE: &str = "default";
/// Trust domain of the control plane (its default).
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The HTTP port every service of the scenarios serves (callers name `<service>:8080`).
pub const SERVICE_PORT: u16 = 8080;
/// How long the control plane may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Fixed ports are taken this far below the kernel's ephemeral range, which port-0 binds and
/// outgoing connections use, so nothing else on the machine is handed one meanwhile.
const FIXED_PORT_SPAN: u16 = 12_000;
/// The usual start of Linux's ephemeral range, when `/proc` does not say.
const DEFAULT_EPHEMERAL_START: u16 = 32_768;

/// Why the control plane or a controlled sidecar could not be prepared or started.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// A process failed to start or to become ready.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A sidecar failed to start, announce itself or become ready.
    #[error(transparent)]
    Sidecar(#[from] SidecarError),
    /// The control plane or a sidecar failed to start, or a token could not be made.
    #[error(transparent)]
    Harness(#[from] HarnessError),
    /// A file or directory could not be written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No free port could be reserved.
    #[error("cannot reserve {wanted} loopback ports below the ephemeral range")]
    Ports {
        /// How many were wanted.
        wanted: usize,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MeshError {
    let what = what.into();
    move |source| MeshError::Io { what, source }
}

/// A running `meshlite-control serve` on loopback; killed when dropped.
pub struct ControlPlane {
    process: ControlPlaneProcess,
}

impl ControlPlane {
    /// Writes `files` (name, YAML) into `dir/config` and starts the control plane on it, its
    /// state in `dir/state`, its log in `dir`.
    pub fn start(binary: &Path, dir: &Path, files: &[(&str, String)]) -> Result<Self, MeshError> {
        let config_dir = dir.join("config");
        let state_dir = dir.join("state");
        std::fs::create_dir_all(&config_dir)
            .map_err(io(format!("create {}", config_dir.display())))?;
        for (name, text) in files {
            let path = config_dir.join(name);
            std::fs::write(&path, text).map_err(io(format!("write {}", path.display())))?;
        }
        let process = ControlPlaneLaunch::new(binary, dir, &config_dir, &state_dir)
            .startup_timeout(START_TIMEOUT)
            .start()?;
        Ok(Self { process })
    }

    /// A one-hour bootstrap token for `service_account` in [`NAMESPACE`], granting the `app`
    /// label of the same name (every workload here serves the service named after its
    /// account).
    pub fn token(&self, service_account: &str) -> Result<String, MeshError> {
        let app = format!("app={service_account}");
        Ok(self
            .process
            .token(NAMESPACE, service_account, Some("1h"), &[&app])?)
    }

    /// The CA root every sidecar is told to trust.
    pub fn root_cert(&self) -> PathBuf {
        self.process.root_cert()
    }

    /// `https://127.0.0.1:<xds port>`, the sidecars' `control.address`.
    pub fn address(&self) -> String {
        self.process.address()
    }

    /// The watched config directory.
    pub fn config_dir(&self) -> &Path {
        self.process.launch().config_dir()
    }

    /// The monitoring address (`/metrics`, `/debug/status`).
    pub fn monitoring(&self) -> SocketAddr {
        self.process.monitoring()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// Stops it (SIGTERM, bounded wait, then SIGKILL).
    pub fn stop(self) {
        // Its exit status changes no figure of the data plane.
        let _ = self.process.stop();
    }
}

/// One workload that joins the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Workload name (node id `<name>.default`).
    pub name: String,
    /// Service account: identity `spiffe://cluster.local/ns/default/sa/<sa>`.
    pub service_account: String,
    /// `app` label: the workload is an endpoint of service `<app>` when it serves a port.
    pub app: String,
    /// `version` label.
    pub version: Option<String>,
    /// The app behind [`SERVICE_PORT`], if the workload serves one.
    pub serves: Option<SocketAddr>,
    /// A fixed outbound port (else port 0).
    pub outbound_port: Option<u16>,
    /// `control.on_demand`; `None` for the proxy's default (on).
    pub on_demand: Option<bool>,
}

impl Workload {
    /// A calling-only workload `name` (service account and `app` label `name`).
    pub fn client(name: &str) -> Self {
        Self {
            name: name.to_string(),
            service_account: name.to_string(),
            app: name.to_string(),
            version: None,
            serves: None,
            outbound_port: None,
            on_demand: None,
        }
    }

    /// Service `name` served by the app at `app`.
    pub fn service(name: &str, app: SocketAddr) -> Self {
        Self {
            serves: Some(app),
            ..Self::client(name)
        }
    }

    /// Version `version` of service `app` (workload `<app>-<version>`, service account `app`),
    /// served by the app at `target`.
    pub fn version_of(app: &str, version: &str, target: SocketAddr) -> Self {
        Self {
            name: format!("{app}-{version}"),
            service_account: app.to_string(),
            app: app.to_string(),
            version: Some(version.to_string()),
            serves: Some(target),
            outbound_port: None,
            on_demand: None,
        }
    }

    /// Its SPIFFE ID.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{}",
            self.service_account
        )
    }

    /// The sidecar's config file: identity, listeners, the served port, the control plane.
    pub fn config_yaml(
        &self,
        control_address: &str,
        root_cert: &Path,
        token_file: &Path,
    ) -> String {
        let mut c = SidecarConfig::new(
            &self.spiffe_id(),
            &self.name,
            Mode::Control {
                address: control_address.to_string(),
                root_cert: root_cert.to_path_buf(),
                token_file: token_file.to_path_buf(),
                state_dir: None,
                cert_ttl: None,
            },
        );
        c.app = Some(self.app.clone());
        c.version = self.version.clone();
        c.outbound = SocketAddr::from(([127, 0, 0, 1], self.outbound_port.unwrap_or(0)));
        c.inbound = self
            .serves
            .map(|target| InboundPort {
                port: SERVICE_PORT,
                target,
                protocol: AppProtocol::Http,
            })
            .into_iter()
            .collect();
        // The chaos scenario reads retries and ejections: cluster statistics Istio's default
        // set leaves out.
        c.stats_prefixes = vec!["cluster.".to_string()];
        c.on_demand = self.on_demand;
        c.to_yaml()
    }
}

/// How to run the controlled sidecars.
#[derive(Debug, Clone)]
pub struct SidecarOptions {
    /// The proxy binary.
    pub binary: PathBuf,
    /// `--workers N`; `None` for the proxy's default.
    pub workers: Option<u32>,
    /// CPU to pin every sidecar to.
    pub pin_cpu: Option<usize>,
}

/// A sidecar process started but not yet known to be ready.
pub struct PendingSidecar {
    workload: Workload,
    starting: StartingSidecar,
}

impl PendingSidecar {
    /// Writes the workload's config and token into `dir/<workload>/` and starts its sidecar.
    pub fn spawn(
        opts: &SidecarOptions,
        control: &ControlPlane,
        workload: &Workload,
        token: &str,
        dir: &Path,
    ) -> Result<Self, MeshError> {
        let own = dir.join(&workload.name);
        std::fs::create_dir_all(&own).map_err(io(format!("create {}", own.display())))?;
        let token_file = own.join("token");
        write_text(&token_file, token)?;
        let config = own.join("proxy.yaml");
        write_text(
            &config,
            &workload.config_yaml(&control.address(), &control.root_cert(), &token_file),
        )?;
        let starting = SidecarLaunch::new(
            &opts.binary,
            &format!("sidecar-{}", workload.name),
            &own,
            &config,
        )
        .workers(opts.workers)
        .pin_cpu(opts.pin_cpu)
        .startup_timeout(READY_TIMEOUT)
        .wait_ready(true)
        .spawn()?;
        Ok(Self {
            workload: workload.clone(),
            starting,
        })
    }

    /// Waits for its listening line (printed once the CA signed its certificate) and for
    /// `/healthz/ready`.
    pub fn ready(self) -> Result<Sidecar, MeshError> {
        Ok(Sidecar {
            workload: self.workload,
            process: self.starting.ready()?,
        })
    }
}

/// A ready sidecar; killed when dropped.
pub struct Sidecar {
    workload: Workload,
    process: SidecarProcess,
}

impl Sidecar {
    /// The workload it runs beside.
    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// Where its app (or the load generator) sends outbound requests.
    pub fn outbound(&self) -> SocketAddr {
        self.process.outbound()
    }

    /// Its `/stats/prometheus` listener.
    pub fn metrics(&self) -> SocketAddr {
        self.process.metrics()
    }

    /// Every address its listening line gave (admin, inbound, ...).
    pub fn listening(&self) -> &crate::harness::Listening {
        self.process.listening()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its Prometheus text now.
    pub fn metrics_text(&self) -> Result<String, ProbeError> {
        probe::get_ok(self.metrics(), "/stats/prometheus")
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// SIGKILLs it (a crash: no drain, no goodbye to the control plane).
    pub fn kill(self) {
        self.process.kill();
    }

    /// Stops it with SIGTERM; a note when it did not exit 0 in time.
    pub fn stop(self) -> Option<String> {
        self.process.stop()
    }
}

/// Loopback ports held by listeners until released, taken below the ephemeral range.
pub struct PortReservation {
    listeners: Vec<(u16, TcpListener)>,
}

impl PortReservation {
    /// The reserved ports.
    pub fn ports(&self) -> Vec<u16> {
        self.listeners.iter().map(|(port, _)| *port).collect()
    }

    /// Closes the listeners: the ports are free for the processes they were reserved for.
    pub fn release(self) {
        drop(self.listeners);
    }
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

/// The candidate ports, in the order tried: the span below the ephemeral range, starting at an
/// offset that differs between runs (two benchmarks at once do not fight over the same ports).
fn candidate_ports(ephemeral_start: u16, seed: u32) -> impl Iterator<Item = u16> {
    let high = ephemeral_start.max(2_048);
    let low = high.saturating_sub(FIXED_PORT_SPAN).max(1_024);
    let span = u32::from(high - low);
    let offset = seed % span.max(1);
    (0..span).map(move |i| low + u16::try_from((offset + i) % span).unwrap_or(0))
}

/// Reserves `n` loopback ports below the ephemeral range (bound, so free and held).
pub fn reserve_ports(n: usize) -> Result<PortReservation, MeshError> {
    let seed = std::process::id().wrapping_mul(7_919);
    let listeners: Vec<(u16, TcpListener)> = candidate_ports(ephemeral_start(), seed)
        .filter_map(|port| {
            TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
                .ok()
                .map(|l| (port, l))
        })
        .take(n)
        .collect();
    if listeners.len() < n {
        return Err(MeshError::Ports { wanted: n });
    }
    Ok(PortReservation { listeners })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_ports_stay_below_the_ephemeral_range() {
        let ports: Vec<u16> = candidate_ports(32_768, 123_456).collect();
        assert_eq!(ports.len(), usize::from(FIXED_PORT_SPAN));
        assert!(ports.iter().all(|p| (20_768..32_768).contains(p)));
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len(), "every port once");
        // A tiny range still yields ports above the privileged ones.
        assert!(candidate_ports(1_500, 7).all(|p| p >= 1_024));
    }

    #[test]
    fn reserved_ports_are_distinct_and_held() {
        let reservation = reserve_ports(3);
        let ports = reservation
            .as_ref()
            .map(PortReservation::ports)
            .unwrap_or_default();
        assert_eq!(ports.len(), 3);
        assert!(
            ports
                .iter()
                .all(|p| TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], *p))).is_err())
        );
        if let Ok(r) = reservation {
            r.release();
        }
    }

    #[test]
    fn a_serving_workload_declares_its_port_and_its_control_plane() {
        let app: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 4000));
        let mut w = Workload::version_of("echo", "v2", app);
        w.outbound_port = Some(21_000);
        let y = w.config_yaml(
            "https://127.0.0.1:9",
            Path::new("/s/root-cert.pem"),
            Path::new("/d/token"),
        );
        assert!(y.contains("spiffe_id: \"spiffe://cluster.local/ns/default/sa/echo\""));
        assert!(y.contains("workload: \"echo-v2\""));
        assert!(y.contains("version: \"v2\""));
        assert!(y.contains("outbound: \"127.0.0.1:21000\""));
        assert!(y.contains("{ port: 8080, target: \"127.0.0.1:4000\", protocol: http }"));
        assert!(y.contains("token_file: \"/d/token\""));
        let client = Workload::client("loadgen").config_yaml(
            "https://127.0.0.1:9",
            Path::new("/r"),
            Path::new("/t"),
        );
        assert!(client.contains("ports: []") && client.contains("outbound: \"127.0.0.1:0\""));
    }
}
