//! On-demand resources: a sidecar in a mesh of thousands fetches a service's endpoints,
//! routes and policy when its app first calls it, as Envoy's on-demand CDS and Linkerd's
//! destination lookups do, instead of holding them all from the start.
//!
//! The Service resources (names, virtual IPs, ports) still arrive whole, so the DNS proxy,
//! capture and routing by name know every service; a service whose other resources have not
//! been fetched is marked `awaiting` in the snapshot. The rest is subscribed by name over the
//! same delta xDS stream, and the control plane answers every name it is asked for, with the
//! resource or, when there is none, with the name among `removed_resources`.
//!
//! Two halves: [`Wanted`] is the xDS state's record (the hosts subscribed, and which of them
//! the control plane answered, per type); [`Demand`] is the request path's handle, which asks
//! for a host and waits, bounded, for a snapshot in which the host is answered.

use meshlite_xds_proto::discovery::DeltaDiscoveryResponse;
use meshlite_xds_proto::type_url;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::context::ProxyContext;
use crate::snapshot::Snapshot;

/// The types subscribed by name, one host at a time (each keyed by the service's hostname).
pub const TYPES: [&str; 3] = [
    type_url::ENDPOINTS,
    type_url::ROUTE_TABLE,
    type_url::DESTINATION_POLICY,
];

/// Istio's (Envoy's on-demand CDS) default wait for a cluster fetched on first use.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The hosts this sidecar subscribed to by name, and which the control plane answered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Wanted {
    hosts: BTreeSet<String>,
    /// Per type of [`TYPES`], the wanted hosts the control plane answered.
    answered: [BTreeSet<String>; 3],
}

impl Wanted {
    /// What a state restored from disk held: every host with a resource of one of the types
    /// is wanted, and answered for the types it has. The others are asked again on connect.
    pub fn restored(types: &BTreeMap<String, std::sync::Arc<super::state::Resources>>) -> Self {
        let mut w = Self::default();
        for (i, t) in TYPES.iter().enumerate() {
            for name in types.get(*t).into_iter().flat_map(|m| m.keys()) {
                w.hosts.insert(name.to_string());
                w.answered[i].insert(name.to_string());
            }
        }
        w
    }

    /// Adds `host`; whether it was not wanted before.
    pub fn add(&mut self, host: &str) -> bool {
        !self.hosts.contains(host) && self.hosts.insert(host.to_string())
    }

    /// Records that a response of `type_url` answered `name` (a resource or a removal).
    pub fn answered(&mut self, type_url: &str, name: &str) {
        if let Some(i) = TYPES.iter().position(|t| *t == type_url)
            && self.hosts.contains(name)
            && !self.answered[i].contains(name)
        {
            self.answered[i].insert(name.to_string());
        }
    }

    /// Records what `resp` answers (its resources and removals, each a name it answers);
    /// whether it answered some wanted host.
    pub fn record(&mut self, resp: &DeltaDiscoveryResponse) -> bool {
        let mut wanted = false;
        for name in resp
            .removed_resources
            .iter()
            .chain(resp.resources.iter().map(|r| &r.name))
        {
            wanted |= self.hosts.contains(name);
            self.answered(&resp.type_url, name);
        }
        wanted
    }

    /// Stops wanting `host`.
    pub fn remove(&mut self, host: &str) {
        self.hosts.remove(host);
        for a in &mut self.answered {
            a.remove(host);
        }
    }

    /// Whether every type of `host` was answered.
    pub fn ready(&self, host: &str) -> bool {
        self.answered.iter().all(|a| a.contains(host))
    }

    /// Whether some wanted host still waits for an answer.
    pub fn incomplete(&self) -> bool {
        self.answered.iter().any(|a| a.len() < self.hosts.len())
    }

    /// The wanted hosts, in order.
    pub fn hosts(&self) -> &BTreeSet<String> {
        &self.hosts
    }
}

/// Why a host could not be fetched for a request.
#[derive(Debug, thiserror::Error)]
pub enum DemandError {
    /// The control plane did not answer in time (or is unreachable).
    #[error("the control plane sent no config for {host} within {waited:?}")]
    Timeout {
        /// The host asked for.
        host: String,
        /// How long the request waited.
        waited: Duration,
    },
    /// The xDS client is gone (the proxy is shutting down).
    #[error("no xDS client to fetch {0} from")]
    NoClient(String),
    /// The sidecar refused (NACKed) what the control plane sent for the host: waiting longer
    /// would not help until the control plane sends it again, changed.
    #[error("the config the control plane sent for {host} was refused: {reason}")]
    Refused {
        /// The host asked for.
        host: String,
        /// Why the sidecar refused it (as in the NACK).
        reason: Arc<str>,
    },
}

/// The request path's handle: hosts asked for since the xDS client last looked, and a
/// wake-up for it. Asking twice for one host sends one subscription.
#[derive(Debug)]
pub struct Demand {
    asked: Mutex<BTreeSet<Box<str>>>,
    wake: tokio::sync::Notify,
    /// Hosts whose answer the sidecar refused, with the reason, until an answer applies.
    refused: Mutex<HashMap<Box<str>, Arc<str>>>,
    /// Bumped when a host is refused: wakes the requests waiting for it.
    refusals: tokio::sync::watch::Sender<u64>,
    /// The longest a request waits for its host.
    pub timeout: Duration,
}

impl Demand {
    /// A handle whose requests wait at most `timeout`.
    pub fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            asked: Mutex::new(BTreeSet::new()),
            wake: tokio::sync::Notify::new(),
            refused: Mutex::new(HashMap::new()),
            refusals: tokio::sync::watch::Sender::new(0),
            timeout,
        })
    }

    /// Asks for `host` (the xDS client subscribes to it); does not wait.
    pub fn ask(&self, host: &str) {
        let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
        if !asked.contains(host) {
            asked.insert(host.into());
        }
        drop(asked);
        self.wake.notify_one();
    }

    /// Waits until something was asked for, then takes it (the xDS client's side).
    pub async fn asked(&self) -> BTreeSet<Box<str>> {
        loop {
            let taken = std::mem::take(&mut *self.asked.lock().unwrap_or_else(|p| p.into_inner()));
            if !taken.is_empty() {
                return taken;
            }
            self.wake.notified().await;
        }
    }

    /// Records that what the control plane sent for `hosts` was refused (NACKed) for
    /// `reason`: the requests waiting for them, and later ones, fail now instead of at their
    /// timeout.
    pub fn refuse<'a>(&self, hosts: impl IntoIterator<Item = &'a str>, reason: &str) {
        let reason: Arc<str> = Arc::from(reason);
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        let mut any = false;
        for h in hosts {
            refused.insert(h.into(), reason.clone());
            any = true;
        }
        drop(refused);
        if any {
            self.refusals.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Records that an answer for `hosts` applied: a refusal of theirs is over.
    pub fn accept<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if refused.is_empty() {
            return;
        }
        for h in hosts {
            refused.remove(h);
        }
    }

    /// Why what was sent for `host` was refused, if it was.
    fn refusal(&self, host: &str) -> Option<Arc<str>> {
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused.get(host).cloned()
    }

    /// Asks for `host` and waits until the snapshot in force holds it answered (or no longer
    /// knows it); returns that snapshot. Fails at once when what was sent for it is refused.
    pub async fn fetch(
        &self,
        ctx: &ProxyContext,
        host: &str,
    ) -> Result<Arc<Snapshot>, DemandError> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.timeout;
        // Subscribed before looking, so a swap between the look and the wait is not missed.
        let mut swapped = ctx.snapshot_swapped.subscribe();
        let mut refusals = self.refusals.subscribe();
        self.ask(host);
        loop {
            let snap = ctx.snapshot.load_full();
            if !snap.awaiting(host) {
                return Ok(snap);
            }
            if let Some(reason) = self.refusal(host) {
                return Err(DemandError::Refused {
                    host: host.to_string(),
                    reason,
                });
            }
            tokio::select! {
                changed = swapped.changed() => {
                    if changed.is_err() {
                        return Err(DemandError::NoClient(host.to_string()));
                    }
                }
                // The sender lives as long as `self`.
                _ = refusals.changed() => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(DemandError::Timeout {
                        host: host.to_string(),
                        waited: started.elapsed(),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_ready_once_every_type_answered_it() {
        let mut w = Wanted::default();
        assert!(w.add("a.ns.svc.cluster.local"));
        assert!(!w.add("a.ns.svc.cluster.local"), "asked once");
        assert!(w.incomplete());
        w.answered(type_url::ENDPOINTS, "a.ns.svc.cluster.local");
        w.answered(type_url::ROUTE_TABLE, "a.ns.svc.cluster.local");
        // An answer for a host not wanted, or of another type, counts for nothing.
        w.answered(type_url::DESTINATION_POLICY, "b.ns.svc.cluster.local");
        w.answered(type_url::SERVICE, "a.ns.svc.cluster.local");
        assert!(!w.ready("a.ns.svc.cluster.local"));
        w.answered(type_url::DESTINATION_POLICY, "a.ns.svc.cluster.local");
        assert!(w.ready("a.ns.svc.cluster.local"));
        assert!(!w.incomplete());
    }

    #[test]
    fn a_restored_state_wants_what_it_held_answered_for_the_types_it_had() {
        let stored = super::super::state::Stored {
            version: "v".into(),
            body: bytes::Bytes::new(),
        };
        let mut types = BTreeMap::new();
        types.insert(
            type_url::ENDPOINTS.to_string(),
            std::sync::Arc::new(BTreeMap::from([("a".into(), stored.clone())])),
        );
        types.insert(
            type_url::SERVICE.to_string(),
            std::sync::Arc::new(BTreeMap::from([("b".into(), stored)])),
        );
        let w = Wanted::restored(&types);
        assert_eq!(w.hosts().iter().collect::<Vec<_>>(), ["a"]);
        assert!(!w.ready("a"));
        assert!(w.incomplete());
    }

    #[test]
    fn a_refusal_lasts_until_an_answer_for_the_host_applies() {
        let d = Demand::new(DEFAULT_TIMEOUT);
        let woken = d.refusals.subscribe();
        d.refuse(["a", "b"], "trust bundle: no roots");
        assert!(woken.has_changed().unwrap_or(false), "waiters are woken");
        assert_eq!(d.refusal("a").as_deref(), Some("trust bundle: no roots"));
        d.accept(["a", "c"]);
        assert_eq!(d.refusal("a"), None);
        assert!(d.refusal("b").is_some(), "only the hosts answered");
        assert_eq!(d.refusal("c"), None);
    }

    #[tokio::test]
    async fn asking_twice_for_a_host_is_taken_once() {
        let d = Demand::new(DEFAULT_TIMEOUT);
        d.ask("a");
        d.ask("a");
        d.ask("b");
        let taken = d.asked().await;
        assert_eq!(taken.len(), 2);
        assert!(
            d.asked.lock().unwrap_or_else(|p| p.into_inner()).is_empty(),
            "taken, not copied"
        );
    }
}
