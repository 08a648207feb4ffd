//! `meshlite-proxy wait`: returns once the proxy beside it answers `/healthz/ready` with 200,
//! or fails after a timeout. The injector runs it as the sidecar's postStart hook when a pod
//! asks for `holdApplicationUntilProxyStarts` in the classic (non-native) form: the kubelet
//! starts the next container only after the hook returns, so the app's first request finds
//! a ready proxy (pilot-agent's `wait` in Istio).

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How often readiness is asked (Istio's `wait` polls every 500 ms).
pub const PERIOD: Duration = Duration::from_millis(500);

/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// The proxy did not become ready in time.
#[derive(Debug, thiserror::Error)]
#[error("the proxy at {addr} was not ready within {timeout:?}; last answer: {last}")]
pub struct NotReady {
    /// The health address asked.
    pub addr: SocketAddr,
    /// How long it waited.
    pub timeout: Duration,
    /// What the last attempt saw.
    pub last: String,
}

/// Polls `http://addr/healthz/ready` every `period` until it answers 200 or `timeout` passes.
pub async fn until_ready(
    addr: SocketAddr,
    timeout: Duration,
    period: Duration,
) -> Result<(), NotReady> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match tokio::time::timeout(ATTEMPT_TIMEOUT, probe(addr)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {ATTEMPT_TIMEOUT:?}"),
        };
        if tokio::time::Instant::now() + period > deadline {
            return Err(NotReady {
                addr,
                timeout,
                last,
            });
        }
        tokio::time::sleep(period).await;
    }
}

/// One readiness request; `Ok` on a 200.
async fn probe(addr: SocketAddr) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("").trim();
    match line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(_) => Err(line.to_string()),
        None => Err(format!("not an HTTP answer: `{line}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A health endpoint answering 503 `not_ready` times, then 200.
    async fn health(not_ready: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = Arc::new(AtomicUsize::new(0));
        let count = asked.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let n = count.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let answer: &[u8] = if n < not_ready {
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nready\n"
                };
                let _ = s.write_all(answer).await;
            }
        });
        (addr, asked)
    }

    #[tokio::test]
    async fn returns_once_the_proxy_is_ready() {
        let (addr, asked) = health(3).await;
        until_ready(addr, Duration::from_secs(10), Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn fails_with_the_last_answer_when_never_ready() {
        let (addr, _) = health(usize::MAX).await;
        let e = until_ready(addr, Duration::from_millis(100), Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(e.last.contains("503"), "{e}");
    }

    #[tokio::test]
    async fn a_closed_port_is_not_ready() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = until_ready(addr, Duration::from_millis(50), Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(e.last.contains("connect"), "{e}");
    }
}
