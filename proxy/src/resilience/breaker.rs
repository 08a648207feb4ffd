//! Circuit breakers of one cluster: Envoy's thresholds as Istio's `connectionPool` sets them
//! (SEMANTICS.md §1.3). Each is a counter with a limit; over the limit the request fails at
//! once (503 `UO`, `x-envoy-overloaded: true`) and nothing queues.
//!
//! Istio emits every threshold as 2^32−1 unless the user sets a value above 0, so an unset
//! field here is "no limit". The counters live in `Arc`s handed from one snapshot's cluster to
//! the next of the same name, so a config push neither resets nor doubles them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::concurrency_budget::{BudgetSpec, ConcurrencyBudget};

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
        self.try_acquire_under(self.max)
    }

    /// Takes one slot, or `None` when `max` (a limit computed for this moment) are taken.
    fn try_acquire_under(&self, max: u64) -> Option<Permit> {
        let prev = self.open.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
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
    /// The retry budget's request window, when it had one.
    budget: Option<ConcurrencyBudget>,
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
    /// Open connections (`tcp.maxConnections`): TCP tunnels, and HTTP/1.1 connections in
    /// http1 mode; HTTP over the shared HTTP/2 connection keeps its one connection per host,
    /// as in Envoy.
    pub connections: Limit,
    /// `retryBudget`: when set, it caps `retries` instead of `maxRetries`.
    pub retry_budget: Option<ConcurrencyBudget>,
}

/// The thresholds of a `connectionPool` the breakers enforce, as Istio's fields give them
/// (0: unset, no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolLimits {
    /// `http.http2MaxRequests`: requests in flight.
    pub max_requests: u32,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection.
    pub max_pending: u32,
    /// `http.maxRetries`: retries in flight.
    pub max_retries: u32,
    /// `tcp.maxConnections`: open connections.
    pub max_connections: u32,
}

impl Breakers {
    /// The breakers `limits` and `budget` set, counting in `counts`.
    pub fn new(limits: &PoolLimits, budget: Option<&BudgetSpec>, counts: &Counts) -> Self {
        Self {
            requests: Limit::from_field(limits.max_requests, counts.requests.clone()),
            pending: Limit::from_field(limits.max_pending, counts.pending.clone()),
            retries: Limit::from_field(limits.max_retries, counts.retries.clone()),
            connections: Limit::from_field(limits.max_connections, counts.connections.clone()),
            retry_budget: budget.map(|b| ConcurrencyBudget::new(b, counts.budget.as_ref())),
        }
    }

    /// Records a request to the cluster, for a retry budget counting by interval (the clock
    /// is read only then).
    pub fn record_request(&self) {
        if let Some(b) = &self.retry_budget {
            b.record_request();
        }
    }

    /// Takes a slot for one retry in flight: under the retry budget when there is one
    /// (Envoy: it replaces `maxRetries`), else under `maxRetries`.
    pub fn try_retry(&self, now_ns: u64) -> Option<Permit> {
        match &self.retry_budget {
            None => self.retries.try_acquire(),
            Some(b) => {
                let in_flight = self.requests.open().saturating_add(self.pending.open());
                self.retries.try_acquire_under(b.max(in_flight, now_ns))
            }
        }
    }

    /// The counts, for the next snapshot's cluster of the same name.
    pub fn counts(&self) -> Counts {
        Counts {
            requests: self.requests.open.clone(),
            pending: self.pending.open.clone(),
            retries: self.retries.open.clone(),
            connections: self.connections.open.clone(),
            budget: self.retry_budget.clone(),
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
        let b = Breakers::new(&PoolLimits::default(), None, &Counts::default());
        assert_eq!(b.requests.max(), u64::MAX);
        let pool = PoolLimits {
            max_requests: 3,
            ..Default::default()
        };
        let b = Breakers::new(&pool, None, &Counts::default());
        assert_eq!(b.requests.max(), 3);
        assert_eq!(b.pending.max(), u64::MAX, "0 is Istio's unset");
    }

    #[test]
    fn a_retry_budget_replaces_max_retries_and_follows_requests_in_flight() {
        let pool = PoolLimits {
            max_retries: 1,
            ..Default::default()
        };
        let budget = BudgetSpec {
            percent: 50.0,
            min_retry_concurrency: 2,
            interval: None,
        };
        let b = Breakers::new(&pool, Some(&budget), &Counts::default());
        let floor: Vec<_> = (0..3).map(|_| b.try_retry(0)).collect();
        assert_eq!(
            floor.iter().filter(|p| p.is_some()).count(),
            2,
            "the floor of 2, not maxRetries 1"
        );
        let requests: Vec<_> = (0..10).filter_map(|_| b.requests.try_acquire()).collect();
        assert_eq!(requests.len(), 10);
        let more: Vec<_> = (0..5).filter_map(|_| b.try_retry(0)).collect();
        assert_eq!(more.len(), 3, "50 % of 10 in flight is 5 retries in all");
        let plain = Breakers::new(&pool, None, &Counts::default());
        let first = plain.try_retry(0);
        assert!(
            first.is_some() && plain.try_retry(0).is_none(),
            "maxRetries 1"
        );
    }

    #[test]
    fn counts_carry_over_to_the_next_snapshot() {
        let pool = PoolLimits {
            max_requests: 1,
            ..Default::default()
        };
        let old = Breakers::new(&pool, None, &Counts::default());
        let held = old.requests.try_acquire();
        let new = Breakers::new(&pool, None, &old.counts());
        assert!(held.is_some());
        assert!(
            new.requests.try_acquire().is_none(),
            "the push kept the count"
        );
    }
}
