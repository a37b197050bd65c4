//! rayshape's JSON document model: [`Value`], [`Map`] and [`Str`], which read, compare and
//! print exactly as serde_json's `Value` with `preserve_order` does, and [`from_slice`],
//! which parses them ([`from_slice_lazy`] also keeps named objects as checked text until
//! they are read).
//!
//! Why not serde_json's `Value`: an admission's cost was mostly building one (a heap
//! allocation per string, a SipHash and an index table per object) and dropping it. Here
//! strings up to 30 bytes are held in place, objects are one vector of members shared
//! until changed, and the parser sizes each array and object once.

mod map;
mod parse;
mod scan;
mod serde_impl;
mod str;
mod value;
mod write;

pub use map::{Entry, Lookup, Map};
pub use parse::{from_slice, from_slice_lazy, from_str};
pub use str::{INLINE, Str};
pub use value::{Index, Number, Value};
pub use write::{to_writer, write_str};

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

#[cfg(test)]
mod tests;
