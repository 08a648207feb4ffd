//! The HAProxy peer: an mTLS sidecar pair tuned like the recorded baseline.
//!
//! Client side: plain traffic in on loopback, TLS 1.3 out with the client certificate, the server
//! verified against the mesh root and its DNS SAN. Server side: TLS 1.3 in with a client
//! certificate required and verified, plain traffic to the app. Both run one thread (`nbthread 1`,
//! a sidecar limited to one core), keep connections alive and reuse them (`http-reuse always`).
//! For HTTP/1.1 load both hops speak HTTP/1.1 (ALPN `http/1.1`), exactly as the baseline; for h2c
//! and gRPC load the frontends accept h2c and the hops use HTTP/2 (ALPN `h2`, `proto h2`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::pki::{MeshPki, SERVER_DNS};
use super::{READY_TIMEOUT, RunningPair, SidecarError, free_port, wait_for_port, write_text};
use crate::load::Protocol;
use crate::process::{ChildSpec, ManagedChild, find_program};

/// Finds the `haproxy` executable.
pub fn find() -> Option<PathBuf> {
    find_program("haproxy")
}

/// First line of `haproxy -v`.
pub fn version(binary: &Path) -> Option<String> {
    let output = Command::new(binary).arg("-v").output().ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .map(str::to_string)
}

/// `maxconn` of the recorded baseline (the pair scenario's).
pub const DEFAULT_MAXCONN: u32 = 4000;

/// A backend server line's `maxconn` in the recorded baseline.
pub const DEFAULT_SERVER_MAXCONN: u32 = 1000;

/// How many connections each HAProxy sidecar takes, and its file-descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `maxconn`.
    pub maxconn: u32,
    /// `ulimit-n`; `None`: HAProxy derives it from `maxconn` (about twice that, which it may
    /// not be allowed to set).
    pub ulimit_n: Option<u64>,
    /// `maxconn` of each backend's server line (the next sidecar, the app).
    pub server_maxconn: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            maxconn: DEFAULT_MAXCONN,
            ulimit_n: None,
            server_maxconn: DEFAULT_SERVER_MAXCONN,
        }
    }
}

/// The `global` and `defaults` sections.
fn global_and_defaults(limits: Limits) -> String {
    let maxconn = limits.maxconn;
    let ulimit = limits
        .ulimit_n
        .map_or_else(String::new, |n| format!("    ulimit-n {n}\n"));
    format!(
        "global
    nbthread 1
    maxconn {maxconn}
{ulimit}    tune.ssl.default-dh-param 2048
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3
    log stderr format raw local0 err
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    option http-keep-alive
    http-reuse always
"
    )
}

fn client_config(
    pki: &Path,
    client_port: u16,
    server_port: u16,
    protocol: Protocol,
    limits: Limits,
) -> String {
    let (bind_proto, alpn) = match protocol {
        Protocol::Http1 => ("", "http/1.1"),
        Protocol::H2c | Protocol::Grpc => (" proto h2", "h2"),
    };
    let pki = pki.display();
    let global = global_and_defaults(limits);
    let server_maxconn = limits.server_maxconn;
    format!(
        "# meshlite-bench: HAProxy client-side (outbound) sidecar
{global}frontend outbound
    bind 127.0.0.1:{client_port}{bind_proto}
    default_backend to_server_sidecar
backend to_server_sidecar
    server s1 127.0.0.1:{server_port} ssl crt {pki}/client.pem ca-file {pki}/ca.crt verify required verifyhost {SERVER_DNS} sni str({SERVER_DNS}) alpn {alpn} maxconn {server_maxconn}
"
    )
}

fn server_config(
    pki: &Path,
    server_port: u16,
    app: SocketAddr,
    protocol: Protocol,
    limits: Limits,
) -> String {
    let (alpn, app_proto) = match protocol {
        Protocol::Http1 => ("http/1.1", ""),
        Protocol::H2c | Protocol::Grpc => ("h2", " proto h2"),
    };
    let pki = pki.display();
    let global = global_and_defaults(limits);
    let server_maxconn = limits.server_maxconn;
    format!(
        "# meshlite-bench: HAProxy server-side (inbound) sidecar
{global}frontend inbound
    bind 127.0.0.1:{server_port} ssl crt {pki}/server.pem ca-file {pki}/ca.crt verify required alpn {alpn}
    http-request set-header X-Client-Verified %[ssl_c_verify]
    default_backend app
backend app
    server app {app}{app_proto} maxconn {server_maxconn}
"
    )
}

fn start_one(
    binary: &Path,
    name: &str,
    config: &Path,
    run_dir: &Path,
    pin_cpu: Option<usize>,
) -> Result<ManagedChild, SidecarError> {
    Ok(ManagedChild::spawn(ChildSpec {
        name: name.to_string(),
        program: binary.to_path_buf(),
        // -db: stay in the foreground, no daemon, no master process: the PID is the worker.
        args: vec!["-db".into(), "-f".into(), config.as_os_str().to_owned()],
        pin_cpu,
        log_dir: run_dir.to_path_buf(),
        stdin_pipe: false,
        announce: None,
        current_dir: None,
    })?)
}

/// Starts the HAProxy pair in front of `app`.
pub fn start_pair(
    binary: &Path,
    run_dir: &Path,
    pki: &MeshPki,
    app: SocketAddr,
    protocol: Protocol,
    pin_cpu: Option<usize>,
) -> Result<RunningPair, SidecarError> {
    start_pair_sized(
        binary,
        run_dir,
        pki,
        app,
        protocol,
        pin_cpu,
        Limits::default(),
    )
}

/// [`start_pair`] with other [`Limits`] (the `connections` scenario holds more connections
/// than the baseline's 4,000).
pub fn start_pair_sized(
    binary: &Path,
    run_dir: &Path,
    pki: &MeshPki,
    app: SocketAddr,
    protocol: Protocol,
    pin_cpu: Option<usize>,
    limits: Limits,
) -> Result<RunningPair, SidecarError> {
    let server_port = free_port()?;
    let client_port = free_port()?;
    let server_cfg = run_dir.join("haproxy-server.cfg");
    let client_cfg = run_dir.join("haproxy-client.cfg");
    write_text(
        &server_cfg,
        &server_config(&pki.haproxy_dir, server_port, app, protocol, limits),
    )?;
    write_text(
        &client_cfg,
        &client_config(&pki.haproxy_dir, client_port, server_port, protocol, limits),
    )?;

    let mut server = start_one(binary, "haproxy-server", &server_cfg, run_dir, pin_cpu)?;
    wait_for_port(
        &mut server,
        SocketAddr::from(([127, 0, 0, 1], server_port)),
        READY_TIMEOUT,
    )?;
    let mut client = start_one(binary, "haproxy-client", &client_cfg, run_dir, pin_cpu)?;
    let entry = SocketAddr::from(([127, 0, 0, 1], client_port));
    wait_for_port(&mut client, entry, READY_TIMEOUT)?;
    Ok(RunningPair {
        implementation: "haproxy",
        client,
        server,
        entry,
        authority: super::meshlite::SERVICE_HOST.to_string(),
        metrics: Vec::new(),
        server_mtls: Some(SocketAddr::from(([127, 0, 0, 1], server_port))),
        netns: None,
    })
}
