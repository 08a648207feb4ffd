//! The outbound side: traffic from the local application to other services.

pub mod http;
pub mod route_rules;
pub mod tcp;
pub mod upstream;

use std::sync::Arc;
use tokio::net::TcpListener;

use crate::context::ProxyContext;
use crate::server::conn;

/// Accepts app connections on the outbound listener until drain.
pub async fn serve_listener(ctx: Arc<ProxyContext>, listener: TcpListener) {
    let mut drain = ctx.drain.watch();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let c = ctx.clone();
                        conn::serve(stream, None, &ctx.http_builder, &ctx.limits, &ctx.drain, &ctx.telemetry.metrics, move |state| {
                            let oc = http::OutboundConn { ctx: c, state, remote };
                            hyper::service::service_fn(move |req| http::handle(oc.clone(), req))
                        })
                        .await;
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("outbound accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            _ = drain.changed() => return,
        }
    }
}
