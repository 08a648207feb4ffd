//! Load balancing: which endpoint of a cluster gets the next request, as Envoy does it under
//! an Istio DestinationRule `loadBalancer` (SEMANTICS.md §1.2): round robin, random, least
//! request (power of two choices; weight / (active + 1)^bias when weights differ), ring hash
//! (Ketama) and Maglev, with Envoy's defaults and Envoy's xxHash64 so that a hash key lands
//! where it would on an Envoy sidecar.
//!
//! A [`Balancer`] is built once per endpoint set and never changes afterwards: the request
//! path shares it through an `Arc` and swaps in a new one when the endpoints change. Picking
//! touches only atomics (the round-robin cursor, the caller's in-flight counters): no lock,
//! no allocation. Randomness comes in through [`Random`], so tests are deterministic. No
//! algorithm here reads the clock: slow start ([`slow_start`]) scales weights when the
//! cluster rebuilds its balancer, a few times a second while an endpoint warms up.
//!
//! The snapshot builds one per cluster from the DestinationRule's `loadBalancer`
//! ([`crate::snapshot::Cluster::pick`]) over a [`host_set::HostSet`]; the request's hash input
//! (header, cookie, query parameter, source IP) is fed to [`hash_key`] by [`hash_on::HashOn`].

mod consistent;
pub mod ewma;
pub mod hash_on;
pub mod host_set;
pub mod locality;
pub mod slow_start;
mod weighted;

use std::sync::atomic::{AtomicU64, Ordering};

use consistent::{Maglev, RingHash};
use weighted::{LeastRequest, RoundRobin};

/// xxHash64 of `data` with `seed`: the hash Envoy uses for ring-hash entries, Maglev
/// permutations (seeds 0 and 1) and request hash keys, so a key lands on the same endpoint
/// as behind an Envoy sidecar.
pub fn xxhash64(data: &[u8], seed: u64) -> u64 {
    xxhash_rust::xxh64::xxh64(data, seed)
}

/// Envoy's `least_request_lb_config.choice_count` default.
pub const DEFAULT_CHOICE_COUNT: u32 = 2;
/// Envoy's `active_request_bias` default.
pub const DEFAULT_ACTIVE_REQUEST_BIAS: f64 = 1.0;
/// Istio's `consistentHash.ringHash.minimumRingSize` default (also Envoy's).
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// Envoy's `maximum_ring_size` default; Istio never sets it.
pub const DEFAULT_MAX_RING_SIZE: u64 = 8_388_608;
/// Istio's and Envoy's `maglev.tableSize` default (a prime).
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65_537;
/// Envoy rejects Maglev table sizes at or above this bound.
pub const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;

/// One endpoint as a balancer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint<'a> {
    /// The host key Envoy hashes for ring hash and Maglev: the endpoint address, `ip:port`.
    pub key: &'a str,
    /// Load-balancing weight. 0 is treated as 1: Envoy's EDS requires weights ≥ 1, so a 0
    /// here can only mean "unset".
    pub weight: u32,
}

impl<'a> Endpoint<'a> {
    /// An endpoint with this key and weight.
    pub const fn new(key: &'a str, weight: u32) -> Self {
        Self { key, weight }
    }
}

/// Least-request tuning (Envoy's `LeastRequestLbConfig`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeastRequestConfig {
    /// Hosts drawn per pick when weights are equal; at least 2.
    pub choice_count: u32,
    /// Exponent on `active + 1` when weights differ; finite and ≥ 0 (0 = plain weighted).
    pub active_request_bias: f64,
}

impl Default for LeastRequestConfig {
    fn default() -> Self {
        Self {
            choice_count: DEFAULT_CHOICE_COUNT,
            active_request_bias: DEFAULT_ACTIVE_REQUEST_BIAS,
        }
    }
}

/// Ring-hash sizing (Envoy's `RingHashLbConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingHashConfig {
    /// Lower bound on ring entries; the ring grows until the lightest host gets one.
    pub minimum_ring_size: u64,
    /// Upper bound on ring entries.
    pub maximum_ring_size: u64,
}

impl Default for RingHashConfig {
    fn default() -> Self {
        Self {
            minimum_ring_size: DEFAULT_MIN_RING_SIZE,
            maximum_ring_size: DEFAULT_MAX_RING_SIZE,
        }
    }
}

/// Maglev sizing (Envoy's `MaglevLbConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevConfig {
    /// Lookup table size; must be prime and below [`MAX_MAGLEV_TABLE_SIZE`].
    pub table_size: u64,
}

impl Default for MaglevConfig {
    fn default() -> Self {
        Self {
            table_size: DEFAULT_MAGLEV_TABLE_SIZE,
        }
    }
}

/// Which algorithm a cluster uses: the DestinationRule `loadBalancer` after defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Policy {
    /// `ROUND_ROBIN`.
    RoundRobin,
    /// `RANDOM`: uniform, weights ignored (Envoy's behaviour).
    Random,
    /// `LEAST_REQUEST` (and its deprecated alias `LEAST_CONN`).
    LeastRequest(LeastRequestConfig),
    /// `consistentHash` with `ringHash` (or with neither ring hash nor Maglev).
    RingHash(RingHashConfig),
    /// `consistentHash.maglev`.
    Maglev(MaglevConfig),
    /// Peak EWMA (Linkerd's latency-aware balancer; a meshlite extension): two random
    /// endpoints, the one with the lower latency estimate × (in flight + 1) wins.
    PeakEwma,
}

impl Default for Policy {
    /// `UNSPECIFIED` means least request since Istio 1.14.
    fn default() -> Self {
        Policy::LeastRequest(LeastRequestConfig::default())
    }
}

/// Why a balancer could not be built (the configuration carrying it should be rejected).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BalanceError {
    /// Envoy requires a prime Maglev table size.
    #[error("maglev table size {0} is not prime")]
    MaglevTableNotPrime(u64),
    /// Envoy caps the Maglev table size.
    #[error("maglev table size {0} must be below {MAX_MAGLEV_TABLE_SIZE}")]
    MaglevTableTooLarge(u64),
    /// The ring-hash bounds are empty or inverted.
    #[error("ring hash minimum size {min} must be between 1 and the maximum size {max}")]
    RingSize {
        /// `minimum_ring_size`.
        min: u64,
        /// `maximum_ring_size`.
        max: u64,
    },
    /// Envoy validates `choice_count >= 2`.
    #[error("least request choice_count must be at least 2, got {0}")]
    ChoiceCount(u32),
    /// Envoy would fall back to 1.0 for a negative bias; we refuse it instead, so the
    /// operator sees the mistake.
    #[error("active_request_bias must be finite and non-negative, got {0}")]
    ActiveRequestBias(f64),
    /// Endpoint indices are stored as `u32`.
    #[error("{0} endpoints is more than a balancer can index")]
    TooManyEndpoints(usize),
}

/// A source of uniformly distributed `u64`s, injected so tests can script or seed it.
pub trait Random {
    /// The next random value.
    fn next_u64(&mut self) -> u64;
}

impl<F: FnMut() -> u64> Random for F {
    fn next_u64(&mut self) -> u64 {
        self()
    }
}

/// The production source: fastrand's thread-local generator (no lock, no allocation).
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadRandom;

impl Random for ThreadRandom {
    #[inline]
    fn next_u64(&mut self) -> u64 {
        fastrand::u64(..)
    }
}

/// A seeded SplitMix64 generator: reproducible sequences for tests and benchmarks.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl Random for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Counts one request as outstanding to an endpoint (its count is what least request and
/// peak EWMA read) until dropped: at the end of the response body, or when the attempt
/// fails. The count is shared, so the guard outlives the snapshot that picked the endpoint.
#[derive(Debug)]
pub struct Outstanding(std::sync::Arc<AtomicU64>);

impl Outstanding {
    /// Starts counting a request on `count`.
    pub fn start(count: &std::sync::Arc<AtomicU64>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The in-flight request count of each endpoint (Envoy's `rq_active`), by endpoint index;
/// read only by least request and peak EWMA. An index out of range reads as 0.
pub trait ActiveRequests {
    /// Requests currently in flight to endpoint `index`.
    fn active(&self, index: usize) -> u64;

    /// Peak EWMA's cost of endpoint `index`: by default its requests in flight (a
    /// latency-blind cost, for callers without estimates).
    fn cost(&self, index: usize) -> f64 {
        self.active(index) as f64
    }
}

impl ActiveRequests for [AtomicU64] {
    fn active(&self, index: usize) -> u64 {
        self.get(index).map_or(0, |a| a.load(Ordering::Relaxed))
    }
}

impl ActiveRequests for [u64] {
    fn active(&self, index: usize) -> u64 {
        self.get(index).copied().unwrap_or(0)
    }
}

impl<F: Fn(usize) -> u64> ActiveRequests for F {
    fn active(&self, index: usize) -> u64 {
        self(index)
    }
}

/// The xxHash64 (seed 0) of a request's hash input (header value, cookie value, query
/// parameter, source IP string), as Envoy's route hash policies compute it.
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxhash64(bytes, 0)
}

/// Folds the hash of a further hash policy into `acc`, as Envoy combines several:
/// `rotl(acc, 1) ^ next`.
pub fn combine_hashes(acc: u64, next: u64) -> u64 {
    acc.rotate_left(1) ^ next
}

/// A load balancer over one endpoint set, immutable once built: share it through an `Arc`
/// and rebuild it when the set changes. Indices returned refer to the slice it was built from.
#[derive(Debug)]
pub struct Balancer(Kind);

#[derive(Debug)]
enum Kind {
    RoundRobin(RoundRobin),
    /// Endpoint count.
    Random(usize),
    LeastRequest(LeastRequest),
    RingHash(RingHash),
    Maglev(Maglev),
    /// Endpoint count.
    PeakEwma(usize),
}

impl Balancer {
    /// Checks `policy`'s settings as [`Balancer::new`] would, without building a table:
    /// what a snapshot refuses up front for a cluster it builds later, on first use.
    pub fn check(policy: Policy) -> Result<(), BalanceError> {
        Self::new(policy, &[], &mut SplitMix64(0)).map(drop)
    }

    /// Builds the balancer for `endpoints`. `rng` only seeds the round-robin start, so that
    /// proxies started together do not march in step (Envoy starts at a random index too).
    pub fn new(
        policy: Policy,
        endpoints: &[Endpoint<'_>],
        rng: &mut (impl Random + ?Sized),
    ) -> Result<Self, BalanceError> {
        if u32::try_from(endpoints.len()).is_err() {
            return Err(BalanceError::TooManyEndpoints(endpoints.len()));
        }
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight.max(1)).collect();
        Ok(Self(match policy {
            Policy::RoundRobin => Kind::RoundRobin(RoundRobin::new(&weights, rng.next_u64())),
            Policy::Random => Kind::Random(endpoints.len()),
            Policy::LeastRequest(cfg) => Kind::LeastRequest(LeastRequest::new(&weights, cfg)?),
            Policy::RingHash(cfg) => Kind::RingHash(RingHash::new(endpoints, cfg)?),
            Policy::Maglev(cfg) => Kind::Maglev(Maglev::new(endpoints, cfg)?),
            Policy::PeakEwma => Kind::PeakEwma(endpoints.len()),
        }))
    }

    /// Picks an endpoint index; `None` when the set is empty (Envoy answers 503 `UH`).
    /// `hash` is the request hash for ring hash and Maglev; without one a random hash is
    /// used, so the pick is random in proportion to weight (Envoy: no hash ⇒ random host).
    /// `active` is read by least request only.
    pub fn pick<A, R>(&self, hash: Option<u64>, active: &A, rng: &mut R) -> Option<usize>
    where
        A: ActiveRequests + ?Sized,
        R: Random + ?Sized,
    {
        match &self.0 {
            Kind::RoundRobin(b) => b.pick(),
            Kind::Random(len) => weighted::uniform(*len, rng),
            Kind::LeastRequest(b) => b.pick(active, rng),
            Kind::RingHash(b) => b.pick(hash.unwrap_or_else(|| rng.next_u64())),
            Kind::Maglev(b) => b.pick(hash.unwrap_or_else(|| rng.next_u64())),
            Kind::PeakEwma(len) => {
                let n = *len as u64;
                if n <= 1 {
                    return (n == 1).then_some(0);
                }
                let a = (rng.next_u64() % n) as usize;
                let b = (rng.next_u64() % n) as usize;
                Some(if active.cost(b) < active.cost(a) {
                    b
                } else {
                    a
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BalanceError::*;
    use super::*;

    #[test]
    fn xxhash64_matches_reference_vectors() {
        // Reference xxHash64 outputs (xxhash spec / python-xxhash docs / Envoy's hash_test.cc).
        assert_eq!(xxhash64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxhash64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxhash64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
        assert_eq!(xxhash64(b"foo", 0), 3_728_699_739_546_630_719);
        assert_eq!(xxhash64(b"xxhash", 0), 0x32DD_3895_2C4B_C720);
        assert_eq!(xxhash64(b"xxhash", 20_141_025), 0xB559_B98D_844E_0635);
        // Seed 1 is Maglev's skip hash.
        let seed = b"I want an unsigned 64-bit seed!";
        assert_eq!(xxhash64(seed, 0), 0xD4CB_0A70_A2B8_C7C1);
        assert_eq!(xxhash64(seed, 1), 0xCE50_87F1_2470_D961);
        // 39 bytes: one 32-byte stripe, then a 4-byte word and three single bytes.
        assert_eq!(
            xxhash64(b"Nobody inspects the spammish repetition", 0),
            0xFBCE_A83C_8A37_8BF1
        );
    }

    fn policies() -> [Policy; 5] {
        let (ring, maglev) = (RingHashConfig::default(), MaglevConfig::default());
        let lr = Policy::default();
        [
            Policy::RoundRobin,
            Policy::Random,
            lr,
            Policy::RingHash(ring),
            Policy::Maglev(maglev),
        ]
    }

    #[test]
    fn empty_set_picks_nothing() {
        let mut rng = SplitMix64(1);
        for p in policies() {
            let b = Balancer::new(p, &[], &mut rng).unwrap();
            for h in [None, Some(0), Some(u64::MAX)] {
                assert_eq!(b.pick(h, &|_| 0, &mut rng), None, "{p:?}");
            }
        }
    }

    #[test]
    fn single_endpoint_is_always_chosen() {
        let mut rng = SplitMix64(2);
        let eps = [Endpoint::new("10.0.0.1:80", 7)];
        for p in policies() {
            let b = Balancer::new(p, &eps, &mut rng).unwrap();
            for i in 0..1000u64 {
                let hash = (i % 2 == 0).then(|| hash_key(&i.to_le_bytes()));
                assert_eq!(b.pick(hash, &|_| i, &mut rng), Some(0), "{p:?}");
            }
        }
    }

    #[test]
    fn hash_policies_without_a_hash_spread_randomly() {
        let keys = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];
        let eps = keys.map(|k| Endpoint::new(k, 1));
        let mut rng = SplitMix64(3);
        for p in &policies()[3..] {
            let b = Balancer::new(*p, &eps, &mut rng).unwrap();
            let mut seen = [0u32; 4];
            for _ in 0..4000 {
                seen[b.pick(None, &|_| 0, &mut rng).unwrap()] += 1;
            }
            assert!(seen.iter().all(|&n| n > 500), "{p:?}: {seen:?}");
        }
    }

    #[test]
    fn invalid_configurations_are_refused() {
        let eps = [Endpoint::new("a:1", 1)];
        let build = |p| Balancer::new(p, &eps, &mut SplitMix64(0)).map(|_| ());
        let maglev = |table_size| Policy::Maglev(MaglevConfig { table_size });
        assert_eq!(build(maglev(65536)), Err(MaglevTableNotPrime(65536)));
        assert_eq!(build(maglev(1)), Err(MaglevTableNotPrime(1)));
        assert_eq!(
            build(maglev(5_000_011)),
            Err(MaglevTableTooLarge(5_000_011))
        );
        assert_eq!(build(maglev(2)), Ok(()));
        let ring = |min, max| {
            let (minimum_ring_size, maximum_ring_size) = (min, max);
            Policy::RingHash(RingHashConfig {
                minimum_ring_size,
                maximum_ring_size,
            })
        };
        assert_eq!(build(ring(0, 10)), Err(RingSize { min: 0, max: 10 }));
        assert_eq!(build(ring(11, 10)), Err(RingSize { min: 11, max: 10 }));
        assert!(build(ring(1, DEFAULT_MAX_RING_SIZE + 1)).is_err());
        let lr = |choice_count, active_request_bias| {
            Policy::LeastRequest(LeastRequestConfig {
                choice_count,
                active_request_bias,
            })
        };
        assert_eq!(build(lr(1, 1.0)), Err(ChoiceCount(1)));
        for bias in [-0.5, f64::NAN, f64::INFINITY] {
            assert!(matches!(build(lr(2, bias)), Err(ActiveRequestBias(_))));
        }
        assert_eq!(build(lr(5, 0.0)), Ok(()));
    }

    #[test]
    fn helpers_are_deterministic_and_balancers_shareable() {
        let seq = |seed| {
            let mut r = SplitMix64(seed);
            [r.next_u64(), r.next_u64()]
        };
        assert_eq!(seq(9), seq(9));
        assert_ne!(seq(9), seq(10));
        let atomics = [AtomicU64::new(3), AtomicU64::new(5)];
        assert_eq!((atomics[..].active(1), atomics[..].active(9)), (5, 0));
        assert_eq!([4u64][..].active(0), 4);
        assert_eq!(combine_hashes(1 << 63, 1), 0);
        fn shareable<T: Send + Sync>() {}
        shareable::<Balancer>();
    }

    #[test]
    fn peak_ewma_sends_to_the_cheaper_of_two_draws() {
        struct Costs;
        impl ActiveRequests for Costs {
            fn active(&self, _: usize) -> u64 {
                0
            }
            fn cost(&self, i: usize) -> f64 {
                [1.0, 100.0][i]
            }
        }
        let keys = [Endpoint::new("a:1", 1), Endpoint::new("b:1", 1)];
        let lb = Balancer::new(Policy::PeakEwma, &keys, &mut SplitMix64(7)).unwrap();
        let mut rng = SplitMix64(11);
        let fast = (0..10_000)
            .filter(|_| lb.pick(None, &Costs, &mut rng) == Some(0))
            .count();
        // Only two draws of the slow one pick it: a quarter of the time.
        assert!((7_200..7_800).contains(&fast), "{fast}");
    }
}
