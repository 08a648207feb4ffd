//! meshlite's own sidecar pair: finding (or building) `meshlite-proxy`, writing both configs,
//! starting the server side first and wiring the client side to its bound inbound address.
//!
//! The proxies are run by [`crate::harness`]: it waits for the JSON line announcing the bound
//! addresses (never a sleep), then for `/healthz/ready` to answer 200.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::pki::{CLIENT_ID, MeshPki, SERVER_ID};
use super::{READY_TIMEOUT, RunningPair, SidecarError, write_text};
use crate::cli::UpstreamProtocol;
use crate::harness::{
    AppProtocol, InboundPort, Mode, SidecarConfig, SidecarLaunch, SidecarProcess, StaticService,
    connectable,
};
use crate::load::Protocol;
use crate::process::{self, Binary};

/// Environment variable naming the proxy binary to use (no build then).
pub const PROXY_BIN_ENV: &str = "MESHLITE_PROXY_BIN";
/// The proxy's executable name.
const PROXY_NAME: &str = "meshlite-proxy";
/// Host the generator names; the client sidecar routes it to the `app` service.
pub const SERVICE_HOST: &str = "app";
/// Service port of `app`.
pub const SERVICE_PORT: u16 = 80;

/// Where the proxy binary came from.
pub type ProxyBinary = Binary;

/// Finds `meshlite-proxy` (see [`process::locate_or_build`]): `$MESHLITE_PROXY_BIN`, else built
/// by cargo inside the workspace, else the release binary beside this executable.
pub fn locate_or_build() -> Result<ProxyBinary, SidecarError> {
    process::locate_or_build(PROXY_NAME, PROXY_NAME, PROXY_BIN_ENV)
        .map_err(|e| SidecarError::Binary(e.to_string()))
}

/// How to run the meshlite pair.
#[derive(Debug, Clone)]
pub struct MeshliteOptions {
    /// The proxy binary.
    pub binary: PathBuf,
    /// `--workers N` for both proxies.
    pub workers: Option<u32>,
    /// `upstream.protocol` of the client sidecar; `None` leaves the proxy's default.
    pub upstream: Option<UpstreamProtocol>,
    /// What the generator speaks (decides the declared port protocol).
    pub protocol: Protocol,
    /// CPU to pin both proxies to.
    pub pin_cpu: Option<usize>,
    /// The server sidecar enforces [`AUTHZ`].
    pub authz: bool,
    /// Both sidecars report spans (`--tracing`); `None`: no `tracing` section, no spans.
    pub tracing: Option<TracingOptions>,
}

/// A traced pair's `tracing` section: where spans go and how many requests start a trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TracingOptions {
    /// The OTLP/gRPC collector (the one the bench runs).
    pub collector: SocketAddr,
    /// `randomSamplingPercentage`, 0 to 100.
    pub sampling_percent: f64,
}

impl TracingOptions {
    /// The `tracing` section, as Istio writes an `opentelemetry` provider and the Telemetry
    /// API's sampling (see the proxy's `config::tracing`).
    pub fn yaml(&self) -> String {
        format!(
            "tracing:\n  provider:\n    opentelemetry: {{service: \"{}\", port: {}}}\n  randomSamplingPercentage: {}\n",
            self.collector.ip(),
            self.collector.port(),
            self.sampling_percent
        )
    }

    /// The name its pair's files and logs carry (`meshlite-trace10`), apart from the
    /// untraced pair's of the same repetition.
    fn pair_name(&self) -> String {
        format!("meshlite-trace{}", self.sampling_percent)
    }
}

/// The decision record's authorization shape (`llm-processor` only for `intent-controller`
/// with one method and path, and a DENY on a header), for the bench's caller and request.
pub const AUTHZ: &str = "  authorization:
    - name: caller-only
      rules:
        - from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]
          to: [{operation: {methods: [GET, POST], paths: [/]}}]
    - name: block-debug
      action: DENY
      rules:
        - when: [{key: 'request.headers[x-debug]', values: ['*']}]
";

/// The port protocol (Istio naming) matching what the generator speaks.
fn port_protocol(protocol: Protocol) -> AppProtocol {
    match protocol {
        Protocol::Http1 => AppProtocol::Http,
        Protocol::H2c => AppProtocol::Http2,
        Protocol::Grpc => AppProtocol::Grpc,
    }
}

/// Static mode with the identity files of `cert`, `key` and the mesh root.
fn static_mode(pki: &MeshPki, cert: &Path, key: &Path) -> Mode {
    Mode::Static {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        roots: pki.root.clone(),
    }
}

/// The server-side sidecar's config: inbound port 80 handed to `app`, every listener on port 0;
/// with `authz`, [`AUTHZ`] in force.
pub fn server_config(pki: &MeshPki, app: SocketAddr, protocol: Protocol, authz: bool) -> String {
    server_sidecar(pki, app, protocol, authz).to_yaml()
}

/// See [`server_config`].
pub(crate) fn server_sidecar(
    pki: &MeshPki,
    app: SocketAddr,
    protocol: Protocol,
    authz: bool,
) -> SidecarConfig {
    let mut c = SidecarConfig::new(
        SERVER_ID,
        "server",
        static_mode(pki, &pki.server_cert, &pki.server_key),
    );
    c.inbound.push(InboundPort {
        port: SERVICE_PORT,
        target: app,
        protocol: port_protocol(protocol),
    });
    if authz {
        c.inbound_extra = AUTHZ.to_string();
    }
    c
}

/// The client-side sidecar's config: service `app:80` at `server_inbound`, expecting the server
/// identity; `upstream` sets `upstream.protocol` when given.
pub fn client_config(
    pki: &MeshPki,
    server_inbound: SocketAddr,
    protocol: Protocol,
    upstream: Option<UpstreamProtocol>,
) -> String {
    client_sidecar(pki, server_inbound, protocol, upstream).to_yaml()
}

/// See [`client_config`].
pub(crate) fn client_sidecar(
    pki: &MeshPki,
    server_inbound: SocketAddr,
    protocol: Protocol,
    upstream: Option<UpstreamProtocol>,
) -> SidecarConfig {
    let mut c = SidecarConfig::new(
        CLIENT_ID,
        "client",
        static_mode(pki, &pki.client_cert, &pki.client_key),
    );
    c.services.push(StaticService {
        name: SERVICE_HOST.to_string(),
        namespace: "default".to_string(),
        port: SERVICE_PORT,
        protocol: port_protocol(protocol),
        identities: vec![SERVER_ID.to_string()],
        endpoints: vec![server_inbound],
        listen: None,
    });
    c.upstream_protocol = upstream.map(|u| u.config_value().to_string());
    c
}

/// Starts one proxy of the pair through the harness, waiting until it is ready.
fn start_proxy(
    name: &str,
    config: &Path,
    run_dir: &Path,
    opts: &MeshliteOptions,
) -> Result<SidecarProcess, SidecarError> {
    Ok(SidecarLaunch::new(&opts.binary, name, run_dir, config)
        .workers(opts.workers)
        .pin_cpu(opts.pin_cpu)
        .startup_timeout(READY_TIMEOUT)
        .wait_ready(true)
        .start()?)
}

/// Starts the server-side sidecar (inbound -> `app`), then the client-side one pointing at it;
/// with `opts.tracing`, both report spans, and their files and logs are named apart
/// (`meshlite-trace10-server.yaml`) from the untraced pair's (`meshlite-server.yaml`).
pub fn start_pair(
    run_dir: &Path,
    pki: &MeshPki,
    app: SocketAddr,
    opts: &MeshliteOptions,
) -> Result<RunningPair, SidecarError> {
    let name = opts
        .tracing
        .as_ref()
        .map_or_else(|| "meshlite".to_string(), TracingOptions::pair_name);
    let tracing = opts.tracing.as_ref().map(TracingOptions::yaml);

    let server_name = format!("{name}-server");
    let server_yaml = run_dir.join(format!("{server_name}.yaml"));
    let mut server_cfg = server_sidecar(pki, app, opts.protocol, opts.authz);
    server_cfg.extra = tracing.clone().unwrap_or_default();
    write_text(&server_yaml, &server_cfg.to_yaml())?;
    let server = start_proxy(&server_name, &server_yaml, run_dir, opts)?;

    let client_name = format!("{name}-client");
    let client_yaml = run_dir.join(format!("{client_name}.yaml"));
    let inbound = connectable(server.listening().inbound);
    let mut client_cfg = client_sidecar(pki, inbound, opts.protocol, opts.upstream);
    client_cfg.extra = tracing.unwrap_or_default();
    write_text(&client_yaml, &client_cfg.to_yaml())?;
    let client = start_proxy(&client_name, &client_yaml, run_dir, opts)?;
    Ok(RunningPair {
        implementation: "meshlite",
        entry: client.outbound(),
        metrics: vec![client.metrics(), server.metrics()],
        server_mtls: Some(inbound),
        netns: None,
        client: client.into_child(),
        server: server.into_child(),
        authority: SERVICE_HOST.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki() -> MeshPki {
        MeshPki {
            root: "/p/root.crt".into(),
            client_cert: "/p/client.crt".into(),
            client_key: "/p/client.key".into(),
            server_cert: "/p/server.crt".into(),
            server_key: "/p/server.key".into(),
            haproxy_dir: "/p/haproxy".into(),
        }
    }

    #[test]
    fn client_config_names_upstream_only_when_asked() {
        let pki = pki();
        let addr: SocketAddr = "127.0.0.1:16006"
            .parse()
            .unwrap_or(SocketAddr::from(([0; 4], 0)));
        let default = client_config(&pki, addr, Protocol::Http1, None);
        assert!(!default.contains("upstream:"));
        assert!(default.contains("endpoints: [\"127.0.0.1:16006\"]"));
        let h1 = client_config(&pki, addr, Protocol::Grpc, Some(UpstreamProtocol::Http1));
        assert!(h1.contains("upstream:\n  protocol: http1"));
        assert!(h1.contains("protocol: grpc"));
    }

    #[test]
    fn a_traced_sidecar_config_is_what_the_proxy_reads() {
        let t = TracingOptions {
            collector: SocketAddr::from(([127, 0, 0, 1], 4317)),
            sampling_percent: 12.5,
        };
        let mut c = client_sidecar(&pki(), t.collector, Protocol::Http1, None);
        c.extra = t.yaml();
        let parsed = meshlite_proxy::config::ProxyConfig::parse(
            &c.to_yaml(),
            Path::new("/p/meshlite-trace12.5-client.yaml"),
        );
        let tracing = parsed.as_ref().ok().and_then(|c| c.tracing.as_ref());
        assert_eq!(
            tracing.and_then(|t| t.random_sampling_percentage),
            Some(12.5),
            "{:?}",
            parsed.err()
        );
        let otlp = tracing
            .and_then(|c| c.provider.as_ref())
            .and_then(|p| p.opentelemetry.as_ref());
        assert_eq!(
            otlp.map(|c| (c.service.as_str(), c.port)),
            Some(("127.0.0.1", 4317))
        );
        assert_eq!(t.pair_name(), "meshlite-trace12.5");
    }
}
