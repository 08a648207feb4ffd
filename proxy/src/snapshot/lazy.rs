//! A cluster as a snapshot holds it until something calls it: its names and labels, and the
//! checked recipe it is built from. The endpoints with their pools, the balancer, breakers,
//! outlier state and statistics (most of a cluster's memory) are built on first use, so a
//! sidecar that knows a thousand services pays for the few its app calls; a cluster left
//! unused is built again, from nothing, by the snapshot after its idle sweep.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use super::Cluster;
use super::build::{Recipe, Reuse};
use crate::protocol::Protocol;
use crate::telemetry::labels::ServiceLabels;
use crate::telemetry::metrics::Label;

/// A cluster built on first use. Its names, port and labels are here from the start, so
/// routing, telemetry and the admin dump read them without building it; anything else
/// reads through to the built [`Cluster`] (dereferencing builds it).
#[derive(Debug)]
pub struct LazyCluster {
    /// Service port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Labels for metrics.
    pub labels: ServiceLabels,
    /// DestinationRule subset this cluster holds, empty for the whole service.
    pub subset: Label,
    /// Envoy's cluster name, `outbound|<port>|<subset>|<fqdn>`.
    pub name: Label,
    /// Explicit-mode local listener for `tcp` services.
    pub listen: Option<SocketAddr>,
    pub(crate) recipe: Recipe,
    built: OnceLock<Arc<Cluster>>,
    /// Set by every use, cleared by each idle sweep: a built cluster not used between two
    /// sweeps is not carried into the next snapshot.
    used: AtomicBool,
}

impl LazyCluster {
    /// A cluster named `name` (subset `subset`) to be built from `recipe` when first used.
    pub(crate) fn new(name: Label, subset: Label, recipe: Recipe) -> Self {
        Self {
            port: recipe.svc.port,
            protocol: recipe.svc.protocol,
            labels: recipe.labels(),
            listen: recipe.svc.listen,
            subset,
            name,
            recipe,
            built: OnceLock::new(),
            used: AtomicBool::new(false),
        }
    }

    /// The built cluster, building it now if this is its first use.
    pub fn get(&self) -> &Arc<Cluster> {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
        self.built.get_or_init(|| {
            tracing::debug!(cluster = %self.name, "building cluster on first use");
            self.make(&Reuse::default())
        })
    }

    /// The built cluster, if something used it (the admin dump and the next snapshot look
    /// without building).
    pub fn built(&self) -> Option<&Arc<Cluster>> {
        self.built.get()
    }

    /// The built cluster, or for one not used yet a copy built for the occasion and
    /// dropped after (the admin dump shows what a cluster would be without keeping it).
    pub fn preview(&self) -> Arc<Cluster> {
        match self.built.get() {
            Some(c) => c.clone(),
            None => self.make(&Reuse::default()),
        }
    }

    /// How many endpoints it has (read from its recipe: nothing is built).
    pub fn endpoint_count(&self) -> usize {
        self.recipe.endpoints().count()
    }

    /// Whether its service's endpoints, routes and policy are still to be fetched (on
    /// demand): a request picking it asks for them first.
    pub fn awaiting(&self) -> bool {
        self.recipe.svc.awaiting
    }

    /// Whether its service has a virtual IP (one without is reached only at its endpoints'
    /// addresses).
    pub fn has_virtual_ip(&self) -> bool {
        !self.recipe.svc.addresses.is_empty()
    }

    /// Whether it is a service outside the mesh (read without building it).
    pub fn is_external(&self) -> bool {
        self.recipe.svc.external.is_some()
    }

    /// Builds it now, carrying over what `reuse` holds of the previous snapshot's cluster
    /// of the same name (connections, breaker counts, ejections).
    pub(crate) fn build_now(&self, reuse: &Reuse) {
        self.built.get_or_init(|| self.make(reuse));
    }

    /// A cluster built from the recipe under this one's names and labels.
    fn make(&self, reuse: &Reuse) -> Arc<Cluster> {
        self.recipe
            .build(&self.name, &self.subset, &self.labels, reuse)
    }

    /// Whether it was used since the last call (which starts a new idle period).
    pub(crate) fn take_used(&self) -> bool {
        self.used.swap(false, Ordering::Relaxed)
    }
}

impl Deref for LazyCluster {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        self.get()
    }
}
