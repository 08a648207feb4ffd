//! The outbound side: traffic from the local application to other services.
//!
//! The app reaches the outbound listener two ways: explicitly (it sends to the listener, and
//! each request's Host names the service) or captured (the capture rules redirected a
//! connection meant for somewhere else; [`captured`] handles it from where it was going).

pub mod captured;
pub mod http;
pub mod route_rules;
pub mod tcp;
pub mod tcp_listeners;
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
                    // One getsockopt per connection says whether it was redirected here.
                    let original = stream
                        .local_addr()
                        .ok()
                        .and_then(|local| crate::capture::original_dst::captured(&stream, local));
                    if let Some(dst) = original {
                        tokio::spawn(captured::serve(ctx, stream, remote, dst));
                        continue;
                    }
                    tokio::spawn(async move {
                        let c = ctx.clone();
                        conn::serve(stream, None, &ctx.http_builder, &ctx.limits, &ctx.drain, &ctx.telemetry.metrics, move |state| {
                            let oc = http::OutboundConn { ctx: c, state, remote, original_dst: None };
                            // Boxed: hyper keeps a slot the size of the service's future in
                            // every connection for its whole life (5 KB here, resident once a
                            // request used it); boxed, an idle connection keeps 16 bytes.
                            hyper::service::service_fn(move |req| Box::pin(http::handle(oc.clone(), req)))
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
