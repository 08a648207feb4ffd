//! The resolvers names outside the mesh go to: the pod's own (`/etc/resolv.conf`, read once
//! at start, before capture redirects port 53 to the sidecar) or those given on the command
//! line, tried in order within one deadline.
//!
//! A query is forwarded as the bytes the app sent, over the transport it used (a UDP query
//! whose answer comes back truncated is retried by the app over TCP, as it would be without
//! the sidecar), from a fresh socket per query so that answers can never be confused
//! between queries. A refused port (ICMP unreachable on a connected socket, RST on TCP)
//! fails at once and moves on to the next resolver.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::answer::Transport;

/// The standard DNS port.
pub const DNS_PORT: u16 = 53;

/// How long a forwarded query may take, over every resolver (glibc's default `timeout:5`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest DNS message read back from a resolver.
const MAX_MESSAGE: usize = u16::MAX as usize;

/// Largest UDP answer read back (EDNS payloads stay well below it).
const MAX_DATAGRAM: usize = 4096;

/// Why a forwarded query got no answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No resolver is configured.
    #[error("no upstream resolver configured")]
    NoResolver,
    /// Every resolver failed or the deadline passed.
    #[error("no upstream resolver answered within {0:?}")]
    Timeout(Duration),
    /// The last resolver tried failed.
    #[error("upstream {addr}: {source}")]
    Io {
        /// The resolver.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The `nameserver` lines of a resolv.conf text, at port 53 (IPv6 zone suffixes dropped).
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            let addr = words.next()?;
            let addr = addr.split_once('%').map_or(addr, |(a, _)| a);
            addr.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, DNS_PORT))
        })
        .collect()
}

/// The resolvers of `/etc/resolv.conf`; none (every forwarded query fails) if it cannot be
/// read, which is logged.
pub fn system_resolvers() -> Vec<SocketAddr> {
    match std::fs::read_to_string("/etc/resolv.conf") {
        Ok(text) => parse_resolv_conf(&text),
        Err(e) => {
            tracing::warn!("cannot read /etc/resolv.conf ({e}): names outside the mesh will fail");
            Vec::new()
        }
    }
}

/// `IP` or `IP:PORT` (`[v6]:port`), as `--dns-upstream` takes it.
pub fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, DNS_PORT)))
        .map_err(|_| format!("`{s}` is not IP or IP:PORT"))
}

/// Sends `query` to each of `resolvers` in turn until one answers, all within `timeout`.
pub async fn forward(
    query: &[u8],
    resolvers: &[SocketAddr],
    transport: Transport,
    timeout: Duration,
) -> Result<Vec<u8>, UpstreamError> {
    if resolvers.is_empty() {
        return Err(UpstreamError::NoResolver);
    }
    let attempt = async {
        let mut last = UpstreamError::NoResolver;
        for addr in resolvers {
            let r = match transport {
                Transport::Udp => over_udp(query, *addr).await,
                Transport::Tcp => over_tcp(query, *addr).await,
            };
            match r {
                Ok(answer) => return Ok(answer),
                Err(source) => {
                    last = UpstreamError::Io {
                        addr: *addr,
                        source,
                    }
                }
            }
        }
        Err(last)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(UpstreamError::Timeout(timeout)))
}

/// One query over UDP: a reply whose id differs (a stray or spoofed datagram) is skipped.
async fn over_udp(query: &[u8], addr: SocketAddr) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(addr).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let n = sock.recv(&mut buf).await?;
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

/// One query over TCP: 2-byte length prefix both ways (RFC 1035 4.2.2).
async fn over_tcp(query: &[u8], addr: SocketAddr) -> std::io::Result<Vec<u8>> {
    let len = u16::try_from(query.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too long"))?;
    let mut stream = TcpStream::connect(addr).await?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let n = usize::from(stream.read_u16().await?);
    let mut buf = vec![0u8; n.min(MAX_MESSAGE)];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_are_read_in_order() {
        let text = "# generated\nsearch shop.svc.cluster.local svc.cluster.local\n\
                    nameserver 10.96.0.10\nnameserver fe80::1%eth0\n  nameserver   1.1.1.1 \n\
                    options ndots:5\nnameserver not-an-ip\n";
        assert_eq!(
            parse_resolv_conf(text),
            [
                "10.96.0.10:53"
                    .parse()
                    .unwrap_or(SocketAddr::from(([0; 4], 0))),
                "[fe80::1]:53"
                    .parse()
                    .unwrap_or(SocketAddr::from(([0; 4], 0))),
                "1.1.1.1:53"
                    .parse()
                    .unwrap_or(SocketAddr::from(([0; 4], 0))),
            ]
        );
    }

    #[test]
    fn upstream_flags_take_an_ip_with_or_without_port() {
        assert_eq!(
            parse_upstream("10.0.0.1"),
            Ok(SocketAddr::from(([10, 0, 0, 1], 53)))
        );
        assert_eq!(
            parse_upstream("127.0.0.1:5353"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 5353)))
        );
        assert!(parse_upstream("dns.example.com").is_err());
    }

    #[tokio::test]
    async fn no_resolver_and_refused_resolvers_fail_fast() {
        let r = forward(b"\x00\x01", &[], Transport::Udp, DEFAULT_TIMEOUT).await;
        assert!(matches!(r, Err(UpstreamError::NoResolver)));
        // A port nobody listens on: refused at once, well within the deadline.
        let free = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9)));
        let started = tokio::time::Instant::now();
        let r = forward(&[0u8; 12], &[free], Transport::Udp, DEFAULT_TIMEOUT).await;
        assert!(r.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
