//! Circuit breakers of one cluster: Envoy's thresholds as Istio's `connectionPool` sets them
//! (SEMANTICS.md §1.3). Each is a counter with a limit; over the limit the request fails at
//! once (503 `UO`, `x-envoy-overloaded: true`) and nothing queues.
//!
//! Istio emits every threshold as 2^32−1 unless the user sets a value above 0, so an unset
//! field here is "no limit". The counters live in `Arc`s handed from one snapshot's cluster to
//! the next of the same name, so a config push neither resets nor doubles them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use meshlite_xds_proto::v1;

/// One threshold: how many of something may be open at once.
#[derive(Debug, Clone)]
pub struct Limit {
    max: u64,
    open: Arc<AtomicU64>,
}

impl Limit {
    /// A limit of `max` over the shared count `open`.
    pub fn new(max: u64, open: Arc<AtomicU64>) -> Self {
        Self { max, open }
    }

    /// Istio's reading of a `connectionPool` field: 0 is unset, which is no limit.
    fn from_field(value: u32, open: Arc<AtomicU64>) -> Self {
        let max = if value == 0 {
            u64::MAX
        } else {
            u64::from(value)
        };
        Self::new(max, open)
    }

    /// Takes one slot, or `None` when all `max` are taken.
    pub fn try_acquire(&self) -> Option<Permit> {
        let prev = self.open.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Permit(self.open.clone()))
    }

    /// Slots taken now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// The limit (`u64::MAX`: none).
    pub fn max(&self) -> u64 {
        self.max
    }
}

/// One slot of a [`Limit`]; given back when dropped.
#[derive(Debug)]
pub struct Permit(Arc<AtomicU64>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The counts behind a cluster's breakers, carried across snapshots.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    requests: Arc<AtomicU64>,
    pending: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
}

/// A cluster's circuit breakers.
#[derive(Debug, Clone)]
pub struct Breakers {
    /// Requests in flight, any protocol (`http.http2MaxRequests`, Envoy `max_requests`).
    pub requests: Limit,
    /// Requests waiting for an upstream connection (`http.http1MaxPendingRequests`, Envoy
    /// `max_pending_requests`, which covers HTTP/2 too).
    pub pending: Limit,
    /// Retries in flight (`http.maxRetries`, Envoy `max_retries`).
    pub retries: Limit,
    /// Open TCP tunnels (`tcp.maxConnections` for `tcp` services; HTTP over the shared
    /// HTTP/2 connection always keeps its one connection per host, as in Envoy).
    pub connections: Limit,
}

impl Breakers {
    /// The breakers `pool` sets (none: no limits), counting in `counts`.
    pub fn new(pool: Option<&v1::ConnectionPool>, counts: &Counts) -> Self {
        let field = |f: fn(&v1::ConnectionPool) -> u32| pool.map_or(0, f);
        Self {
            requests: Limit::from_field(field(|p| p.http2_max_requests), counts.requests.clone()),
            pending: Limit::from_field(
                field(|p| p.http1_max_pending_requests),
                counts.pending.clone(),
            ),
            retries: Limit::from_field(field(|p| p.max_retries), counts.retries.clone()),
            connections: Limit::from_field(
                field(|p| p.max_connections),
                counts.connections.clone(),
            ),
        }
    }

    /// The counts, for the next snapshot's cluster of the same name.
    pub fn counts(&self) -> Counts {
        Counts {
            requests: self.requests.open.clone(),
            pending: self.pending.open.clone(),
            retries: self.retries.open.clone(),
            connections: self.connections.open.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_admits_up_to_max_and_frees_on_drop() {
        let l = Limit::new(2, Arc::default());
        let a = l.try_acquire();
        let b = l.try_acquire();
        assert!(a.is_some() && b.is_some());
        assert!(l.try_acquire().is_none(), "third over a limit of 2");
        assert_eq!(l.open(), 2, "a refused acquire leaves no trace");
        drop(a);
        assert!(l.try_acquire().is_some());
    }

    #[test]
    fn unset_fields_mean_no_limit() {
        let b = Breakers::new(None, &Counts::default());
        assert_eq!(b.requests.max(), u64::MAX);
        let pool = v1::ConnectionPool {
            http2_max_requests: 3,
            ..Default::default()
        };
        let b = Breakers::new(Some(&pool), &Counts::default());
        assert_eq!(b.requests.max(), 3);
        assert_eq!(b.pending.max(), u64::MAX, "0 is Istio's unset");
    }

    #[test]
    fn counts_carry_over_to_the_next_snapshot() {
        let pool = v1::ConnectionPool {
            http2_max_requests: 1,
            ..Default::default()
        };
        let old = Breakers::new(Some(&pool), &Counts::default());
        let held = old.requests.try_acquire();
        let new = Breakers::new(Some(&pool), &old.counts());
        assert!(held.is_some());
        assert!(
            new.requests.try_acquire().is_none(),
            "the push kept the count"
        );
    }
}
