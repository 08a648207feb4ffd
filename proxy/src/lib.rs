//! meshlite-proxy: the per-pod sidecar of the meshlite service mesh.
//!
//! A running proxy is a set of listeners sharing one [`context::ProxyContext`]: outbound (the
//! app's requests, routed and sent over mutual TLS), inbound (other sidecars' requests,
//! authenticated and handed to the app), per-service TCP listeners, and the operator endpoints.
//! [`RunningProxy::start`] binds them all before returning, so a caller that sees `Ok` knows the
//! proxy is serving; it never starts half-configured.
#![forbid(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod capture;
pub mod config;
pub mod context;
pub mod control_client;
pub mod dns;
pub mod identity;
pub mod inbound;
pub mod message;
pub mod names;
pub mod outbound;
pub mod policy;
pub mod protocol;
pub mod resilience;
pub mod route;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod telemetry;
pub mod transport;
pub mod xds;

#[cfg(test)]
mod footprint;

use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use config::ProxyConfig;
use context::ProxyContext;
use identity::spiffe::SpiffeId;
use identity::tls::{Identity, IdentityError};
use server::drain::Drain;
use snapshot::build::LocalSettings;
use snapshot::{Snapshot, SnapshotError};
use telemetry::Telemetry;
use telemetry::access_log::{AccessLog, AccessLogTarget};
use telemetry::metrics::Metrics;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The identity files are unusable.
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    /// The SPIFFE ID in the config is invalid (validated earlier; kept for completeness).
    #[error("identity.spiffe_id: {0}")]
    SpiffeId(#[from] identity::spiffe::SpiffeIdError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({name}): {source}")]
    Bind {
        /// Which listener.
        name: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The access log target could not be opened.
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
    /// The first snapshot could not be built.
    #[error("config: {0}")]
    Snapshot(#[from] SnapshotError),
    /// No identity could be had from the control plane.
    #[error("control plane: {0}")]
    Control(#[from] xds::XdsError),
    /// A static `listen:` address of a TCP service could not be bound.
    #[error(transparent)]
    TcpListen(#[from] outbound::tcp_listeners::ListenError),
}

impl StartError {
    /// Whether the cause lies in what the operator configured (files, names, a token the CA
    /// refuses), as opposed to the machine (a port taken, a control plane unreachable).
    pub fn is_configuration(&self) -> bool {
        match self {
            StartError::Bind { .. } | StartError::TcpListen(_) => false,
            StartError::Control(e) => !matches!(
                e,
                xds::XdsError::Connect(_) | xds::XdsError::Stream(_) | xds::XdsError::State(_)
            ),
            _ => true,
        }
    }
}

/// Options that are not part of the config file.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// Where JSON access log lines go; off when `None`.
    pub access_log: Option<AccessLogTarget>,
    /// Where authorization audit lines go; off when `None`.
    pub audit_log: Option<AccessLogTarget>,
    /// Every authorization decision is audited, not only AUDIT-marked ones.
    pub audit_all: bool,
    /// The DNS proxy; off when `None`.
    pub dns: Option<dns::DnsOptions>,
    /// The app's health probes the kubelet asks the metrics port for (Istio's probe rewrite).
    pub app_probers: Arc<admin::app_probe::AppProbers>,
}

/// The addresses actually bound (ports configured as 0 are resolved here).
#[derive(Clone, Debug, Serialize)]
pub struct BoundAddrs {
    /// Outbound listener.
    pub outbound: SocketAddr,
    /// Inbound (mTLS) listener.
    pub inbound: SocketAddr,
    /// Admin.
    pub admin: SocketAddr,
    /// Prometheus metrics.
    pub metrics: SocketAddr,
    /// Health.
    pub health: SocketAddr,
    /// Explicit-mode TCP listeners open at start-up, by `service:port` (more open and close
    /// as pushes add and remove `tcp` services).
    pub tcp: BTreeMap<String, SocketAddr>,
    /// The DNS proxy (UDP and TCP), when it runs.
    pub dns: Option<SocketAddr>,
}

/// A started proxy.
#[derive(Debug)]
pub struct RunningProxy {
    /// Bound addresses.
    pub addrs: BoundAddrs,
    ctx: Arc<ProxyContext>,
    quit: Arc<Notify>,
}

async fn bind(name: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    };
    let bind_err = |source| StartError::Bind {
        name: name.to_string(),
        addr,
        source,
    };
    let sock = sock.map_err(bind_err)?;
    sock.set_reuseaddr(true).map_err(bind_err)?;
    sock.set_nodelay(true).map_err(bind_err)?;
    sock.bind(addr).map_err(bind_err)?;
    sock.listen(4096).map_err(bind_err)
}

fn local_addr(l: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    l.local_addr().unwrap_or(fallback)
}

impl RunningProxy {
    /// Loads the identity, builds the first snapshot, binds every listener and starts serving.
    pub async fn start(cfg: ProxyConfig, opts: StartOptions) -> Result<Self, StartError> {
        let metrics = Metrics::new();
        let id = SpiffeId::parse(&cfg.identity.spiffe_id)?;
        let (identity, control) = match &cfg.control {
            None => {
                let missing = || IdentityError::Invalid("identity files are not configured".into());
                let identity = Identity::from_files(
                    &id,
                    cfg.identity.cert.as_deref().ok_or_else(missing)?,
                    cfg.identity.key.as_deref().ok_or_else(missing)?,
                    cfg.identity.roots.as_deref().ok_or_else(missing)?,
                    metrics.tls_failures.clone(),
                )?;
                (Arc::new(identity), None)
            }
            Some(c) => {
                let mut b = xds::bootstrap::bootstrap(c, &id, metrics.tls_failures.clone()).await?;
                b.state.set_on_demand(c.on_demand);
                (b.identity.clone(), Some(b))
            }
        };
        // The sources: the proxy's own file, and the control plane's last good state.
        let local = Arc::new(LocalSettings::from_config(&cfg));
        let file_view = source::file::view(&cfg);
        let view = match &control {
            Some(b) => match b.state.clone().view() {
                Ok(pushed) => source::merge::merge(pushed, file_view.clone()),
                Err(e) => {
                    tracing::warn!("persisted config does not apply ({e}); starting without it");
                    file_view.clone()
                }
            },
            None => file_view.clone(),
        };
        let snapshot = Snapshot::build(&local, &view, &identity, &metrics, 1, None)?;
        let server_tls = identity.server_config()?;
        let access_log = match opts.access_log {
            Some(t) => Some(
                AccessLog::start_counting(
                    t,
                    metrics.access_log.queue_full.clone(),
                    metrics.access_log.write_failed.clone(),
                )
                .map_err(StartError::AccessLog)?,
            ),
            None => None,
        };
        let audit_log = match opts.audit_log {
            Some(t) => Some(
                AccessLog::start(t, metrics.security.audit_log_dropped.clone())
                    .map_err(StartError::AccessLog)?,
            ),
            None => None,
        };

        let l = &cfg.listeners;
        let outbound = bind("outbound", l.outbound).await?;
        let inbound = bind("inbound", l.inbound).await?;
        let admin_l = bind("admin", l.admin).await?;
        let metrics_l = bind("metrics", l.metrics).await?;
        let health_l = bind("health", l.health).await?;
        let dns = match &opts.dns {
            None => None,
            Some(d) => match dns::DnsListeners::bind(d.addr).await {
                Ok(l) => Some(l),
                Err(e) if d.optional && e.kind() == std::io::ErrorKind::AddrInUse => {
                    tracing::warn!(
                        "DNS proxy off: {} is taken (another sidecar on this host?); pass --dns-addr to choose another",
                        d.addr
                    );
                    None
                }
                Err(source) => {
                    return Err(StartError::Bind {
                        name: "dns".into(),
                        addr: d.addr,
                        source,
                    });
                }
            },
        };
        let mut addrs = BoundAddrs {
            outbound: local_addr(&outbound, l.outbound),
            inbound: local_addr(&inbound, l.inbound),
            admin: local_addr(&admin_l, l.admin),
            metrics: local_addr(&metrics_l, l.metrics),
            health: local_addr(&health_l, l.health),
            tcp: BTreeMap::new(),
            dns: dns.as_ref().and_then(|l| l.local_addr().ok()),
        };

        let control_status = control.as_ref().map(|b| {
            let status = Arc::new(xds::ControlStatus::default());
            let restored = !b.state.is_empty();
            status
                .persisted
                .store(restored, std::sync::atomic::Ordering::Relaxed);
            metrics.control.persisted.set(i64::from(restored));
            status
        });
        metrics.control.config_version.set(1);
        if let Some(expiry) = identity.not_after() {
            metrics.control.cert_expiry.set(expiry);
        }
        let version = snapshot.version;
        let ctx = Arc::new(ProxyContext {
            control: control_status.clone(),
            snapshot: ArcSwap::from_pointee(snapshot),
            snapshot_swapped: tokio::sync::watch::Sender::new(version),
            identity,
            telemetry: Arc::new(Telemetry {
                metrics,
                access_log,
                audit: policy::audit::AuditLog::new(audit_log, opts.audit_all),
                stdout_log: std::sync::OnceLock::new(),
            }),
            http_builder: server::conn::http_builder(&cfg.limits),
            limits: cfg.limits.clone(),
            headers: cfg.headers.clone(),
            drain: Arc::new(Drain::new()),
            connect_timeout: cfg.upstream.connect_timeout,
            demand: cfg
                .control
                .as_ref()
                .filter(|c| c.on_demand)
                .map(|c| xds::demand::Demand::new(c.on_demand_timeout)),
        });
        let quit = Arc::new(Notify::new());
        tokio::spawn(telemetry::metrics::sweep_idle_series(Arc::downgrade(
            &ctx.telemetry,
        )));
        tokio::spawn(outbound::serve_listener(ctx.clone(), outbound));
        tokio::spawn(inbound::serve_listener(ctx.clone(), inbound, server_tls));
        if let (Some(listeners), Some(d)) = (dns, &opts.dns) {
            listeners.spawn(ctx.clone(), d);
        }
        let own: Vec<u16> = [
            addrs.outbound,
            addrs.inbound,
            addrs.admin,
            addrs.metrics,
            addrs.health,
        ]
        .iter()
        .chain(addrs.dns.iter())
        .map(SocketAddr::port)
        .collect();
        let tcp_listeners = Arc::new(outbound::tcp_listeners::TcpListeners::new(
            outbound::tcp_listeners::ListenerSettings::new(addrs.outbound, l.tcp_services, &own),
        ));
        tcp_listeners.start(&ctx)?;
        addrs.tcp = tcp_listeners.bound();
        tokio::spawn(outbound::tcp_listeners::follow(
            ctx.clone(),
            tcp_listeners.clone(),
        ));
        let operator = admin::Operator {
            quit: quit.clone(),
            probers: opts.app_probers.clone(),
            tcp_listeners,
        };
        for (listener, role) in [
            (admin_l, admin::Role::Admin),
            (metrics_l, admin::Role::Metrics),
            (health_l, admin::Role::Health),
        ] {
            tokio::spawn(admin::serve(ctx.clone(), listener, role, operator.clone()));
        }
        if let (Some(b), Some(status), Some(c)) = (control, control_status, &cfg.control) {
            let inbound_addr = xds::node::inbound_address(&cfg, addrs.inbound);
            let metrics_addr = xds::node::metrics_address(addrs.metrics, inbound_addr);
            let node = xds::node::node(&cfg, &id, inbound_addr, metrics_addr);
            let ttl = c.cert_ttl;
            let control_metrics = ctx.telemetry.metrics.control.clone();
            tokio::spawn(
                xds::client::XdsClient::new(
                    ctx.clone(),
                    xds::client::StaticInputs {
                        local,
                        file: file_view,
                    },
                    b.endpoint.clone(),
                    node,
                    b.state,
                    b.state_dir.clone(),
                    status,
                )
                .run(),
            );
            tokio::spawn(xds::rotation::run(
                ctx.identity.clone(),
                b.endpoint,
                ttl,
                b.state_dir,
                control_metrics,
            ));
        }
        Ok(Self { addrs, ctx, quit })
    }

    /// Resolves when an operator asked the proxy to exit (`POST /quitquitquit`).
    pub async fn quit_requested(&self) {
        self.quit.notified().await;
    }

    /// Drains: readiness turns 503, listeners stop accepting, open connections finish their
    /// in-flight requests. Returns the connections still open when the deadline passed.
    pub async fn drain(&self) -> usize {
        self.ctx.telemetry.metrics.draining.set(1);
        self.ctx.drain.drain(self.ctx.limits.drain_timeout).await
    }

    /// The shared context (benchmarks and tests drive the request path through it).
    pub fn context(&self) -> &Arc<ProxyContext> {
        &self.ctx
    }
}
