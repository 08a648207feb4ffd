//! The control plane's shared state: the last good config, the registry, the translated
//! resources, the generation counter that wakes every stream, and each proxy's status.
//!
//! Changes (a config edit, a workload arriving or leaving) are debounced: the first change
//! starts a window (default 100 ms) in which more changes fold in; then the mesh is
//! translated once and the generation bumped. Each stream computes its own proxy's view from
//! that and sends only what differs from what the proxy holds.

use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::ca::{CertificateAuthority, TokenSigner};
use crate::graph::Collector;
use crate::jwks::{HttpFetcher, JwksCache};
use crate::metrics::ControlMetrics;
use crate::model::ConfigSet;
use crate::registry::Registry;
use crate::translate::MeshResources;
use crate::validate::admission::Baseline;

/// Default debounce window (Istio's PILOT_DEBOUNCE_AFTER is 100 ms).
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

/// One published state of the mesh.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Increments on every publication.
    pub number: u64,
    /// When the first change folded into it was seen.
    pub change_seen: Instant,
    /// The translated resources.
    pub resources: Arc<MeshResources>,
}

/// What `status` shows of one proxy.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct ProxyStatus {
    /// xDS node id.
    pub id: String,
    /// SPIFFE ID it authenticated with.
    pub identity: String,
    /// Inbound address.
    pub address: String,
    /// Its workload, `namespace/name`.
    #[serde(default)]
    pub workload: String,
    /// Where the service graph reads its metrics, when it announced an address it may read
    /// ([`crate::graph::collect::metrics_target`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Generation last sent.
    pub sent: u64,
    /// Generation fully ACKed.
    pub acked: u64,
    /// Last NACK: type and reason.
    pub last_nack: Option<String>,
    /// Certificate expiry of the stream's client certificate (RFC 3339).
    pub cert_expiry: Option<String>,
    /// Seconds the stream has been open (filled in when status is read).
    pub connected_s: u64,
    /// When the stream opened.
    #[serde(skip)]
    pub connected_at: Option<Instant>,
}

/// The config directory's state, as `status` shows it.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct ConfigStatus {
    /// Resources in the config serving now.
    pub resources: usize,
    /// Problems (errors and warnings) found in the last load, one line each.
    pub problems: Vec<String>,
    /// Whether the last edit was refused (the previous good config is served).
    pub last_refused: bool,
}

/// Shared state of a running control plane.
pub struct ControlPlane {
    /// The CA.
    ca: ArcSwap<CertificateAuthority>,
    /// Bumped each time the CA is replaced (a plug-in CA rotated on disk).
    pub ca_generation: watch::Sender<u64>,
    /// Bootstrap token verification.
    pub tokens: TokenSigner,
    /// Registered workloads.
    pub registry: Registry,
    /// The last good config.
    pub config: ArcSwap<ConfigSet>,
    /// The config directory's state.
    pub config_status: Mutex<ConfigStatus>,
    /// The resources in force, against which a reload's admissions are counted.
    pub admitted: Mutex<Baseline>,
    /// Current generation; streams watch it.
    pub generation: watch::Sender<Generation>,
    /// Something changed: the debouncer wakes.
    pub changed: Notify,
    /// Per-stream status, by stream id.
    pub proxies: Mutex<BTreeMap<u64, ProxyStatus>>,
    /// Metrics.
    pub metrics: ControlMetrics,
    /// Debounce window.
    pub debounce: Duration,
    /// Default workload certificate lifetime.
    pub cert_ttl: Duration,
    /// Where the registry is saved on every publication, if anywhere.
    pub registry_file: Option<std::path::PathBuf>,
    /// The key sets of `jwksUri` rules, inlined in every push.
    pub jwks: Arc<JwksCache>,
    /// The service graph, rebuilt from the sidecars' metrics by [`Collector::run`].
    pub graph: Collector,
    stream_ids: std::sync::atomic::AtomicU64,
}

impl ControlPlane {
    /// A control plane with an initial config.
    pub fn new(
        ca: CertificateAuthority,
        tokens: TokenSigner,
        config: ConfigSet,
        registry: Registry,
        debounce: Duration,
        cert_ttl: Duration,
        registry_file: Option<std::path::PathBuf>,
    ) -> Arc<Self> {
        let config = Arc::new(config);
        let metrics = ControlMetrics::new();
        metrics.set_ca_expiry(
            ca.root_not_after().unix_timestamp(),
            ca.signing_not_after().unix_timestamp(),
        );
        let jwks = Arc::new(JwksCache::new(
            Arc::new(HttpFetcher::default()),
            metrics.jwks_fetches.clone(),
        ));
        let resources = Arc::new(MeshResources::build(
            config.clone(),
            &registry.workloads(),
            &ca.roots_pem(),
            ca.trust_domain(),
            &jwks.resolved(),
        ));
        let (generation, _) = watch::channel(Generation {
            number: 1,
            change_seen: Instant::now(),
            resources,
        });
        let (ca_generation, _) = watch::channel(0);
        Arc::new(Self {
            ca: ArcSwap::from_pointee(ca),
            ca_generation,
            tokens,
            registry,
            config: ArcSwap::new(config),
            config_status: Mutex::new(ConfigStatus::default()),
            admitted: Mutex::new(Baseline::default()),
            generation,
            changed: Notify::new(),
            proxies: Mutex::new(BTreeMap::new()),
            metrics,
            debounce,
            cert_ttl,
            registry_file,
            jwks,
            graph: Collector::new(),
            stream_ids: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// The CA in force: signing certificate, roots, revocations.
    pub fn ca(&self) -> arc_swap::Guard<Arc<CertificateAuthority>> {
        self.ca.load()
    }

    /// Puts a new CA in force (a rotated plug-in CA): new certificates are signed by it, the
    /// trust bundle it holds is pushed to every proxy, and the serving certificate is renewed.
    pub fn replace_ca(&self, ca: CertificateAuthority) {
        self.metrics.set_ca_expiry(
            ca.root_not_after().unix_timestamp(),
            ca.signing_not_after().unix_timestamp(),
        );
        self.ca.store(Arc::new(ca));
        self.ca_generation.send_modify(|g| *g += 1);
        self.changed.notify_one();
    }

    /// A new stream id.
    pub fn next_stream_id(&self) -> u64 {
        self.stream_ids
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Locks the proxy table (a poisoned lock is still consistent: each update is one write).
    pub fn proxies(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ProxyStatus>> {
        self.proxies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks the admission baseline (a poisoned lock is still consistent: it is replaced
    /// whole).
    pub fn admitted(&self) -> std::sync::MutexGuard<'_, Baseline> {
        self.admitted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks the config status.
    pub fn config_status(&self) -> std::sync::MutexGuard<'_, ConfigStatus> {
        self.config_status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Translates the mesh now and publishes a new generation (and saves the registry).
    pub fn publish(&self, change_seen: Instant) {
        let workloads = self.registry.workloads();
        if let Some(path) = &self.registry_file
            && let Err(e) = self.registry.save(path)
        {
            tracing::warn!(path = %path.display(), "cannot save the registry: {e}");
        }
        let prev = self.generation.borrow().resources.clone();
        let resources = Arc::new(
            MeshResources::build_keeping(
                self.config.load_full(),
                &workloads,
                &self.ca().roots_pem(),
                self.ca().trust_domain(),
                &self.jwks.resolved(),
                prev.vips(),
            )
            .sharing_with(&prev),
        );
        self.generation.send_modify(|g| {
            g.number += 1;
            g.change_seen = change_seen;
            g.resources = resources;
        });
        let n = self.generation.borrow().number;
        self.metrics
            .generation
            .set(i64::try_from(n).unwrap_or(i64::MAX));
        tracing::debug!(generation = n, "published");
    }

    /// Debounces changes into publications, and removes workloads whose grace period is
    /// over. Runs until the process exits.
    pub async fn run_debouncer(self: Arc<Self>) {
        let sweep_every = (self.registry.grace() / 4).max(Duration::from_millis(100));
        let mut sweep = tokio::time::interval(sweep_every);
        loop {
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = sweep.tick() => {
                    if !self.registry.sweep() {
                        continue;
                    }
                }
            }
            let seen = Instant::now();
            tokio::time::sleep(self.debounce).await;
            self.registry.sweep();
            // A jwksUri the new config names is fetched before the config is pushed.
            self.sync_jwks().await;
            self.publish(seen);
        }
    }

    /// Fetches the `jwksUri` sets the current config names and the cache lacks (forgetting
    /// those it no longer names); whether anything changed.
    pub async fn sync_jwks(&self) -> bool {
        let wanted = self.config.load().jwks_uris();
        self.jwks.sync(&wanted).await
    }

    /// Refreshes the `jwksUri` sets forever (every 20 minutes, failures every minute);
    /// a changed set is pushed.
    pub async fn run_jwks_refresher(self: Arc<Self>) {
        let plane = Arc::downgrade(&self);
        let jwks = self.jwks.clone();
        drop(self);
        jwks.run(move || {
            if let Some(p) = plane.upgrade() {
                p.changed.notify_one();
            }
        })
        .await;
    }

    /// Records that stream `id` answered everything of generation `n`, first seen changing at
    /// `change_seen`. If that generation was `applied` (responses were pushed to the proxy and
    /// it ACKed every one) and the change happened while it was connected, observes that
    /// proxy's convergence: istiod records one per proxy it pushes a change to, and a proxy's
    /// initial state is not a convergence.
    pub fn acked(&self, id: u64, n: u64, change_seen: Instant, applied: bool) {
        let converged = {
            let mut proxies = self.proxies();
            let Some(p) = proxies.get_mut(&id) else {
                return;
            };
            if p.acked >= n {
                return;
            }
            p.acked = n;
            applied && p.connected_at.is_some_and(|t| change_seen >= t)
        };
        if converged {
            self.metrics
                .convergence
                .observe(change_seen.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(state: &std::path::Path) -> Arc<ControlPlane> {
        ControlPlane::new(
            CertificateAuthority::load_or_create(state, "cluster.local").unwrap(),
            TokenSigner::load_or_create(state).unwrap(),
            ConfigSet::default(),
            Registry::new(Duration::from_secs(30)),
            DEFAULT_DEBOUNCE,
            Duration::from_secs(3600),
            None,
        )
    }

    #[test]
    fn convergence_is_one_observation_per_proxy_and_change_it_was_pushed_and_acked() {
        let state = tempfile::tempdir().unwrap();
        let plane = plane(state.path());
        let before_connect = Instant::now();
        plane.proxies().insert(
            7,
            ProxyStatus {
                connected_at: Some(Instant::now()),
                ..Default::default()
            },
        );
        let observed = || {
            let text = plane.metrics.encode();
            text.lines()
                .find_map(|l| l.strip_prefix("pilot_proxy_convergence_time_count "))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_default()
        };
        // Its initial state (a generation older than the stream) is no convergence.
        plane.acked(7, 1, before_connect, true);
        assert_eq!(observed(), 0);
        // A change that sent it nothing, or that it NACKed, neither.
        let seen = Instant::now();
        plane.acked(7, 2, seen, false);
        assert_eq!(observed(), 0);
        // A change pushed to it and ACKed: one observation, once.
        let seen = Instant::now();
        plane.acked(7, 3, seen, true);
        plane.acked(7, 3, seen, true);
        assert_eq!(observed(), 1);
        assert_eq!(plane.proxies()[&7].acked, 3);
        // A stream that is gone records nothing.
        plane.acked(8, 4, Instant::now(), true);
        assert_eq!(observed(), 1);
    }

    #[test]
    fn the_ca_expiry_gauges_follow_the_ca_in_force() {
        let state = tempfile::tempdir().unwrap();
        let plane = plane(state.path());
        let own_root = plane.ca().root_not_after().unix_timestamp();
        assert_eq!(plane.metrics.root_expiry.get(), own_root);
        assert_eq!(plane.metrics.chain_expiry.get(), own_root);

        // A plug-in CA put in force: its offline root, and its two-day intermediate.
        let plugin = tempfile::tempdir().unwrap();
        crate::ca::write_test_cacerts(plugin.path(), time::Duration::days(2));
        let next = CertificateAuthority::from_cacerts(plugin.path(), "cluster.local").unwrap();
        let (root, chain) = (
            next.root_not_after().unix_timestamp(),
            next.signing_not_after().unix_timestamp(),
        );
        plane.replace_ca(next);
        assert_eq!(plane.metrics.root_expiry.get(), root);
        assert_eq!(plane.metrics.chain_expiry.get(), chain);
        assert!(chain < root && chain < own_root);
    }
}
