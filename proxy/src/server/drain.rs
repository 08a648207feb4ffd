//! Graceful shutdown: stop accepting, let in-flight requests finish, then exit.
//!
//! On SIGTERM the proxy flips to draining (`/healthz/ready` answers 503 so the endpoint is
//! taken out of rotation), listeners stop accepting, and every open connection is asked to
//! finish what it has in flight (HTTP/1.1: close after the current response; HTTP/2: GOAWAY).
//! The process exits when the last connection closes or the drain deadline passes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Shared drain state.
#[derive(Debug)]
pub struct Drain {
    signal: watch::Sender<bool>,
    draining: AtomicBool,
    open: AtomicUsize,
    closed: Notify,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    /// Not draining, no connections.
    pub fn new() -> Self {
        Self {
            signal: watch::Sender::new(false),
            draining: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            closed: Notify::new(),
        }
    }

    /// True once draining started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// A receiver that changes to `true` when draining starts.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.signal.subscribe()
    }

    /// Registers an open connection; dropping the guard unregisters it.
    pub fn track(self: &Arc<Self>) -> ConnectionGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.clone())
    }

    /// Open connections.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Starts draining and waits until every connection closed or `deadline` passed.
    /// Returns the number of connections still open at the end.
    pub async fn drain(&self, deadline: Duration) -> usize {
        self.draining.store(true, Ordering::Release);
        self.signal.send_replace(true);
        let wait_all = async {
            loop {
                let notified = self.closed.notified();
                if self.open.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait_all).await;
        self.open.load(Ordering::Acquire)
    }
}

/// Keeps a connection counted while alive.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<Drain>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}
