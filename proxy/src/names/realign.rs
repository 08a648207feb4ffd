//! Where the entries of a list of shared items went when the list changed, so an index into
//! the old list can be carried into the new one instead of being built again.
//!
//! A push that adds or drops one Service among thousands shifts every later service's place
//! in the known list, so an index by place (names, addresses) no longer matches. The services
//! that did not change are the very same allocations in both lists; matching them by pointer
//! tells each old place its new one, and the index is then moved over in one pass, with only
//! the new or changed entries indexed afresh.

use std::collections::HashMap;
use std::sync::Arc;

/// An old place with no new one.
const GONE: u32 = u32::MAX;

/// How a new list lines up with the old one it replaced: the entries found in both, in the
/// same order, and the new list's other entries ("fresh": added or changed).
#[derive(Debug, Default)]
pub struct Realignment {
    /// Each old place's new one, or [`GONE`].
    to_new: Box<[u32]>,
    /// The new list's places holding an entry the old list did not, ascending.
    fresh: Vec<u32>,
    /// How long the new list is.
    new_len: usize,
}

impl Realignment {
    /// Matches `new`'s entries to `old`'s by pointer. Entries kept keep their order: one
    /// found out of order (a list sorted again) counts as fresh, so a carried index stays
    /// sorted by place. `None` when a list is too long to index with `u32`.
    pub fn of<'a, T: 'a>(
        old: impl Iterator<Item = &'a Arc<T>>,
        new: impl Iterator<Item = &'a Arc<T>>,
    ) -> Option<Self> {
        let mut place: HashMap<*const T, u32, foldhash::fast::FixedState> =
            HashMap::with_capacity_and_hasher(old.size_hint().0, Default::default());
        let mut old_len = 0u32;
        for item in old {
            place.insert(Arc::as_ptr(item), old_len);
            old_len = old_len.checked_add(1).filter(|n| *n != GONE)?;
        }
        let mut to_new = vec![GONE; old_len as usize].into_boxed_slice();
        let mut fresh = Vec::new();
        let mut last: Option<u32> = None;
        let mut new_len = 0u32;
        for item in new {
            let j = new_len;
            new_len = new_len.checked_add(1).filter(|n| *n != GONE)?;
            match place.get(&Arc::as_ptr(item)) {
                Some(&i) if last.is_none_or(|l| i > l) => {
                    to_new[i as usize] = j;
                    last = Some(i);
                }
                _ => fresh.push(j),
            }
        }
        Some(Self {
            to_new,
            fresh,
            new_len: new_len as usize,
        })
    }

    /// Where old place `i` is in the new list; `None` when its entry left (dropped or
    /// changed).
    pub fn new_place(&self, i: u32) -> Option<u32> {
        self.to_new.get(i as usize).copied().filter(|p| *p != GONE)
    }

    /// The new list's places whose entries the old list did not hold, ascending.
    pub fn fresh(&self) -> &[u32] {
        &self.fresh
    }

    /// Whether new place `j` holds an entry the old list did not.
    pub fn is_fresh(&self, j: u32) -> bool {
        self.fresh.binary_search(&j).is_ok()
    }

    /// The entries found in both lists, as (old place, new place), in order.
    pub fn kept(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        (0u32..)
            .zip(self.to_new.iter())
            .filter(|(_, j)| **j != GONE)
            .map(|(i, j)| (i, *j))
    }

    /// How many old entries left the list (dropped, or replaced by a changed one).
    pub fn gone(&self) -> usize {
        self.to_new.len() + self.fresh.len() - self.new_len
    }

    /// Whether every fresh entry took the place of an old one that left (a service changed
    /// where it stood; none added or dropped) and `same` holds at each such place: an index
    /// of only what `same` compares can then stay as it is.
    pub fn in_place(&self, same: impl Fn(u32) -> bool) -> bool {
        self.to_new.len() == self.new_len
            && self
                .fresh
                .iter()
                .all(|&at| self.new_place(at).is_none() && same(at))
    }

    /// Whether so little changed (at most one place in eight came or left) that carrying an
    /// index over costs less than building it again.
    pub fn worth_carrying(&self) -> bool {
        self.fresh.len() + self.gone() <= self.new_len / 8
    }
}

/// The sorted `old` and `new` as one sorted list (of equals, `old`'s first): how a carried
/// index takes in its fresh entries without sorting the rest again.
pub fn merge_sorted<T>(
    old: impl Iterator<Item = T>,
    new: Vec<T>,
    cmp: impl Fn(&T, &T) -> std::cmp::Ordering,
) -> Vec<T> {
    // Sized for every old entry (a filter's upper bound): one allocation, not a doubling one.
    let (lower, upper) = old.size_hint();
    let mut out = Vec::with_capacity(upper.unwrap_or(lower) + new.len());
    let mut new = new.into_iter().peekable();
    for o in old {
        while let Some(n) = new.next_if(|n| cmp(n, &o).is_lt()) {
            out.push(n);
        }
        out.push(o);
    }
    out.extend(new);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_added_dropped_and_changed_moves_the_rest_to_their_new_places() {
        let a = Arc::new("a");
        let b = Arc::new("b");
        let c = Arc::new("c");
        let d = Arc::new("d");
        let old = [a.clone(), b.clone(), c.clone(), d.clone()];
        // "b" dropped, "x" added before "c", "d" replaced by an equal but new allocation.
        let (x, d2) = (Arc::new("x"), Arc::new("d"));
        let new = [a.clone(), x, c.clone(), d2];
        let r = Realignment::of(old.iter(), new.iter()).unwrap();
        assert_eq!(r.new_place(0), Some(0));
        assert_eq!(r.new_place(1), None, "dropped");
        assert_eq!(r.new_place(2), Some(2));
        assert_eq!(r.new_place(3), None, "a new allocation is a change");
        assert_eq!(r.new_place(9), None);
        assert_eq!(r.fresh(), &[1, 3]);
        assert!(r.is_fresh(1) && !r.is_fresh(2));
        assert_eq!(r.kept().collect::<Vec<_>>(), [(0, 0), (2, 2)]);
        assert_eq!(r.gone(), 2);
        assert!(
            r.in_place(|_| true),
            "b and d were replaced where they stood"
        );
        assert!(!r.in_place(|at| at != 3), "unless what is compared differs");
        assert!(!r.worth_carrying(), "half the list changed");
    }

    #[test]
    fn the_same_entries_are_unchanged_and_a_reordered_one_is_fresh() {
        let (a, b, c) = (Arc::new("a"), Arc::new("b"), Arc::new("c"));
        let old = [a.clone(), b.clone(), c.clone()];
        let same = Realignment::of(old.iter(), old.iter()).unwrap();
        assert!(
            same.in_place(|_| false),
            "nothing fresh: nothing to compare"
        );
        assert!(same.worth_carrying());
        assert_eq!(same.gone(), 0);
        let swapped = [a.clone(), c.clone(), b.clone()];
        let r = Realignment::of(old.iter(), swapped.iter()).unwrap();
        assert_eq!(r.new_place(0), Some(0));
        assert_eq!(r.new_place(2), Some(1));
        assert_eq!(
            r.new_place(1),
            None,
            "out of order: taken as left and come back"
        );
        assert_eq!(r.fresh(), &[2]);
        let shorter = [a];
        let r = Realignment::of(old.iter(), shorter.iter()).unwrap();
        assert!(!r.in_place(|_| true), "two left, none came");
        assert_eq!(r.gone(), 2);
    }

    #[test]
    fn merging_keeps_order_and_puts_old_before_equal_new() {
        let old = [(1, 'o'), (3, 'o'), (5, 'o')];
        let new = vec![(0, 'n'), (3, 'n'), (6, 'n')];
        let out = merge_sorted(old.into_iter(), new, |a, b| a.0.cmp(&b.0));
        assert_eq!(
            out,
            [(0, 'n'), (1, 'o'), (3, 'o'), (3, 'n'), (5, 'o'), (6, 'n')]
        );
    }
}
