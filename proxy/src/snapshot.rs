//! The proxy's configuration as one immutable snapshot, read lock-free on every request.
//!
//! A [`Snapshot`] holds everything the request path needs already resolved: the host table
//! (every name a service answers to, mapped to its clusters by port), each cluster's endpoints
//! with their connection pools and TLS configurations, the inbound port table, and the metric
//! label values as shared strings. It lives behind an `ArcSwap`: a request loads it once; a new
//! snapshot (from the file now, from xDS next) replaces it without touching open connections.

use http::HeaderValue;
use rustls_pki_types::ServerName;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::{Protocol, ProxyConfig, UpstreamProtocol};
use crate::identity::spiffe::SpiffeId;
use crate::identity::tls::{ALPN_H2, ALPN_HTTP1, Identity, IdentityError};
use crate::telemetry::metrics::{Label, Metrics};
use crate::transport::h2::{H2Pool, H2Target};
use crate::transport::http1::{MeshHttp1Client, MeshTlsConnector, mesh_client};

/// Istio's cluster DNS suffix.
const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// Label value for anything the proxy does not know (Istio's convention).
pub fn unknown() -> Label {
    Arc::from("unknown")
}

/// This workload, as it appears in metric labels and the peer-metadata header.
#[derive(Debug)]
pub struct LocalWorkload {
    /// SPIFFE ID.
    pub id: SpiffeId,
    /// Workload name.
    pub workload: Label,
    /// Namespace (from the SPIFFE ID).
    pub namespace: Label,
    /// Principal (SPIFFE ID without scheme).
    pub principal: Label,
    /// Canonical service (`app`).
    pub app: Label,
    /// Canonical revision (`version`).
    pub version: Label,
    /// Value of the peer-metadata header this sidecar sends.
    pub peer_header: HeaderValue,
}

/// A peer workload's labels, learnt from its peer-metadata header.
#[derive(Clone, Debug)]
pub struct PeerWorkload {
    /// Workload name.
    pub workload: Label,
    /// Namespace.
    pub namespace: Label,
    /// Canonical service.
    pub app: Label,
    /// Canonical revision.
    pub version: Label,
}

impl PeerWorkload {
    /// The labels used when the peer did not say who it is.
    pub fn unknown() -> Self {
        let u = unknown();
        Self {
            workload: u.clone(),
            namespace: u.clone(),
            app: u.clone(),
            version: u,
        }
    }

    /// The peer cached in `slot`, or else parsed from the peer-metadata header and cached there:
    /// a peer says who it is once per connection or endpoint, not on every request.
    pub fn learn(
        slot: &arc_swap::ArcSwapOption<PeerWorkload>,
        headers: &http::HeaderMap,
    ) -> Option<Arc<PeerWorkload>> {
        if let Some(p) = slot.load_full() {
            return Some(p);
        }
        let parsed = Arc::new(Self::parse(
            headers.get(&crate::http::headers::PEER_METADATA)?,
        )?);
        slot.store(Some(parsed.clone()));
        Some(parsed)
    }

    /// Parses `workload;namespace;app;version`.
    pub fn parse(v: &HeaderValue) -> Option<Self> {
        let s = v.to_str().ok()?;
        let mut it = s.split(';');
        let (w, n, a, ver) = (it.next()?, it.next()?, it.next()?, it.next()?);
        if it.next().is_some() || w.is_empty() || w.len() > 253 || s.len() > 1024 {
            return None;
        }
        Some(Self {
            workload: Arc::from(w),
            namespace: Arc::from(n),
            app: Arc::from(a),
            version: Arc::from(ver),
        })
    }
}

/// One destination sidecar.
#[derive(Debug)]
pub struct Endpoint {
    /// Its inbound address.
    pub addr: SocketAddr,
    /// Its address as a label / access-log value.
    pub addr_label: Label,
    /// The multiplexed HTTP/2 connection to it (HTTP in h2 mode, and TCP tunnels).
    pub h2: H2Pool,
    /// `https://<addr>` for the HTTP/1.1 pool, which keys connections by URI authority.
    pub http1_uri: http::uri::Authority,
    /// The peer's workload labels, learnt from its first response.
    pub peer: arc_swap::ArcSwapOption<PeerWorkload>,
}

/// Metric label values of a destination service, computed once.
#[derive(Debug)]
pub struct ServiceLabels {
    /// FQDN.
    pub fqdn: Label,
    /// Short name.
    pub name: Label,
    /// Namespace.
    pub namespace: Label,
    /// Principal of the expected identity (the first allowed one).
    pub principal: Label,
}

/// A destination service: the unit of routing, balancing and connection pooling.
#[derive(Debug)]
pub struct Cluster {
    /// Service port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Labels for metrics.
    pub labels: ServiceLabels,
    /// `fqdn:port`, the `:authority` sent between sidecars and the CONNECT target.
    pub authority: http::uri::Authority,
    /// Endpoints (destination sidecars).
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Round-robin cursor.
    rr: AtomicUsize,
    /// How HTTP travels to the endpoints.
    pub upstream: UpstreamProtocol,
    /// HTTP/1.1 pool (http1 mode).
    pub http1: MeshHttp1Client,
    /// TLS configuration with ALPN http/1.1 (upgrades, http1 mode).
    pub tls_http1: Arc<rustls::ClientConfig>,
    /// SNI.
    pub server_name: ServerName<'static>,
    /// Explicit-mode local listener for `tcp` services.
    pub listen: Option<SocketAddr>,
}

impl Cluster {
    /// Picks the next endpoint, round robin (the default until DestinationRules arrive).
    pub fn pick(&self) -> &Arc<Endpoint> {
        let n = self.rr.fetch_add(1, Ordering::Relaxed);
        &self.endpoints[n % self.endpoints.len()]
    }
}

/// A port the local application serves.
#[derive(Debug)]
pub struct InboundPort {
    /// Where the app listens.
    pub target: SocketAddr,
    /// Its protocol.
    pub protocol: Protocol,
    /// h2c pool for `http2`/`grpc` ports.
    pub h2c: Option<H2Pool>,
}

/// Everything the request path reads, resolved and immutable.
#[derive(Debug)]
pub struct Snapshot {
    /// Monotonic version, for the admin dump and (next) xDS ACKs.
    pub version: u64,
    /// This workload.
    pub local: Arc<LocalWorkload>,
    hosts: HashMap<Box<str>, Vec<Arc<Cluster>>>,
    inbound: HashMap<u16, InboundPort>,
    /// Clusters in config order (for TCP listeners and the admin dump).
    pub clusters: Vec<Arc<Cluster>>,
}

/// Why a route lookup failed.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteMiss {
    /// No service has this name.
    UnknownHost,
    /// The service exists, but not on the requested port.
    UnknownPort,
}

impl Snapshot {
    /// Builds a snapshot from a validated configuration.
    pub fn build(
        cfg: &ProxyConfig,
        identity: &Arc<Identity>,
        metrics: &Metrics,
        version: u64,
    ) -> Result<Self, IdentityError> {
        let id = identity.id().clone();
        let namespace: Label = Arc::from(
            id.namespace_and_account()
                .map(|(ns, _)| ns)
                .unwrap_or("default"),
        );
        let workload: Label = Arc::from(cfg.identity.workload.as_str());
        let app: Label = Arc::from(
            cfg.identity
                .app
                .as_deref()
                .unwrap_or(&cfg.identity.workload),
        );
        let version_label: Label = Arc::from(cfg.identity.version.as_deref().unwrap_or("latest"));
        let peer_header =
            HeaderValue::from_str(&format!("{workload};{namespace};{app};{version_label}"))
                .unwrap_or_else(|_| HeaderValue::from_static("unknown;unknown;unknown;unknown"));
        let local = Arc::new(LocalWorkload {
            principal: Arc::from(id.principal()),
            id,
            workload,
            namespace,
            app,
            version: version_label,
            peer_header,
        });

        let connect_timeout = cfg.upstream.connect_timeout;
        let mut hosts: HashMap<Box<str>, Vec<Arc<Cluster>>> = HashMap::new();
        let mut clusters = Vec::with_capacity(cfg.services.len());
        for svc in &cfg.services {
            let allowed: Arc<[SpiffeId]> = svc
                .identities
                .iter()
                .filter_map(|s| SpiffeId::parse(s).ok())
                .collect::<Vec<_>>()
                .into();
            let fqdn = format!("{}.{}.{CLUSTER_DOMAIN}", svc.name, svc.namespace);
            let server_name = ServerName::try_from(fqdn.clone())
                .map_err(|e| IdentityError::Invalid(format!("service name {fqdn}: {e}")))?;
            let tls_h2 = identity.client_config(allowed.clone(), ALPN_H2)?;
            let tls_http1 = identity.client_config(allowed.clone(), ALPN_HTTP1)?;
            let endpoints = svc
                .endpoints
                .iter()
                .map(|addr| {
                    let target = H2Target::Mesh {
                        addr: *addr,
                        tls: tls_h2.clone(),
                        server_name: server_name.clone(),
                    };
                    Arc::new(Endpoint {
                        addr: *addr,
                        addr_label: Arc::from(addr.to_string()),
                        h2: H2Pool::new(
                            target,
                            connect_timeout,
                            Some(metrics.upstream_connects.clone()),
                        ),
                        http1_uri: http::uri::Authority::try_from(addr.to_string())
                            .unwrap_or_else(|_| http::uri::Authority::from_static("0.0.0.0:0")),
                        peer: arc_swap::ArcSwapOption::empty(),
                    })
                })
                .collect();
            let connector = MeshTlsConnector {
                tls: tls_http1.clone(),
                server_name: server_name.clone(),
                connect_timeout,
                on_connect: metrics.upstream_connects.clone(),
            };
            let authority = http::uri::Authority::try_from(format!("{fqdn}:{}", svc.port))
                .map_err(|e| IdentityError::Invalid(format!("service {fqdn}: {e}")))?;
            let principal: Label = allowed
                .first()
                .map(|i| Arc::from(i.principal()))
                .unwrap_or_else(unknown);
            let cluster = Arc::new(Cluster {
                port: svc.port,
                protocol: svc.protocol,
                labels: ServiceLabels {
                    fqdn: Arc::from(fqdn.as_str()),
                    name: Arc::from(svc.name.as_str()),
                    namespace: Arc::from(svc.namespace.as_str()),
                    principal,
                },
                authority,
                endpoints,
                rr: AtomicUsize::new(fastrand::usize(..)),
                upstream: cfg.upstream.protocol,
                http1: mesh_client(connector, cfg.upstream.idle_timeout),
                tls_http1,
                server_name,
                listen: svc.listen,
            });
            let mut names = vec![
                svc.name.clone(),
                format!("{}.{}", svc.name, svc.namespace),
                format!("{}.{}.svc", svc.name, svc.namespace),
                fqdn,
            ];
            names.extend(svc.aliases.iter().map(|a| a.to_ascii_lowercase()));
            for name in names {
                let entry = hosts.entry(name.into_boxed_str()).or_default();
                if !entry.iter().any(|c| Arc::ptr_eq(c, &cluster)) {
                    entry.push(cluster.clone());
                }
            }
            clusters.push(cluster);
        }

        let inbound = cfg
            .inbound
            .ports
            .iter()
            .map(|p| {
                let h2c = matches!(p.protocol, Protocol::Http2 | Protocol::Grpc).then(|| {
                    H2Pool::new(H2Target::Plain { addr: p.target }, connect_timeout, None)
                });
                (
                    p.port,
                    InboundPort {
                        target: p.target,
                        protocol: p.protocol,
                        h2c,
                    },
                )
            })
            .collect();
        Ok(Self {
            version,
            local,
            hosts,
            inbound,
            clusters,
        })
    }

    /// Finds the cluster for a request's host (`reviews`, `reviews:9080`, an FQDN, an alias).
    /// Without a port, a host with a single service port matches it; otherwise port 80.
    pub fn route(&self, authority: &str) -> Result<&Arc<Cluster>, RouteMiss> {
        let (host, port) = split_host_port(authority);
        let host = host.strip_suffix('.').unwrap_or(host);
        let found = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.hosts.get(host.to_ascii_lowercase().as_str())
        } else {
            self.hosts.get(host)
        };
        let clusters = found.ok_or(RouteMiss::UnknownHost)?;
        match port {
            Some(p) => clusters.iter().find(|c| c.port == p),
            None if clusters.len() == 1 => clusters.first(),
            None => clusters.iter().find(|c| c.port == 80),
        }
        .ok_or(RouteMiss::UnknownPort)
    }

    /// The local port serving requests addressed to `port`; with no port, or when only one
    /// port is served, that one.
    pub fn inbound_port(&self, port: Option<u16>) -> Option<(u16, &InboundPort)> {
        if let Some(p) = port
            && let Some(ip) = self.inbound.get(&p)
        {
            return Some((p, ip));
        }
        if self.inbound.len() == 1 {
            return self.inbound.iter().next().map(|(p, ip)| (*p, ip));
        }
        None
    }

    /// How many host names route somewhere (for the admin dump and benchmarks).
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }
}

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

/// Default connect timeout for the local app (the app is on loopback: fail fast).
pub const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

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

    #[test]
    fn peer_metadata_parses_four_fields_only() {
        let v = HeaderValue::from_static("reviews-v1;default;reviews;v1");
        let p = PeerWorkload::parse(&v).unwrap();
        assert_eq!(&*p.workload, "reviews-v1");
        assert_eq!(&*p.version, "v1");
        assert!(PeerWorkload::parse(&HeaderValue::from_static("a;b;c")).is_none());
        assert!(PeerWorkload::parse(&HeaderValue::from_static("a;b;c;d;e")).is_none());
    }
}
