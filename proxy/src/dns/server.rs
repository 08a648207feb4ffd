//! The DNS proxy's listeners: UDP and TCP on one address (Istio's 15053), each query
//! answered from the snapshot serving now (loaded once per query) or forwarded upstream.
//!
//! Answers for mesh names are made inline on the receiving task, with no spawn. Forwarded
//! queries and TCP connections each hold a permit of one semaphore, so a flood of slow
//! upstream lookups or idle connections cannot grow tasks and sockets without bound; a
//! query arriving with every permit taken is dropped (UDP: the stub resolver retries) or
//! its connection closed (TCP), and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::answer::{self, Transport, Verdict};
use super::upstream;
use crate::context::ProxyContext;

/// Forwarded queries and TCP connections in flight at once.
pub const MAX_IN_FLIGHT: usize = 256;

/// How long a TCP connection may sit between queries (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Largest UDP query read; longer datagrams arrive cut and are answered FORMERR.
const UDP_BUFFER: usize = 4096;

/// What the listeners share.
#[derive(Debug)]
pub struct DnsServer {
    ctx: Arc<ProxyContext>,
    upstreams: Arc<[SocketAddr]>,
    timeout: Duration,
    permits: Arc<Semaphore>,
}

impl DnsServer {
    /// A server answering from `ctx`'s snapshots and forwarding to `upstreams`.
    pub fn new(ctx: Arc<ProxyContext>, upstreams: Vec<SocketAddr>, timeout: Duration) -> Self {
        Self {
            ctx,
            upstreams: upstreams.into(),
            timeout,
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    fn verdict(&self, packet: &[u8], transport: Transport) -> Verdict {
        let m = &self.ctx.telemetry.metrics.dns;
        m.requests.inc();
        let v = answer::answer(packet, &self.ctx.snapshot.load().dns, transport);
        if matches!(v, Verdict::Malformed(_)) {
            m.malformed.inc();
        }
        v
    }

    /// Forwards `packet`; the upstream's answer, or SERVFAIL when none came.
    async fn forward(
        &self,
        packet: &[u8],
        query: &hickory_proto::op::Message,
        t: Transport,
    ) -> Option<Vec<u8>> {
        let m = &self.ctx.telemetry.metrics.dns;
        m.upstream_requests.inc();
        let started = tokio::time::Instant::now();
        let result = upstream::forward(packet, &self.upstreams, t, self.timeout).await;
        m.upstream_duration.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(reply) => Some(reply),
            Err(e) => {
                m.upstream_failures.inc();
                tracing::debug!(name = %query.queries.first().map(|q| q.name().to_string()).unwrap_or_default(), "DNS forward failed: {e}");
                answer::servfail(query)
            }
        }
    }

    /// Serves UDP queries until the process exits.
    pub async fn serve_udp(self: Arc<Self>, sock: UdpSocket) {
        let sock = Arc::new(sock);
        let mut buf = vec![0u8; UDP_BUFFER];
        loop {
            let (n, peer) = match sock.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors from earlier replies surface here: not fatal.
                    tracing::debug!("DNS UDP receive: {e}");
                    continue;
                }
            };
            let packet = &buf[..n];
            match self.verdict(packet, Transport::Udp) {
                Verdict::Reply(reply) | Verdict::Malformed(Some(reply)) => {
                    let _ = sock.send_to(&reply, peer).await;
                }
                Verdict::Malformed(None) | Verdict::Drop => {}
                Verdict::Forward(query) => {
                    let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                        self.ctx.telemetry.metrics.dns.overloaded.inc();
                        continue;
                    };
                    let packet = packet.to_vec();
                    let server = self.clone();
                    let sock = sock.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        if let Some(reply) = server.forward(&packet, &query, Transport::Udp).await {
                            let _ = sock.send_to(&reply, peer).await;
                        }
                    });
                }
            }
        }
    }

    /// Serves TCP connections until the process exits.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    tracing::warn!("DNS TCP accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                self.ctx.telemetry.metrics.dns.overloaded.inc();
                continue;
            };
            let server = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = server.connection(stream).await {
                    tracing::debug!("DNS TCP connection: {e}");
                }
            });
        }
    }

    /// Length-prefixed queries, one after the other, until the client closes, idles or
    /// sends something unanswerable.
    async fn connection(&self, mut stream: TcpStream) -> std::io::Result<()> {
        loop {
            let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
                Ok(Ok(len)) => usize::from(len),
                // Closed or idle: done.
                Ok(Err(_)) | Err(_) => return Ok(()),
            };
            let mut packet = vec![0u8; len];
            match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet)).await {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            };
            let reply = match self.verdict(&packet, Transport::Tcp) {
                Verdict::Reply(reply) => Some(reply),
                Verdict::Forward(query) => self.forward(&packet, &query, Transport::Tcp).await,
                Verdict::Malformed(reply) => {
                    if let Some(reply) = reply {
                        write_framed(&mut stream, &reply).await?;
                    }
                    return Ok(());
                }
                Verdict::Drop => return Ok(()),
            };
            match reply {
                Some(reply) => write_framed(&mut stream, &reply).await?,
                None => return Ok(()),
            }
        }
    }
}

/// One message with its 2-byte length, in one write.
async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let Ok(len) = u16::try_from(msg.len()) else {
        return Ok(());
    };
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    stream.write_all(&framed).await
}
