//! meshlite's own sidecar pair: finding (or building) `meshlite-proxy`, writing both configs,
//! starting the server side first and wiring the client side to its bound inbound address.
//!
//! The proxy announces its bound addresses in one JSON line on stdout once every listener is
//! bound; the pair waits for that line (never a sleep), then for `/healthz/ready` to answer 200.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::pki::{CLIENT_ID, MeshPki, SERVER_ID};
use super::{READY_TIMEOUT, RunningPair, SidecarError, write_text};
use crate::cli::UpstreamProtocol;
use crate::load::Protocol;
use crate::process::{self, Binary, ChildSpec, ManagedChild};

/// Environment variable naming the proxy binary to use (no build then).
pub const PROXY_BIN_ENV: &str = "MESHLITE_PROXY_BIN";
/// The proxy's executable name.
const PROXY_NAME: &str = "meshlite-proxy";
/// Host the generator names; the client sidecar routes it to the `app` service.
pub const SERVICE_HOST: &str = "app";
/// Service port of `app`.
const SERVICE_PORT: u16 = 80;

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
fn port_protocol(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Http1 => "http",
        Protocol::H2c => "http2",
        Protocol::Grpc => "grpc",
    }
}

/// YAML double-quoted scalar (JSON strings are valid YAML).
fn quoted(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

fn path_text(path: &Path) -> String {
    quoted(&path.display().to_string())
}

/// The server-side sidecar's config: inbound port 80 handed to `app`, every listener on port 0;
/// with `authz`, [`AUTHZ`] in force.
pub fn server_config(pki: &MeshPki, app: SocketAddr, protocol: Protocol, authz: bool) -> String {
    let mut text = format!(
        "identity:
  spiffe_id: {id}
  workload: server
  cert: {cert}
  key: {key}
  roots: {roots}
listeners:
  outbound: 127.0.0.1:0
  inbound: 127.0.0.1:0
  admin: 127.0.0.1:0
  metrics: 127.0.0.1:0
  health: 127.0.0.1:0
inbound:
  ports:
    - port: {SERVICE_PORT}
      target: {app}
      protocol: {proto}
",
        id = quoted(SERVER_ID),
        cert = path_text(&pki.server_cert),
        key = path_text(&pki.server_key),
        roots = path_text(&pki.root),
        proto = port_protocol(protocol),
    );
    if authz {
        text.push_str(AUTHZ);
    }
    text
}

/// The client-side sidecar's config: service `app:80` at `server_inbound`, expecting the server
/// identity; `upstream` sets `upstream.protocol` when given.
pub fn client_config(
    pki: &MeshPki,
    server_inbound: SocketAddr,
    protocol: Protocol,
    upstream: Option<UpstreamProtocol>,
) -> String {
    let mut text = format!(
        "identity:
  spiffe_id: {id}
  workload: client
  cert: {cert}
  key: {key}
  roots: {roots}
listeners:
  outbound: 127.0.0.1:0
  inbound: 127.0.0.1:0
  admin: 127.0.0.1:0
  metrics: 127.0.0.1:0
  health: 127.0.0.1:0
services:
  - name: {SERVICE_HOST}
    namespace: default
    port: {SERVICE_PORT}
    protocol: {proto}
    identities: [{server_id}]
    endpoints: [{server_inbound}]
",
        id = quoted(CLIENT_ID),
        cert = path_text(&pki.client_cert),
        key = path_text(&pki.client_key),
        roots = path_text(&pki.root),
        proto = port_protocol(protocol),
        server_id = quoted(SERVER_ID),
    );
    if let Some(upstream) = upstream {
        text.push_str(&format!(
            "upstream:\n  protocol: {}\n",
            upstream.config_value()
        ));
    }
    text
}

/// Addresses from the proxy's listening line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Announced {
    /// Outbound listener (the app sends here).
    pub(crate) outbound: SocketAddr,
    /// Inbound listener (other sidecars connect here).
    pub(crate) inbound: SocketAddr,
    /// Health listener (`/healthz/ready`).
    pub(crate) health: SocketAddr,
    /// Metrics listener (`/stats/prometheus`).
    pub(crate) metrics: SocketAddr,
}

/// Reads the addresses out of the proxy's listening line.
pub(crate) fn parse_announce(name: &str, line: &str) -> Result<Announced, SidecarError> {
    let bad = |problem: String| SidecarError::Announce {
        name: name.to_string(),
        problem,
        line: line.to_string(),
    };
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
    let addr = |key: &str| -> Result<SocketAddr, SidecarError> {
        let text = value
            .get(key)
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad(format!("no string field `{key}`")))?;
        text.parse()
            .map_err(|e| bad(format!("`{key}` is not an address: {e}")))
    };
    Ok(Announced {
        outbound: addr("outbound")?,
        inbound: addr("inbound")?,
        health: addr("health")?,
        metrics: addr("metrics")?,
    })
}

/// A loopback address to connect to for a listener that may be bound to 0.0.0.0.
pub(crate) fn connectable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// One `GET /healthz/ready`; true on a 200.
fn ready_once(health: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&health, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let request = "GET /healthz/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// Waits until `/healthz/ready` answers 200, or the child exits, or [`READY_TIMEOUT`] passes.
pub(crate) fn wait_ready(child: &mut ManagedChild, health: SocketAddr) -> Result<(), SidecarError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if ready_once(health) {
            return Ok(());
        }
        if let Some(status) = child.try_exit()? {
            return Err(child.early_exit(Some(status)).into());
        }
        if Instant::now() >= deadline {
            return Err(child
                .not_ready(READY_TIMEOUT, "200 from /healthz/ready")
                .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_proxy(
    name: &str,
    config: &Path,
    run_dir: &Path,
    opts: &MeshliteOptions,
) -> Result<(ManagedChild, Announced), SidecarError> {
    let mut args = vec!["--config".into(), config.as_os_str().to_owned()];
    if let Some(workers) = opts.workers {
        args.push("--workers".into());
        args.push(workers.to_string().into());
    }
    let mut child = ManagedChild::spawn(ChildSpec {
        name: name.to_string(),
        program: opts.binary.clone(),
        args,
        pin_cpu: opts.pin_cpu,
        log_dir: run_dir.to_path_buf(),
        stdin_pipe: false,
    })?;
    let line = child.first_line(READY_TIMEOUT)?;
    let announced = parse_announce(name, &line)?;
    wait_ready(&mut child, connectable(announced.health))?;
    Ok((child, announced))
}

/// Starts the server-side sidecar (inbound -> `app`), then the client-side one pointing at it.
pub fn start_pair(
    run_dir: &Path,
    pki: &MeshPki,
    app: SocketAddr,
    opts: &MeshliteOptions,
) -> Result<RunningPair, SidecarError> {
    let server_yaml = run_dir.join("meshlite-server.yaml");
    write_text(
        &server_yaml,
        &server_config(pki, app, opts.protocol, opts.authz),
    )?;
    let (server, server_addrs) = start_proxy("meshlite-server", &server_yaml, run_dir, opts)?;

    let client_yaml = run_dir.join("meshlite-client.yaml");
    let inbound = connectable(server_addrs.inbound);
    write_text(
        &client_yaml,
        &client_config(pki, inbound, opts.protocol, opts.upstream),
    )?;
    let (client, client_addrs) = start_proxy("meshlite-client", &client_yaml, run_dir, opts)?;
    Ok(RunningPair {
        implementation: "meshlite",
        client,
        server,
        entry: connectable(client_addrs.outbound),
        authority: SERVICE_HOST.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announce_line_parses() {
        let line = r#"{"msg":"meshlite-proxy listening","outbound":"127.0.0.1:15001","inbound":"0.0.0.0:15006","admin":"127.0.0.1:1","metrics":"127.0.0.1:2","health":"0.0.0.0:3"}"#;
        let a = parse_announce("x", line).ok();
        assert_eq!(
            a.map(|a| connectable(a.inbound).to_string()),
            Some("127.0.0.1:15006".into())
        );
        assert!(parse_announce("x", "not json").is_err());
    }

    #[test]
    fn client_config_names_upstream_only_when_asked() {
        let pki = MeshPki {
            root: "/p/root.crt".into(),
            client_cert: "/p/client.crt".into(),
            client_key: "/p/client.key".into(),
            server_cert: "/p/server.crt".into(),
            server_key: "/p/server.key".into(),
            haproxy_dir: "/p/haproxy".into(),
        };
        let addr: SocketAddr = "127.0.0.1:16006"
            .parse()
            .unwrap_or(SocketAddr::from(([0; 4], 0)));
        let default = client_config(&pki, addr, Protocol::Http1, None);
        assert!(!default.contains("upstream:"));
        assert!(default.contains("endpoints: [127.0.0.1:16006]"));
        let h1 = client_config(&pki, addr, Protocol::Grpc, Some(UpstreamProtocol::Http1));
        assert!(h1.contains("upstream:\n  protocol: http1"));
        assert!(h1.contains("protocol: grpc"));
    }
}
