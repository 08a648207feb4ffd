//! The sidecar's DNS proxy, as Istio's agent runs it (DNS proxying, port 15053, where the
//! capture rules redirect the pod's UDP and TCP port 53): apps resolve plain service names
//! without any cluster DNS.
//!
//! Mesh names (services and ServiceEntry hosts, in the forms a pod's search list produces)
//! are answered from the snapshot serving now with their VIPs ([`table`], [`answer`]);
//! every other name goes to the pod's own resolvers ([`upstream`]). [`server`] runs the UDP
//! and TCP listeners; [`metrics`] counts under Istio's agent names.

pub mod answer;
pub mod metrics;
pub mod server;
pub mod table;
pub mod upstream;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};

use crate::context::ProxyContext;

/// Istio's DNS proxy address: loopback, port 15053.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15053);

/// How the DNS proxy runs.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    /// Where it listens (UDP and TCP). Port 0 picks a free port for both.
    pub addr: SocketAddr,
    /// The resolvers for other names, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// How long a forwarded query may take over every resolver.
    pub timeout: Duration,
    /// The address was not asked for explicitly: if it is taken (several sidecars on one
    /// host, outside pods), the proxy runs without DNS and says so, instead of failing.
    pub optional: bool,
}

/// The bound UDP socket and TCP listener.
#[derive(Debug)]
pub struct DnsListeners {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl DnsListeners {
    /// Binds UDP and TCP on `addr` (with port 0, the same free port for both).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        // With port 0 the UDP port picked may be taken for TCP: try a few.
        let mut last = None;
        for _ in 0..8 {
            let udp = UdpSocket::bind(addr).await?;
            let port = udp.local_addr()?.port();
            match bind_tcp(SocketAddr::new(addr.ip(), port)) {
                Ok(tcp) => return Ok(Self { udp, tcp }),
                Err(e) if addr.port() == 0 => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
    }

    /// The address both listen on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Starts serving on the runtime.
    pub fn spawn(self, ctx: Arc<ProxyContext>, opts: &DnsOptions) {
        let server = Arc::new(server::DnsServer::new(
            ctx,
            opts.upstreams.clone(),
            opts.timeout,
        ));
        tokio::spawn(server.clone().serve_udp(self.udp));
        tokio::spawn(server.serve_tcp(self.tcp));
    }
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}
