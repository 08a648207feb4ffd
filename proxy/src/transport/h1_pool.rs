//! A bounded HTTP/1.1 keep-alive pool to one endpoint: the local application (plain text) or
//! another sidecar (mutual TLS, Istio's default upstream protocol).
//!
//! HTTP/1.1 carries one request at a time per connection, so the pool lends a connection to a
//! request and takes it back when the response body has been read to its end (the body
//! carries the [`Lease`]): no task, channel or map lookup per request. It follows Envoy's
//! HTTP/1.1 pool: idle connections are reused newest first; a request that finds none opens
//! one while the cluster's `tcp.maxConnections` allows, else waits as pending
//! (`http1MaxPendingRequests` bounds how many may wait; past it, overflow); a host with no
//! connection at all may always open one, so a busy neighbour cannot starve it. A kept-alive
//! connection the peer closed under us is noticed when the request is refused unsent, and the
//! request goes on the next connection.

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::coalesce::Coalesced;
use super::connect::{ConnectError, PoolTarget, connect_tcp, connect_tls};
use crate::message::body::ProxyBody;
use crate::resilience::breaker::{Limit, Permit};

/// The cluster-wide limits a request is sent under (`tcp.maxConnections`,
/// `http.http1MaxPendingRequests`).
#[derive(Clone, Copy, Debug)]
pub struct H1Limits<'a> {
    /// Connections open across the cluster's hosts.
    pub connections: &'a Limit,
    /// Requests waiting for a connection.
    pub pending: &'a Limit,
    /// Counts the connections `connections` kept from opening (Envoy's
    /// `upstream_cx_overflow`).
    pub cx_overflow: &'a crate::telemetry::cluster_stats::Stat,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// No connection could be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection failed under the request.
    #[error("upstream connection: {0}")]
    Upstream(#[from] hyper::Error),
    /// Every connection is busy, none may be opened and too many requests already wait.
    #[error("too many requests waiting for a connection")]
    Overflow,
}

/// Keep-alive connections to one endpoint.
#[derive(Debug)]
pub struct H1Pool {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    target: PoolTarget,
    connect_timeout: Duration,
    /// A connection idle this long is closed (`None`: when the peer closes it).
    idle_timeout: Option<Duration>,
    /// Requests per connection before it is closed (`maxRequestsPerConnection`; 0: no limit).
    max_requests: u32,
    /// Idle connections, oldest first.
    idle: Mutex<Vec<Idle>>,
    /// Connections open, lent or idle.
    open: AtomicUsize,
    /// Signalled when a connection comes back or closes (a pending request may go on).
    freed: Notify,
    /// Whether the idle reaper task is running.
    reaping: AtomicBool,
    on_connect: Option<crate::telemetry::prom::Counter>,
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

/// One open connection and the cluster connection slot it holds.
#[derive(Debug)]
struct Conn {
    send: SendRequest<ProxyBody>,
    /// Requests it was given.
    used: u32,
    _slot: Option<Permit>,
    shared: Arc<Shared>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
        self.shared.freed.notify_one();
    }
}

impl H1Pool {
    /// A pool that connects on demand.
    pub fn new(
        target: PoolTarget,
        connect_timeout: Duration,
        idle_timeout: Option<Duration>,
        on_connect: Option<crate::telemetry::prom::Counter>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                target,
                connect_timeout,
                idle_timeout,
                max_requests: 0,
                idle: Mutex::default(),
                open: AtomicUsize::new(0),
                freed: Notify::new(),
                reaping: AtomicBool::new(false),
                on_connect,
            }),
        }
    }

    /// Closes each connection after `n` requests (0: never), as Envoy applies
    /// `maxRequestsPerConnection` to HTTP/1.1.
    pub fn with_max_requests(mut self, n: u32) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.max_requests = n;
        }
        self
    }

    /// The endpoint address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.target.addr()
    }

    /// The connect timeout, idle timeout and request limit it was made with (a pool is kept
    /// by the next snapshot only while they hold).
    pub fn settings(&self) -> (Duration, Option<Duration>, u32) {
        (
            self.shared.connect_timeout,
            self.shared.idle_timeout,
            self.shared.max_requests,
        )
    }

    /// Connections open now (lent or idle).
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Sends `req` (origin-form URI, its own Host) on an idle connection or a new one, under
    /// `limits` when given. The response body gives the connection back when read to its end.
    pub async fn send(
        &self,
        req: Request<ProxyBody>,
        limits: Option<H1Limits<'_>>,
    ) -> Result<Response<ProxyBody>, H1Error> {
        let mut req = req;
        let mut pending: Option<Permit> = None;
        loop {
            let (conn, reused) = match self.shared.take_idle() {
                Some(conn) => (conn, true),
                None => match self.new_slot(limits) {
                    Some(slot) => (Box::pin(self.shared.connect(slot)).await?, false),
                    None => {
                        if pending.is_none() {
                            let wait = limits.and_then(|l| l.pending.try_acquire());
                            pending = Some(wait.ok_or(H1Error::Overflow)?);
                        }
                        let freed = self.shared.freed.notified();
                        // Registered before looking again, so a connection freed in between
                        // is not missed.
                        let mut freed = std::pin::pin!(freed);
                        freed.as_mut().enable();
                        if self.shared.idle_len() == 0 && !self.may_open(limits) {
                            freed.await;
                        }
                        continue;
                    }
                },
            };
            let mut conn = conn;
            conn.used += 1;
            match conn.send.try_send_request(req).await {
                Ok(resp) => {
                    return Ok(resp.map(|body| {
                        ProxyBody::Pooled(PooledBody {
                            body,
                            lease: Some(Lease(conn)),
                        })
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // A kept-alive connection the peer had closed: the request never left.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(H1Error::Upstream(e.into_error())),
                },
            }
        }
    }

    /// Room for a new connection, counted open from now (connecting counts): with the
    /// cluster slot it takes (`Some(None)` when there are no limits, or when this host has
    /// no connection at all: it may always open one, as in Envoy); `None` when the limit
    /// is reached.
    fn new_slot(&self, limits: Option<H1Limits<'_>>) -> Option<Option<Permit>> {
        let slot = match limits {
            None => None,
            Some(l) => {
                let slot = l.connections.try_acquire();
                if slot.is_none() {
                    l.cx_overflow.inc();
                    if self.open() > 0 {
                        return None;
                    }
                }
                slot
            }
        };
        self.shared.open.fetch_add(1, Ordering::AcqRel);
        Some(slot)
    }

    fn may_open(&self, limits: Option<H1Limits<'_>>) -> bool {
        limits.is_none_or(|l| l.connections.open() < l.connections.max() || self.open() == 0)
    }
}

impl Shared {
    /// The newest idle connection still open.
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(i) = idle.pop() {
            if !i.conn.send.is_closed() {
                return Some(i.conn);
            }
        }
        None
    }

    fn idle_len(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Opens the connection [`H1Pool::new_slot`] made room for (counted open already).
    async fn connect(self: &Arc<Self>, slot: Option<Permit>) -> Result<Conn, H1Error> {
        let opened = self.open_connection().await;
        match opened {
            Ok(send) => Ok(Conn {
                send,
                used: 0,
                _slot: slot,
                shared: self.clone(),
            }),
            Err(e) => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.freed.notify_one();
                Err(e)
            }
        }
    }

    async fn open_connection(&self) -> Result<SendRequest<ProxyBody>, H1Error> {
        let addr = self.target.addr();
        let handshake_err = |source| ConnectError::Handshake { addr, source };
        let send = match &self.target {
            PoolTarget::Mesh {
                tls,
                server_name,
                verified,
                ..
            } => {
                let io = connect_tls(addr, tls.clone(), server_name.clone(), self.connect_timeout)
                    .await?;
                verified.record(&io);
                let (send, conn) = http1::handshake(TokioIo::new(Coalesced::new(io)))
                    .await
                    .map_err(handshake_err)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%addr, "upstream http/1.1 connection ended: {e}");
                    }
                });
                send
            }
            PoolTarget::Plain { .. } => {
                let io = connect_tcp(addr, self.connect_timeout).await?;
                let (send, conn) = http1::handshake(TokioIo::new(Coalesced::new(io)))
                    .await
                    .map_err(handshake_err)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%addr, "local http/1.1 connection ended: {e}");
                    }
                });
                send
            }
        };
        if let Some(c) = &self.on_connect {
            c.inc();
        }
        Ok(send)
    }

    /// Takes a connection back, idle from now.
    fn give_back(self: &Arc<Self>, conn: Conn) {
        if conn.send.is_closed() || (self.max_requests > 0 && conn.used >= self.max_requests) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.push(Idle {
            conn,
            since: Instant::now(),
        });
        if let Some(timeout) = self.idle_timeout
            && !self.reaping.swap(true, Ordering::AcqRel)
        {
            tokio::spawn(reap(Arc::downgrade(self), timeout));
        }
        drop(idle);
        self.freed.notify_one();
    }
}

/// Closes connections idle for `timeout`, while the pool has idle ones.
async fn reap(shared: Weak<Shared>, timeout: Duration) {
    loop {
        tokio::time::sleep(timeout).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut idle = shared.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|i| i.since.elapsed() < timeout && !i.conn.send.is_closed());
        if idle.is_empty() {
            // Under the lock: a connection given back now sees the flag down and starts one.
            shared.reaping.store(false, Ordering::Release);
            return;
        }
    }
}

/// A connection lent to one request; it goes back to its pool when the response ends.
#[derive(Debug)]
pub struct Lease(Conn);

impl Lease {
    fn give_back(self) {
        let shared = self.0.shared.clone();
        shared.give_back(self.0);
    }
}

/// A response body from a pooled connection: when read to its end, the connection is given
/// back; dropped before that, the connection is closed (its stream is unfinished).
#[derive(Debug)]
pub struct PooledBody {
    body: Incoming,
    lease: Option<Lease>,
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if self.body.is_end_stream()
            && let Some(lease) = self.lease.take()
        {
            lease.give_back();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(lease) = self.lease.take() {
                    lease.give_back();
                }
            }
            Poll::Ready(Some(Err(_))) => self.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use std::sync::atomic::AtomicU64;
    use tokio::net::TcpListener;

    /// An app on loopback answering `/` with "ok", `/close` with "bye" and `Connection:
    /// close`, `/big` with 1 MiB, `/slow` after 200 ms; it counts the connections it accepts.
    async fn app() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = service_fn(|req: Request<Incoming>| async move {
                        let mut resp =
                            Response::new(http_body_util::Full::new(Bytes::from_static(b"ok")));
                        match req.uri().path() {
                            "/close" => {
                                *resp.body_mut() =
                                    http_body_util::Full::new(Bytes::from_static(b"bye"));
                                resp.headers_mut().insert(
                                    http::header::CONNECTION,
                                    http::HeaderValue::from_static("close"),
                                );
                            }
                            "/big" => {
                                *resp.body_mut() =
                                    http_body_util::Full::new(Bytes::from(vec![7u8; 1 << 20]))
                            }
                            "/slow" => tokio::time::sleep(Duration::from_millis(200)).await,
                            _ => {}
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn pool(addr: SocketAddr, idle: Option<Duration>) -> H1Pool {
        H1Pool::new(
            PoolTarget::Plain { addr },
            Duration::from_secs(1),
            idle,
            None,
        )
    }

    fn get(path: &str) -> Request<ProxyBody> {
        Request::get(path)
            .header(http::header::HOST, "app")
            .body(ProxyBody::Empty)
            .unwrap()
    }

    async fn text(resp: Response<ProxyBody>) -> String {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let (addr, accepted) = app().await;
        let pool = pool(addr, None);
        for _ in 0..20 {
            let resp = pool.send(get("/"), None).await.unwrap();
            assert_eq!(text(resp).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.open(), 1);
    }

    #[tokio::test]
    async fn max_requests_per_connection_closes_spent_connections() {
        let (addr, accepted) = app().await;
        let pool = pool(addr, None).with_max_requests(3);
        for _ in 0..7 {
            assert_eq!(text(pool.send(get("/"), None).await.unwrap()).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_and_give_them_back() {
        let (addr, accepted) = app().await;
        let pool = Arc::new(pool(addr, None));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                text(pool.send(get("/slow"), None).await.unwrap()).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        // All four are idle now and serve the next four without a new connection.
        for _ in 0..4 {
            assert_eq!(text(pool.send(get("/"), None).await.unwrap()).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_connection_the_app_closes_is_not_reused() {
        let (addr, accepted) = app().await;
        let pool = pool(addr, None);
        assert_eq!(
            text(pool.send(get("/close"), None).await.unwrap()).await,
            "bye"
        );
        // The request after a `Connection: close` goes on a new connection, unharmed.
        for _ in 0..3 {
            assert_eq!(text(pool.send(get("/"), None).await.unwrap()).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_closes_its_connection() {
        let (addr, accepted) = app().await;
        let pool = pool(addr, None);
        let resp = pool.send(get("/big"), None).await.unwrap();
        drop(resp);
        assert_eq!(text(pool.send(get("/"), None).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // Read to its end, the connection is kept.
        let resp = pool.send(get("/big"), None).await.unwrap();
        assert_eq!(text(resp).await.len(), 1 << 20);
        assert_eq!(text(pool.send(get("/"), None).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_connection_limit_queues_requests_and_pending_overflows() {
        let (addr, accepted) = app().await;
        let pool = Arc::new(pool(addr, None));
        let connections = Limit::new(1, Arc::new(AtomicU64::new(0)));
        let pending = Limit::new(2, Arc::new(AtomicU64::new(0)));
        let cx_overflow = crate::telemetry::cluster_stats::Stat::default();
        let limits = H1Limits {
            connections: &connections,
            pending: &pending,
            cx_overflow: &cx_overflow,
        };
        // One connection: three concurrent requests take turns on it, two of them pending.
        let results =
            futures_util::future::join_all((0..3).map(|_| async {
                text(pool.send(get("/slow"), Some(limits)).await.unwrap()).await
            }))
            .await;
        assert_eq!(results, ["ok", "ok", "ok"]);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(connections.open(), 1, "the idle connection keeps its slot");
        // Four at once: one sent, two pending, the fourth refused.
        let results = futures_util::future::join_all(
            (0..4).map(|_| async { pool.send(get("/slow"), Some(limits)).await.map(|_| ()) }),
        )
        .await;
        let overflows = results
            .iter()
            .filter(|r| matches!(r, Err(H1Error::Overflow)))
            .count();
        assert_eq!(overflows, 1, "{results:?}");
        assert_eq!(pending.open(), 0);
        assert!(cx_overflow.get() >= 3, "each wait met the connection limit");
    }

    #[tokio::test]
    async fn a_host_without_connections_may_open_one_over_the_cluster_limit() {
        let (addr, accepted) = app().await;
        let pool = pool(addr, None);
        // Other hosts of the cluster hold its only slot.
        let connections = Limit::new(1, Arc::new(AtomicU64::new(1)));
        let pending = Limit::new(0, Arc::new(AtomicU64::new(0)));
        let cx_overflow = crate::telemetry::cluster_stats::Stat::default();
        let limits = H1Limits {
            connections: &connections,
            pending: &pending,
            cx_overflow: &cx_overflow,
        };
        assert_eq!(
            text(pool.send(get("/"), Some(limits)).await.unwrap()).await,
            "ok"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(
            cx_overflow.get(),
            1,
            "counted over the limit, as Envoy does"
        );
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (addr, accepted) = app().await;
        let pool = pool(addr, Some(Duration::from_millis(100)));
        assert_eq!(text(pool.send(get("/"), None).await.unwrap()).await, "ok");
        assert_eq!(pool.open(), 1);
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(pool.open(), 0);
        assert_eq!(text(pool.send(get("/"), None).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = pool(addr, None).send(get("/"), None).await.unwrap_err();
        assert!(matches!(err, H1Error::Connect(_)), "{err:?}");
    }

    #[test]
    fn an_idle_pool_entry_stays_small() {
        // One per idle keep-alive connection. Measured 64 bytes in the test profile; about
        // 20 % headroom.
        let size = std::mem::size_of::<Idle>();
        assert!(size <= 76, "idle HTTP/1.1 pool entry: {size} bytes");
    }
}
