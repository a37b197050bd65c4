//! [`VecMap`]: an ordered map kept as a vector sorted by key, for the few entries of a
//! container's resource list or of Ray's resources.
//!
//! A `BTreeMap` allocates a node of eleven entries for its first one; an admission builds
//! a few dozen such maps of two to four entries each, and at a steady 2,000 admissions per
//! second the memory they touch, arriving cold, costs more than the work done with it.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;

/// An ordered map as a sorted vector: the `BTreeMap` operations the planner uses, with the
/// same semantics (a repeated key replaces the value; iteration in key order).
#[derive(Clone, PartialEq, Eq)]
pub struct VecMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap {
            entries: Vec::new(),
        }
    }
}

impl<K: Ord, V> VecMap<K, V> {
    pub const fn new() -> Self {
        VecMap {
            entries: Vec::new(),
        }
    }

    pub fn with_capacity(n: usize) -> Self {
        VecMap {
            entries: Vec::with_capacity(n),
        }
    }

    fn find<Q>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).is_ok()
    }

    /// Sets `key` to `value`, returning the value it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// The value of `key`, inserted from `default` first when absent (`entry().or_insert_with`).
    pub fn get_or_insert_with(&mut self, key: K, default: impl FnOnce() -> V) -> &mut V {
        let i = match self.find(&key) {
            Ok(i) => i,
            Err(i) => {
                self.entries.insert(i, (key, default()));
                i
            }
        };
        &mut self.entries[i].1
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

impl<K: Ord, V> VecMap<K, V> {
    /// Adds `other`'s entries; where a key is in both, `f(&mut ours, theirs)` combines them.
    /// One pass over both (each is sorted), where inserting one by one would move the tail
    /// of the vector for each key.
    pub fn merge_with(&mut self, other: VecMap<K, V>, mut f: impl FnMut(&mut V, V)) {
        if other.is_empty() {
            return;
        }
        // A container's requests and limits: a few keys, mostly the same. In place, with
        // no new vector.
        if self.len() + other.len() <= 16 {
            for (k, v) in other.entries {
                match self.find(&k) {
                    Ok(i) => f(&mut self.entries[i].1, v),
                    Err(i) => self.entries.insert(i, (k, v)),
                }
            }
            return;
        }
        let ours = std::mem::replace(&mut self.entries, Vec::with_capacity(0));
        let mut merged = Vec::with_capacity(ours.len() + other.len());
        let mut a = ours.into_iter().peekable();
        let mut b = other.entries.into_iter().peekable();
        loop {
            let order = match (a.peek(), b.peek()) {
                (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => break,
            };
            match order {
                Ordering::Less => merged.extend(a.next()),
                Ordering::Greater => merged.extend(b.next()),
                Ordering::Equal => {
                    if let (Some((k, mut v)), Some((_, w))) = (a.next(), b.next()) {
                        f(&mut v, w);
                        merged.push((k, v));
                    }
                }
            }
        }
        self.entries = merged;
    }
}

impl<K: Ord, V> Extend<(K, V)> for VecMap<K, V> {
    /// As `insert` for each entry in turn (a later entry of a key replaces the value), but
    /// in O(n log n) whatever the order: a request's resource list of many keys in
    /// descending order would otherwise cost n²/2 moves.
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        let start = self.entries.len();
        self.entries.extend(iter);
        if self.entries.len() == start {
            return;
        }
        // Stable: entries of one key stay in the order given, the existing one first.
        if !self.entries.is_sorted_by(|a, b| a.0 < b.0) {
            self.entries.sort_by(|a, b| a.0.cmp(&b.0));
            // `dedup_by` keeps the first of each run; the value kept must be the last.
            self.entries.dedup_by(|later, kept| {
                if later.0 == kept.0 {
                    std::mem::swap(&mut later.1, &mut kept.1);
                    true
                } else {
                    false
                }
            });
        }
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for VecMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut out = VecMap::with_capacity(iter.size_hint().0);
        out.extend(iter);
        out
    }
}

impl<K, V> IntoIterator for VecMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a, K, V> IntoIterator for &'a VecMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for VecMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::VecMap;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// Every operation agrees with `BTreeMap`'s, in results and in iteration order.
        #[test]
        fn behaves_as_a_btreemap(ops in proptest::collection::vec((0u8..4, 0u8..12, any::<i32>()), 0..64)) {
            let mut ours: VecMap<u8, i32> = VecMap::new();
            let mut theirs: BTreeMap<u8, i32> = BTreeMap::new();
            for (op, k, v) in ops {
                match op {
                    0 => prop_assert_eq!(ours.insert(k, v), theirs.insert(k, v)),
                    1 => {
                        *ours.get_or_insert_with(k, || v) += 1;
                        *theirs.entry(k).or_insert_with(|| v) += 1;
                    }
                    2 => prop_assert_eq!(ours.get(&k), theirs.get(&k)),
                    _ => prop_assert_eq!(ours.contains_key(&k), theirs.contains_key(&k)),
                }
                prop_assert_eq!(ours.len(), theirs.len());
                prop_assert!(ours.iter().eq(theirs.iter()));
            }
            let collected: VecMap<u8, i32> = theirs.clone().into_iter().rev().collect();
            prop_assert!(collected.into_iter().eq(theirs.into_iter()));
        }

        /// `extend` is `insert` in turn, whatever the order and repeats of the keys.
        #[test]
        fn extend_is_insert_in_turn(
            start in proptest::collection::vec((0u8..16, any::<i32>()), 0..8),
            more in proptest::collection::vec((0u8..16, any::<i32>()), 0..32),
        ) {
            let mut ours: VecMap<u8, i32> = VecMap::new();
            let mut theirs: BTreeMap<u8, i32> = BTreeMap::new();
            for (k, v) in start {
                ours.insert(k, v);
                theirs.insert(k, v);
            }
            ours.extend(more.iter().copied());
            theirs.extend(more.iter().copied());
            prop_assert!(ours.iter().eq(theirs.iter()));
        }

        /// `merge_with` is `get_or_insert_with` and `f` for each of the other's entries,
        /// in place for small maps and by a merge for larger ones.
        #[test]
        fn merge_with_combines_keys_of_both(
            a in proptest::collection::btree_map(0u8..40, 0i32..1000, 0..20),
            b in proptest::collection::btree_map(0u8..40, 0i32..1000, 0..20),
        ) {
            let mut ours: VecMap<u8, i32> = a.clone().into_iter().collect();
            ours.merge_with(b.clone().into_iter().collect(), |v, w| *v = (*v).max(w) * 2);
            let mut theirs = a;
            for (k, w) in b {
                theirs.entry(k).and_modify(|v| *v = (*v).max(w) * 2).or_insert(w);
            }
            prop_assert!(ours.iter().eq(theirs.iter()));
        }
    }

    /// The order and the result; what it costs (n log n, not n²) is measured in
    /// BENCHMARKS.md ("The hardening's cost").
    #[test]
    fn many_keys_in_descending_order_collect_in_order() {
        let n = 200_000u32;
        let m: VecMap<u32, u32> = (0..n).rev().map(|k| (k, k)).collect();
        assert_eq!(m.len(), n as usize);
        assert!(m.iter().map(|(k, _)| *k).eq(0..n));
    }

    #[test]
    fn later_entries_win_when_collected() {
        let m: VecMap<&str, i32> = [("b", 1), ("a", 2), ("b", 3)].into_iter().collect();
        assert_eq!(format!("{m:?}"), r#"{"a": 2, "b": 3}"#);
        assert_eq!(m.get("b"), Some(&3));
    }
}
