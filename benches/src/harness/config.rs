//! The proxy's config file as the harness writes it, in either mode: static (the identity's
//! certificate, key and roots are files, services and endpoints are listed) or control-plane
//! (the identity comes from the CA with a bootstrap token, the mesh over xDS).
//!
//! Every listener binds loopback port 0 unless the caller fixes the outbound port; the proxy's
//! listening line gives the bound addresses. Strings are written as JSON strings (valid YAML
//! double-quoted scalars), so paths and IDs need no escaping of their own.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::HarnessError;

/// Application protocol of a port or service, by the config file's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppProtocol {
    /// HTTP/1.1.
    Http,
    /// HTTP/2 (h2c to the app).
    Http2,
    /// gRPC.
    Grpc,
    /// Opaque TCP.
    Tcp,
}

impl AppProtocol {
    /// The config file's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Http => "http",
            AppProtocol::Http2 => "http2",
            AppProtocol::Grpc => "grpc",
            AppProtocol::Tcp => "tcp",
        }
    }
}

/// A port the workload serves, and where its app listens for it.
#[derive(Clone, Debug)]
pub struct InboundPort {
    /// Service port.
    pub port: u16,
    /// The local app.
    pub target: SocketAddr,
    /// Protocol on this port.
    pub protocol: AppProtocol,
}

/// A service of the static file: where its endpoints are and who they must be.
#[derive(Clone, Debug)]
pub struct StaticService {
    /// Short name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service port.
    pub port: u16,
    /// Protocol.
    pub protocol: AppProtocol,
    /// SPIFFE IDs the destination may present.
    pub identities: Vec<String>,
    /// Destination sidecars' inbound addresses.
    pub endpoints: Vec<SocketAddr>,
    /// An explicit outbound listener for it (TCP services).
    pub listen: Option<SocketAddr>,
}

/// Where the identity comes from, and so which mode the proxy runs in.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Certificate, key and roots from files (relative paths are relative to the config file).
    Static {
        /// PEM certificate chain.
        cert: PathBuf,
        /// PEM private key.
        key: PathBuf,
        /// PEM trust bundle.
        roots: PathBuf,
    },
    /// A certificate from the control plane's CA, config over xDS.
    Control {
        /// `https://HOST:PORT`.
        address: String,
        /// PEM root the control plane's serving certificate chains to.
        root_cert: PathBuf,
        /// The bootstrap token's file.
        token_file: PathBuf,
        /// Keep key, certificate and last good config here across restarts.
        state_dir: Option<PathBuf>,
        /// Lifetime asked of the CA (e.g. `10s`); `None` for the proxy's default.
        cert_ttl: Option<String>,
    },
}

/// Everything one sidecar's config file says.
#[derive(Clone, Debug)]
pub struct SidecarConfig {
    /// The workload's SPIFFE ID.
    pub spiffe_id: String,
    /// Workload name.
    pub workload: String,
    /// `app` label; `None` leaves the proxy's default.
    pub app: Option<String>,
    /// `version` label.
    pub version: Option<String>,
    /// `region/zone/subzone`.
    pub locality: Option<String>,
    /// Further labels.
    pub labels: BTreeMap<String, String>,
    /// Static files or the control plane.
    pub mode: Mode,
    /// The outbound listener (loopback port 0 unless fixed).
    pub outbound: SocketAddr,
    /// `listeners.tcp_services`: per-service TCP listeners on the outbound listener's IP;
    /// `None` leaves the proxy's default (on).
    pub tcp_services: Option<bool>,
    /// Ports the workload serves.
    pub inbound: Vec<InboundPort>,
    /// YAML lines inside the `inbound` section after its ports, indented by two spaces (e.g.
    /// `authorization` rules), written as given.
    pub inbound_extra: String,
    /// Services of the static file. In static mode an empty list is written as `[]`; in
    /// control-plane mode the section is left out when empty.
    pub services: Vec<StaticService>,
    /// `upstream.protocol` (`h2` or `http1`); `None` for the default.
    pub upstream_protocol: Option<String>,
    /// `upstream.cluster_idle_timeout` (e.g. `300ms`); `None` for the default.
    pub cluster_idle_timeout: Option<String>,
    /// `limits` entries, `(key, value)` with the value written as given (e.g. `("idle_timeout",
    /// "1s")`).
    pub limits: Vec<(String, String)>,
    /// `proxy_stats_matcher.inclusion_prefixes`: Envoy statistics exported besides Istio's
    /// default set (the section is left out when empty).
    pub stats_prefixes: Vec<String>,
    /// Top-level sections written as given at the end of the file (e.g. `tracing`).
    pub extra: String,
    /// `control.on_demand` (control-plane mode only); `None` for the proxy's default (on).
    pub on_demand: Option<bool>,
    /// `control.on_demand_timeout` (e.g. `1s`); `None` for the proxy's default.
    pub on_demand_timeout: Option<String>,
    /// Listen as in a pod, on Istio's ports: inbound `0.0.0.0:15006`, admin `127.0.0.1:15000`,
    /// metrics `0.0.0.0:15020`, health `0.0.0.0:15021` (the outbound listener is
    /// [`Self::outbound`]); false: every one on loopback port 0.
    pub pod_listeners: bool,
}

/// The listeners of a sidecar in a pod, Istio's (see [`SidecarConfig::pod_listeners`]).
const POD_LISTENERS: [(&str, &str); 4] = [
    ("inbound", "0.0.0.0:15006"),
    ("admin", "127.0.0.1:15000"),
    ("metrics", "0.0.0.0:15020"),
    ("health", "0.0.0.0:15021"),
];

/// A YAML double-quoted scalar.
fn quoted(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

fn quoted_path(path: &Path) -> String {
    quoted(&path.display().to_string())
}

/// A flow list of quoted items.
fn quoted_list<T: ToString>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(|i| quoted(&i.to_string())).collect();
    format!("[{}]", items.join(", "))
}

impl SidecarConfig {
    /// A config for `workload` with identity `spiffe_id` in `mode`, serving and calling nothing.
    pub fn new(spiffe_id: &str, workload: &str, mode: Mode) -> Self {
        Self {
            spiffe_id: spiffe_id.to_string(),
            workload: workload.to_string(),
            app: None,
            version: None,
            locality: None,
            labels: BTreeMap::new(),
            mode,
            outbound: SocketAddr::from(([127, 0, 0, 1], 0)),
            tcp_services: None,
            inbound: Vec::new(),
            inbound_extra: String::new(),
            services: Vec::new(),
            upstream_protocol: None,
            cluster_idle_timeout: None,
            limits: Vec::new(),
            stats_prefixes: Vec::new(),
            extra: String::new(),
            pod_listeners: false,
            on_demand: None,
            on_demand_timeout: None,
        }
    }

    /// The file's text.
    pub fn to_yaml(&self) -> String {
        let mut y = String::new();
        let _ = writeln!(y, "# written by the meshlite harness");
        let _ = writeln!(y, "identity:");
        let _ = writeln!(y, "  spiffe_id: {}", quoted(&self.spiffe_id));
        let _ = writeln!(y, "  workload: {}", quoted(&self.workload));
        let optional = [
            ("app", &self.app),
            ("version", &self.version),
            ("locality", &self.locality),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                let _ = writeln!(y, "  {key}: {}", quoted(v));
            }
        }
        if !self.labels.is_empty() {
            let _ = writeln!(y, "  labels:");
            for (k, v) in &self.labels {
                let _ = writeln!(y, "    {k}: {}", quoted(v));
            }
        }
        if let Mode::Static { cert, key, roots } = &self.mode {
            let _ = writeln!(y, "  cert: {}", quoted_path(cert));
            let _ = writeln!(y, "  key: {}", quoted_path(key));
            let _ = writeln!(y, "  roots: {}", quoted_path(roots));
        }
        let _ = writeln!(y, "listeners:");
        let _ = writeln!(y, "  outbound: {}", quoted(&self.outbound.to_string()));
        for (name, pod) in POD_LISTENERS {
            let addr = if self.pod_listeners {
                pod
            } else {
                "127.0.0.1:0"
            };
            let _ = writeln!(y, "  {name}: \"{addr}\"");
        }
        if let Some(on) = self.tcp_services {
            let _ = writeln!(y, "  tcp_services: {on}");
        }
        let _ = writeln!(y, "inbound:");
        if self.inbound.is_empty() {
            let _ = writeln!(y, "  ports: []");
        } else {
            let _ = writeln!(y, "  ports:");
            for p in &self.inbound {
                let _ = writeln!(
                    y,
                    "    - {{ port: {}, target: \"{}\", protocol: {} }}",
                    p.port,
                    p.target,
                    p.protocol.as_str()
                );
            }
        }
        y.push_str(&self.inbound_extra);
        if self.services.is_empty() {
            if matches!(self.mode, Mode::Static { .. }) {
                let _ = writeln!(y, "services: []");
            }
        } else {
            let _ = writeln!(y, "services:");
        }
        for s in &self.services {
            let _ = writeln!(y, "  - name: {}", quoted(&s.name));
            let _ = writeln!(y, "    namespace: {}", quoted(&s.namespace));
            let _ = writeln!(y, "    port: {}", s.port);
            let _ = writeln!(y, "    protocol: {}", s.protocol.as_str());
            let _ = writeln!(y, "    identities: {}", quoted_list(&s.identities));
            let _ = writeln!(y, "    endpoints: {}", quoted_list(&s.endpoints));
            if let Some(listen) = s.listen {
                let _ = writeln!(y, "    listen: {}", quoted(&listen.to_string()));
            }
        }
        if self.upstream_protocol.is_some() || self.cluster_idle_timeout.is_some() {
            let _ = writeln!(y, "upstream:");
        }
        if let Some(protocol) = &self.upstream_protocol {
            let _ = writeln!(y, "  protocol: {protocol}");
        }
        if let Some(t) = &self.cluster_idle_timeout {
            let _ = writeln!(y, "  cluster_idle_timeout: {}", quoted(t));
        }
        if !self.limits.is_empty() {
            let _ = writeln!(y, "limits:");
            for (key, value) in &self.limits {
                let _ = writeln!(y, "  {key}: {value}");
            }
        }
        if !self.stats_prefixes.is_empty() {
            let _ = writeln!(y, "proxy_stats_matcher:");
            let prefixes = quoted_list(&self.stats_prefixes);
            let _ = writeln!(y, "  inclusion_prefixes: {prefixes}");
        }
        if let Mode::Control {
            address,
            root_cert,
            token_file,
            state_dir,
            cert_ttl,
        } = &self.mode
        {
            let _ = writeln!(y, "control:");
            let _ = writeln!(y, "  address: {}", quoted(address));
            let _ = writeln!(y, "  root_cert: {}", quoted_path(root_cert));
            let _ = writeln!(y, "  token_file: {}", quoted_path(token_file));
            if let Some(dir) = state_dir {
                let _ = writeln!(y, "  state_dir: {}", quoted_path(dir));
            }
            if let Some(ttl) = cert_ttl {
                let _ = writeln!(y, "  cert_ttl: {}", quoted(ttl));
            }
            if let Some(on) = self.on_demand {
                let _ = writeln!(y, "  on_demand: {on}");
            }
            if let Some(t) = &self.on_demand_timeout {
                let _ = writeln!(y, "  on_demand_timeout: {}", quoted(t));
            }
        }
        y.push_str(&self.extra);
        y
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: &Path) -> Result<(), HarnessError> {
        std::fs::write(path, self.to_yaml()).map_err(|source| HarnessError::Io {
            what: format!("write {}", path.display()),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_static_config_names_its_files_and_services() {
        let mut c = SidecarConfig::new(
            "spiffe://cluster.local/ns/default/sa/client",
            "client",
            Mode::Static {
                cert: "client.crt".into(),
                key: "client.key".into(),
                roots: "root.crt".into(),
            },
        );
        c.services.push(StaticService {
            name: "db".into(),
            namespace: "default".into(),
            port: 5432,
            protocol: AppProtocol::Tcp,
            identities: vec!["spiffe://cluster.local/ns/default/sa/server".into()],
            endpoints: vec![addr(15006)],
            listen: Some(addr(0)),
        });
        c.limits.push(("idle_timeout".into(), "1s".into()));
        let y = c.to_yaml();
        assert!(y.contains("  cert: \"client.crt\"\n  key: \"client.key\"\n  roots: \"root.crt\""));
        assert!(y.contains("inbound:\n  ports: []\n"));
        assert!(y.contains("identities: [\"spiffe://cluster.local/ns/default/sa/server\"]"));
        assert!(y.contains("endpoints: [\"127.0.0.1:15006\"]"));
        assert!(y.contains("    listen: \"127.0.0.1:0\""));
        assert!(y.contains("limits:\n  idle_timeout: 1s\n"));
        assert!(!y.contains("control:") && !y.contains("upstream:"));
    }

    #[test]
    fn a_control_plane_config_names_its_control_plane_and_no_files() {
        let mut c = SidecarConfig::new(
            "spiffe://cluster.local/ns/default/sa/echo",
            "echo-v2",
            Mode::Control {
                address: "https://127.0.0.1:9".into(),
                root_cert: "/s/root-cert.pem".into(),
                token_file: "token".into(),
                state_dir: Some("state".into()),
                cert_ttl: None,
            },
        );
        c.app = Some("echo".into());
        c.version = Some("v2".into());
        c.outbound = addr(21_000);
        c.inbound.push(InboundPort {
            port: 8080,
            target: addr(4000),
            protocol: AppProtocol::Http,
        });
        c.upstream_protocol = Some("h2".into());
        let y = c.to_yaml();
        assert!(y.contains("  app: \"echo\"\n  version: \"v2\"\n"));
        assert!(y.contains("outbound: \"127.0.0.1:21000\""));
        assert!(y.contains("{ port: 8080, target: \"127.0.0.1:4000\", protocol: http }"));
        assert!(y.contains("control:\n  address: \"https://127.0.0.1:9\"\n"));
        assert!(y.contains("  token_file: \"token\"\n  state_dir: \"state\"\n"));
        assert!(y.contains("upstream:\n  protocol: h2\n"));
        assert!(!y.contains("services") && !y.contains("\n  cert:"));
    }
}
