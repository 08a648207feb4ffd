//! The endpoint registry: workloads announced by their sidecars when they connect.
//!
//! A sidecar's xDS node carries its workload (name, namespace, service account, labels,
//! inbound address, ports, locality). While its stream is up it is an endpoint of the service
//! named by its `app` label (or its workload name). A sidecar that disconnects stays for a
//! grace period (a network blip must not empty the mesh); one that comes back within it simply
//! continues. The registry is saved in the state directory on every publication and restored
//! at start with every workload "disconnected now": a restarted control plane keeps serving
//! the endpoints of sidecars that have not reconnected yet, for one grace period, instead of
//! withdrawing them from the sidecars that reconnect first.

use meshlite_xds_proto::discovery::Node;
use prost_types::value::Kind;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use meshlite_xds_proto::spiffe::SpiffeId;

/// How long a disconnected workload stays registered (default).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// A served port and its protocol (`http`, `http2`, `grpc`, `tcp`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkloadPort {
    /// Service port number.
    pub port: u16,
    /// Protocol name.
    pub protocol: String,
    /// The workload port the app listens on (PeerAuthentication's `portLevelMtls` and
    /// AuthorizationPolicy's `ports` name it), when announced.
    #[serde(default)]
    pub target_port: Option<u16>,
}

/// One workload instance, as its sidecar announced it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Workload {
    /// Registry key: `<node id>@<inbound address>`.
    pub key: String,
    /// Workload name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// SPIFFE ID (from the trust domain, namespace and service account).
    pub identity: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Inbound address other sidecars reach.
    pub address: SocketAddr,
    /// Served ports.
    pub ports: Vec<WorkloadPort>,
    /// region/zone/subzone.
    pub locality: [String; 3],
}

/// Why a node's announcement was refused.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// A required metadata key is missing or not a string.
    #[error("node metadata `{0}` is missing or not a string")]
    Missing(&'static str),
    /// A value is malformed.
    #[error("node metadata `{key}`: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        message: String,
    },
    /// The workload claims a label its certificate does not grant.
    #[error("announces label {key}={claimed}, but its certificate grants {key}={granted}")]
    LabelNotGranted {
        /// The label.
        key: String,
        /// What the announcement says.
        claimed: String,
        /// What the certificate grants.
        granted: String,
    },
    /// The workload serves ports without a granted `app` label (the service it would join).
    #[error(
        "serves ports as `{claimed}`, but its certificate grants no `app` label; mint its token with `token create --label app=<service>`"
    )]
    ServiceNotGranted {
        /// The service it claims.
        claimed: String,
    },
}

impl AnnounceError {
    /// The `result` label of `meshlite_control_announcements_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AnnounceError::Missing(_) | AnnounceError::Invalid { .. } => "malformed",
            AnnounceError::LabelNotGranted { .. } => "label_not_granted",
            AnnounceError::ServiceNotGranted { .. } => "service_not_granted",
        }
    }
}

fn str_field<'a>(node: &'a Node, key: &'static str) -> Result<&'a str, AnnounceError> {
    node.metadata
        .as_ref()
        .and_then(|m| m.fields.get(key))
        .and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.as_str()),
            _ => None,
        })
        .ok_or(AnnounceError::Missing(key))
}

impl Workload {
    /// Reads a node's announcement. The namespace and service account must be the ones the
    /// caller's certificate proves (`peer`): a sidecar cannot register as someone else. Its
    /// labels must agree with those the certificate grants (`granted`, see
    /// [`crate::ca::binding`]), and a workload that serves ports must have been granted its
    /// `app` label: the service it joins, and whose identities callers then accept, is bound
    /// by the control plane, never taken from the announcement alone.
    pub fn from_node(
        node: &Node,
        peer: &SpiffeId,
        granted: &BTreeMap<String, String>,
    ) -> Result<Self, AnnounceError> {
        let name = str_field(node, "NAME")?.to_string();
        let namespace = str_field(node, "NAMESPACE")?.to_string();
        let service_account = str_field(node, "SERVICE_ACCOUNT")?.to_string();
        match peer.namespace_and_account() {
            Some((ns, sa)) if ns == namespace && sa == service_account => {}
            _ => {
                return Err(AnnounceError::Invalid {
                    key: "NAMESPACE",
                    message: format!(
                        "announces {namespace}/{service_account} but the certificate is {peer}"
                    ),
                });
            }
        }
        let address: SocketAddr =
            str_field(node, "INBOUND_ADDRESS")?
                .parse()
                .map_err(|_| AnnounceError::Invalid {
                    key: "INBOUND_ADDRESS",
                    message: "not ip:port".into(),
                })?;
        let fields = node.metadata.as_ref().map(|m| &m.fields);
        let labels: BTreeMap<String, String> = fields
            .and_then(|f| f.get("LABELS"))
            .and_then(|v| match &v.kind {
                Some(Kind::StructValue(s)) => Some(
                    s.fields
                        .iter()
                        .filter_map(|(k, v)| match &v.kind {
                            Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                            _ => None,
                        })
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default();
        let mut ports = Vec::new();
        if let Some(Some(Kind::ListValue(list))) =
            fields.and_then(|f| f.get("PORTS")).map(|v| &v.kind)
        {
            for v in &list.values {
                let Some(Kind::StringValue(s)) = &v.kind else {
                    continue;
                };
                // `port/protocol[/workload port]`
                let mut parts = s.splitn(3, '/');
                let bad = || AnnounceError::Invalid {
                    key: "PORTS",
                    message: format!("`{s}` is not port/protocol[/workload port]"),
                };
                let port = parts
                    .next()
                    .unwrap_or("")
                    .parse::<u16>()
                    .map_err(|_| bad())?;
                let proto = parts.next().unwrap_or("http");
                let target_port = parts
                    .next()
                    .map(|t| t.parse::<u16>().map_err(|_| bad()))
                    .transpose()?;
                ports.push(WorkloadPort {
                    port,
                    protocol: proto.to_ascii_lowercase(),
                    target_port,
                });
            }
        }
        for (key, claimed) in &labels {
            if let Some(g) = granted.get(key)
                && g != claimed
            {
                return Err(AnnounceError::LabelNotGranted {
                    key: key.clone(),
                    claimed: claimed.clone(),
                    granted: g.clone(),
                });
            }
        }
        if !ports.is_empty() {
            let claimed = labels.get("app").cloned().unwrap_or_else(|| name.clone());
            match granted.get("app") {
                Some(app) if *app == claimed => {}
                Some(app) => {
                    return Err(AnnounceError::LabelNotGranted {
                        key: "app".into(),
                        claimed,
                        granted: app.clone(),
                    });
                }
                None => return Err(AnnounceError::ServiceNotGranted { claimed }),
            }
        }
        let loc = node.locality.clone().unwrap_or_default();
        Ok(Self {
            key: format!("{}@{address}", node.id),
            name,
            namespace,
            service_account,
            identity: peer.as_str().to_string(),
            labels,
            address,
            ports,
            locality: [loc.region, loc.zone, loc.sub_zone],
        })
    }

    /// The service this workload is an endpoint of: its `app` label, else its name.
    pub fn service_name(&self) -> &str {
        self.labels.get("app").map_or(&self.name, |s| s.as_str())
    }
}

#[derive(Debug)]
struct Entry {
    workload: Workload,
    streams: usize,
    gone_since: Option<Instant>,
}

/// The registered workloads.
#[derive(Debug)]
pub struct Registry {
    grace: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Registry {
    /// An empty registry whose disconnected workloads leave after `grace`.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock cannot leave the map half-updated (each operation
        // is a single insert or field write), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stream for `w` opened; returns whether the endpoint set changed.
    pub fn connect(&self, w: Workload) -> bool {
        let mut entries = self.lock();
        match entries.get_mut(&w.key) {
            Some(e) => {
                e.streams += 1;
                e.gone_since = None;
                let changed = e.workload != w;
                e.workload = w;
                changed
            }
            None => {
                entries.insert(
                    w.key.clone(),
                    Entry {
                        workload: w,
                        streams: 1,
                        gone_since: None,
                    },
                );
                true
            }
        }
    }

    /// A stream for `key` closed; the workload stays until the grace period passes.
    pub fn disconnect(&self, key: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.streams = e.streams.saturating_sub(1);
            if e.streams == 0 {
                e.gone_since = Some(Instant::now());
            }
        }
    }

    /// Removes workloads gone longer than the grace period; returns whether any was removed.
    pub fn sweep(&self) -> bool {
        let grace = self.grace;
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|_, e| e.gone_since.is_none_or(|t| t.elapsed() < grace));
        entries.len() != before
    }

    /// Every registered workload, sorted by key (stable output for translation).
    pub fn workloads(&self) -> Vec<Workload> {
        let mut all: Vec<Workload> = self.lock().values().map(|e| e.workload.clone()).collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// The grace period.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Writes every workload to `path` (atomically: a temporary file renamed into place).
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(&self.workloads()).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }

    /// A registry holding the workloads saved at `path`, each disconnected as of now, so they
    /// stay one grace period unless their sidecars reconnect. A missing file is an empty
    /// registry; an unreadable one is logged and ignored (sidecars re-announce themselves).
    pub fn restore(path: &std::path::Path, grace: Duration) -> Self {
        let registry = Self::new(grace);
        let saved: Vec<Workload> = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), "ignoring the saved registry: {e}");
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring the saved registry: {e}");
                Vec::new()
            }
        };
        if !saved.is_empty() {
            tracing::info!(
                workloads = saved.len(),
                "restored the registry; workloads stay until they reconnect or their grace ends"
            );
        }
        let now = Instant::now();
        let mut entries = registry.lock();
        for w in saved {
            entries.insert(
                w.key.clone(),
                Entry {
                    workload: w,
                    streams: 0,
                    gone_since: Some(now),
                },
            );
        }
        drop(entries);
        registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(key: &str) -> Workload {
        Workload {
            key: key.into(),
            name: "reviews-v1".into(),
            namespace: "default".into(),
            service_account: "reviews".into(),
            identity: "spiffe://cluster.local/ns/default/sa/reviews".into(),
            labels: BTreeMap::new(),
            address: "127.0.0.1:1".parse().unwrap(),
            ports: vec![],
            locality: Default::default(),
        }
    }

    /// A node announcing `labels` and, when `serves`, port 9080.
    fn node(labels: &[(&str, &str)], serves: bool) -> Node {
        use prost_types::{ListValue, Struct, Value};
        let s = |v: &str| Value {
            kind: Some(Kind::StringValue(v.to_string())),
        };
        let mut fields = BTreeMap::from([
            ("NAME".to_string(), s("reviews-v1")),
            ("NAMESPACE".to_string(), s("default")),
            ("SERVICE_ACCOUNT".to_string(), s("reviews")),
            ("INBOUND_ADDRESS".to_string(), s("127.0.0.1:15006")),
            (
                "LABELS".to_string(),
                Value {
                    kind: Some(Kind::StructValue(Struct {
                        fields: labels.iter().map(|(k, v)| (k.to_string(), s(v))).collect(),
                    })),
                },
            ),
        ]);
        if serves {
            fields.insert(
                "PORTS".into(),
                Value {
                    kind: Some(Kind::ListValue(ListValue {
                        values: vec![s("9080/http/19080")],
                    })),
                },
            );
        }
        Node {
            id: "reviews-v1.default".into(),
            metadata: Some(Struct {
                fields: fields.into_iter().collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn announcements_claim_only_what_the_certificate_grants() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/reviews").unwrap();
        let grant = |l: &[(&str, &str)]| -> BTreeMap<String, String> {
            l.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let granted = grant(&[("app", "reviews")]);
        let w = Workload::from_node(
            &node(&[("app", "reviews"), ("version", "v1")], true),
            &id,
            &granted,
        )
        .expect("granted app, free version");
        assert_eq!(w.ports[0].target_port, Some(19080));
        assert_eq!(w.service_name(), "reviews");
        let e = Workload::from_node(&node(&[("app", "ratings")], true), &id, &granted).unwrap_err();
        assert_eq!(e.reason(), "label_not_granted", "{e}");
        let pinned = grant(&[("app", "reviews"), ("version", "v1")]);
        let e = Workload::from_node(
            &node(&[("app", "reviews"), ("version", "v2")], true),
            &id,
            &pinned,
        )
        .unwrap_err();
        assert!(e.to_string().contains("version=v2"), "{e}");
        let e = Workload::from_node(&node(&[("app", "reviews")], true), &id, &BTreeMap::new())
            .unwrap_err();
        assert_eq!(e.reason(), "service_not_granted", "{e}");
        assert!(
            Workload::from_node(&node(&[("app", "reviews")], false), &id, &BTreeMap::new()).is_ok(),
            "a workload that serves nothing may call without a grant"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_restored_registry_keeps_workloads_one_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        let r = Registry::new(Duration::from_secs(30));
        r.connect(workload("a"));
        r.connect(workload("b"));
        r.save(&path).unwrap();

        let restored = Registry::restore(&path, Duration::from_secs(30));
        assert_eq!(restored.workloads().len(), 2);
        // "a" reconnects; "b" never does and leaves after the grace period.
        assert!(!restored.connect(workload("a")));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(restored.sweep());
        let left: Vec<String> = restored.workloads().into_iter().map(|w| w.key).collect();
        assert_eq!(left, vec!["a".to_string()]);
        // A missing or corrupt file is an empty registry, not an error.
        std::fs::write(&path, b"{not json").unwrap();
        assert!(
            Registry::restore(&path, Duration::from_secs(30))
                .workloads()
                .is_empty()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_disconnected_workload_leaves_after_the_grace_period_unless_it_returns() {
        let r = Registry::new(Duration::from_secs(30));
        assert!(r.connect(workload("a")));
        assert!(!r.connect(workload("a")), "same announcement: no change");
        r.disconnect("a");
        r.disconnect("a");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!r.sweep());
        // Back within the grace period: still there, no change.
        assert!(!r.connect(workload("a")));
        r.disconnect("a");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(r.sweep());
        assert!(r.workloads().is_empty());
    }
}
