//! [`Map`]: a JSON object's members in order, with the semantics of serde_json's
//! `preserve_order` map (insertion order, a repeated key replacing the value in place,
//! `remove` by swapping with the last member, equality regardless of order), kept in one
//! array (packed as parsed, a growable list once changed): a Kubernetes object's maps are
//! small, and scanning a few keys costs less than hashing one. A map can also be kept as
//! its JSON text until first read ([`crate::from_slice_lazy`]).

use crate::{Str, Value};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// Above this many members, whole-map work (equality, duplicate checks) goes through a
/// hashed index rather than comparing every pair.
const SCAN: usize = 16;

/// A JSON object. Cloning one is a reference count: the members are copied only when one
/// of the copies is first changed, so a staged copy of a pod costs the maps it edits, and
/// comparing it with the original skips every map they still share.
#[derive(Clone, Default)]
pub struct Map {
    /// A parsed map's members, packed with their count in one allocation (a review has
    /// about fifty objects, most never changed). At most one of `packed` and `list` is
    /// set; neither when the map is empty, so that `{}` costs no allocation.
    packed: Option<Arc<[(Str, Value)]>>,
    /// The members once one was added or removed (the packed ones move here first).
    list: Option<Arc<Members>>,
}

/// A map's members, and its compact JSON text when [`Value::keep_text`] was asked to keep
/// it: a template written into many patches (the sidecar) is then copied, not re-written.
#[derive(Default)]
struct Members {
    list: Vec<(Str, Value)>,
    text: Option<Box<[u8]>>,
    /// Set only in a map kept unread ([`Map::unread`]), whose `list` stays empty until the
    /// map is changed; every other map pays one test for it when read.
    unread: Option<Box<Unread>>,
}

/// An object's JSON text, which the parser checked whole, and its members once read.
struct Unread {
    text: Box<[u8]>,
    members: OnceLock<Vec<(Str, Value)>>,
}

impl Unread {
    fn members(&self) -> &Vec<(Str, Value)> {
        self.members.get_or_init(|| read(&self.text))
    }

    fn into_members(self) -> Vec<(Str, Value)> {
        let text = self.text;
        self.members.into_inner().unwrap_or_else(|| read(&text))
    }
}

/// An unread map's members, from the text the parser checked: parsed as it was checked,
/// so this cannot fail; were it to, the map would read as empty rather than panic.
fn read(text: &[u8]) -> Vec<(Str, Value)> {
    match crate::parse::from_slice(text) {
        Ok(Value::Object(m)) => m.into_list(),
        other => {
            debug_assert!(false, "an unread map's text did not parse: {other:?}");
            Vec::new()
        }
    }
}

impl Members {
    fn new(list: Vec<(Str, Value)>) -> Arc<Members> {
        Arc::new(Members {
            list,
            text: None,
            unread: None,
        })
    }

    #[inline]
    fn list(&self) -> &[(Str, Value)] {
        match &self.unread {
            None => &self.list,
            Some(u) => u.members(),
        }
    }

    fn list_mut(&mut self) -> &mut Vec<(Str, Value)> {
        if let Some(u) = self.unread.take() {
            self.list = u.into_members();
        }
        &mut self.list
    }

    fn into_list(self) -> Vec<(Str, Value)> {
        match self.unread {
            None => self.list,
            Some(u) => u.into_members(),
        }
    }
}

impl Clone for Members {
    /// A copy is made to be changed, so it does not keep the text.
    fn clone(&self) -> Members {
        Members {
            list: self.list().to_vec(),
            text: None,
            unread: None,
        }
    }
}

impl Map {
    pub const fn new() -> Map {
        Map {
            packed: None,
            list: None,
        }
    }

    pub fn with_capacity(n: usize) -> Map {
        Map {
            packed: None,
            list: (n > 0).then(|| Members::new(Vec::with_capacity(n))),
        }
    }

    /// The members `stack[base..]`, taken from the parser's stack: packed into one
    /// allocation unless a key repeats. `maybe_repeated` is false when the parser's
    /// [`key_bit`]s of the keys were all different, which proves no key repeats.
    pub(crate) fn from_stack(
        stack: &mut Vec<(Str, Value)>,
        base: usize,
        maybe_repeated: bool,
    ) -> Map {
        let n = match stack.get(base..) {
            None | Some([]) => return Map::new(),
            Some(members) if maybe_repeated && has_duplicates(members) => {
                return Map::from_members(stack.split_off(base));
            }
            Some(members) => members.len(),
        };
        let mut packed = Arc::<[(Str, Value)]>::new_uninit_slice(n);
        let Some(slots) = Arc::get_mut(&mut packed) else {
            // Just made, so never shared; but should it be, the list does as well.
            return Map::from_members(stack.split_off(base));
        };
        // SAFETY: `slots` has room for the `n` members at `stack[base..]`, which are moved
        // into it bit for bit; the stack is then cut to `base` without dropping them, so
        // each has one owner, and every slot is initialised before `assume_init`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                stack.as_ptr().add(base),
                slots.as_mut_ptr().cast::<(Str, Value)>(),
                n,
            );
            stack.set_len(base);
            Map {
                packed: Some(packed.assume_init()),
                list: None,
            }
        }
    }

    /// The members in order, where later duplicates of a key replace the earlier value in
    /// its place, as inserting them one by one would.
    pub fn from_members(members: Vec<(Str, Value)>) -> Map {
        if members.is_empty() {
            return Map::new();
        }
        if !has_duplicates(&members) {
            return Map {
                packed: None,
                list: Some(Members::new(members)),
            };
        }
        // Hashed, so that a huge object with a repeated key is not quadratic.
        let mut out: Vec<(Str, Value)> = Vec::with_capacity(members.len());
        let mut at: HashMap<Str, usize> = HashMap::with_capacity(members.len());
        for (k, v) in members {
            match at.get(k.as_str()) {
                Some(&i) => out[i].1 = v,
                None => {
                    at.insert(k.clone(), out.len());
                    out.push((k, v));
                }
            }
        }
        Map {
            packed: None,
            list: Some(Members::new(out)),
        }
    }

    /// A map of the object whose JSON text is `text`, which the parser has checked (and
    /// which is not `{}`), parsed on first read: for parts of a document that are carried
    /// and seldom read.
    pub(crate) fn unread(text: &[u8]) -> Map {
        Map {
            packed: None,
            list: Some(Arc::new(Members {
                list: Vec::new(),
                text: None,
                unread: Some(Box::new(Unread {
                    text: text.into(),
                    members: OnceLock::new(),
                })),
            })),
        }
    }

    /// Whether this map is still kept as text, its members not yet read.
    pub fn is_unread(&self) -> bool {
        self.list
            .as_ref()
            .and_then(|m| m.unread.as_ref())
            .is_some_and(|u| u.members.get().is_none())
    }

    /// The members, in order.
    pub fn members(&self) -> &[(Str, Value)] {
        if let Some(m) = &self.list {
            return m.list();
        }
        match &self.packed {
            Some(p) => p,
            None => &[],
        }
    }

    /// The members as a growable list, for adding or removing one: copied first if
    /// another clone still shares them. Any kept text is dropped, since the caller may
    /// change what it says.
    fn members_mut(&mut self) -> &mut Vec<(Str, Value)> {
        if let Some(p) = self.packed.take() {
            // One more than it has: a member is about to be added, most likely.
            self.list = Some(Members::new(unpack(p, 1)));
        }
        let m = Arc::make_mut(self.list.get_or_insert_with(Default::default));
        m.text = None;
        m.list_mut()
    }

    /// The compact JSON text kept by [`Value::keep_text`], while the map is unchanged.
    pub fn kept_text(&self) -> Option<&[u8]> {
        self.list.as_deref()?.text.as_deref()
    }

    /// Keep the compact JSON text of this map and of every map within it.
    pub(crate) fn keep_text(&mut self) {
        for v in self.values_mut() {
            v.keep_text();
        }
        if self.is_empty() {
            return;
        }
        let mut text = Vec::new();
        crate::write::write_members(&mut text, self);
        // Only a list keeps text.
        self.members_mut();
        if let Some(m) = &mut self.list {
            Arc::make_mut(m).text = Some(text.into_boxed_slice());
        }
    }

    /// Whether `a` and `b` share their members (so are equal without looking).
    pub fn ptr_eq(a: &Map, b: &Map) -> bool {
        match ((&a.packed, &a.list), (&b.packed, &b.list)) {
            ((Some(x), _), (Some(y), _)) => Arc::ptr_eq(x, y),
            ((None, Some(x)), (None, Some(y))) => Arc::ptr_eq(x, y),
            ((None, None), (None, None)) => true,
            _ => false,
        }
    }

    pub fn len(&self) -> usize {
        self.members().len()
    }

    pub fn is_empty(&self) -> bool {
        self.members().is_empty()
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.members().iter().position(|(k, _)| same(k, key))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.members()
            .iter()
            .find_map(|(k, v)| same(k, key).then_some(v))
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        let i = self.position(key)?;
        Some(&mut self.members_mut()[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// Set `key` to `value`: in its place when present (returning the old value), else
    /// at the end.
    pub fn insert(&mut self, key: impl Into<Str>, value: Value) -> Option<Value> {
        let key = key.into();
        match self.position(&key) {
            Some(i) => Some(std::mem::replace(&mut self.members_mut()[i].1, value)),
            None => {
                self.members_mut().push((key, value));
                None
            }
        }
    }

    /// The value of `key`, for reading or inserting.
    pub fn entry(&mut self, key: impl Into<Str>) -> Entry<'_> {
        let key = key.into();
        match self.position(&key) {
            Some(i) => Entry::Occupied(&mut self.members_mut()[i].1),
            None => Entry::Vacant(self, key),
        }
    }

    /// Remove `key`, moving the last member into its place (serde_json's `remove`).
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.swap_remove(key)
    }

    pub fn swap_remove(&mut self, key: &str) -> Option<Value> {
        let i = self.position(key)?;
        Some(self.members_mut().swap_remove(i).1)
    }

    /// Remove `key`, keeping the order of the others.
    pub fn shift_remove(&mut self, key: &str) -> Option<Value> {
        let i = self.position(key)?;
        Some(self.members_mut().remove(i).1)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&Str, &mut Value) -> bool) {
        if !self.is_empty() {
            self.members_mut().retain_mut(|(k, v)| keep(k, v));
        }
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&Str, &Value)> + ExactSizeIterator {
        self.members().iter().map(|(k, v)| (k, v))
    }

    pub fn iter_mut(
        &mut self,
    ) -> impl DoubleEndedIterator<Item = (&Str, &mut Value)> + ExactSizeIterator {
        self.slice_mut().iter_mut().map(|(k, v)| (&*k, v))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &Str> + ExactSizeIterator {
        self.members().iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Value> + ExactSizeIterator {
        self.members().iter().map(|(_, v)| v)
    }

    pub fn values_mut(
        &mut self,
    ) -> impl DoubleEndedIterator<Item = &mut Value> + ExactSizeIterator {
        self.slice_mut().iter_mut().map(|(_, v)| v)
    }

    /// The members for changing in place (copied first if another clone still shares
    /// them); a packed map stays packed, an empty one unallocated.
    fn slice_mut(&mut self) -> &mut [(Str, Value)] {
        match (&self.packed, &self.list) {
            (Some(_), _) => self.packed.as_mut().map_or(&mut [], Arc::make_mut),
            (None, Some(_)) => self.members_mut().as_mut_slice(),
            (None, None) => &mut [],
        }
    }

    /// The members as a list, moved out when no other clone shares them.
    fn into_list(self) -> Vec<(Str, Value)> {
        match (self.packed, self.list) {
            (Some(p), _) => unpack(p, 0),
            (None, Some(m)) => Arc::unwrap_or_clone(m).into_list(),
            (None, None) => Vec::new(),
        }
    }

    /// A hashed index of the keys, for whole-map work on large maps.
    fn index(&self) -> HashMap<&str, usize> {
        self.members()
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.as_str(), i))
            .collect()
    }

    /// For many lookups in one map: [`Lookup::get`] scans a small map as [`Map::get`]
    /// does, and hashes the keys of a large one once, so that looking up each key of
    /// another large map is not quadratic.
    pub fn lookup(&self) -> Lookup<'_> {
        Lookup {
            map: self,
            index: None,
        }
    }
}

/// Repeated lookups in one [`Map`]; see [`Map::lookup`].
pub struct Lookup<'a> {
    map: &'a Map,
    index: Option<HashMap<&'a str, usize>>,
}

impl<'a> Lookup<'a> {
    pub fn get(&mut self, key: &str) -> Option<&'a Value> {
        let map = self.map;
        if map.len() <= SCAN {
            return map.get(key);
        }
        let index = self.index.get_or_insert_with(|| map.index());
        index.get(key).map(|&i| &map.members()[i].1)
    }
}

/// A packed map's members as a list with room for `spare` more: moved out when no other
/// clone shares them, else copied.
fn unpack(mut packed: Arc<[(Str, Value)]>, spare: usize) -> Vec<(Str, Value)> {
    let mut list = Vec::with_capacity(packed.len() + spare);
    match Arc::get_mut(&mut packed) {
        Some(unique) => list.extend(unique.iter_mut().map(std::mem::take)),
        None => list.extend_from_slice(&packed),
    }
    list
}

/// Whether a member's key is `key`: lengths first, then short keys a word or two at a time
/// in line, where `==` on slices calls `memcmp` (a map lookup compares several keys, most
/// of them under 16 bytes).
#[inline]
fn same(k: &str, key: &str) -> bool {
    let (a, b) = (k.as_bytes(), key.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_le_bytes(w)
    };
    match n {
        // The two words overlap when n < 16; together they cover every byte.
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        0..8 => a.iter().zip(b).all(|(x, y)| x == y),
        _ => a == b,
    }
}

/// One of 64 bits for a key, from its length and last byte: keys with different bits
/// differ, so a key whose bit was not seen before is new without comparing it with others.
#[inline]
pub(crate) fn key_bit(key: &str) -> u64 {
    let last = key.as_bytes().last().copied().unwrap_or(0);
    1u64 << ((key.len() * 7 + usize::from(last)) % 64)
}

fn has_duplicates(members: &[(Str, Value)]) -> bool {
    if members.len() <= SCAN {
        let mut seen = 0u64;
        return members.iter().enumerate().any(|(i, (k, _))| {
            let bit = key_bit(k);
            let maybe = seen & bit != 0;
            seen |= bit;
            maybe && members[..i].iter().any(|(j, _)| j == k)
        });
    }
    let mut keys: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    keys.windows(2).any(|w| w[0] == w[1])
}

/// A place in a [`Map`] for one key.
pub enum Entry<'a> {
    Occupied(&'a mut Value),
    Vacant(&'a mut Map, Str),
}

impl<'a> Entry<'a> {
    pub fn or_insert(self, value: Value) -> &'a mut Value {
        self.or_insert_with(|| value)
    }

    pub fn or_insert_with(self, value: impl FnOnce() -> Value) -> &'a mut Value {
        match self {
            Entry::Occupied(v) => v,
            Entry::Vacant(m, k) => {
                let members = m.members_mut();
                members.push((k, value()));
                // Just pushed, so there is a last member.
                &mut members.last_mut().expect("a member was just pushed").1
            }
        }
    }
}

impl PartialEq for Map {
    /// Equal members, in any order (as serde_json's maps compare).
    fn eq(&self, other: &Map) -> bool {
        if Map::ptr_eq(self, other) {
            return true;
        }
        if self.len() != other.len() {
            return false;
        }
        let (mine, theirs) = (self.members(), other.members());
        if mine.iter().zip(theirs).all(|((a, _), (b, _))| a == b) {
            return mine.iter().zip(theirs).all(|((_, x), (_, y))| x == y);
        }
        if mine.len() <= SCAN {
            return mine
                .iter()
                .all(|(k, v)| other.get(k).is_some_and(|w| v == w));
        }
        let mut other = other.lookup();
        mine.iter()
            .all(|(k, v)| other.get(k).is_some_and(|w| v == w))
    }
}

impl Eq for Map {}

impl std::fmt::Debug for Map {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Into<Str>> FromIterator<(K, Value)> for Map {
    /// As inserting the members one by one, without the quadratic cost on large maps.
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(iter: I) -> Map {
        Map::from_members(iter.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

impl<K: Into<Str>> Extend<(K, Value)> for Map {
    /// As inserting the members one by one, without the quadratic cost on large maps.
    fn extend<I: IntoIterator<Item = (K, Value)>>(&mut self, iter: I) {
        let mut members = std::mem::take(self).into_list();
        members.extend(iter.into_iter().map(|(k, v)| (k.into(), v)));
        *self = Map::from_members(members);
    }
}

impl IntoIterator for Map {
    type Item = (Str, Value);
    type IntoIter = std::vec::IntoIter<(Str, Value)>;
    fn into_iter(self) -> Self::IntoIter {
        self.into_list().into_iter()
    }
}

impl<'a> IntoIterator for &'a Map {
    type Item = (&'a Str, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Str, Value)>,
        fn(&'a (Str, Value)) -> (&'a Str, &'a Value),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.members().iter().map(|(k, v)| (k, v))
    }
}

impl<'a> IntoIterator for &'a mut Map {
    type Item = (&'a Str, &'a mut Value);
    type IntoIter = std::iter::Map<
        std::slice::IterMut<'a, (Str, Value)>,
        fn(&'a mut (Str, Value)) -> (&'a Str, &'a mut Value),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.slice_mut().iter_mut().map(|(k, v)| (&*k, v))
    }
}

impl std::ops::Index<&str> for Map {
    type Output = Value;
    /// `self[key]`, or `null` when there is no such key.
    fn index(&self, key: &str) -> &Value {
        self.get(key).unwrap_or(&crate::value::NULL)
    }
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn keys_compare_as_strings_do() {
        for n in 0..40 {
            let a: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            assert!(same(&a, &a.clone()), "{a}");
            for at in 0..n {
                let mut b = a.clone().into_bytes();
                b[at] = b'Z';
                let b = String::from_utf8(b).unwrap();
                assert!(!same(&a, &b), "{a} {b}");
            }
            assert!(!same(&a, &format!("{a}x")));
        }
    }
}
