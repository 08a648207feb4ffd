//! The snapshot builder: this proxy's own settings and a [`MeshView`] (from whatever sources)
//! made into the immutable [`Snapshot`] the request path reads, keeping what the previous
//! snapshot had that still holds. Nothing here runs per request.

mod cluster;
mod directory;
mod reuse;
#[cfg(test)]
mod tests;
pub(crate) mod wire;

pub use wire::routes::ResolveDestination;

use meshlite_xds_proto::v1;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::balance::locality::Locality;
use crate::config::tracing::TracingConfig;
use crate::config::{InboundPortConfig, ProxyConfig, StatsMatcherConfig, UpstreamConfig};
use crate::identity::tls::Identity;
use crate::names::CLUSTER_DOMAIN;
use crate::policy::inbound::{InboundSecurity, MtlsMode};
use crate::protocol::Protocol;
use crate::resilience::breaker::Breakers;
use crate::resilience::rate_limit::TokenBucket;
use crate::route::tcp::TcpRouteTable;
use crate::snapshot::{
    AddressIndex, CaptureTarget, Claim, HostPort, LazyCluster, RouteBehaviour, RouteTable,
};
use crate::snapshot::{
    HostTable, InboundPort, LOCAL_CONNECT_TIMEOUT, ModeSet, Snapshot, SnapshotError,
};
use crate::source::{MeshView, ServiceSpec};
use crate::telemetry::access_log::providers::LogProviders;
use crate::telemetry::labels::DestinationServices;
use crate::telemetry::metrics::{Label, Metrics};
use crate::telemetry::peer::{DEFAULT_CLUSTER_ID, LocalWorkload, WorkloadMetadata};
use crate::telemetry::stats_matcher::{StatsInclusions, StatsMatcher};
use crate::telemetry::trace::export::SpanSink;
use crate::telemetry::trace::{LocalTags, TraceSettings, Tracer, Tracers};
use crate::telemetry::workload::WorkloadTelemetry;
use crate::transport::connect::PoolTarget;
use crate::transport::h1_pool::H1Pool;
use crate::transport::h2::H2Pool;
pub(crate) use cluster::{ClusterContext, Recipe};
use cluster::{Recording, Resolver};
pub(crate) use reuse::Reuse;
use wire::{merged, path_normalization, port_block, stats_inclusions};

/// What the builder reads of the proxy's own settings: who this workload is, the ports its
/// application serves, how it connects upstream. They come from the bootstrap file (and
/// flags), never from a push; the mesh arrives apart, as a [`MeshView`] from the sources.
#[derive(Clone, Debug)]
pub struct LocalSettings {
    /// This workload's names, labels and locality.
    pub workload: WorkloadSettings,
    /// The service ports the local application serves.
    pub inbound_ports: Vec<InboundPortConfig>,
    /// How callers must connect while no policy says otherwise.
    pub default_mtls: MtlsMode,
    /// How HTTP travels to other sidecars, and connection timeouts.
    pub upstream: UpstreamConfig,
    /// This workload's own `proxyStatsMatcher`, replacing the MeshConfig's.
    pub stats_inclusions: Option<StatsInclusions>,
    /// The file's `tracing` section (the pushed MeshConfig completes it).
    pub tracing: Option<TracingConfig>,
    /// The address this sidecar's workload is reached at (Istio's node id names it).
    pub node_ip: Option<std::net::IpAddr>,
}

/// This workload as its metric labels and locality balancing know it.
#[derive(Clone, Debug)]
pub struct WorkloadSettings {
    /// Workload name.
    pub name: String,
    /// Canonical service (`app`); the workload name when unset.
    pub app: Option<String>,
    /// Canonical revision (`version`); `latest` when unset.
    pub version: Option<String>,
    /// Locality, `region/zone/subzone`.
    pub locality: Locality,
    /// Its labels (`failoverPriority` compares them).
    pub labels: BTreeMap<String, String>,
}

impl LocalSettings {
    /// The local settings a validated configuration file gives.
    pub fn from_config(cfg: &ProxyConfig) -> Self {
        Self {
            workload: WorkloadSettings {
                name: cfg.identity.workload.clone(),
                app: cfg.identity.app.clone(),
                version: cfg.identity.version.clone(),
                locality: cfg
                    .identity
                    .locality
                    .as_deref()
                    .map(Locality::parse)
                    .unwrap_or_default(),
                labels: cfg.identity.labels.clone(),
            },
            inbound_ports: cfg.inbound.ports.clone(),
            default_mtls: cfg.inbound.mtls,
            upstream: cfg.upstream.clone(),
            stats_inclusions: cfg
                .proxy_stats_matcher
                .as_ref()
                .map(StatsMatcherConfig::inclusions),
            tracing: cfg.tracing.clone(),
            node_ip: cfg
                .control
                .as_ref()
                .and_then(|c| c.inbound_address)
                .map(|a| a.ip())
                .or(Some(cfg.listeners.inbound.ip()))
                .filter(|ip| !ip.is_unspecified()),
        }
    }
}

impl Snapshot {
    /// Builds a snapshot from the proxy's own settings and a view of the mesh (from its file,
    /// its control plane, or both merged). Connections of `prev` to endpoints that are still
    /// there are kept.
    pub fn build(
        cfg: &LocalSettings,
        view: &MeshView,
        identity: &Arc<Identity>,
        metrics: &Metrics,
        version: u64,
        prev: Option<&Snapshot>,
    ) -> Result<Self, SnapshotError> {
        Self::build_swept(cfg, view, identity, metrics, version, prev, false)
    }

    /// [`Snapshot::build`]; with `sweep`, a built cluster that nothing used since the last
    /// sweep is not carried over: the new snapshot holds it unbuilt, freeing its pools,
    /// balancer and statistics until it is called again.
    pub fn build_swept(
        cfg: &LocalSettings,
        view: &MeshView,
        identity: &Arc<Identity>,
        metrics: &Metrics,
        version: u64,
        prev: Option<&Snapshot>,
        sweep: bool,
    ) -> Result<Self, SnapshotError> {
        let local = Arc::new(local_workload(cfg, identity));
        let reuse = Reuse::from(prev);
        let cluster_context = match prev {
            Some(p) if p.cluster_context.same(&cfg.upstream, identity, &local) => {
                p.cluster_context.clone()
            }
            _ => Arc::new(ClusterContext {
                upstream: cfg.upstream.clone(),
                identity: identity.clone(),
                stats: metrics.clusters.clone(),
                connects: metrics.upstream_connects.clone(),
                locality: local.locality.clone(),
                labels: local.labels.clone(),
            }),
        };
        let destination_limits: HashMap<&str, Arc<TokenBucket>> = view
            .policies
            .iter()
            .filter_map(|(fqdn, p)| {
                let limit = p.local_rate_limit.as_ref()?;
                Some((fqdn.as_str(), reuse.rate_limit(fqdn, limit)?))
            })
            .collect();
        let previous: HashMap<&str, &Arc<LazyCluster>> = prev
            .into_iter()
            .flat_map(Snapshot::fetched_clusters)
            .map(|c| (&*c.name, c))
            .collect();
        // A cluster whose recipe is unchanged is carried over as it is (built or not); a
        // changed one that was built is built again now, keeping its connections and state;
        // one outside the mesh is built now, as its TLS settings can be refused.
        // A recipe made of the very inputs the previous one was (the same shared service and
        // policy) is not even made again: a push costs what it changed.
        let cluster = |name: Label,
                       subset: &str,
                       inputs: (&Arc<ServiceSpec>, Option<&Arc<v1::DestinationPolicy>>),
                       make: &dyn Fn() -> Result<Recipe, SnapshotError>|
         -> Result<Arc<LazyCluster>, SnapshotError> {
            let old = previous.get(&*name);
            let limit = destination_limits.get(inputs.0.hostname.as_str());
            let keep =
                |old: &Arc<LazyCluster>| !(sweep && old.built().is_some() && !old.take_used());
            if let Some(old) = old
                && old
                    .recipe
                    .made_of(&cluster_context, inputs.0, inputs.1, limit)
                && keep(old)
            {
                return Ok(Arc::clone(old));
            }
            let recipe = make()?;
            if let Some(old) = old
                && old.recipe.same(&recipe)
                && keep(old)
            {
                return Ok(Arc::clone(old));
            }
            let was_built = old.is_some_and(|c| c.built().is_some());
            let lazy = LazyCluster::new(name, Arc::from(subset), recipe);
            // One outside the mesh is built now (its TLS can be refused), unless it is still
            // awaiting its policy (fetched on demand).
            let external = lazy.recipe.svc.external.is_some() && !lazy.awaiting();
            if (was_built && !sweep) || external {
                lazy.build_now(&reuse);
            }
            Ok(Arc::new(lazy))
        };
        // Sized up front: a table that doubles as it fills holds both sizes for a moment,
        // and in a mesh of thousands that moment is the sidecar's peak.
        let mut hosts = HostTable::with_capacity_and_hasher(
            view.services.len() * 4,
            crate::snapshot::NameHasher::default(),
        );
        let mut clusters = Vec::with_capacity(view.services.len());
        let mut by_fqdn: HashMap<&str, Vec<Arc<LazyCluster>>> =
            HashMap::with_capacity(view.services.len());
        for svc in &view.services {
            let fqdn = svc.hostname.as_str();
            let policy = view.policies.get(fqdn);
            let name: Label = Arc::from(format!("outbound|{}||{fqdn}", svc.port));
            let spec = previous
                .get(&*name)
                .map(|c| &c.recipe.svc)
                .filter(|old| Arc::ptr_eq(old, svc) || ***old == **svc)
                .unwrap_or(svc)
                .clone();
            let c = cluster(name, "", (&spec, policy), &|| {
                Recipe::new(
                    &cluster_context,
                    spec.clone(),
                    None,
                    policy.and_then(|p| p.traffic_policy.clone()),
                    policy,
                    destination_limits.get(fqdn).cloned(),
                )
            })?;
            by_fqdn.entry(fqdn).or_default().push(c.clone());
            clusters.push(c);
        }

        // Subset clusters, for every subset a DestinationPolicy defines.
        let mut subsets: HashMap<(String, u16, String), Arc<LazyCluster>> = HashMap::new();
        let mut subset_clusters = Vec::new();
        for (fqdn, policy) in &view.policies {
            for c in by_fqdn.get(fqdn.as_str()).into_iter().flatten() {
                let spec = &c.recipe.svc;
                for subset in &policy.subsets {
                    let name: Label =
                        Arc::from(format!("outbound|{}|{}|{fqdn}", c.port, subset.name));
                    let sc = cluster(name, &subset.name, (spec, Some(policy)), &|| {
                        Recipe::new(
                            &cluster_context,
                            spec.clone(),
                            Some(
                                subset
                                    .labels
                                    .iter()
                                    .map(|(k, v)| (k.clone(), v.clone()))
                                    .collect(),
                            ),
                            // A subset's own policy wins over the service's for the blocks
                            // it sets.
                            merged(
                                subset.traffic_policy.as_ref(),
                                policy.traffic_policy.as_ref(),
                            ),
                            Some(policy),
                            destination_limits.get(fqdn.as_str()).cloned(),
                        )
                    })?;
                    subsets.insert((fqdn.clone(), c.port, subset.name.clone()), sc.clone());
                    subset_clusters.push(sc);
                }
            }
        }

        let previous_ports: HashMap<&str, &Arc<HostPort>> = prev
            .into_iter()
            .flat_map(|p| p.hosts.values().flatten())
            .map(|hp| (&*hp.cluster.name, hp))
            .collect();
        let mut addresses = Vec::new();
        let default_behaviour = Arc::new(RouteBehaviour::istio_default());
        let resolver = Resolver {
            by_fqdn: &by_fqdn,
            subsets: &subsets,
            reuse: &reuse,
        };
        // In the services' order: of two sharing a name at one port, the first answers to it,
        // as in the directory.
        for cluster in &clusters {
            let svc = &*cluster.recipe.svc;
            let fqdn = svc.hostname.as_str();
            let table = view.routes.get(fqdn);
            // A host port whose cluster, route table and destinations are all as they
            // were is the previous snapshot's (a push costs what it changed).
            let kept = previous_ports.get(&*cluster.name).filter(|old| {
                Arc::ptr_eq(&old.cluster, cluster)
                    && match (&old.source, table) {
                        (None, None) => true,
                        (Some(source), Some(t)) => {
                            source.holds(t, |d| resolver.resolve(d, cluster.port))
                        }
                        _ => false,
                    }
            });
            let hp = match kept {
                Some(old) => Arc::clone(old),
                None => Arc::new(
                    host_port(cluster, table, &resolver, &default_behaviour).map_err(|source| {
                        SnapshotError::Route {
                            host: fqdn.to_string(),
                            source,
                        }
                    })?,
                ),
            };
            index(&mut hosts, &mut addresses, svc, &hp);
        }
        let directory = match &view.known {
            Some(known) => Some(directory::directory(
                known,
                &cluster_context,
                prev.and_then(|p| p.directory.as_ref()),
                &default_behaviour,
            )?),
            None => None,
        };

        let security = InboundSecurity::new(
            view.inbound.as_ref(),
            view.mesh.as_ref(),
            cfg.default_mtls,
            identity.id().trust_domain(),
            &metrics.security,
        )?;
        let connect_timeout = cfg.upstream.connect_timeout;
        // This workload's own service: its DestinationRule's connectionPool applies inbound.
        let own_policy = view
            .policies
            .get(&format!("{}", local.services.get(None).fqdn))
            .and_then(|p| p.traffic_policy.as_ref());
        let inbound: HashMap<u16, InboundPort> = cfg
            .inbound_ports
            .iter()
            .map(|p| {
                let name: Label = Arc::from(format!("inbound|{}||", p.port));
                let pool = port_block(own_policy, p.port, |t| t.connection_pool.as_ref());
                let counts = prev
                    .and_then(|s| s.inbound.get(&p.port))
                    .map(|ip| ip.breakers.counts())
                    .unwrap_or_default();
                let breakers = Breakers::new(&wire::resilience::pool_limits(pool), None, &counts);
                let stats = metrics.clusters.stats(&name);
                stats.watch(&breakers);
                // The app's pools are kept while the port still leads to the same address.
                let kept = prev
                    .and_then(|s| s.inbound.get(&p.port))
                    .filter(|ip| ip.target == p.target);
                let h2c = matches!(p.protocol, Protocol::Http2 | Protocol::Grpc).then(|| {
                    kept.and_then(|ip| ip.h2c.clone()).unwrap_or_else(|| {
                        Arc::new(H2Pool::new(
                            PoolTarget::Plain { addr: p.target },
                            connect_timeout,
                            None,
                        ))
                    })
                });
                let local_idle = Some(cfg.upstream.idle_timeout);
                let http1 = (p.protocol == Protocol::Http).then(|| {
                    kept.and_then(|ip| ip.http1.clone())
                        .filter(|pool| pool.settings() == (LOCAL_CONNECT_TIMEOUT, local_idle, 0))
                        .unwrap_or_else(|| {
                            Arc::new(H1Pool::new(
                                PoolTarget::Plain { addr: p.target },
                                LOCAL_CONNECT_TIMEOUT,
                                local_idle,
                                None,
                            ))
                        })
                });
                (
                    p.port,
                    InboundPort {
                        http1,
                        target: p.target,
                        authority: http::uri::Authority::try_from(p.target.to_string()).ok(),
                        protocol: p.protocol,
                        h2c,
                        name,
                        breakers,
                        stats,
                        mtls: security.mode(p.target.port()),
                    },
                )
            })
            .collect();
        let inbound_modes = inbound.values().fold(ModeSet::default(), |mut m, p| {
            match p.mtls {
                MtlsMode::Strict => m.strict = true,
                MtlsMode::Permissive => m.permissive = true,
                MtlsMode::Disable => m.disable = true,
            }
            m
        });
        let pushed_telemetry = view.inbound.as_ref().and_then(|p| p.telemetry.as_ref());
        let tracing = tracers(
            cfg,
            view.mesh.as_ref(),
            pushed_telemetry,
            &local,
            metrics,
            prev,
        );
        let access_log_providers = LogProviders::build(
            view.mesh.as_ref(),
            &LocalTags::of(&local, cfg.node_ip),
            &metrics.access_log,
            prev.map(|p| &p.access_log_providers),
        )?;
        let telemetry = WorkloadTelemetry::compile(pushed_telemetry, &access_log_providers)?;
        // On demand, the mesh's names are the known services' (the fetched ones among them);
        // a service of the file alone adds its own.
        let own = view
            .services
            .iter()
            .filter(|s| directory.as_ref().is_none_or(|d| !d.contains(&s.hostname)))
            .cloned()
            .collect();
        let dns = crate::dns::table::NameTable::build_or_keep(
            view.known.as_ref(),
            own,
            &local.metadata.namespace,
            !view.mesh.as_ref().is_some_and(|m| m.dns_capture_disabled),
            prev.map(|p| &p.dns),
        );
        Ok(Self {
            version,
            tracing,
            local,
            hosts,
            directory,
            inbound,
            clusters,
            subset_clusters,
            security,
            inbound_modes,
            path_normalization: path_normalization(view.mesh.as_ref()),
            telemetry,
            access_log_providers,
            addresses: AddressIndex::build(addresses),
            cluster_context,
            outbound_registry_only: view.mesh.as_ref().is_some_and(|m| m.outbound_registry_only),
            stats_matcher: Arc::new(StatsMatcher::new(
                &cfg.stats_inclusions
                    .clone()
                    .unwrap_or_else(|| stats_inclusions(view.mesh.as_ref())),
            )?),
            dns,
        })
    }
}

/// The host port of `cluster`, its routes compiled from `table` (a VirtualService with only
/// `tcp` rules leaves the host's HTTP ports to their default route, as Istio builds no
/// virtual host from it, and the reverse).
fn host_port(
    cluster: &Arc<LazyCluster>,
    table: Option<&Arc<v1::RouteTable>>,
    resolver: &Resolver<'_>,
    default_behaviour: &Arc<RouteBehaviour>,
) -> Result<HostPort, crate::route::RouteError> {
    let recording = Recording {
        inner: resolver,
        seen: Default::default(),
    };
    let routes = match table.filter(|t| !t.http.is_empty() || t.tcp.is_empty()) {
        Some(t) => Some(RouteTable::compile(t, cluster.port, &recording)?),
        None => None,
    };
    let tcp_routes = match table {
        Some(t) => TcpRouteTable::compile(t, cluster.port, &recording)?,
        None => None,
    };
    Ok(HostPort {
        port: cluster.port,
        cluster: cluster.clone(),
        routes,
        tcp_routes,
        default_behaviour: default_behaviour.clone(),
        source: table.map(|t| crate::route::RoutesSource {
            table: t.clone(),
            resolved: recording.seen.into_inner(),
        }),
    })
}

/// Enters host port `hp` of service `svc` in a host table, under every name the service
/// answers to, and its addresses in the entries of an address index.
fn index(
    hosts: &mut HostTable,
    addresses: &mut Vec<(std::net::IpAddr, u16, Claim, CaptureTarget)>,
    svc: &ServiceSpec,
    hp: &Arc<HostPort>,
) {
    let target = CaptureTarget {
        host: hp.clone(),
        detect: svc.detect_protocol,
    };
    for (ip, claim) in addresses_of(svc) {
        addresses.push((ip, hp.port, claim, target.clone()));
    }
    for name in names_of(svc) {
        let entry = hosts.entry(name.into_boxed_str()).or_default();
        if !entry.iter().any(|h| h.port == hp.port) {
            entry.push(hp.clone());
        }
    }
}

/// Every name service `svc` answers to: cluster services answer to their short forms too,
/// other hosts (ServiceEntry) only to the names they were given.
fn names_of(svc: &ServiceSpec) -> Vec<String> {
    let fqdn = svc.hostname.as_str();
    let mut names = vec![fqdn.to_string()];
    if fqdn.ends_with(CLUSTER_DOMAIN) {
        names.extend([
            svc.name.clone(),
            format!("{}.{}", svc.name, svc.namespace),
            format!("{}.{}.svc", svc.name, svc.namespace),
        ]);
    }
    names.extend(svc.aliases.iter().map(|a| a.to_ascii_lowercase()));
    names
}

/// Whether `a` and `b` answer to the same [`names_of`] (made of the same fields).
pub(crate) fn same_names(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    std::ptr::eq(a, b)
        || (a.hostname == b.hostname
            && a.name == b.name
            && a.namespace == b.namespace
            && a.aliases == b.aliases)
}

/// Whether `name` (lower case) is one of [`names_of`] `svc`, found without making them.
pub(crate) fn answers_to(svc: &ServiceSpec, name: &str) -> bool {
    if name == svc.hostname {
        return true;
    }
    if svc.hostname.ends_with(CLUSTER_DOMAIN)
        && let Some(rest) = name.strip_prefix(svc.name.as_str())
    {
        let ns = rest
            .strip_prefix('.')
            .and_then(|r| r.strip_prefix(svc.namespace.as_str()));
        if rest.is_empty() || matches!(ns, Some("" | ".svc")) {
            return true;
        }
    }
    let lower = |a: &String| {
        a.len() == name.len()
            && a.bytes()
                .zip(name.bytes())
                .all(|(x, y)| x.to_ascii_lowercase() == y)
    };
    svc.aliases.iter().any(lower)
}

/// The addresses a captured connection reaches service `svc` at, with their claims: its
/// virtual IPs, and its mesh endpoints' IPs (an external service's endpoints are not
/// sidecars; one still to be fetched is known by its endpoints' IPs alone).
fn addresses_of(svc: &ServiceSpec) -> impl Iterator<Item = (std::net::IpAddr, Claim)> + '_ {
    let vips = svc.addresses.iter().map(|ip| (*ip, Claim::Vip));
    let pods = svc
        .external
        .is_none()
        .then_some(&svc.endpoints)
        .into_iter()
        .flatten()
        .map(|e| e.addr.ip())
        .chain(svc.endpoint_ips.iter().copied())
        .map(|ip| (ip, Claim::Endpoint));
    vips.chain(pods)
}

/// This workload's labels and peer-metadata header, from its settings and identity.
fn local_workload(cfg: &LocalSettings, identity: &Identity) -> LocalWorkload {
    let id = identity.id().clone();
    let w = &cfg.workload;
    let namespace = id
        .namespace_and_account()
        .map(|(ns, _)| ns)
        .unwrap_or("default");
    // The `app` and `version` settings are the labels of those names.
    let mut labels = w.labels.clone();
    for (key, value) in [("app", &w.app), ("version", &w.version)] {
        if let Some(v) = value {
            labels.entry(key.to_string()).or_insert_with(|| v.clone());
        }
    }
    let metadata = Arc::new(WorkloadMetadata::from_labels(
        &w.name,
        namespace,
        &labels,
        DEFAULT_CLUSTER_ID,
    ));
    let app: Label = Arc::from(w.app.as_deref().unwrap_or(&w.name));
    LocalWorkload {
        services: DestinationServices::new(app, metadata.namespace.clone()),
        principal: Arc::from(id.principal()),
        peer_header: metadata.header(),
        metadata,
        id,
        locality: w.locality.clone(),
        labels: w.labels.clone(),
    }
}

/// The tracers of the two sides, from the file's, the mesh's and the workload's Telemetry
/// tracing settings ([`TraceSettings::resolve`]). A side whose settings have not changed
/// keeps the previous snapshot's tracer; a new tracer shares the export queue of any tracer
/// (previous or just made) reporting to the same collector, so a collector gets one queue
/// and one export task whatever the sides and pushes.
fn tracers(
    cfg: &LocalSettings,
    mesh: Option<&meshlite_xds_proto::v1::MeshConfig>,
    telemetry: Option<&meshlite_xds_proto::v1::WorkloadTelemetry>,
    local: &crate::telemetry::peer::LocalWorkload,
    metrics: &Metrics,
    prev: Option<&Snapshot>,
) -> Tracers {
    let client_side = telemetry.and_then(|t| t.tracing.as_ref());
    let server_side = telemetry.and_then(|t| t.server_tracing.as_ref().or(t.tracing.as_ref()));
    let previous: Vec<Arc<Tracer>> = prev
        .into_iter()
        .flat_map(|s| [s.tracing.client.clone(), s.tracing.server.clone()])
        .flatten()
        .collect();
    let mut made: Vec<Arc<Tracer>> = Vec::new();
    let mut tracer = |side: Option<&meshlite_xds_proto::v1::TracingSettings>| {
        let settings = TraceSettings::resolve(cfg.tracing.as_ref(), mesh, side)?;
        let known = || previous.iter().chain(made.iter());
        if let Some(t) = known().find(|t| *t.settings() == settings) {
            return Some(t.clone());
        }
        let sink = match known().find(|t| *t.sink().collector() == settings.collector) {
            Some(t) => t.sink().clone(),
            None => SpanSink::start(
                settings.collector.clone(),
                LocalTags::of(local, cfg.node_ip),
                metrics.traces.clone(),
            )?,
        };
        let t = Arc::new(Tracer::new(settings, sink));
        made.push(t.clone());
        Some(t)
    };
    let client = tracer(client_side);
    let server = tracer(server_side);
    Tracers { client, server }
}
