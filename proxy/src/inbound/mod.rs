//! The inbound side: mutual TLS from other sidecars, handed to the local application.

pub mod http;

use ::http::HeaderValue;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::context::ProxyContext;
use crate::identity::tls::{ALPN_H2, peer_check_reason, spiffe_id_of_leaf};
use crate::server::conn;

/// Accepts sidecar connections on the inbound listener until drain.
pub async fn serve_listener(
    ctx: Arc<ProxyContext>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut drain = ctx.drain.watch();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    let ctx = ctx.clone();
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let handshake = tokio::time::timeout(ctx.limits.header_read_timeout, acceptor.accept(stream)).await;
                        let tls = match handshake {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                let reason = e
                                    .get_ref()
                                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                                    .map(|r| (matches!(r, rustls::Error::InvalidCertificate(_)), peer_check_reason(r)))
                                    .unwrap_or((false, "handshake"));
                                // Certificate checks count themselves in the verifier.
                                if !reason.0 {
                                    ctx.telemetry.metrics.tls_failures.inc("inbound", reason.1);
                                }
                                tracing::info!(%remote, reason = reason.1, "inbound TLS handshake failed: {e}");
                                return;
                            }
                            Err(_) => {
                                ctx.telemetry.metrics.tls_failures.inc("inbound", "handshake_timeout");
                                return;
                            }
                        };
                        let (_, session) = tls.get_ref();
                        let h2 = session.alpn_protocol() == Some(ALPN_H2);
                        let peer_id = session
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|leaf| spiffe_id_of_leaf(leaf).ok());
                        let Some(peer_id) = peer_id else {
                            // The verifier guarantees an identity; refuse defensively if absent.
                            ctx.telemetry.metrics.tls_failures.inc("inbound", "bad_spiffe_id");
                            return;
                        };
                        let own = ctx.identity.id().as_str();
                        let xfcc = HeaderValue::from_str(&format!("By={own};URI={peer_id}"))
                            .unwrap_or_else(|_| HeaderValue::from_static(""));
                        let principal: Arc<str> = Arc::from(peer_id.principal());
                        let c = ctx.clone();
                        conn::serve(tls, Some(h2), &ctx.http_builder, &ctx.limits, &ctx.drain, &ctx.telemetry.metrics, move |state| {
                            let ic = http::InboundConn {
                                ctx: c,
                                state,
                                remote,
                                principal,
                                xfcc,
                                peer: Arc::new(arc_swap::ArcSwapOption::empty()),
                            };
                            hyper::service::service_fn(move |req| http::handle(ic.clone(), req))
                        })
                        .await;
                    });
                }
                Err(e) => {
                    tracing::warn!("inbound accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            _ = drain.changed() => return,
        }
    }
}
