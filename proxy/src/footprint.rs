//! The sizes the proxy's performance depends on, asserted (as ztunnel does): the state every
//! request and every connection holds while it is served. hyper moves a request's future
//! when it takes it, and every open connection keeps its state for its whole life, so a
//! change that bloats them costs every request or every idle connection; these tests make
//! it fail CI instead of showing up in a benchmark months later.
//!
//! Sizes depend on the build profile: the bounds hold for the test profile (debug, the
//! `cargo test` default) with about 20 % headroom over the size measured when they were
//! set; each test gives the figure. Release builds are smaller. The accepted connection's
//! future is asserted in `inbound`, the pools' entries in `transport`.

/// The size of the future an async fn of two arguments returns, without calling it.
fn future_size<F, A, B, Fut>(_: &F) -> usize
where
    F: Fn(A, B) -> Fut,
{
    std::mem::size_of::<Fut>()
}

#[test]
fn the_request_futures_stay_small() {
    // Outbound: 6152 bytes in the test profile as one module (5.2 KB in release), 5584 in
    // stages (each stage returns its next stage's future instead of wrapping it, and only
    // the forwarder holds the request).
    let size = future_size(&crate::outbound::http::handle);
    assert!(size <= 6700, "outbound request future: {size} bytes");
    // Inbound: 4176 bytes with CUSTOM policies (the external authorizer's call is boxed),
    // 4128 once forwarding moved to the shared forwarder.
    let size = future_size(&crate::inbound::http::handle);
    assert!(size <= 4950, "inbound request future: {size} bytes");
}

#[test]
fn the_per_connection_state_stays_small() {
    // Every connection's activity state (behind an Arc, shared by its requests and its
    // watchdog). Measured 24 bytes; 32 with what says whether the connection may rest
    // (bodies being read, a write that could not finish).
    let size = std::mem::size_of::<crate::server::conn::ConnState>();
    assert!(size <= 38, "ConnState: {size} bytes");
    // What each connection's request service holds and clones per request: the context,
    // the connection's state, the peer's address (and inbound, its identity). Measured 48
    // and 168 bytes.
    let size = std::mem::size_of::<crate::outbound::http::OutboundConn>();
    assert!(size <= 56, "OutboundConn: {size} bytes");
    let size = std::mem::size_of::<crate::inbound::http::InboundConn>();
    assert!(size <= 200, "InboundConn: {size} bytes");
}
