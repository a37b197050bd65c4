//! [`Value`]: a JSON document, equal and printed exactly as serde_json's `Value` with
//! `preserve_order` would be.

use crate::{Map, Str};
pub use serde_json::Number;
use std::fmt;

/// Any JSON value.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Number(Number),
    String(Str),
    Array(Vec<Value>),
    Object(Map),
}

/// What indexing finds where there is nothing.
pub(crate) static NULL: Value = Value::Null;

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_number(&self) -> Option<&Number> {
        match self {
            Value::Number(n) => Some(n),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        self.as_number()?.as_f64()
    }

    pub fn as_i64(&self) -> Option<i64> {
        self.as_number()?.as_i64()
    }

    pub fn as_u64(&self) -> Option<u64> {
        self.as_number()?.as_u64()
    }

    pub fn as_array(&self) -> Option<&Vec<Value>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_array_mut(&mut self) -> Option<&mut Vec<Value>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Map> {
        match self {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_object_mut(&mut self) -> Option<&mut Map> {
        match self {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn is_boolean(&self) -> bool {
        matches!(self, Value::Bool(_))
    }

    pub fn is_number(&self) -> bool {
        matches!(self, Value::Number(_))
    }

    pub fn is_string(&self) -> bool {
        matches!(self, Value::String(_))
    }

    pub fn is_array(&self) -> bool {
        matches!(self, Value::Array(_))
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Value::Object(_))
    }

    pub fn is_i64(&self) -> bool {
        self.as_number().is_some_and(Number::is_i64)
    }

    pub fn is_u64(&self) -> bool {
        self.as_number().is_some_and(Number::is_u64)
    }

    pub fn is_f64(&self) -> bool {
        self.as_number().is_some_and(Number::is_f64)
    }

    /// `self[key]` of an object, or `self[i]` of an array.
    pub fn get<I: Index>(&self, at: I) -> Option<&Value> {
        at.index_into(self)
    }

    pub fn get_mut<I: Index>(&mut self, at: I) -> Option<&mut Value> {
        at.index_into_mut(self)
    }

    /// The value, leaving `null` in its place.
    /// Keep, with every object in `self`, its compact JSON text, so that writing an object
    /// that has not changed since is one copy. For templates written into many documents;
    /// a changed object (or a copy made to be changed) drops its text.
    pub fn keep_text(&mut self) {
        match self {
            Value::Object(m) => m.keep_text(),
            Value::Array(a) => a.iter_mut().for_each(Value::keep_text),
            _ => {}
        }
    }

    pub fn take(&mut self) -> Value {
        std::mem::take(self)
    }

    /// The value at a JSON Pointer (RFC 6901), as serde_json's `Value::pointer`.
    pub fn pointer(&self, pointer: &str) -> Option<&Value> {
        if pointer.is_empty() {
            return Some(self);
        }
        let rest = pointer.strip_prefix('/')?;
        rest.split('/').try_fold(self, |v, token| {
            let token = token.replace("~1", "/").replace("~0", "~");
            match v {
                Value::Object(m) => m.get(&token),
                Value::Array(a) => index(&token).and_then(|i| a.get(i)),
                _ => None,
            }
        })
    }
}

/// What [`Value::get`] takes: a key of an object or an index of an array.
pub trait Index {
    fn index_into(self, v: &Value) -> Option<&Value>;
    fn index_into_mut(self, v: &mut Value) -> Option<&mut Value>;
}

impl Index for &str {
    fn index_into(self, v: &Value) -> Option<&Value> {
        v.as_object()?.get(self)
    }
    fn index_into_mut(self, v: &mut Value) -> Option<&mut Value> {
        v.as_object_mut()?.get_mut(self)
    }
}

impl Index for &String {
    fn index_into(self, v: &Value) -> Option<&Value> {
        self.as_str().index_into(v)
    }
    fn index_into_mut(self, v: &mut Value) -> Option<&mut Value> {
        self.as_str().index_into_mut(v)
    }
}

impl Index for &Str {
    fn index_into(self, v: &Value) -> Option<&Value> {
        self.as_str().index_into(v)
    }
    fn index_into_mut(self, v: &mut Value) -> Option<&mut Value> {
        self.as_str().index_into_mut(v)
    }
}

impl Index for usize {
    fn index_into(self, v: &Value) -> Option<&Value> {
        v.as_array()?.get(self)
    }
    fn index_into_mut(self, v: &mut Value) -> Option<&mut Value> {
        v.as_array_mut()?.get_mut(self)
    }
}

/// An array index as RFC 6901 writes it: digits, without leading zeros.
fn index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

impl std::ops::Index<&str> for Value {
    type Output = Value;
    /// `self[key]`, or `null` when `self` is not an object or has no such key.
    fn index(&self, key: &str) -> &Value {
        self.get(key).unwrap_or(&NULL)
    }
}

impl std::ops::Index<usize> for Value {
    type Output = Value;
    /// `self[i]`, or `null` when `self` is not an array or is shorter.
    fn index(&self, i: usize) -> &Value {
        self.as_array().and_then(|a| a.get(i)).unwrap_or(&NULL)
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("Null"),
            Value::Bool(b) => write!(f, "Bool({b})"),
            Value::Number(n) => write!(f, "Number({n})"),
            Value::String(s) => write!(f, "String({s:?})"),
            Value::Array(a) => {
                f.write_str("Array ")?;
                f.debug_list().entries(a).finish()
            }
            Value::Object(m) => {
                f.write_str("Object ")?;
                fmt::Debug::fmt(m, f)
            }
        }
    }
}

impl fmt::Display for Value {
    /// Compact JSON text (`{:#}`: indented), as serde_json prints its `Value`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            let text = serde_json::to_string_pretty(self).map_err(|_| fmt::Error)?;
            return f.write_str(&text);
        }
        let mut out = Vec::new();
        crate::to_writer(&mut out, self);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

macro_rules! compare_with {
    ($($t:ty => $variant:ident),*) => {$(
        impl PartialEq<$t> for Value {
            fn eq(&self, other: &$t) -> bool {
                matches!(self, Value::$variant(x) if x == other)
            }
        }
    )*};
}
compare_with!(str => String, String => String, bool => Bool);

impl PartialEq<&str> for Value {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == Some(*other)
    }
}

macro_rules! from_number {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(n: $t) -> Value {
                Value::Number(n.into())
            }
        }
        impl PartialEq<$t> for Value {
            fn eq(&self, other: &$t) -> bool {
                matches!(self, Value::Number(n) if *n == Number::from(*other))
            }
        }
    )*};
}
from_number!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

impl From<f64> for Value {
    /// A number, or `null` for NaN and the infinities (which JSON cannot write).
    fn from(f: f64) -> Value {
        Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.into())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::String(s.into())
    }
}

impl From<Str> for Value {
    fn from(s: Str) -> Value {
        Value::String(s)
    }
}

impl From<Map> for Value {
    fn from(m: Map) -> Value {
        Value::Object(m)
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Value {
        Value::Array(v.into_iter().map(Into::into).collect())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => Value::Number(n),
            serde_json::Value::String(s) => Value::String(s.into()),
            serde_json::Value::Array(a) => Value::Array(a.into_iter().map(Value::from).collect()),
            serde_json::Value::Object(m) => Value::Object(Map::from_members(
                m.into_iter()
                    .map(|(k, v)| (Str::from(k), Value::from(v)))
                    .collect(),
            )),
        }
    }
}

impl From<Value> for serde_json::Value {
    fn from(v: Value) -> serde_json::Value {
        match v {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(b),
            Value::Number(n) => serde_json::Value::Number(n),
            Value::String(s) => serde_json::Value::String(s.into()),
            Value::Array(a) => serde_json::Value::Array(a.into_iter().map(Into::into).collect()),
            Value::Object(m) => serde_json::Value::Object(
                m.into_iter()
                    .map(|(k, v)| (String::from(k), v.into()))
                    .collect(),
            ),
        }
    }
}

impl From<&Value> for serde_json::Value {
    fn from(v: &Value) -> serde_json::Value {
        v.clone().into()
    }
}

impl std::ops::IndexMut<&str> for Value {
    /// `self[key]` for writing, inserting `null` first where needed, as serde_json's: a
    /// `null` becomes an empty object. For literals in tests; panics when `self` is
    /// anything but an object or `null`, so never use it on input.
    fn index_mut(&mut self, key: &str) -> &mut Value {
        if self.is_null() {
            *self = Value::Object(Map::new());
        }
        match self {
            Value::Object(m) => m.entry(key).or_insert(Value::Null),
            other => panic!("cannot index {other:?} with a key"),
        }
    }
}

impl std::ops::IndexMut<usize> for Value {
    /// `self[i]` for writing, as serde_json's; panics out of range or on a non-array.
    fn index_mut(&mut self, i: usize) -> &mut Value {
        match self {
            Value::Array(a) => &mut a[i],
            other => panic!("cannot index {other:?} with a number"),
        }
    }
}
