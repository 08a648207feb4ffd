//! Metric series made on first use, forgotten when idle, and capped.
//!
//! A sidecar that knows a thousand services must not carry a series for each of them: a
//! series exists once something was recorded under its labels, is removed after it has
//! seen nothing for [`SeriesLimits::idle_sweeps`] sweeps (so a peer or cluster that is gone
//! stops being exported), and past [`SeriesLimits::max_series`] new label sets are not
//! recorded at all but counted as dropped. The map is found with one lookup hashed by
//! foldhash; label sets that share `Arc`s compare by address first.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::telemetry::prom::Counter;

/// How many series a family may hold and how long an idle one is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeriesLimits {
    /// Series held at most; new label sets past it are dropped and counted.
    pub max_series: usize,
    /// Sweeps a series may go untouched before it is removed.
    pub idle_sweeps: u32,
}

impl Default for SeriesLimits {
    fn default() -> Self {
        Self {
            max_series: 5_000,
            idle_sweeps: 2,
        }
    }
}

struct Entry<V> {
    value: V,
    /// The sweep generation in which it was last recorded into.
    touched: u32,
}

/// Label sets to the handles of their series.
pub struct SeriesMap<K, V> {
    entries: Mutex<HashMap<K, Entry<V>, foldhash::fast::FixedState>>,
    generation: AtomicU32,
    limits: SeriesLimits,
    /// Records dropped because the map was full (`meshlite_metric_series_dropped_total`).
    dropped: Counter,
}

impl<K, V> std::fmt::Debug for SeriesMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeriesMap")
            .field("len", &self.len())
            .field("limits", &self.limits)
            .finish()
    }
}

impl<K, V> SeriesMap<K, V> {
    /// Series held now.
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    /// Whether no series is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq + Clone, V> SeriesMap<K, V> {
    /// An empty map bounded by `limits`, counting dropped records in `dropped`.
    pub fn new(limits: SeriesLimits, dropped: Counter) -> Self {
        Self {
            entries: Mutex::default(),
            generation: AtomicU32::new(0),
            limits,
            dropped,
        }
    }

    /// Runs `record` on the series of `key`, made by `make` when it is new. Returns false
    /// (and counts a drop) when the series is new and the map is full.
    pub fn with(&self, key: &K, make: impl FnOnce() -> V, record: impl FnOnce(&V)) -> bool {
        let generation = self.generation.load(Ordering::Relaxed);
        // A poisoned lock only means a panic elsewhere mid-insert; the map is still a map.
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.get_mut(key) {
            e.touched = generation;
            record(&e.value);
            return true;
        }
        if entries.len() >= self.limits.max_series {
            drop(entries);
            self.dropped.inc();
            return false;
        }
        let value = make();
        record(&value);
        entries.insert(
            key.clone(),
            Entry {
                value,
                touched: generation,
            },
        );
        true
    }

    /// Starts a new sweep generation and removes the series untouched for
    /// [`SeriesLimits::idle_sweeps`] generations; returns how many were removed.
    pub fn sweep(&self) -> usize {
        let now = self
            .generation
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        let idle = self.limits.idle_sweeps;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let before = entries.len();
        entries.retain(|_, e| now.wrapping_sub(e.touched) <= idle);
        before - entries.len()
    }

    /// Visits every series (for encoding), under the map's lock.
    pub fn for_each<E>(&self, mut f: impl FnMut(&K, &V) -> Result<(), E>) -> Result<(), E> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for (k, e) in entries.iter() {
            f(k, &e.value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn map(max_series: usize) -> (SeriesMap<u32, AtomicU64>, Counter) {
        let dropped = Counter::default();
        let m = SeriesMap::new(
            SeriesLimits {
                max_series,
                idle_sweeps: 2,
            },
            dropped.clone(),
        );
        (m, dropped)
    }

    fn add(m: &SeriesMap<u32, AtomicU64>, k: u32) -> bool {
        m.with(&k, AtomicU64::default, |v| {
            v.fetch_add(1, Ordering::Relaxed);
        })
    }

    fn value(m: &SeriesMap<u32, AtomicU64>, k: u32) -> Option<u64> {
        let mut found = None;
        let _ = m.for_each::<()>(|key, v| {
            if *key == k {
                found = Some(v.load(Ordering::Relaxed));
            }
            Ok(())
        });
        found
    }

    #[test]
    fn a_series_exists_once_recorded_into_and_counts_every_record() {
        let (m, _) = map(10);
        assert!(m.is_empty());
        add(&m, 1);
        add(&m, 1);
        assert_eq!((m.len(), value(&m, 1)), (1, Some(2)));
    }

    #[test]
    fn idle_series_are_swept_and_busy_ones_kept() {
        let (m, _) = map(10);
        add(&m, 1);
        add(&m, 2);
        assert_eq!(m.sweep(), 0);
        add(&m, 2);
        assert_eq!(m.sweep(), 0, "1 has been idle one sweep: kept");
        assert_eq!(m.sweep(), 1, "1 idle past two sweeps: removed");
        assert_eq!((value(&m, 1), value(&m, 2)), (None, Some(2)));
        add(&m, 1);
        assert_eq!(value(&m, 1), Some(1), "used again: a new series");
    }

    #[test]
    fn past_the_cap_new_label_sets_are_dropped_and_counted() {
        let (m, dropped) = map(2);
        assert!(add(&m, 1) && add(&m, 2));
        assert!(!add(&m, 3));
        assert_eq!((m.len(), dropped.get()), (2, 1));
        assert!(add(&m, 1), "existing series still record");
        assert_eq!(value(&m, 1), Some(2));
    }
}
