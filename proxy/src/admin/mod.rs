//! The proxy's operator endpoints: health (15021), merged Prometheus metrics and the app's
//! rewritten health probes (15020) and admin (15000: config dump, readiness, quit), on
//! Istio's ports so operators' habits carry over.

pub mod app_probe;
mod cluster_view;
pub mod wait;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::context::ProxyContext;
use crate::message::body::ProxyBody;

/// Which endpoints a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `/healthz/ready` only.
    Health,
    /// `/stats/prometheus` only.
    Metrics,
    /// Everything, plus `/config_dump` and `POST /quitquitquit`.
    Admin,
}

/// What the operator endpoints act on besides the context: the quit signal, the app's probes
/// and the explicit-mode TCP listeners (which follow pushes, so the dump asks them).
#[derive(Clone)]
pub struct Operator {
    /// Notified by `POST /quitquitquit`.
    pub quit: Arc<Notify>,
    /// The app's rewritten probes (metrics port).
    pub probers: Arc<app_probe::AppProbers>,
    /// The per-service TCP listeners, listed in `/config_dump`.
    pub tcp_listeners: Arc<crate::outbound::tcp_listeners::TcpListeners>,
}

/// Serves one operator listener until the process exits (they stay up during drain so
/// readiness can report it). The metrics listener also runs the app's probes.
pub async fn serve(ctx: Arc<ProxyContext>, listener: TcpListener, role: Role, op: Operator) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        let op = op.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                let op = op.clone();
                async move {
                    let path = req.uri().path();
                    if role == Role::Metrics
                        && req.method() == Method::GET
                        && path.starts_with(app_probe::PATH_PREFIX)
                    {
                        return Ok::<_, Infallible>(match op.probers.run(path).await {
                            Some((status, why)) => text(status, why, "text/plain"),
                            None => text(StatusCode::NOT_FOUND, "no such probe\n", "text/plain"),
                        });
                    }
                    Ok::<_, Infallible>(respond(&ctx, role, &op, req))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

fn respond(
    ctx: &ProxyContext,
    role: Role,
    op: &Operator,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let path = req.uri().path();
    let admin = role == Role::Admin;
    match (req.method(), path) {
        (&Method::GET, "/healthz/ready" | "/ready") if role != Role::Metrics => {
            if ctx.drain.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n", "text/plain")
            } else {
                text(StatusCode::OK, readiness(ctx), "text/plain")
            }
        }
        (&Method::GET, "/stats/prometheus" | "/metrics") if role != Role::Health => {
            let metrics = &ctx.telemetry.metrics;
            // The matcher of the snapshot serving now.
            metrics.set_stats_matcher(ctx.snapshot.load().stats_matcher.clone());
            text(
                StatusCode::OK,
                metrics.encode(),
                crate::telemetry::prom::CONTENT_TYPE,
            )
        }
        (&Method::GET, "/config_dump") if admin => {
            text(StatusCode::OK, config_dump(ctx, op), "application/json")
        }
        (&Method::GET, "/server_info") if admin => {
            text(StatusCode::OK, server_info(ctx), "application/json")
        }
        (&Method::POST, "/logging") if admin => {
            use crate::telemetry::log_level::{LogLevelError, change};
            match change(req.uri().query().unwrap_or("")) {
                Ok(filter) => text(
                    StatusCode::OK,
                    format!("active filter: {filter}\n"),
                    "text/plain",
                ),
                Err(e @ LogLevelError::NotReloadable) => {
                    text(StatusCode::CONFLICT, format!("{e}\n"), "text/plain")
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n"), "text/plain"),
            }
        }
        (&Method::GET, "/logging") if admin => match crate::telemetry::log_level::current() {
            Some(filter) => text(
                StatusCode::OK,
                format!("active filter: {filter}\n"),
                "text/plain",
            ),
            None => text(
                StatusCode::CONFLICT,
                "the log level is not managed by this process\n",
                "text/plain",
            ),
        },
        (&Method::POST, "/quitquitquit") if admin => {
            op.quit.notify_one();
            text(StatusCode::OK, "OK\n", "text/plain")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n", "text/plain"),
    }
}

/// Ready, and how the config stands with the control plane: a proxy serving config restored
/// from its state directory, or cut off from the control plane, is still ready (it serves)
/// but says so.
fn readiness(ctx: &ProxyContext) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(c) = &ctx.control else {
        return "ready\n".into();
    };
    let version = ctx.snapshot.load().version;
    match (c.connected.load(Relaxed), c.persisted.load(Relaxed)) {
        (true, _) => format!("ready: control plane connected, config version {version}\n"),
        (false, true) => format!(
            "ready: control plane unreachable, serving persisted config (version {version})\n"
        ),
        (false, false) => format!(
            "ready: control plane unreachable, serving the last good config (version {version})\n"
        ),
    }
}

/// The configuration in force, counted without building anything: cheap enough to poll
/// (benchmarks wait on it for a push to land).
fn server_info(ctx: &ProxyContext) -> String {
    let snap = ctx.snapshot.load();
    // Each walk of a mesh of thousands once (benchmarks poll this every few milliseconds).
    let made: Vec<&Arc<crate::snapshot::LazyCluster>> = snap.all_clusters().collect();
    let unmade = snap.awaiting_specs().count();
    let dump = json!({
        "version": snap.version,
        "identity": snap.local.id.as_str(),
        "hosts": snap.host_count(),
        "clusters": made.len() - snap.subset_clusters.len() + unmade,
        "subset_clusters": snap.subset_clusters.len(),
        "built_clusters": made.iter().filter(|c| c.built().is_some()).count(),
        "awaiting_clusters": made.iter().filter(|c| c.awaiting()).count() + unmade,
        "endpoints": made.iter().map(|c| c.endpoint_count()).sum::<usize>(),
        "control": ctx.control.as_ref().map(|c| json!({
            "connected": c.connected.load(Ordering::Relaxed),
            "applies": c.applies.load(Ordering::Relaxed),
            "last_apply_us": c.last_apply_micros.load(Ordering::Relaxed),
        })),
    });
    serde_json::to_string_pretty(&dump).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn config_dump(ctx: &ProxyContext, op: &Operator) -> String {
    let snap = ctx.snapshot.load();
    // The directory's service ports no lookup made are shown as they would be made, without
    // keeping them.
    let previews = snap.awaiting_previews();
    let clusters: Vec<_> = snap
        .service_clusters()
        .chain(&previews)
        .map(|c| {
            let built = c.preview();
            json!({
                "name": &*c.name,
                "service": &*c.labels.service.fqdn,
                "port": c.port,
                "protocol": c.protocol.label(),
                "upstream_protocol": format!("{:?}", built.upstream).to_lowercase(),
                "expected_principal": &*c.labels.principal,
                "endpoints": built.endpoints.iter().map(|e| e.addr.to_string()).collect::<Vec<_>>(),
                "listen": c.listen.map(|a| a.to_string()),
                "built": c.built().is_some(),
                "awaiting": c.awaiting(),
                "policy": cluster_view::policy(&built),
            })
        })
        .collect();
    // MeshConfig's `outboundTrafficPolicy.mode`, or that of the Sidecar resource applying to
    // this workload.
    let outbound_traffic_policy = if snap.outbound_registry_only {
        "REGISTRY_ONLY"
    } else {
        "ALLOW_ANY"
    };
    let dump = json!({
        "version": snap.version,
        "identity": snap.local.id.as_str(),
        "workload": &*snap.local.metadata.workload,
        "draining": ctx.drain.is_draining(),
        "open_connections": ctx.drain.open_connections(),
        "hosts": snap.host_count(),
        "outbound_traffic_policy": outbound_traffic_policy,
        "clusters": clusters,
        "tcp_listeners": op.tcp_listeners.bound(),
        "subset_clusters": snap.subset_clusters.iter().map(|c| {
            let built = c.preview();
            json!({
                "name": &*c.name,
                "endpoints": built.endpoints.iter().map(|e| e.addr.to_string()).collect::<Vec<_>>(),
                "built": c.built().is_some(),
                "policy": cluster_view::policy(&built),
            })
        }).collect::<Vec<_>>(),
        "control": ctx.control.as_ref().map(|c| json!({
            "connected": c.connected.load(std::sync::atomic::Ordering::Relaxed),
            "persisted": c.persisted.load(std::sync::atomic::Ordering::Relaxed),
        })),
        "cert_expiry": ctx.identity.not_after(),
        "telemetry": cluster_view::telemetry(&snap.telemetry),
    });
    serde_json::to_string_pretty(&dump).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
