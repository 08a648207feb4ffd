//! Istio's service names as the proxy reads them: the cluster domain that completes a short
//! name into an FQDN, `host[:port]` authorities as requests give them, and an index that
//! finds a service by name without storing the name (carried over when its list changes).

mod index;
mod realign;

pub use index::{NameHasher, NameIndex, NameIndexBuilder};
pub use realign::{Realignment, merge_sorted};

/// Istio's cluster DNS suffix.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// Splits `host[:port]`, tolerating IPv6 literals in brackets.
pub fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[')
        && let Some(end) = rest.find(']')
    {
        let port = rest[end + 1..]
            .strip_prefix(':')
            .and_then(|p| p.parse().ok());
        return (&rest[..end], port);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_host_port_handles_names_ports_and_ipv6() {
        assert_eq!(split_host_port("reviews"), ("reviews", None));
        assert_eq!(split_host_port("reviews:9080"), ("reviews", Some(9080)));
        assert_eq!(split_host_port("[::1]:80"), ("::1", Some(80)));
        assert_eq!(
            split_host_port("reviews:notaport"),
            ("reviews:notaport", None)
        );
    }
}
