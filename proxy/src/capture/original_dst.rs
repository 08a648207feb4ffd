//! Where a redirected connection was going: the kernel keeps the destination it had before
//! the nat table's REDIRECT rewrote it (`SO_ORIGINAL_DST`, `IP6T_SO_ORIGINAL_DST`), which is
//! what the outbound listener routes on and the inbound listener delivers to.
//!
//! One `getsockopt` per accepted connection; a connection that was not redirected (explicit
//! mode, an app sending to `127.0.0.1:15001` itself) reads as its own local address, or as
//! nothing where the kernel tracks no connections: both mean "not captured".

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt};

/// The destination `stream` had before a REDIRECT rule sent it here, when it differs from
/// `local` (the address it was accepted on); `None` for a connection addressed to the
/// listener itself, or when the kernel keeps no record of it.
pub fn captured(stream: &impl AsFd, local: SocketAddr) -> Option<SocketAddr> {
    original(stream, local).filter(|orig| !same_endpoint(*orig, local))
}

/// The original destination as the kernel recorded it.
fn original(stream: &impl AsFd, local: SocketAddr) -> Option<SocketAddr> {
    let v4 = match local {
        SocketAddr::V4(_) => true,
        // A dual-stack socket accepts IPv4 connections as IPv4-mapped addresses; their
        // record is an IPv4 one.
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    if v4 {
        let sa = getsockopt(stream, sockopt::OriginalDst).ok()?;
        let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
        Some(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(sa.sin_port),
        )))
    } else {
        let sa = getsockopt(stream, sockopt::Ip6tOriginalDst).ok()?;
        let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
        Some(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(sa.sin6_port),
            sa.sin6_flowinfo,
            sa.sin6_scope_id,
        )))
    }
}

/// Whether two addresses name the same endpoint, IPv4-mapped IPv6 and IPv4 alike.
fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |s: SocketAddr| (s.ip().to_canonical(), s.port());
    canon(a) == canon(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_and_plain_ipv4_are_one_endpoint() {
        let plain: SocketAddr = "127.0.0.1:15001".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:15001".parse().unwrap();
        assert!(same_endpoint(plain, mapped));
        assert!(!same_endpoint(plain, "127.0.0.1:15006".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_connection_that_was_not_redirected_is_not_captured() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let local = accepted.local_addr().unwrap();
        // With connection tracking the record is the listener's own address; without it
        // there is none. Either way: explicit mode.
        assert_eq!(captured(&accepted, local), None);
    }
}
