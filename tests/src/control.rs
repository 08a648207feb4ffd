//! A mesh run by a real `meshlite-control`: the control plane process, the sidecars it
//! configures, and the traffic tests send through them.
//!
//! - [`ControlPlane`] starts `meshlite-control serve` on a config directory the test writes
//!   (Istio YAML), in a state directory of its own (CA root, token key, revocations), and can
//!   edit that config, read `status` and `/metrics`, run the CLI, kill it and restart it on the
//!   same ports and state, as an operator would after a crash.
//! - [`Workload`] describes one workload (name, namespace, service account, labels, the ports
//!   its app serves); [`MeshProxy::start`] runs a `meshlite-proxy` for it that gets its identity
//!   from the control plane's CA with a bootstrap token and its config from the xDS stream.
//! - [`Load`] keeps requests flowing through a sidecar from a few concurrent callers and
//!   reports every failure and which app answered, for "zero failed requests" stories.
//! - [`ca_client`] talks to the CA over TLS directly, with or without a client certificate,
//!   for the stories where the CA must refuse.
//!
//! The control plane binary is `$MESHLITE_CONTROL_BIN` if set, else `meshlite-control` beside
//! the proxy binary ([`crate::mesh::proxy_binary`]), built once when missing. Both kinds of
//! process are run by the harness the benchmark uses too (`meshlite_bench::harness`).

use crate::apps::SERVED_BY;
use crate::clients::{self, Http1Client, empty, h1_request};
use crate::deadline::{SOON, eventually};
use crate::mesh::{
    AppProtocol, InboundPort, Listening, STARTUP_TIMEOUT, log_level, proxy_binary, start_process,
};
use crate::prometheus::samples;
use meshlite_bench::harness::{
    ControlPlaneLaunch, ControlPlaneProcess, Mode, SidecarConfig, SidecarLaunch, SidecarProcess,
    StaticService, create_token,
};
use meshlite_xds_proto::v1::certificate_service_client::CertificateServiceClient;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The namespace every workload of these tests lives in.
pub const NAMESPACE: &str = "default";

/// Upper bound for the control plane to push a change and the proxies to apply it (debounce
/// 100 ms, a push, an ACK: well under a second on an idle machine).
pub const CONVERGE: Duration = Duration::from_secs(5);

/// How long proxies may take to reconnect to a restarted control plane: their backoff grows
/// to 15 s, with jitter, while it was down.
pub const RESYNC: Duration = Duration::from_secs(25);

/// The control plane binary under test: `MESHLITE_CONTROL_BIN`, else next to the proxy binary.
///
/// # Panics
/// If `MESHLITE_CONTROL_BIN` names a missing file, or building the binary fails.
pub fn control_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        crate::mesh::workspace_binary(
            "MESHLITE_CONTROL_BIN",
            proxy_binary().with_file_name("meshlite-control"),
        )
    })
}

/// Runs the control plane binary with `args` to completion (`validate`, `token create`, ...).
///
/// # Panics
/// If it cannot be started or runs longer than [`STARTUP_TIMEOUT`].
pub async fn run_control_cli<S: AsRef<OsStr>>(args: &[S]) -> Output {
    crate::mesh::run_cli(control_binary(), args).await
}

/// Stdout then stderr of a finished command, as text.
pub fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A running `meshlite-control serve`. Killed when dropped; if the test is failing, its log is
/// printed first.
pub struct ControlPlane {
    /// xDS + CA (TLS) address.
    pub xds: SocketAddr,
    /// Monitoring address (`/metrics`, `/debug/status`).
    pub monitoring: SocketAddr,
    launch: ControlPlaneLaunch,
    process: Option<ControlPlaneProcess>,
    // After `process`: the directory goes once the process is killed.
    dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts a control plane whose config directory holds `files` (name, YAML text), with
    /// the default flags (debounce 100 ms, 24 h certificates).
    ///
    /// # Panics
    /// If it does not start; the message includes its log.
    pub async fn start(files: &[(&str, &str)]) -> ControlPlane {
        Self::start_with(files, &[]).await
    }

    /// Like [`Self::start`], with extra `serve` flags (e.g. `["--cert-ttl", "10s"]`).
    ///
    /// # Panics
    /// If it does not start; the message includes its log.
    pub async fn start_with(files: &[(&str, &str)], args: &[&str]) -> ControlPlane {
        let dir = tempfile::Builder::new()
            .prefix("meshlite-e2e-control-")
            .tempdir()
            .expect("temp dir");
        for sub in ["config", "logs"] {
            std::fs::create_dir(dir.path().join(sub)).expect("create dir");
        }
        let launch = ControlPlaneLaunch::new(
            control_binary(),
            &dir.path().join("logs"),
            &dir.path().join("config"),
            &dir.path().join("state"),
        )
        .args(args.iter().copied())
        .log_level(log_level())
        .startup_timeout(STARTUP_TIMEOUT);
        let mut plane = ControlPlane {
            xds: SocketAddr::from(([127, 0, 0, 1], 0)),
            monitoring: SocketAddr::from(([127, 0, 0, 1], 0)),
            launch,
            process: None,
            dir,
        };
        for (name, yaml) in files {
            plane.write_config(name, yaml);
        }
        plane.spawn().await;
        plane
    }

    /// Starts the process; later starts reuse the ports of the first.
    async fn spawn(&mut self) {
        let launch = self.launch.clone();
        let process = tokio::task::spawn_blocking(move || launch.start())
            .await
            .expect("the start task")
            .unwrap_or_else(|e| panic!("meshlite-control did not start: {e}"));
        self.xds = process.xds();
        self.monitoring = process.monitoring();
        self.launch = process.relaunch();
        self.process = Some(process);
    }

    /// The watched config directory.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// The CA state directory (root, token key, revocations).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The CA root every proxy is told to trust (`root-cert.pem` in the state directory).
    pub fn root_cert(&self) -> PathBuf {
        self.state_dir().join("root-cert.pem")
    }

    /// `https://127.0.0.1:<xds port>`, the proxies' `control.address`.
    pub fn address(&self) -> String {
        format!("https://{}", self.xds)
    }

    /// Writes (or replaces) `name` in the config directory the way an editor saving
    /// atomically does: a hidden temporary file renamed over the old one.
    ///
    /// # Panics
    /// On I/O errors.
    pub fn write_config(&self, name: &str, yaml: &str) {
        let temp = self.config_dir().join(format!(".{name}.tmp"));
        std::fs::write(&temp, yaml).expect("write config");
        std::fs::rename(&temp, self.config_dir().join(name)).expect("rename config");
    }

    /// Runs `meshlite-control token create` for `namespace`/`service_account` with `ttl`,
    /// granting the `app` label named after the service account (the service every workload
    /// of these tests serves).
    ///
    /// # Panics
    /// If the command fails.
    pub async fn token_with_ttl(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: &str,
    ) -> String {
        let app = format!("app={service_account}");
        self.token_granting(namespace, service_account, ttl, &[&app])
            .await
    }

    /// A token for `namespace`/`service_account` granting `labels` (`key=value`).
    ///
    /// # Panics
    /// If `token create` fails.
    pub async fn token_granting(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: &str,
        labels: &[&str],
    ) -> String {
        let (state, namespace, account, ttl) = (
            self.state_dir(),
            namespace.to_string(),
            service_account.to_string(),
            ttl.to_string(),
        );
        let labels: Vec<String> = labels.iter().map(ToString::to_string).collect();
        tokio::task::spawn_blocking(move || {
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            create_token(
                control_binary(),
                &state,
                &namespace,
                &account,
                Some(&ttl),
                &labels,
            )
        })
        .await
        .expect("the token task")
        .unwrap_or_else(|e| panic!("token create failed: {e}"))
    }

    /// A one-hour bootstrap token for `namespace`/`service_account`.
    ///
    /// # Panics
    /// If the command fails.
    pub async fn token(&self, namespace: &str, service_account: &str) -> String {
        self.token_with_ttl(namespace, service_account, "1h").await
    }

    /// Like [`ControlPlane::access`], with a token granting exactly `labels` (`key=value`).
    ///
    /// # Panics
    /// If no token can be made.
    pub async fn access_granting(
        &self,
        namespace: &str,
        service_account: &str,
        labels: &[&str],
    ) -> ControlAccess {
        ControlAccess {
            address: self.address(),
            root_cert: self.root_cert(),
            token: self
                .token_granting(namespace, service_account, "1h", labels)
                .await,
        }
    }

    /// What a proxy of `namespace`/`service_account` needs to join this control plane.
    ///
    /// # Panics
    /// If no token can be made.
    pub async fn access(&self, namespace: &str, service_account: &str) -> ControlAccess {
        ControlAccess {
            address: self.address(),
            root_cert: self.root_cert(),
            token: self.token(namespace, service_account).await,
        }
    }

    /// Runs the CLI with `args`, e.g. `["status", "--addr", ...]`.
    pub async fn cli(&self, args: &[&str]) -> Output {
        run_control_cli(args).await
    }

    /// `meshlite-control status --addr <monitoring>` (with `--json` if asked).
    ///
    /// # Panics
    /// If the command fails.
    pub async fn status_cli(&self, json: bool) -> String {
        let addr = self.monitoring.to_string();
        let mut args = vec!["status", "--addr", addr.as_str()];
        if json {
            args.push("--json");
        }
        let out = self.cli(&args).await;
        assert!(out.status.success(), "status failed: {}", output_text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `GET /debug/status`, parsed.
    ///
    /// # Panics
    /// If the monitoring port does not answer with JSON.
    pub async fn status(&self) -> serde_json::Value {
        let reply = clients::get(self.monitoring, "127.0.0.1", "/debug/status").await;
        assert_eq!(reply.status, 200, "/debug/status: {}", reply.text());
        reply.json()
    }

    /// The node ids of the proxies `status` lists as connected.
    pub async fn connected_proxies(&self) -> Vec<String> {
        let status = self.status().await;
        let mut ids: Vec<String> = status["proxies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["id"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids
    }

    /// Waits until `status` lists every one of `ids` (node ids, `<workload>.<namespace>`).
    ///
    /// # Panics
    /// If they are not all listed within `within`.
    pub async fn wait_connected(&self, ids: &[&str], within: Duration) {
        let what = format!("the control plane to list {ids:?} as connected");
        eventually(&what, within, || async {
            let connected = self.connected_proxies().await;
            ids.iter()
                .all(|id| connected.iter().any(|c| c == id))
                .then_some(())
        })
        .await;
    }

    /// The Prometheus text of `/metrics`.
    ///
    /// # Panics
    /// If the monitoring port does not answer.
    pub async fn metrics_text(&self) -> String {
        let reply = clients::get(self.monitoring, "127.0.0.1", "/metrics").await;
        assert_eq!(reply.status, 200, "/metrics: {}", reply.text());
        reply.text()
    }

    /// The sum of metric `name`'s samples whose labels include every `(key, value)` of
    /// `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sum_matching(&self.metrics_text().await, name, labels)
    }

    /// Its log so far (stderr and stdout), across restarts.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.launch.log_path()).unwrap_or_default()
    }

    /// SIGKILLs the control plane (a crash: no goodbye to the proxies).
    pub async fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts it again on the same xDS and monitoring ports, state and config directory.
    ///
    /// # Panics
    /// If it does not start within [`STARTUP_TIMEOUT`].
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- meshlite-control logs, last 60 lines ----\n{}",
                tail(&self.logs(), 60)
            );
            if std::env::var_os("MESHLITE_E2E_KEEP").is_some() {
                let kept =
                    std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir")).keep();
                eprintln!("kept {}", kept.display());
            }
        }
    }
}

fn sum_matching(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .iter()
        .filter(|s| labels.iter().all(|(k, v)| s.label(k) == *v))
        .map(|s| s.value)
        .sum()
}

/// Where a proxy finds its control plane and how it proves who it is the first time.
#[derive(Clone, Debug)]
pub struct ControlAccess {
    /// `https://HOST:PORT`.
    pub address: String,
    /// PEM root the control plane's serving certificate chains to.
    pub root_cert: PathBuf,
    /// The bootstrap token.
    pub token: String,
}

/// One workload that joins the mesh through the control plane.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Workload name (node id `<name>.<namespace>`).
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account: the identity is `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
    pub service_account: String,
    /// `app` label: the workload is an endpoint of `<app>.<namespace>.svc.cluster.local`.
    pub app: String,
    /// `version` label (DestinationRule subsets select on it).
    pub version: Option<String>,
    /// Further labels.
    pub labels: BTreeMap<String, String>,
    /// The ports its app serves.
    pub inbound: Vec<InboundPort>,
    /// Keep a state directory (config, key, certificate) across restarts.
    pub state_dir: bool,
    /// `control.cert_ttl`, e.g. `"10s"`; `None` for the proxy's default.
    pub cert_ttl: Option<String>,
    /// `region/zone/subzone` it runs in.
    pub locality: Option<String>,
    /// `upstream.protocol` between sidecars (`http1`, `h2`); `None` for the proxy's default.
    pub upstream_protocol: Option<String>,
    /// Audit every authorization decision (`--audit-log-all`).
    pub audit_all: bool,
    /// `proxy_stats_matcher.inclusion_prefixes` of its sidecar. The tests read cluster
    /// statistics (circuit breakers, retries, outlier detection) and the HTTP filters'
    /// (ext_authz, jwt_authn), which Istio's default set leaves out, so by default they are
    /// included, as a user's `proxyStatsMatcher` would; empty: Istio's default set, or the
    /// MeshConfig's.
    pub stats_prefixes: Vec<String>,
    /// Opaque TCP services of the static file, each with an outbound listener on
    /// `127.0.0.1:0` (the control plane's TCP services get listeners at their ports only
    /// with [`Workload::with_tcp_listeners`]).
    pub static_tcp: Vec<StaticTcp>,
    /// Run its DNS proxy on a free loopback port, forwarding other names to these
    /// resolvers; `None`: no DNS proxy (`--dns-addr off`).
    pub dns_upstreams: Option<Vec<SocketAddr>>,
    /// Per-service TCP listeners (explicit mode) on this loopback IP, where its outbound
    /// listener then is too; `None`: off. Every sidecar of a test shares one host, so only
    /// the callers that need them ask, each on an IP of its own.
    pub tcp_listeners: Option<std::net::IpAddr>,
    /// `control.on_demand`; `None` for the proxy's default (on).
    pub on_demand: Option<bool>,
    /// `control.on_demand_timeout`, e.g. `"1s"`; `None` for the proxy's default.
    pub on_demand_timeout: Option<String>,
    /// `upstream.cluster_idle_timeout`, e.g. `"300ms"`; `None` for the proxy's default.
    pub cluster_idle_timeout: Option<String>,
}

/// A TCP service written in a sidecar's static file: reached on its own outbound listener
/// (`Listening::tcp["<name>:<port>"]`), carried over mutual TLS to `endpoint`, a sidecar that
/// must present `identity`.
#[derive(Clone, Debug)]
pub struct StaticTcp {
    /// Service name.
    pub name: String,
    /// Service port (the destination sidecar's port for it).
    pub port: u16,
    /// The destination sidecar's inbound address.
    pub endpoint: SocketAddr,
    /// Its SPIFFE ID.
    pub identity: String,
}

impl Workload {
    /// A workload called `name` with service account and `app` label `name`, serving nothing.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            namespace: NAMESPACE.to_string(),
            service_account: name.to_string(),
            app: name.to_string(),
            version: None,
            labels: BTreeMap::new(),
            inbound: Vec::new(),
            state_dir: false,
            cert_ttl: None,
            locality: None,
            upstream_protocol: None,
            audit_all: false,
            stats_prefixes: vec!["cluster.".to_string(), "http.".to_string()],
            static_tcp: Vec::new(),
            dns_upstreams: None,
            tcp_listeners: None,
            on_demand: None,
            on_demand_timeout: None,
            cluster_idle_timeout: None,
        }
    }

    /// Opens a listener on `ip` at the port of every `tcp` service the control plane pushes
    /// (its outbound listener moves to `ip` too).
    pub fn with_tcp_listeners(mut self, ip: std::net::IpAddr) -> Self {
        self.tcp_listeners = Some(ip);
        self
    }

    /// Runs its DNS proxy on a free loopback port (`MeshProxy::addrs.dns`), forwarding
    /// names outside the mesh to `upstreams`.
    pub fn with_dns(mut self, upstreams: &[SocketAddr]) -> Self {
        self.dns_upstreams = Some(upstreams.to_vec());
        self
    }

    /// Places it in `locality` (`region/zone/subzone`).
    pub fn in_locality(mut self, locality: &str) -> Self {
        self.locality = Some(locality.to_string());
        self
    }

    /// A version `version` of service `app` (workload `<app>-<version>`, service account
    /// `app`), whose app at `target` serves HTTP on `port`.
    pub fn version_of(app: &str, version: &str, port: u16, target: SocketAddr) -> Self {
        let mut w = Self::new(&format!("{app}-{version}"));
        w.service_account = app.to_string();
        w.app = app.to_string();
        w.version = Some(version.to_string());
        w.serving(port, target)
    }

    /// Adds an HTTP port served by the app at `target`.
    pub fn serving(mut self, port: u16, target: SocketAddr) -> Self {
        self.inbound.push(InboundPort {
            port,
            target,
            protocol: AppProtocol::Http,
        });
        self
    }

    /// Keeps a state directory.
    pub fn with_state_dir(mut self) -> Self {
        self.state_dir = true;
        self
    }

    /// Asks for certificates of lifetime `ttl`.
    pub fn with_cert_ttl(mut self, ttl: &str) -> Self {
        self.cert_ttl = Some(ttl.to_string());
        self
    }

    /// Its SPIFFE ID.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }

    /// The node id the control plane lists it under.
    pub fn node_id(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }

    /// The proxy's YAML: identity and labels, every listener on port 0, the inbound ports and
    /// the `control` section (relative paths: `token`, `state/`).
    pub fn to_yaml(&self, access: &ControlAccess) -> String {
        let mut c = SidecarConfig::new(
            &self.spiffe_id(),
            &self.name,
            Mode::Control {
                address: access.address.clone(),
                root_cert: access.root_cert.clone(),
                token_file: "token".into(),
                state_dir: self.state_dir.then(|| "state".into()),
                cert_ttl: self.cert_ttl.clone(),
            },
        );
        c.app = Some(self.app.clone());
        c.version = self.version.clone();
        c.locality = self.locality.clone();
        c.labels = self.labels.clone();
        c.inbound = self.inbound.clone();
        c.upstream_protocol = self.upstream_protocol.clone();
        c.stats_prefixes = self.stats_prefixes.clone();
        c.tcp_services = Some(self.tcp_listeners.is_some());
        c.on_demand = self.on_demand;
        c.on_demand_timeout = self.on_demand_timeout.clone();
        c.cluster_idle_timeout = self.cluster_idle_timeout.clone();
        if let Some(ip) = self.tcp_listeners {
            c.outbound = SocketAddr::new(ip, 0);
        }
        c.services = self
            .static_tcp
            .iter()
            .map(|t| StaticService {
                name: t.name.clone(),
                namespace: NAMESPACE.to_string(),
                port: t.port,
                protocol: AppProtocol::Tcp,
                identities: vec![t.identity.clone()],
                endpoints: vec![t.endpoint],
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            })
            .collect();
        c.to_yaml()
    }
}

/// A running `meshlite-proxy` that gets identity and config from a control plane. Killed when
/// dropped; if the test is failing, its log is printed first.
pub struct MeshProxy {
    /// The workload it runs beside.
    pub workload: Workload,
    /// Bound addresses from the (latest) startup line.
    pub addrs: Listening,
    launch: SidecarLaunch,
    process: Option<SidecarProcess>,
    // After `process`: the directory goes once the process is killed.
    dir: tempfile::TempDir,
}

impl MeshProxy {
    /// A sidecar for a workload called `name` (service account `name`) that serves
    /// nothing: a caller.
    ///
    /// # Panics
    /// If it does not start.
    pub async fn caller(control: &ControlPlane, name: &str) -> MeshProxy {
        Self::start(&control.access(NAMESPACE, name).await, &Workload::new(name)).await
    }

    /// Writes the workload's config and token to a fresh directory and starts a proxy with it,
    /// waiting for its listening line (printed once it holds a certificate from the CA).
    ///
    /// # Panics
    /// If it does not start; the message includes its log.
    pub async fn start(access: &ControlAccess, workload: &Workload) -> MeshProxy {
        let dir = tempfile::Builder::new()
            .prefix(&format!("meshlite-e2e-{}-", workload.name))
            .tempdir()
            .expect("temp dir");
        let config = dir.path().join("proxy.yaml");
        std::fs::write(&config, workload.to_yaml(access)).expect("write config");
        std::fs::write(dir.path().join("token"), &access.token).expect("write token");
        let launch = SidecarLaunch::new(
            proxy_binary(),
            &format!("sidecar-{}", workload.name),
            dir.path(),
            &config,
        )
        .access_log(&dir.path().join("access.log"))
        .audit_log(&dir.path().join("audit.log"), workload.audit_all)
        .workers(Some(1))
        .log_level(log_level())
        .startup_timeout(STARTUP_TIMEOUT);
        let launch = match &workload.dns_upstreams {
            Some(upstreams) => launch.dns(SocketAddr::from(([127, 0, 0, 1], 0)), upstreams),
            None => launch,
        };
        let mut proxy = MeshProxy {
            workload: workload.clone(),
            addrs: Listening {
                outbound: SocketAddr::from(([127, 0, 0, 1], 0)),
                inbound: SocketAddr::from(([127, 0, 0, 1], 0)),
                admin: SocketAddr::from(([127, 0, 0, 1], 0)),
                metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
                health: SocketAddr::from(([127, 0, 0, 1], 0)),
                tcp: BTreeMap::new(),
                dns: None,
            },
            launch,
            process: None,
            dir,
        };
        proxy.spawn().await;
        proxy
    }

    async fn spawn(&mut self) {
        let process = start_process(self.launch.clone())
            .await
            .unwrap_or_else(|e| panic!("meshlite-proxy for {}: {e}", self.workload.name));
        self.addrs = process.listening().clone();
        self.process = Some(process);
    }

    /// Where its app sends outbound requests.
    pub fn outbound(&self) -> SocketAddr {
        self.addrs.outbound
    }

    /// The directory holding its config, token, state and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its log so far (stderr and stdout), across restarts.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.launch.log_path()).unwrap_or_default()
    }

    /// Waits for an access log entry matching `matches`.
    ///
    /// # Panics
    /// If none appears within [`SOON`].
    pub async fn access_log_entry(
        &self,
        what: &str,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let what = format!("{}'s access log entry for {what}", self.workload.name);
        eventually(&what, SOON, || async {
            std::fs::read_to_string(self.dir.path().join("access.log"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|e| matches(e))
        })
        .await
    }

    /// The audit log's lines so far, parsed (unparsable lines are skipped).
    pub fn audit_entries(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The body of `/healthz/ready`, or `None` if the health port does not answer.
    pub async fn readiness(&self) -> Option<String> {
        clients::try_get(self.addrs.health, "127.0.0.1", "/healthz/ready")
            .await
            .map(|r| r.text())
    }

    /// Waits until `/healthz/ready` says something containing `words` and returns it.
    ///
    /// # Panics
    /// If it does not within [`SOON`].
    pub async fn wait_ready_saying(&self, words: &str) -> String {
        let what = format!("{}'s readiness to say {words:?}", self.workload.name);
        eventually(&what, SOON, || async {
            self.readiness().await.filter(|t| t.contains(words))
        })
        .await
    }

    /// The Prometheus text of `/stats/prometheus`.
    ///
    /// # Panics
    /// If the metrics port does not answer.
    pub async fn metrics_text(&self) -> String {
        let reply = clients::get(self.addrs.metrics, "127.0.0.1", "/stats/prometheus").await;
        assert_eq!(reply.status, 200, "/stats/prometheus: {}", reply.text());
        reply.text()
    }

    /// The sum of metric `name`'s samples whose labels include every `(key, value)`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sum_matching(&self.metrics_text().await, name, labels)
    }

    /// `istio_requests_total` answered with `code` and response flags `flags` (e.g. 503,
    /// `UO`).
    pub async fn requests_flagged(&self, code: u16, flags: &str) -> f64 {
        let code = code.to_string();
        self.metric(
            "istio_requests_total",
            &[("response_code", code.as_str()), ("response_flags", flags)],
        )
        .await
    }

    /// The admin `/config_dump`, parsed.
    ///
    /// # Panics
    /// If the admin port does not answer with JSON.
    pub async fn config_dump(&self) -> serde_json::Value {
        let reply = clients::get(self.addrs.admin, "127.0.0.1", "/config_dump").await;
        assert_eq!(reply.status, 200, "/config_dump: {}", reply.text());
        reply.json()
    }

    /// SIGKILLs the proxy.
    pub async fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts it again with the same config, token and state directory (its listeners get new
    /// ports: read [`Self::addrs`] again).
    ///
    /// # Panics
    /// If it does not start.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}

impl Drop for MeshProxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- sidecar {} logs, last 60 lines ----\n{}",
                self.workload.name,
                tail(&self.logs(), 60)
            );
            if std::env::var_os("MESHLITE_E2E_KEEP").is_some() {
                let kept =
                    std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir")).keep();
                eprintln!("kept {}", kept.display());
            }
        }
    }
}

/// `GET /` with `Host: host` through the sidecar at `outbound` on a fresh connection; the app
/// that answered (its `x-served-by`), or why there was none.
pub async fn call(outbound: SocketAddr, host: &str) -> Result<String, String> {
    let reply = clients::try_get(outbound, host, "/")
        .await
        .ok_or_else(|| "no response".to_string())?;
    if reply.status != 200 {
        return Err(format!("{}: {}", reply.status, reply.text().trim()));
    }
    reply
        .header(SERVED_BY)
        .map(str::to_string)
        .ok_or_else(|| "no x-served-by header".to_string())
}

/// Waits until a request for `host` through `outbound` is answered by `app`.
///
/// # Panics
/// If it is not within `within`; the message shows the last outcome.
pub async fn wait_served_by(outbound: SocketAddr, host: &str, app: &str, within: Duration) {
    let last = std::sync::Mutex::new(String::new());
    let what = format!("requests for {host} to be served by {app}");
    let found = tokio::time::timeout(within, async {
        loop {
            match call(outbound, host).await {
                Ok(by) if by == app => return,
                Ok(by) => *last.lock().expect("lock") = format!("served by {by}"),
                Err(e) => *last.lock().expect("lock") = e,
            }
            tokio::time::sleep(crate::deadline::POLL_INTERVAL).await;
        }
    })
    .await;
    if found.is_err() {
        panic!(
            "timed out after {within:?} waiting for {what}; last outcome: {}",
            last.lock().expect("lock")
        );
    }
}

/// What a [`Load`] saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Requests answered 200.
    pub ok: u64,
    /// Every failure: status and body, or the transport error.
    pub failures: Vec<String>,
    /// Successful responses per app (`x-served-by`).
    pub served_by: BTreeMap<String, u64>,
    /// For each caller, the app that answered its last request.
    pub last_served_by: Vec<String>,
}

impl LoadReport {
    /// Asserts that no request failed; `while_what` says what was going on ("routes change").
    ///
    /// # Panics
    /// If any request failed, with the count and the first ten failures.
    pub fn assert_no_failures(&self, while_what: &str) {
        assert!(
            self.failures.is_empty(),
            "no request may fail while {while_what}; {} of {} failed: {:?}",
            self.failures.len(),
            self.ok + self.failures.len() as u64,
            &self.failures[..self.failures.len().min(10)]
        );
    }

    /// Responses `app` served.
    pub fn count(&self, app: &str) -> u64 {
        self.served_by.get(app).copied().unwrap_or(0)
    }
}

/// Concurrent callers, each sending `GET /` for one host on its own keep-alive connection to a
/// sidecar, one request after another, until stopped (or a bound passes).
pub struct Load {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<LoadReport>>,
    progress: Arc<std::sync::atomic::AtomicU64>,
}

impl Load {
    /// Starts `callers` callers for `host` through `outbound`; each stops by itself after
    /// `max` (a bound, so a forgotten load cannot outlive the test).
    pub fn start(outbound: SocketAddr, host: &str, callers: usize, max: Duration) -> Load {
        Self::sending(outbound, host, ("GET", "/"), callers, max)
    }

    /// Like [`Load::start`], each request being `method path` (with an empty body).
    pub fn sending(
        outbound: SocketAddr,
        host: &str,
        (method, path): (&'static str, &'static str),
        callers: usize,
        max: Duration,
    ) -> Load {
        let (stop, _) = tokio::sync::watch::channel(false);
        let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks = (0..callers)
            .map(|_| {
                let mut stopped = stop.subscribe();
                let host = host.to_string();
                let progress = progress.clone();
                tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + max;
                    let mut report = LoadReport::default();
                    let mut conn: Option<Http1Client> = None;
                    let mut last = String::new();
                    while !*stopped.borrow_and_update() && tokio::time::Instant::now() < deadline {
                        let c = match conn.take() {
                            Some(c) if !c.is_closed() => c,
                            _ => Http1Client::connect(outbound).await,
                        };
                        let mut c = c;
                        let request = h1_request(method, &host, path)
                            .body(empty())
                            .expect("request");
                        let outcome = tokio::time::timeout(clients::EXCHANGE_TIMEOUT, async {
                            let response = c.send(request).await.map_err(|e| e.to_string())?;
                            Ok::<_, String>(clients::Reply::collect(response).await)
                        })
                        .await;
                        match outcome {
                            Ok(Ok(reply)) if reply.status == 200 => {
                                let by = reply.header(SERVED_BY).unwrap_or("?").to_string();
                                *report.served_by.entry(by.clone()).or_default() += 1;
                                report.ok += 1;
                                last = by;
                                conn = Some(c);
                            }
                            Ok(Ok(reply)) => {
                                report.failures.push(format!(
                                    "{}: {}",
                                    reply.status,
                                    reply.text().trim()
                                ));
                                conn = Some(c);
                            }
                            Ok(Err(e)) => report.failures.push(format!("transport: {e}")),
                            Err(_) => report.failures.push("timed out".to_string()),
                        }
                        progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    report.last_served_by.push(last);
                    report
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            progress,
        }
    }

    /// Requests completed so far (answered or failed).
    pub fn completed(&self) -> u64 {
        self.progress.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `n` more requests have completed (proof the load is flowing).
    ///
    /// # Panics
    /// If they do not within [`SOON`].
    pub async fn wait_for_requests(&self, n: u64) {
        let target = self.completed() + n;
        eventually("the load to make progress", SOON, || async {
            (self.completed() >= target).then_some(())
        })
        .await;
    }

    /// Stops every caller and merges what they saw.
    ///
    /// # Panics
    /// If a caller task panicked.
    pub async fn stop(self) -> LoadReport {
        self.stop.send_replace(true);
        let mut total = LoadReport::default();
        for task in self.tasks {
            let r = task.await.expect("load task");
            total.ok += r.ok;
            total.failures.extend(r.failures);
            for (app, n) in r.served_by {
                *total.served_by.entry(app).or_default() += n;
            }
            total.last_served_by.extend(r.last_served_by);
        }
        total
    }
}

/// A client certificate for [`ca_client`]: PEM chain (leaf first) and PEM key.
#[derive(Clone, Debug)]
pub struct ClientCert {
    /// PEM certificates, leaf first.
    pub chain_pem: String,
    /// PEM private key.
    pub key_pem: String,
}

/// A gRPC client of the CA at `xds` (TLS 1.3, ALPN h2, the server verified against
/// `root_pem` for 127.0.0.1), presenting `client_cert` if given.
///
/// # Panics
/// If the PEM is unreadable or the connection fails.
pub async fn ca_client(
    xds: SocketAddr,
    root_pem: &str,
    client_cert: Option<&ClientCert>,
) -> CertificateServiceClient<tonic::transport::Channel> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.expect("root PEM")).expect("add root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots);
    let mut tls = match client_cert {
        Some(c) => {
            let chain = CertificateDer::pem_slice_iter(c.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client chain PEM");
            let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).expect("client key PEM");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client certificate")
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{xds}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(xds).await?;
                let name = ServerName::try_from("127.0.0.1").expect("server name");
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .unwrap_or_else(|e| panic!("connect to the CA at {xds}: {e}"));
    CertificateServiceClient::new(channel)
}

/// Port of the `echo` service in [`Canary`].
pub const ECHO_PORT: u16 = 8080;

/// How the client addresses the `echo` service.
pub const ECHO_HOST: &str = "echo:8080";

/// The DestinationRule of [`Canary`]: subsets `v1` and `v2` of `echo` by `version` label.
pub fn echo_subsets() -> String {
    "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"
    .to_string()
}

/// The VirtualService of [`Canary`]: `echo` split between subsets by weight, each
/// `(subset, weight)` one destination.
pub fn echo_routes(split: &[(&str, u32)]) -> String {
    let mut y = String::from(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo]
  http:
  - route:
",
    );
    for (subset, weight) in split {
        let _ = writeln!(
            y,
            "    - destination: {{host: echo, subset: {subset}}}\n      weight: {weight}"
        );
    }
    y
}

/// File names of [`Canary`]'s config.
pub const SUBSETS_FILE: &str = "echo-destinationrule.yaml";
/// See [`SUBSETS_FILE`].
pub const ROUTES_FILE: &str = "echo-virtualservice.yaml";

/// What to change in a [`Canary`] before it starts.
#[derive(Clone, Debug, Default)]
pub struct CanaryOptions {
    /// Extra `meshlite-control serve` flags.
    pub control_args: Vec<String>,
    /// Every sidecar asks for certificates of this lifetime.
    pub cert_ttl: Option<String>,
    /// The client's sidecar keeps a state directory.
    pub client_state_dir: bool,
}

/// The canary-release picture: one control plane; a `client` workload; `echo` in two
/// versions (workloads `echo-v1`, `echo-v2`, one service account `echo`), each app answering
/// with its own name; a DestinationRule defining subsets `v1`/`v2` and a VirtualService
/// sending all of `echo` to `v1`.
pub struct Canary {
    /// The control plane.
    pub control: ControlPlane,
    /// The calling workload's sidecar.
    pub client: MeshProxy,
    /// `echo` v1's sidecar.
    pub v1: MeshProxy,
    /// `echo` v2's sidecar.
    pub v2: MeshProxy,
    /// `echo` v1's app (answers as `echo-v1`).
    pub app_v1: crate::apps::HttpApp,
    /// `echo` v2's app (answers as `echo-v2`).
    pub app_v2: crate::apps::HttpApp,
}

impl Canary {
    /// Starts everything with defaults and waits until the client reaches `echo-v1`.
    pub async fn start() -> Canary {
        Self::start_with(CanaryOptions::default()).await
    }

    /// Starts everything and waits until the client reaches `echo-v1` and the control plane
    /// lists all three sidecars.
    ///
    /// # Panics
    /// If any part does not start or traffic does not flow within [`SOON`].
    pub async fn start_with(options: CanaryOptions) -> Canary {
        let args: Vec<&str> = options.control_args.iter().map(String::as_str).collect();
        let control = ControlPlane::start_with(
            &[
                (SUBSETS_FILE, &echo_subsets()),
                (ROUTES_FILE, &echo_routes(&[("v1", 100), ("v2", 0)])),
            ],
            &args,
        )
        .await;
        let app_v1 = crate::apps::HttpApp::start("echo-v1").await;
        let app_v2 = crate::apps::HttpApp::start("echo-v2").await;
        let with_ttl = |w: Workload| match &options.cert_ttl {
            Some(ttl) => w.with_cert_ttl(ttl),
            None => w,
        };
        let v1 = with_ttl(Workload::version_of("echo", "v1", ECHO_PORT, app_v1.addr));
        let v2 = with_ttl(Workload::version_of("echo", "v2", ECHO_PORT, app_v2.addr));
        let mut client = with_ttl(Workload::new("client"));
        client.state_dir = options.client_state_dir;
        let echo_access = control.access(NAMESPACE, "echo").await;
        let (v1, v2) = tokio::join!(
            MeshProxy::start(&echo_access, &v1),
            MeshProxy::start(&echo_access, &v2)
        );
        let client = MeshProxy::start(&control.access(NAMESPACE, "client").await, &client).await;
        wait_served_by(client.outbound(), ECHO_HOST, "echo-v1", SOON).await;
        control
            .wait_connected(
                &["client.default", "echo-v1.default", "echo-v2.default"],
                SOON,
            )
            .await;
        Canary {
            control,
            client,
            v1,
            v2,
            app_v1,
            app_v2,
        }
    }

    /// Rewrites the VirtualService with a new split.
    pub fn route(&self, split: &[(&str, u32)]) {
        self.control.write_config(ROUTES_FILE, &echo_routes(split));
    }
}

impl ControlPlane {
    /// A gRPC client of this control plane's CA, presenting `client_cert` if given.
    ///
    /// # Panics
    /// If the root cannot be read or the connection fails.
    pub async fn ca(
        &self,
        client_cert: Option<&ClientCert>,
    ) -> CertificateServiceClient<tonic::transport::Channel> {
        let root = std::fs::read_to_string(self.root_cert()).expect("read root-cert.pem");
        ca_client(self.xds, &root, client_cert).await
    }
}

/// What a CSR asks the CA for.
#[derive(Clone, Debug, Default)]
pub struct CsrAsk {
    /// URI SANs (the SPIFFE ID, and whatever else a greedy caller wants).
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// `basicConstraints cA=true`.
    pub ca: bool,
}

impl CsrAsk {
    /// A CSR for exactly `spiffe_id`, as a well-behaved sidecar sends.
    pub fn identity(spiffe_id: &str) -> Self {
        Self {
            uris: vec![spiffe_id.to_string()],
            ..Self::default()
        }
    }

    /// A fresh P-256 key and a PEM CSR signed with it asking for this.
    ///
    /// # Panics
    /// If rcgen refuses the request.
    pub fn make(&self) -> (ClientCert, String) {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, IsCa, KeyPair, SanType,
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        for uri in &self.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into().expect("URI SAN")));
        }
        for dns in &self.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.as_str().try_into().expect("DNS SAN")));
        }
        if self.ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let csr = params.serialize_request(&key).expect("CSR");
        (
            ClientCert {
                chain_pem: String::new(),
                key_pem: key.serialize_pem(),
            },
            csr.pem().expect("CSR PEM"),
        )
    }
}

/// Sends `csr_pem` to the CA, with `Bearer token` if given, asking for `validity_s` seconds
/// (0: the CA's default).
pub async fn request_certificate(
    ca: &mut CertificateServiceClient<tonic::transport::Channel>,
    csr_pem: &str,
    token: Option<&str>,
    validity_s: i64,
) -> Result<Vec<String>, tonic::Status> {
    let mut request = tonic::Request::new(meshlite_xds_proto::v1::CertificateRequest {
        csr: csr_pem.to_string(),
        validity_duration: validity_s,
    });
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ASCII token"),
        );
    }
    ca.create_certificate(request)
        .await
        .map(|r| r.into_inner().cert_chain)
}

/// The leaf of a PEM chain: its URI SANs, lowercase hex serial and notAfter (unix seconds).
///
/// # Panics
/// If the chain is empty or unparseable.
pub fn leaf_facts(chain: &[String]) -> (Vec<String>, String, i64) {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let der = CertificateDer::pem_slice_iter(chain.concat().as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM certificate");
    let (_, cert) = X509Certificate::from_der(der.as_ref()).expect("X.509 leaf");
    let uris = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let serial = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (uris, serial, cert.validity().not_after.timestamp())
}
