//! Explicit-mode listeners for opaque TCP services, following the snapshot.
//!
//! An app that is not captured reaches an HTTP service through the outbound listener (its
//! Host names the service), but raw TCP names nothing: each `tcp` service port gets its own
//! local listener, as Istio's Sidecar egress listener with `bind` and `captureMode: NONE`
//! does. For every `tcp` service port in the current snapshot (pushed by the control plane
//! or listed in the static file) the sidecar listens on the outbound listener's IP
//! (127.0.0.1 when that is unspecified, so a service port is never opened to the network) at
//! the service port; a static `listen:` address takes precedence for its service.
//!
//! Listeners follow pushes: a service that appears opens its listener, one that goes away
//! stops accepting while the connections it already accepted keep relaying (a push never
//! drops a connection). Each accepted connection is routed over the snapshot current at that
//! moment (its VirtualService `tcp` rules, its endpoints).
//!
//! Ports never taken: the proxy's own (Istio's 150xx set and the ports actually bound), the
//! ports the local workload serves (its service ports and its app's), and services outside
//! the mesh (their TCP is not tunnelled). Two services wanting one address: the first by
//! name keeps it (Istio resolves listener conflicts by age, then name; meshlite has no age)
//! and the other is logged. A bind that fails is a warning, never fatal, except for a static
//! `listen:` at start-up, which the operator asked for by address.
//!
//! Turning it off (`listeners.tcp_services: false`, or `--tcp-listeners off`): a pod whose
//! outbound TCP is captured transparently does not need these listeners (a captured
//! connection is matched by its original destination), and a host running several sidecars
//! side by side may prefer static `listen:` addresses. The default is on, since explicit mode
//! needs it and binding on loopback costs nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::context::ProxyContext;
use crate::protocol::Protocol;
use crate::snapshot::Snapshot;

/// Istio's reserved sidecar ports (pilot-agent, Envoy, ztunnel), never bound for a service:
/// 15000 admin, 15001 outbound, 15004 debug, 15006 inbound, 15008 HBONE, 15009 HBONE
/// plaintext, 15020 merged metrics, 15021 health, 15053 DNS, 15090 Envoy Prometheus.
pub const RESERVED_PORTS: [u16; 10] = [
    15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090,
];

/// Why a static listener could not be opened at start-up.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({service}): {source}")]
pub struct ListenError {
    /// `name:port` of the service.
    pub service: String,
    /// The address.
    pub addr: SocketAddr,
    /// The OS error.
    pub source: std::io::Error,
}

/// What a listener accepts for: one service port of the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServicePort {
    /// The service's FQDN.
    pub fqdn: Arc<str>,
    /// The service port.
    pub port: u16,
    /// Its short name (`name:port` names the listener in logs and the startup line).
    pub name: Arc<str>,
}

impl std::fmt::Display for ServicePort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.port)
    }
}

/// Where a listener is: its address; for a static `listen:` on port 0 (any free port) also
/// its service, so several such listeners do not collide.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Slot {
    addr: SocketAddr,
    any_port_for: Option<(Arc<str>, u16)>,
}

impl Slot {
    fn of(addr: SocketAddr, service: &ServicePort) -> Self {
        Self {
            addr,
            any_port_for: (addr.port() == 0).then(|| (service.fqdn.clone(), service.port)),
        }
    }
}

/// A wanted listener: where, for what, and whether the file asked for it by address.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Wanted {
    service: ServicePort,
    fixed: bool,
}

/// How the listeners are chosen (from the proxy's own settings, never pushed).
#[derive(Clone, Debug)]
pub struct ListenerSettings {
    /// The IP per-service listeners bind (the outbound listener's, loopback if unspecified).
    pub ip: IpAddr,
    /// Per-service listeners for every `tcp` service port; off: static `listen:` only.
    pub per_service: bool,
    /// Ports never bound for a service (the proxy's own).
    pub reserved: BTreeSet<u16>,
}

impl ListenerSettings {
    /// Settings for a proxy whose outbound listener is on `outbound` and that bound
    /// `bound` ports of its own.
    pub fn new(outbound: SocketAddr, per_service: bool, bound: &[u16]) -> Self {
        let ip = if outbound.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            outbound.ip()
        };
        let reserved = RESERVED_PORTS
            .iter()
            .chain(bound)
            .copied()
            .filter(|p| *p != 0)
            .collect();
        Self {
            ip,
            per_service,
            reserved,
        }
    }

    /// The listeners `snap` wants, as `(address, name:port)` in address order (what the
    /// admin dump and tests show).
    pub fn plan(&self, snap: &Snapshot) -> Vec<(String, String)> {
        self.wanted(snap)
            .0
            .iter()
            .map(|(slot, w)| (slot.addr.to_string(), w.service.to_string()))
            .collect()
    }

    /// The listeners `snap` wants, by address (conflicts settled, skipped ports left out),
    /// with what was left out and why, for the log.
    fn wanted(&self, snap: &Snapshot) -> (BTreeMap<Slot, Wanted>, Vec<String>) {
        let mut notes = Vec::new();
        let mut out: BTreeMap<Slot, Wanted> = BTreeMap::new();
        let mut fixed = Vec::new();
        let mut dynamic = Vec::new();
        let made = snap.service_clusters().map(|c| {
            let s = &c.labels.service;
            let service = (s.fqdn.clone(), c.port, s.name.clone());
            (c.protocol, c.is_external(), c.listen, service)
        });
        // Known, not fetched (on demand): read from the spec, nothing made.
        let tcp = |s: &&Arc<crate::source::ServiceSpec>| {
            s.protocol == Protocol::Tcp && s.external.is_none()
        };
        let known = snap.awaiting_specs().filter(tcp).map(|s| {
            let service = (
                Arc::from(s.hostname.as_str()),
                s.port,
                Arc::from(s.name.as_str()),
            );
            (s.protocol, s.external.is_some(), s.listen, service)
        });
        for (protocol, external, listen, (fqdn, port, name)) in made.chain(known) {
            if protocol != Protocol::Tcp || external {
                continue;
            }
            let service = ServicePort { fqdn, port, name };
            match listen {
                Some(addr) => fixed.push((addr, service)),
                None => dynamic.push(service),
            }
        }
        let with_fixed: BTreeSet<(Arc<str>, u16)> = fixed
            .iter()
            .map(|(_, s)| (s.fqdn.clone(), s.port))
            .collect();
        for (addr, service) in fixed {
            claim(&mut out, &mut notes, addr, service, true);
        }
        if !self.per_service {
            return (out, notes);
        }
        let served: BTreeSet<u16> = snap
            .inbound_ports()
            .flat_map(|(port, ip)| [port, ip.target.port()])
            .collect();
        // First by name wins a port (and the same service on one port appears once).
        dynamic.sort_by(|a, b| (a.port, &a.fqdn).cmp(&(b.port, &b.fqdn)));
        dynamic.dedup();
        for service in dynamic {
            if with_fixed.contains(&(service.fqdn.clone(), service.port)) {
                continue;
            }
            if self.reserved.contains(&service.port) {
                notes.push(format!("{service}: the port is one of the proxy's own"));
                continue;
            }
            if served.contains(&service.port) {
                continue;
            }
            let addr = SocketAddr::new(self.ip, service.port);
            claim(&mut out, &mut notes, addr, service, false);
        }
        (out, notes)
    }
}

/// Gives `addr` to `service` unless an earlier claim has it (then the conflict is noted).
fn claim(
    out: &mut BTreeMap<Slot, Wanted>,
    notes: &mut Vec<String>,
    addr: SocketAddr,
    service: ServicePort,
    fixed: bool,
) {
    let slot = Slot::of(addr, &service);
    match out.get(&slot) {
        Some(w) => notes.push(format!("{addr}: {service} conflicts with {}", w.service)),
        None => {
            out.insert(slot, Wanted { service, fixed });
        }
    }
}

/// One open listener: the service it accepts for (`None` tells it to stop).
#[derive(Debug)]
struct Open {
    service: watch::Sender<Option<ServicePort>>,
    /// The address actually bound.
    bound: SocketAddr,
}

/// The open per-service TCP listeners of a running proxy.
#[derive(Debug)]
pub struct TcpListeners {
    settings: ListenerSettings,
    open: Mutex<BTreeMap<Slot, Open>>,
    /// Addresses whose bind failed, so a failure is logged once, not on every push.
    failed: Mutex<BTreeSet<Slot>>,
    /// Conflicts already logged.
    noted: Mutex<BTreeSet<String>>,
}

impl TcpListeners {
    /// No listener yet.
    pub fn new(settings: ListenerSettings) -> Self {
        Self {
            settings,
            open: Mutex::new(BTreeMap::new()),
            failed: Mutex::new(BTreeSet::new()),
            noted: Mutex::new(BTreeSet::new()),
        }
    }

    /// Opens the listeners the first snapshot wants. A static `listen:` that cannot be bound
    /// fails the start; any other bind failure is a warning.
    pub fn start(&self, ctx: &Arc<ProxyContext>) -> Result<(), ListenError> {
        self.reconcile(ctx, true)
    }

    /// Brings the listeners in line with the current snapshot: opens what it adds, stops what
    /// it no longer has (their connections keep running), re-points what changed hands.
    pub fn update(&self, ctx: &Arc<ProxyContext>) {
        // Only the start-up call can fail.
        let _ = self.reconcile(ctx, false);
    }

    /// The open listeners: `name:port` -> address.
    pub fn bound(&self) -> BTreeMap<String, SocketAddr> {
        lock(&self.open)
            .values()
            .filter_map(|o| {
                o.service
                    .borrow()
                    .as_ref()
                    .map(|s| (s.to_string(), o.bound))
            })
            .collect()
    }

    fn reconcile(&self, ctx: &Arc<ProxyContext>, starting: bool) -> Result<(), ListenError> {
        let snap = ctx.snapshot.load();
        let (wanted, notes) = self.settings.wanted(&snap);
        drop(snap);
        {
            let mut noted = lock(&self.noted);
            for n in notes {
                if noted.insert(n.clone()) {
                    tracing::warn!("tcp listener not opened: {n}");
                }
            }
        }
        let mut open = lock(&self.open);
        open.retain(|slot, o| match wanted.get(slot) {
            None => {
                tracing::info!(addr = %o.bound, "tcp listener closed (service gone); open connections continue");
                o.service.send_replace(None);
                false
            }
            Some(w) => {
                if o.service.borrow().as_ref() != Some(&w.service) {
                    o.service.send_replace(Some(w.service.clone()));
                }
                true
            }
        });
        let mut failed = lock(&self.failed);
        failed.retain(|a| wanted.contains_key(a));
        for (slot, w) in wanted {
            if open.contains_key(&slot) {
                continue;
            }
            let addr = slot.addr;
            match bind(addr) {
                Ok(listener) => {
                    // A listener asked for on port 0 resolves its own address.
                    let bound = listener.local_addr().unwrap_or(addr);
                    tracing::info!(addr = %bound, service = %w.service, "tcp listener open");
                    failed.remove(&slot);
                    let (tx, rx) = watch::channel(Some(w.service));
                    tokio::spawn(serve(ctx.clone(), listener, rx));
                    open.insert(slot, Open { service: tx, bound });
                }
                Err(source) if starting && w.fixed => {
                    return Err(ListenError {
                        service: w.service.to_string(),
                        addr,
                        source,
                    });
                }
                Err(e) => {
                    if failed.insert(slot) {
                        tracing::warn!(%addr, service = %w.service, "tcp listener not opened: {e}");
                    }
                }
            }
        }
        Ok(())
    }
}

/// Keeps a proxy's TCP listeners in line with its snapshot until the process exits.
pub async fn follow(ctx: Arc<ProxyContext>, listeners: Arc<TcpListeners>) {
    let mut swapped = ctx.snapshot_swapped.subscribe();
    // A push swapped in before this task subscribed is caught up here.
    listeners.update(&ctx);
    let mut drain = ctx.drain.watch();
    loop {
        tokio::select! {
            changed = swapped.changed() => {
                if changed.is_err() {
                    return;
                }
                listeners.update(&ctx);
            }
            _ = drain.changed() => return,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }?;
    sock.set_reuseaddr(true)?;
    sock.set_nodelay(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

/// Accepts connections for the service `service` names until it says stop or the proxy
/// drains. Connections already accepted run on as their own tasks.
async fn serve(
    ctx: Arc<ProxyContext>,
    listener: TcpListener,
    mut service: watch::Receiver<Option<ServicePort>>,
) {
    let mut drain = ctx.drain.watch();
    let local = listener.local_addr().ok();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Some(target) = service.borrow().clone() else { return };
                    let _ = stream.set_nodelay(true);
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let _guard = ctx.drain.track();
                        let host = ctx.snapshot.load().host_port(&target.fqdn, target.port).cloned();
                        match host {
                            Some(host) => {
                                let dst = local.map(|a| a.ip());
                                super::tcp::route_and_relay(&ctx, &host, dst, stream).await;
                            }
                            None => tracing::debug!(service = %target, "tcp connection closed: the service is gone"),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("tcp accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            changed = service.changed() => {
                if changed.is_err() || service.borrow().is_none() {
                    return;
                }
            }
            _ = drain.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_outbound_ip_binds_loopback_and_own_ports_are_reserved() {
        let s = ListenerSettings::new(SocketAddr::from(([0, 0, 0, 0], 15001)), true, &[18000, 0]);
        assert_eq!(s.ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(s.reserved.contains(&15021));
        assert!(s.reserved.contains(&18000));
        assert!(!s.reserved.contains(&0));
        let s = ListenerSettings::new(SocketAddr::from(([127, 0, 0, 2], 15001)), true, &[]);
        assert_eq!(s.ip, IpAddr::from([127, 0, 0, 2]));
    }
}
