//! Consistent hashing: ring hash (Ketama) and Maglev, built as Envoy builds them
//! (SEMANTICS.md §1.2), so that a request hash picks the endpoint an Envoy sidecar would and
//! adding or removing one of N endpoints moves only about 1/N of the keys. Both are plain
//! tables after construction; a pick is a binary search or an index.

use std::fmt::Write as _;

use super::{BalanceError, DEFAULT_MAX_RING_SIZE, Endpoint, MAX_MAGLEV_TABLE_SIZE};
use super::{MaglevConfig, RingHashConfig, xxhash64};

/// Ketama ring: each host gets entries in proportion to its weight, scaled so the lightest
/// host gets at least one whole entry and the ring holds at least `minimum_ring_size` of
/// them (capped at `maximum_ring_size`). Entry keys are `"<key>_<n>"` hashed with xxHash64.
#[derive(Debug)]
pub(super) struct RingHash {
    /// Entry hashes, ascending.
    hashes: Vec<u64>,
    /// Endpoint index of each entry.
    hosts: Vec<u32>,
}

impl RingHash {
    pub(super) fn new(
        endpoints: &[Endpoint<'_>],
        cfg: RingHashConfig,
    ) -> Result<Self, BalanceError> {
        let (min, max) = (cfg.minimum_ring_size, cfg.maximum_ring_size);
        if min == 0 || min > max || max > DEFAULT_MAX_RING_SIZE {
            return Err(BalanceError::RingSize { min, max });
        }
        let weight = |e: &Endpoint<'_>| f64::from(e.weight.max(1));
        let total: f64 = endpoints.iter().map(weight).sum();
        let min_weight = endpoints
            .iter()
            .map(|e| weight(e) / total)
            .fold(1.0, f64::min);
        let scale = ((min_weight * min as f64).ceil() / min_weight).min(max as f64);
        let mut entries: Vec<(u64, u32)> = Vec::with_capacity(scale.ceil() as usize);
        let (mut current, mut target) = (0.0, 0.0);
        let mut key = String::new();
        for (index, endpoint) in (0u32..).zip(endpoints) {
            target += scale * (weight(endpoint) / total);
            let mut n = 0u64;
            while current < target {
                key.clear();
                // Writing into a String cannot fail.
                let _ = write!(key, "{}_{n}", endpoint.key);
                entries.push((xxhash64(key.as_bytes(), 0), index));
                n += 1;
                current += 1.0;
            }
        }
        // Ties broken by endpoint index, so the ring never depends on the sort's whims.
        entries.sort_unstable();
        Ok(Self {
            hashes: entries.iter().map(|e| e.0).collect(),
            hosts: entries.iter().map(|e| e.1).collect(),
        })
    }

    /// The first entry whose hash is ≥ `hash`, wrapping past the end to the first entry
    /// (what Envoy's ketama-style binary search computes).
    pub(super) fn pick(&self, hash: u64) -> Option<usize> {
        let i = self.hashes.partition_point(|&h| h < hash);
        let i = if i == self.hosts.len() { 0 } else { i };
        self.hosts.get(i).map(|&h| h as usize)
    }
}

/// Whether `n` is prime (trial division: table sizes stay below five million).
fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// Maglev lookup table: hosts sorted by key take turns (the heavier ones more often, in
/// proportion to weight) claiming the next free slot of their own permutation
/// `(offset + j·skip) mod M`, until all M slots are filled. A pick is `table[hash mod M]`.
#[derive(Debug)]
pub(super) struct Maglev {
    /// Endpoint index per slot; empty when there are no endpoints.
    table: Vec<u32>,
}

struct Entry {
    index: u32,
    offset: u64,
    skip: u64,
    weight: u128,
    target: u128,
    next: u64,
}

impl Maglev {
    pub(super) fn new(endpoints: &[Endpoint<'_>], cfg: MaglevConfig) -> Result<Self, BalanceError> {
        let m = cfg.table_size;
        if m >= MAX_MAGLEV_TABLE_SIZE {
            return Err(BalanceError::MaglevTableTooLarge(m));
        }
        if !is_prime(m) {
            return Err(BalanceError::MaglevTableNotPrime(m));
        }
        if endpoints.is_empty() {
            return Ok(Self { table: Vec::new() });
        }
        // Sorted by key so every proxy fills the table in the same order, whatever order
        // the endpoints arrived in.
        let mut order: Vec<u32> = (0..endpoints.len() as u32).collect();
        order.sort_by_key(|&i| (endpoints[i as usize].key, i));
        let mut entries: Vec<Entry> = order
            .into_iter()
            .map(|index| {
                let endpoint = &endpoints[index as usize];
                let key = endpoint.key.as_bytes();
                Entry {
                    index,
                    offset: xxhash64(key, 0) % m,
                    skip: xxhash64(key, 1) % (m - 1) + 1,
                    weight: u128::from(endpoint.weight.max(1)),
                    target: 0,
                    next: 0,
                }
            })
            .collect();
        let max_weight = entries.iter().map(|e| e.weight).max().unwrap_or(1);
        let mut table = vec![u32::MAX; m as usize];
        let mut filled = 0;
        let mut round: u128 = 1;
        while filled < m {
            for e in &mut entries {
                if filled == m {
                    break;
                }
                // A host of the largest weight takes a turn every round; one of a third
                // of that weight every third round.
                if round * e.weight < e.target {
                    continue;
                }
                e.target += max_weight;
                loop {
                    let slot = ((e.offset + e.skip * e.next) % m) as usize;
                    e.next += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = e.index;
                        break;
                    }
                }
                filled += 1;
            }
            round += 1;
        }
        Ok(Self { table })
    }

    pub(super) fn pick(&self, hash: u64) -> Option<usize> {
        let slot = hash % (self.table.len().max(1) as u64);
        self.table.get(slot as usize).map(|&i| i as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::hash_key;

    fn addrs(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:8080", i / 200, i % 200))
            .collect()
    }

    fn endpoints<'a>(keys: &'a [String], weights: &[u32]) -> Vec<Endpoint<'a>> {
        keys.iter()
            .zip(weights.iter().copied().chain(std::iter::repeat(1)))
            .map(|(key, weight)| Endpoint { key, weight })
            .collect()
    }

    type Build = fn(&[Endpoint<'_>]) -> Box<dyn Fn(u64) -> Option<usize>>;

    fn ring(eps: &[Endpoint<'_>]) -> Box<dyn Fn(u64) -> Option<usize>> {
        let r = RingHash::new(eps, RingHashConfig::default()).unwrap();
        Box::new(move |h| r.pick(h))
    }

    fn maglev(eps: &[Endpoint<'_>]) -> Box<dyn Fn(u64) -> Option<usize>> {
        let m = Maglev::new(eps, MaglevConfig::default()).unwrap();
        Box::new(move |h| m.pick(h))
    }

    fn request_hashes() -> Vec<u64> {
        (0..10_000)
            .map(|i| hash_key(format!("user-{i}").as_bytes()))
            .collect()
    }

    /// The endpoint key each request lands on.
    fn assignment(build: Build, keys: &[String]) -> Vec<String> {
        let pick = build(&endpoints(keys, &[]));
        request_hashes()
            .into_iter()
            .map(|h| keys[pick(h).unwrap()].clone())
            .collect()
    }

    /// How many entries of `table` name endpoint `i`.
    fn count_in(table: &[u32], i: u32) -> f64 {
        table.iter().filter(|&&h| h == i).count() as f64
    }

    fn moved(a: &[String], b: &[String]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
    }

    #[test]
    fn one_endpoint_more_or_less_remaps_about_one_nth_of_the_keys() {
        // Measured: Maglev moves 10.5 % (removal) and 9.4 % (addition). The ring moves 17.5 %
        // and 15.9 %: as in Envoy, each host gets ceil(1024 / N) entries, so with one host fewer
        // the other nine gain 11 entries each, and those take keys from their neighbours too.
        for (name, build) in [("ring", ring as Build), ("maglev", maglev as Build)] {
            let ten = addrs(10);
            let before = assignment(build, &ten);
            let removed = assignment(build, &ten[1..]);
            let frac = moved(&before, &removed);
            assert!((0.05..0.2).contains(&frac), "{name}: removal moved {frac}");
            let added = assignment(build, &addrs(11));
            let frac = moved(&before, &added);
            assert!(
                (0.5 / 11.0..2.0 / 11.0).contains(&frac),
                "{name}: addition moved {frac}"
            );
        }
    }

    #[test]
    fn keys_stick_and_spread_evenly() {
        for (name, build) in [("ring", ring as Build), ("maglev", maglev as Build)] {
            let keys = addrs(10);
            let first = assignment(build, &keys);
            assert_eq!(first, assignment(build, &keys), "{name}: rebuild differs");
            let pick = build(&endpoints(&keys, &[]));
            let mut counts = [0u32; 10];
            for h in request_hashes() {
                let i = pick(h).unwrap();
                assert_eq!(pick(h), Some(i));
                counts[i] += 1;
            }
            assert!(
                counts.iter().all(|&c| (750..1250).contains(&c)),
                "{name}: {counts:?}"
            );
        }
    }

    #[test]
    fn ring_sizes_follow_envoys_scaling() {
        let keys = addrs(10);
        let r = RingHash::new(&endpoints(&keys, &[]), RingHashConfig::default()).unwrap();
        // ceil(1024 / 10) entries each.
        assert_eq!(r.hosts.len(), 1030);
        assert!((0..10).all(|i| count_in(&r.hosts, i) == 103.0));
        assert!(r.hashes.windows(2).all(|w| w[0] <= w[1]));
        // Weights 1:2: the light host gets ceil(1024 / 3) = 342 entries, the heavy one twice that.
        let two = &keys[..2];
        let r = RingHash::new(&endpoints(two, &[1, 2]), RingHashConfig::default()).unwrap();
        assert_eq!(
            (count_in(&r.hosts, 0), count_in(&r.hosts, 1)),
            (342.0, 684.0)
        );
        // Capped by the maximum.
        let (minimum_ring_size, maximum_ring_size) = (64, 100);
        let cfg = RingHashConfig {
            minimum_ring_size,
            maximum_ring_size,
        };
        let r = RingHash::new(&endpoints(two, &[1, 1000]), cfg).unwrap();
        assert_eq!(r.hosts.len(), 100);
        assert!(r.hosts.contains(&0));
    }

    #[test]
    fn ring_lookup_takes_the_next_entry_and_wraps() {
        let keys = addrs(3);
        let r = RingHash::new(&endpoints(&keys, &[]), RingHashConfig::default()).unwrap();
        let (first, last) = (r.hashes[0], r.hashes[r.hashes.len() - 1]);
        assert_eq!(r.pick(first), Some(r.hosts[0] as usize));
        assert_eq!(r.pick(first + 1), Some(r.hosts[1] as usize));
        assert_eq!(r.pick(last + 1), Some(r.hosts[0] as usize));
        assert_eq!(r.pick(0), Some(r.hosts[0] as usize));
    }

    #[test]
    fn maglev_fills_every_slot_in_proportion_to_weight() {
        let keys = addrs(3);
        let m = Maglev::new(&endpoints(&keys, &[1, 2, 3]), MaglevConfig::default()).unwrap();
        let count = |i| count_in(&m.table, i);
        assert_eq!(count(0) + count(1) + count(2), 65_537.0);
        assert!((count(1) / count(0) - 2.0).abs() < 0.01);
        assert!((count(2) / count(0) - 3.0).abs() < 0.01);
        // Equal weights: M / N slots each, give or take one.
        let m = Maglev::new(&endpoints(&keys, &[]), MaglevConfig::default()).unwrap();
        assert!((0..3).all(|i| (21_845.0..=21_846.0).contains(&count_in(&m.table, i))));
    }

    #[test]
    fn maglev_ignores_endpoint_order() {
        let keys = addrs(5);
        let mut reversed = keys.clone();
        reversed.reverse();
        assert_eq!(assignment(maglev, &keys), assignment(maglev, &reversed));
    }

    #[test]
    fn primes_are_recognised() {
        let primes: Vec<u64> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537) && is_prime(5_000_011) && !is_prime(65_535));
    }
}
