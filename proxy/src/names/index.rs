//! Names looked up by their hash: a table of thousands of service names that stores no
//! name.
//!
//! A sidecar that knows a mesh of thousands of services answers to four or five names for
//! each (its FQDN and the short forms a pod's search list makes), and a table keyed by copied
//! strings spends about a hundred bytes a name on them. A [`NameIndex`] keeps only each name's
//! 64-bit hash, sorted, beside the index of the service it leads to: twelve bytes a name. A
//! lookup finds the services whose names hash alike and checks each against the one asked
//! (the caller knows its services' names), so two names that happen to share a hash are
//! never confused.

use std::hash::BuildHasher;

use super::realign::{Realignment, merge_sorted};

/// foldhash with a seed drawn once per process from the system's randomness (through std's
/// `RandomState`, so a run whose randomness is fixed, as the instruction counts' is, hashes
/// alike every time; foldhash's own `RandomState` seeds from the clock and addresses).
#[derive(Clone, Copy, Debug)]
pub struct NameHasher(foldhash::fast::FixedState);

impl Default for NameHasher {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let seed = *SEED.get_or_init(|| {
            std::collections::hash_map::RandomState::new().hash_one(0x6d65_7368_u64)
        });
        Self(foldhash::fast::FixedState::with_seed(seed))
    }
}

impl BuildHasher for NameHasher {
    type Hasher = foldhash::fast::FoldHasher;

    #[inline]
    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// Hashes of names, sorted, each with the index of the entry (a service port, a service) it
/// leads to.
#[derive(Debug, Default)]
pub struct NameIndex {
    hasher: NameHasher,
    /// Sorted; a name given by several entries appears once for each, in their order.
    hashes: Box<[u64]>,
    /// `at[i]` is the entry `hashes[i]` leads to.
    at: Box<[u32]>,
    /// How many different hashes it holds.
    distinct: usize,
}

/// Collects the names of an index's entries.
#[derive(Debug, Default)]
pub struct NameIndexBuilder {
    hasher: NameHasher,
    entries: Vec<(u64, u32)>,
}

impl NameIndexBuilder {
    /// A builder expecting about `names` names.
    pub fn with_capacity(names: usize) -> Self {
        Self {
            hasher: NameHasher::default(),
            entries: Vec::with_capacity(names),
        }
    }

    /// Entry `at` answers to `name` (as lookups will give it: the caller puts names and
    /// queries in one form, lower case for instance).
    pub fn add(&mut self, name: &str, at: u32) {
        self.entries.push((self.hasher.hash_one(name), at));
    }

    /// The index, each name's entries kept in the order of their indices.
    pub fn build(self) -> NameIndex {
        let hasher = self.hasher;
        NameIndex::of_sorted(hasher, &self.into_sorted())
    }

    /// Its entries, sorted, each once.
    fn into_sorted(mut self) -> Vec<(u64, u32)> {
        self.entries.sort_unstable();
        self.entries.dedup();
        self.entries
    }
}

impl NameIndex {
    /// The index of `entries`, sorted and without duplicates.
    fn of_sorted(hasher: NameHasher, entries: &[(u64, u32)]) -> Self {
        let distinct = 1 + entries.windows(2).filter(|w| w[0].0 != w[1].0).count();
        Self {
            hasher,
            hashes: entries.iter().map(|e| e.0).collect(),
            at: entries.iter().map(|e| e.1).collect(),
            distinct: if entries.is_empty() { 0 } else { distinct },
        }
    }

    /// This index carried into the list `r` lines up: the names of places that left are
    /// dropped, the others moved to their new places, and `fresh` (the names of the new
    /// list's fresh places) merged in. One pass; no name is hashed again.
    pub fn realigned(&self, r: &Realignment, fresh: NameIndexBuilder) -> Self {
        let kept = self
            .hashes
            .iter()
            .zip(self.at.iter())
            .filter_map(|(h, at)| r.new_place(*at).map(|p| (*h, p)));
        let entries = merge_sorted(kept, fresh.into_sorted(), Ord::cmp);
        Self::of_sorted(self.hasher, &entries)
    }

    /// The entries that may answer to `name`, in the order of their indices: every entry that
    /// does, and (should another name share its hash) entries that do not, which the caller
    /// tells apart by checking the name.
    pub fn candidates(&self, name: &str) -> &[u32] {
        let h = self.hasher.hash_one(name);
        let start = self.hashes.partition_point(|x| *x < h);
        let len = self.hashes[start..].partition_point(|x| *x == h);
        &self.at[start..start + len]
    }

    /// How many names it holds (two names sharing a hash, which a 64-bit hash makes all but
    /// impossible, would count once: this is a figure for the admin page).
    pub fn len(&self) -> usize {
        self.distinct
    }

    /// Whether it holds no name.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Bytes it holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.hashes.len() * (size_of::<u64>() + size_of::<u32>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_leads_to_every_entry_giving_it_in_order_and_an_unknown_name_to_none() {
        let mut b = NameIndexBuilder::with_capacity(8);
        for (name, at) in [
            ("reviews", 3),
            ("reviews.shop", 3),
            ("reviews", 1),
            ("cart", 2),
            ("reviews", 1),
        ] {
            b.add(name, at);
        }
        let idx = b.build();
        assert_eq!(idx.candidates("reviews"), &[1, 3]);
        assert_eq!(idx.candidates("reviews.shop"), &[3]);
        assert_eq!(idx.candidates("cart"), &[2]);
        assert!(idx.candidates("ratings").is_empty());
        assert!(idx.candidates("").is_empty());
        assert_eq!(idx.len(), 3);
        assert_eq!(idx.heap_bytes(), 4 * 12, "the duplicate pair is held once");
    }

    #[test]
    fn a_carried_index_follows_its_list_and_takes_in_the_fresh_names() {
        use std::sync::Arc;
        let names = |v: &[(&'static str, Arc<u8>)]| {
            let mut b = NameIndexBuilder::with_capacity(8);
            for (i, (name, _)) in (0u32..).zip(v) {
                b.add(name, i);
                b.add("shared", i);
            }
            b
        };
        let (a, b, c) = (Arc::new(0), Arc::new(1), Arc::new(2));
        let old = [("a", a.clone()), ("b", b.clone()), ("c", c.clone())];
        let idx = names(&old).build();
        // "b" dropped, "x" added first.
        let new = [("x", Arc::new(3)), ("a", a), ("c", c)];
        let r = Realignment::of(old.iter().map(|e| &e.1), new.iter().map(|e| &e.1)).unwrap();
        let mut fresh = NameIndexBuilder::with_capacity(2);
        for &at in r.fresh() {
            let (name, _) = &new[at as usize];
            fresh.add(name, at);
            fresh.add("shared", at);
        }
        let carried = idx.realigned(&r, fresh);
        let built = names(&new).build();
        for name in ["x", "a", "b", "c", "shared"] {
            assert_eq!(carried.candidates(name), built.candidates(name), "{name}");
        }
        assert_eq!(carried.candidates("shared"), &[0, 1, 2]);
        assert!(carried.candidates("b").is_empty());
        assert_eq!(carried.len(), built.len());
        assert_eq!(carried.heap_bytes(), built.heap_bytes());
    }

    #[test]
    fn an_empty_index_finds_nothing() {
        let idx = NameIndexBuilder::default().build();
        assert!(idx.is_empty());
        assert_eq!(idx.len(), 0);
        assert!(idx.candidates("reviews").is_empty());
    }

    #[test]
    fn thousands_of_names_are_each_found() {
        let mut b = NameIndexBuilder::with_capacity(20_000);
        for i in 0..5_000u32 {
            for form in [
                format!("svc-{i}"),
                format!("svc-{i}.ns-{}", i % 7),
                format!("svc-{i}.ns-{}.svc", i % 7),
                format!("svc-{i}.ns-{}.svc.cluster.local", i % 7),
            ] {
                b.add(&form, i);
            }
        }
        let idx = b.build();
        assert_eq!(idx.len(), 20_000);
        for i in (0..5_000u32).step_by(97) {
            assert_eq!(idx.candidates(&format!("svc-{i}.ns-{}.svc", i % 7)), &[i]);
        }
        assert!(idx.candidates("svc-5000").is_empty());
    }
}
