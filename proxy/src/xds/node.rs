//! What the proxy tells the control plane about its workload when it connects: the xDS node,
//! with Istio's metadata keys (NAME, NAMESPACE, SERVICE_ACCOUNT, LABELS...) plus meshlite's
//! INBOUND_ADDRESS and PORTS, from which the control plane registers the endpoint, and
//! METRICS_ADDRESS, where the control plane's service graph reads the sidecar's
//! `/stats/prometheus` (a control plane that does not know the key ignores it).

use meshlite_xds_proto::discovery::{Locality, Node};
use prost_types::{ListValue, Struct, Value, value::Kind};
use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::config::ProxyConfig;
use crate::identity::spiffe::SpiffeId;

/// Metadata keys (shared with meshlite-control by name).
pub mod keys {
    /// Workload name.
    pub const NAME: &str = "NAME";
    /// Namespace.
    pub const NAMESPACE: &str = "NAMESPACE";
    /// Service account.
    pub const SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";
    /// Labels (a struct of strings).
    pub const LABELS: &str = "LABELS";
    /// `ip:port` of the inbound listener as other sidecars reach it.
    pub const INBOUND_ADDRESS: &str = "INBOUND_ADDRESS";
    /// Served ports, a list of `port/protocol/workload port` (the workload port is where the
    /// app listens).
    pub const PORTS: &str = "PORTS";
    /// `ip:port` of the Prometheus listener (`/stats/prometheus`) as the control plane reaches
    /// it: the inbound address's IP when the listener is bound to an unspecified IP.
    pub const METRICS_ADDRESS: &str = "METRICS_ADDRESS";
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

/// The node this proxy announces: its workload, reached at `inbound`, with its metrics at
/// `metrics` ([`metrics_address`]).
pub fn node(cfg: &ProxyConfig, id: &SpiffeId, inbound: SocketAddr, metrics: SocketAddr) -> Node {
    let (namespace, account) = id.namespace_and_account().unwrap_or(("default", "default"));
    let mut labels: BTreeMap<String, String> = cfg.identity.labels.clone();
    labels.entry("app".into()).or_insert_with(|| {
        cfg.identity
            .app
            .clone()
            .unwrap_or(cfg.identity.workload.clone())
    });
    if let Some(v) = &cfg.identity.version {
        labels.entry("version".into()).or_insert_with(|| v.clone());
    }
    let mut fields = BTreeMap::new();
    fields.insert(keys::NAME.into(), string(&cfg.identity.workload));
    fields.insert(keys::NAMESPACE.into(), string(namespace));
    fields.insert(keys::SERVICE_ACCOUNT.into(), string(account));
    fields.insert(
        keys::LABELS.into(),
        Value {
            kind: Some(Kind::StructValue(Struct {
                fields: labels.iter().map(|(k, v)| (k.clone(), string(v))).collect(),
            })),
        },
    );
    fields.insert(keys::INBOUND_ADDRESS.into(), string(&inbound.to_string()));
    fields.insert(keys::METRICS_ADDRESS.into(), string(&metrics.to_string()));
    fields.insert(
        keys::PORTS.into(),
        Value {
            kind: Some(Kind::ListValue(ListValue {
                values: cfg
                    .inbound
                    .ports
                    .iter()
                    .map(|p| {
                        string(&format!(
                            "{}/{}/{}",
                            p.port,
                            protocol_name(p.protocol),
                            p.target.port()
                        ))
                    })
                    .collect(),
            })),
        },
    );
    let mut parts = cfg
        .identity
        .locality
        .as_deref()
        .unwrap_or("")
        .split('/')
        .map(str::to_string);
    Node {
        id: format!("{}.{namespace}", cfg.identity.workload),
        cluster: labels.get("app").cloned().unwrap_or_default(),
        metadata: Some(Struct { fields }),
        locality: Some(Locality {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            sub_zone: parts.next().unwrap_or_default(),
        }),
        user_agent_name: "meshlite-proxy".into(),
    }
}

fn protocol_name(p: crate::protocol::Protocol) -> &'static str {
    use crate::protocol::Protocol;
    match p {
        Protocol::Http => "http",
        Protocol::Http2 => "http2",
        Protocol::Grpc => "grpc",
        Protocol::Tcp => "tcp",
    }
}

/// The inbound address to announce: configured, else the listener's, with 127.0.0.1 for an
/// unspecified IP.
pub fn inbound_address(cfg: &ProxyConfig, bound: SocketAddr) -> SocketAddr {
    if let Some(a) = cfg.control.as_ref().and_then(|c| c.inbound_address) {
        return a;
    }
    if bound.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], bound.port()))
    } else {
        bound
    }
}

/// The metrics address to announce: the listener's, with the announced inbound IP (the pod's)
/// for an unspecified IP.
pub fn metrics_address(bound: SocketAddr, inbound: SocketAddr) -> SocketAddr {
    if bound.ip().is_unspecified() {
        SocketAddr::new(inbound.ip(), bound.port())
    } else {
        bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_address_is_reachable_where_the_inbound_address_is() {
        let pod: SocketAddr = "10.1.2.3:15006".parse().unwrap();
        assert_eq!(
            metrics_address("0.0.0.0:15020".parse().unwrap(), pod),
            "10.1.2.3:15020".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            metrics_address("127.0.0.1:16020".parse().unwrap(), pod),
            "127.0.0.1:16020".parse::<SocketAddr>().unwrap()
        );
    }
}
