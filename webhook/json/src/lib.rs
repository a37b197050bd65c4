//! rayshape's JSON document model: [`Value`], [`Map`] and [`Str`], which read, compare and
//! print exactly as serde_json's `Value` with `preserve_order` does, and [`from_slice`],
//! which parses them.
//!
//! Why not serde_json's `Value`: an admission's cost was mostly building one (a heap
//! allocation per string, a SipHash and an index table per object) and dropping it. Here
//! strings up to 22 bytes are held in place, objects are one vector of members, and the
//! parser allocates each array and object once.

mod map;
mod parse;
mod serde_impl;
mod str;
mod value;

pub use map::{Entry, Lookup, Map};
pub use parse::{from_slice, from_str};
pub use str::{INLINE, Str};
pub use value::{Index, Number, Value};

#[doc(hidden)]
pub mod __private {
    pub use serde_json;
}

/// A [`Value`] from JSON syntax, as serde_json's `json!` (interpolated expressions are
/// anything serde can write).
#[macro_export]
macro_rules! json {
    ($($t:tt)+) => {
        $crate::Value::from($crate::__private::serde_json::json!($($t)+))
    };
}

/// Write `v` into `out` as compact JSON, as `serde_json::to_writer` would.
pub fn to_writer(out: &mut Vec<u8>, v: &Value) {
    // Writing to a Vec cannot fail, and a Value has nothing serde could refuse.
    let _ = serde_json::to_writer(out, v);
}

#[cfg(test)]
mod tests;
