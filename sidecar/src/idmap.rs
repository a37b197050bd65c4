//! A map from file id to per-file state, as one vector sorted by id.
//!
//! There is an entry per followed file, and a node may follow ten thousand, so what each
//! costs matters: a `BTreeMap` spreads its entries over thousands of small nodes, which
//! the allocator interleaves with the files' names, and which leave holes it cannot give
//! back when they are freed; a `HashMap` keeps a table of up to twice the entries. One
//! sorted vector is exactly the entries, in one allocation.
//!
//! Ids are handed out in increasing order, so a new file is pushed at the end; lookups are
//! binary searches. Removing one entry moves the ones after it: files that go together go
//! through [`IdMap::retain`].

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct IdMap<V> {
    /// Sorted by id, no id twice.
    v: Vec<(u64, V)>,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap { v: Vec::new() }
    }
}

impl<V> IdMap<V> {
    pub fn new() -> Self {
        IdMap::default()
    }

    pub fn with_capacity(n: usize) -> Self {
        IdMap {
            v: Vec::with_capacity(n),
        }
    }

    pub fn len(&self) -> usize {
        self.v.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v.is_empty()
    }

    fn find(&self, id: u64) -> Result<usize, usize> {
        // New ids are the largest: look at the end first.
        match self.v.last() {
            Some((last, _)) if *last < id => Err(self.v.len()),
            _ => self.v.binary_search_by_key(&id, |(k, _)| *k),
        }
    }

    pub fn get(&self, id: &u64) -> Option<&V> {
        self.find(*id).ok().map(|i| &self.v[i].1)
    }

    pub fn get_mut(&mut self, id: &u64) -> Option<&mut V> {
        self.find(*id).ok().map(|i| &mut self.v[i].1)
    }

    pub fn contains_key(&self, id: &u64) -> bool {
        self.find(*id).is_ok()
    }

    /// Insert or replace; the value replaced.
    pub fn insert(&mut self, id: u64, value: V) -> Option<V> {
        match self.find(id) {
            Ok(i) => Some(std::mem::replace(&mut self.v[i].1, value)),
            Err(i) => {
                self.v.insert(i, (id, value));
                None
            }
        }
    }

    pub fn remove(&mut self, id: &u64) -> Option<V> {
        self.find(*id).ok().map(|i| self.v.remove(i).1)
    }

    /// Keep the entries `keep` says to keep, moving each of the others once.
    pub fn retain(&mut self, mut keep: impl FnMut(&u64, &mut V) -> bool) {
        self.v.retain_mut(|(k, v)| keep(k, v));
    }

    pub fn clear(&mut self) {
        self.v.clear();
    }

    /// Give back the room reserved for growth.
    pub fn shrink_to_fit(&mut self) {
        self.v.shrink_to_fit();
    }

    /// In order of id.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&u64, &V)> + ExactSizeIterator {
        self.v.iter().map(|(k, v)| (k, v))
    }

    pub fn iter_mut(
        &mut self,
    ) -> impl DoubleEndedIterator<Item = (&u64, &mut V)> + ExactSizeIterator {
        self.v.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &u64> + ExactSizeIterator {
        self.v.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.v.iter().map(|(_, v)| v)
    }

    pub fn values_mut(&mut self) -> impl DoubleEndedIterator<Item = &mut V> + ExactSizeIterator {
        self.v.iter_mut().map(|(_, v)| v)
    }
}

type Pair<'a, V> = (&'a u64, &'a V);

impl<'a, V> IntoIterator for &'a IdMap<V> {
    type Item = Pair<'a, V>;
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (u64, V)>, fn(&'a (u64, V)) -> Pair<'a, V>>;

    fn into_iter(self) -> Self::IntoIter {
        self.v.iter().map(|(k, v)| (k, v))
    }
}

impl<V> std::ops::Index<&u64> for IdMap<V> {
    type Output = V;

    /// Panics if `id` is not there, like a map's index.
    fn index(&self, id: &u64) -> &V {
        match self.get(id) {
            Some(v) => v,
            None => panic!("no entry for id {id}"),
        }
    }
}

/// Later pairs win over earlier ones with the same id, as in a map.
impl<V> FromIterator<(u64, V)> for IdMap<V> {
    fn from_iter<I: IntoIterator<Item = (u64, V)>>(iter: I) -> Self {
        let mut v: Vec<(u64, V)> = iter.into_iter().collect();
        // Stable: of pairs with the same id, the last stays last.
        v.sort_by_key(|(k, _)| *k);
        let mut out: Vec<(u64, V)> = Vec::with_capacity(v.len());
        for (k, x) in v {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = x,
                _ => out.push((k, x)),
            }
        }
        IdMap { v: out }
    }
}

impl<V: fmt::Debug> fmt::Debug for IdMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Written as a map from id to value, as a `BTreeMap` is.
impl<V: Serialize> Serialize for IdMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.v.len()))?;
        for (k, v) in &self.v {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for IdMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = IdMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from id to value")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<IdMap<V>, A::Error> {
                // Sized by what is read, not by the input's claim.
                let mut v: Vec<(u64, V)> = Vec::new();
                let mut sorted = true;
                while let Some((k, x)) = a.next_entry::<u64, V>()? {
                    sorted &= v.last().is_none_or(|(last, _)| *last < k);
                    v.push((k, x));
                }
                if sorted {
                    v.shrink_to_fit();
                    Ok(IdMap { v })
                } else {
                    Ok(v.into_iter().collect())
                }
            }
        }
        d.deserialize_map(V2(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn behaves_like_a_map() {
        let mut m = IdMap::new();
        let mut b = BTreeMap::new();
        // Appends, inserts in the middle, replacements, removals.
        for (i, id) in [5u64, 9, 2, 9, 7, 0, 11, 5].into_iter().enumerate() {
            assert_eq!(m.insert(id, i), b.insert(id, i));
        }
        assert_eq!(m.remove(&7), b.remove(&7));
        assert_eq!(m.remove(&7), None);
        assert_eq!(m.get(&100), None);
        assert!(m.iter().eq(b.iter()));
        assert_eq!(m.len(), b.len());
        m.retain(|k, v| {
            *v += 1;
            k % 2 == 1
        });
        b.retain(|k, v| {
            *v += 1;
            k % 2 == 1
        });
        assert!(m.iter().eq(b.iter()));
        assert_eq!(m[&9], b[&9]);
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, serde_json::to_string(&b).unwrap());
        assert_eq!(serde_json::from_str::<IdMap<usize>>(&j).unwrap(), m);
    }

    #[test]
    fn reads_unsorted_and_repeated_ids_as_a_map_does() {
        let j = r#"{"3":1,"1":2,"3":4,"0":5}"#;
        let m: IdMap<u32> = serde_json::from_str(j).unwrap();
        let b: BTreeMap<u64, u32> = serde_json::from_str(j).unwrap();
        assert!(m.iter().eq(b.iter()));
        assert!(serde_json::from_str::<IdMap<u32>>(r#"{"x":1}"#).is_err());
    }
}
