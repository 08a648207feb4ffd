//! meshlite-proxy: the per-pod sidecar of the meshlite service mesh.
//!
//! A running proxy is a set of listeners sharing one [`context::ProxyContext`]: outbound (the
//! app's requests, routed and sent over mutual TLS), inbound (other sidecars' requests,
//! authenticated and handed to the app), per-service TCP listeners, and the operator endpoints.
//! [`RunningProxy::start`] binds them all before returning, so a caller that sees `Ok` knows the
//! proxy is serving; it never starts half-configured.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod context;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod outbound;
pub mod server;
pub mod snapshot;
pub mod telemetry;
pub mod transport;

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
use snapshot::Snapshot;
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
}

impl StartError {
    /// Whether the cause lies in what the operator configured (files, names), as opposed to
    /// the machine (a port already taken).
    pub fn is_configuration(&self) -> bool {
        !matches!(self, StartError::Bind { .. })
    }
}

/// Options that are not part of the config file.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// Where JSON access log lines go; off when `None`.
    pub access_log: Option<AccessLogTarget>,
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
    /// Explicit-mode TCP listeners, by `service:port`.
    pub tcp: BTreeMap<String, SocketAddr>,
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
        let identity = Arc::new(Identity::from_files(
            &id,
            &cfg.identity.cert,
            &cfg.identity.key,
            &cfg.identity.roots,
            metrics.tls_failures.clone(),
        )?);
        let snapshot = Snapshot::build(&cfg, &identity, &metrics, 1)?;
        let server_tls = identity.server_config()?;
        let access_log = match opts.access_log {
            Some(t) => Some(
                AccessLog::start(t, metrics.access_log_dropped.clone())
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
        let mut tcp = Vec::new();
        for c in &snapshot.clusters {
            if let Some(addr) = c.listen {
                let name = format!("{}:{}", c.labels.name, c.port);
                tcp.push((name.clone(), bind(&name, addr).await?, c.clone()));
            }
        }
        let addrs = BoundAddrs {
            outbound: local_addr(&outbound, l.outbound),
            inbound: local_addr(&inbound, l.inbound),
            admin: local_addr(&admin_l, l.admin),
            metrics: local_addr(&metrics_l, l.metrics),
            health: local_addr(&health_l, l.health),
            tcp: tcp
                .iter()
                .map(|(n, l, c)| {
                    (
                        n.clone(),
                        l.local_addr()
                            .unwrap_or_else(|_| c.listen.unwrap_or(l_default())),
                    )
                })
                .collect(),
        };

        let ctx = Arc::new(ProxyContext {
            snapshot: ArcSwap::from_pointee(snapshot),
            identity,
            telemetry: Arc::new(Telemetry {
                metrics,
                access_log,
            }),
            http_builder: server::conn::http_builder(&cfg.limits),
            limits: cfg.limits.clone(),
            headers: cfg.headers.clone(),
            drain: Arc::new(Drain::new()),
            local_http1: transport::http1::local_client(
                cfg.upstream.idle_timeout,
                snapshot::LOCAL_CONNECT_TIMEOUT,
            ),
            connect_timeout: cfg.upstream.connect_timeout,
        });
        let quit = Arc::new(Notify::new());
        tokio::spawn(outbound::serve_listener(ctx.clone(), outbound));
        tokio::spawn(inbound::serve_listener(ctx.clone(), inbound, server_tls));
        for (_, listener, cluster) in tcp {
            tokio::spawn(outbound::tcp::serve_listener(
                ctx.clone(),
                listener,
                cluster,
            ));
        }
        tokio::spawn(admin::serve(
            ctx.clone(),
            admin_l,
            admin::Role::Admin,
            quit.clone(),
        ));
        tokio::spawn(admin::serve(
            ctx.clone(),
            metrics_l,
            admin::Role::Metrics,
            quit.clone(),
        ));
        tokio::spawn(admin::serve(
            ctx.clone(),
            health_l,
            admin::Role::Health,
            quit.clone(),
        ));
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

fn l_default() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
