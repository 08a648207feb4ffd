//! Test certificates for both sidecar pairs, made with meshlite's development CA.
//!
//! One root signs SPIFFE leaf certificates for `client` and `server` in namespace `default`.
//! meshlite gets `root.crt`, `client.{crt,key}`, `server.{crt,key}`; HAProxy gets the same
//! identities as `ca.crt`, `client.pem` and `server.pem` (certificate + key in one file), its server
//! certificate also carrying the DNS SAN `server.default.svc.cluster.local`, which HAProxy checks.

use meshlite_proxy::identity::dev_pki::{DevCa, LeafOptions};
use std::path::{Path, PathBuf};

use super::{SidecarError, write_text};

/// Trust domain of the benchmark's mesh.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// SPIFFE ID of the calling workload.
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
/// SPIFFE ID of the called workload.
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";
/// DNS name HAProxy verifies on the server-side sidecar.
pub const SERVER_DNS: &str = "server.default.svc.cluster.local";

/// Paths of the written certificates.
#[derive(Debug, Clone)]
pub struct MeshPki {
    /// meshlite's trust bundle.
    pub root: PathBuf,
    /// Client workload certificate and key.
    pub client_cert: PathBuf,
    /// Client workload key.
    pub client_key: PathBuf,
    /// Server workload certificate.
    pub server_cert: PathBuf,
    /// Server workload key.
    pub server_key: PathBuf,
    /// Folder with HAProxy's `ca.crt`, `client.pem`, `server.pem`.
    pub haproxy_dir: PathBuf,
}

/// Generates a root and the leaf certificates into `dir` (and `dir/haproxy`).
pub fn generate(dir: &Path) -> Result<MeshPki, SidecarError> {
    let ca = DevCa::new(TRUST_DOMAIN)?;
    let root = ca.write_root(dir)?;
    let (client_cert, client_key) = ca.issue(CLIENT_ID)?.write(dir, "client")?;
    let (server_cert, server_key) = ca.issue(SERVER_ID)?.write(dir, "server")?;

    let haproxy_dir = dir.join("haproxy");
    std::fs::create_dir_all(&haproxy_dir).map_err(|source| SidecarError::Io {
        what: format!("create {}", haproxy_dir.display()),
        source,
    })?;
    let haproxy_server = ca.issue_with(
        SERVER_ID,
        &LeafOptions {
            dns_names: vec![SERVER_DNS.to_string()],
            ..Default::default()
        },
    )?;
    let haproxy_client = ca.issue(CLIENT_ID)?;
    write_text(&haproxy_dir.join("ca.crt"), ca.root_pem())?;
    write_text(
        &haproxy_dir.join("client.pem"),
        &haproxy_client.combined_pem(),
    )?;
    write_text(
        &haproxy_dir.join("server.pem"),
        &haproxy_server.combined_pem(),
    )?;
    Ok(MeshPki {
        root,
        client_cert,
        client_key,
        server_cert,
        server_key,
        haproxy_dir,
    })
}
