//! [`Str`]: a string that holds up to [`INLINE`] bytes in place and only longer ones on
//! the heap. Most keys and values of a Kubernetes object are that short, so a document
//! costs one allocation per array and object rather than one per string as well. A longer
//! one is shared behind a reference count, so that copying a map to change it (a container
//! with a long command line) does not copy its strings.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// Bytes a [`Str`] holds without allocating.
pub const INLINE: usize = 30;
// `from_ascii_framed` builds an inline `Str` from 32 bytes: its tag, its length and `INLINE`.
const _: () = assert!(INLINE + 2 == std::mem::size_of::<Str>());

/// An immutable UTF-8 string, inline when short.
pub struct Str(Repr);

/// Thirty-two bytes, tag and length first. A `Value` holding a `Str` is then the `Str`
/// itself (the enum's tag sits in the `Str`'s), so the parser's values move as two whole
/// 16-byte words. Laid out as Rust chose (24 bytes, the inline bytes at odd offsets), each
/// string was moved piecewise just after being written, and the CPU waited for the writes
/// to land before it could read them back: parsing a review took about a fifth longer.
/// (Cloned only through [`Str`]'s own `Clone`, which copies an inline string whole.)
#[repr(u8)]
enum Repr {
    Inline { len: u8, buf: [u8; INLINE] } = 0,
    Heap(Arc<str>) = 1,
}

impl Str {
    /// The empty string.
    pub const fn new() -> Str {
        Str(Repr::Inline {
            len: 0,
            buf: [0; INLINE],
        })
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, buf } => {
                let bytes = &buf[..usize::from(*len)];
                // SAFETY: `buf[..len]` is only ever written from a `&str` (`From<&str>`) or
                // from ASCII (`from_ascii`, `from_ascii_framed`); the bytes past it, which
                // may be anything, are never read.
                unsafe { std::str::from_utf8_unchecked(bytes) }
            }
            Repr::Heap(s) => s,
        }
    }
}

impl Str {
    /// `bytes[start..end]` held in place, built from the 32 bytes from two before `start`
    /// in two registers and stored as two whole words, so that moving it on reads what was
    /// written; `None` where that does not apply (a longer string, too near either end of
    /// `bytes`, not x86_64), for [`Str::from_ascii`].
    ///
    /// # Safety
    ///
    /// `bytes[start..end]` is ASCII.
    #[inline(always)]
    pub(crate) unsafe fn from_ascii_framed(bytes: &[u8], start: usize, end: usize) -> Option<Str> {
        let len = end.checked_sub(start).filter(|&n| n <= INLINE)?;
        let window = bytes.get(start.checked_sub(2)?..start + INLINE)?;
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{__m128i, _mm_insert_epi16, _mm_loadu_si128};
            // SAFETY: `window` is 32 bytes long, so both 16-byte reads are in bounds; SSE2
            // is part of every x86_64. The two bytes before the string become the tag (0,
            // `Inline`) and the length; `Repr` is `repr(u8)` and 32 bytes, its `Inline`
            // holds any length and bytes, and `buf[..len]` is ASCII (the caller's promise).
            Some(unsafe {
                let p = window.as_ptr();
                let lo = _mm_loadu_si128(p.cast());
                let hi = _mm_loadu_si128(p.add(16).cast());
                let lo = _mm_insert_epi16::<0>(lo, i32::from(len as u8) << 8);
                std::mem::transmute::<[__m128i; 2], Str>([lo, hi])
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (window, len);
            None
        }
    }

    /// `bytes[start..end]`, copied with one fixed-size move when it is short and the
    /// bytes go on for [`INLINE`] from `start` (those past `end` are never read); `None`
    /// if the range is out of bounds.
    ///
    /// # Safety
    ///
    /// `bytes[start..end]` is ASCII: the parser passes only a run its scan found to be
    /// (checking again cost as much as the scan).
    pub(crate) unsafe fn from_ascii(bytes: &[u8], start: usize, end: usize) -> Option<Str> {
        let s = bytes.get(start..end)?;
        debug_assert!(s.is_ascii());
        if s.len() <= INLINE
            && let Some(window) = bytes.get(start..start + INLINE)
        {
            let mut buf = [0; INLINE];
            buf.copy_from_slice(window);
            return Some(Str(Repr::Inline {
                len: s.len() as u8,
                buf,
            }));
        }
        // SAFETY: ASCII (the caller's promise) is UTF-8.
        Some(Str::from(unsafe { std::str::from_utf8_unchecked(s) }))
    }
}

impl Clone for Str {
    #[inline]
    fn clone(&self) -> Str {
        match &self.0 {
            // SAFETY: an inline string owns nothing, so a copy of its bytes is a second,
            // independent one. Copied whole (two 16-byte moves): field by field, the
            // copy was written in pieces that the next move of it had to wait for.
            Repr::Inline { .. } => unsafe { std::ptr::read(self) },
            Repr::Heap(s) => Str(Repr::Heap(Arc::clone(s))),
        }
    }
}

impl Default for Str {
    fn default() -> Str {
        Str::new()
    }
}

impl From<&str> for Str {
    fn from(s: &str) -> Str {
        if s.len() <= INLINE {
            let mut buf = [0; INLINE];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            Str(Repr::Inline {
                // At most INLINE (30), so it fits.
                len: s.len() as u8,
                buf,
            })
        } else {
            Str(Repr::Heap(s.into()))
        }
    }
}

impl From<String> for Str {
    fn from(s: String) -> Str {
        if s.len() <= INLINE {
            Str::from(s.as_str())
        } else {
            Str(Repr::Heap(Arc::from(s)))
        }
    }
}

impl From<&String> for Str {
    fn from(s: &String) -> Str {
        Str::from(s.as_str())
    }
}

impl From<Str> for String {
    fn from(s: Str) -> String {
        s.as_str().to_string()
    }
}

impl Deref for Str {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Str {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Str {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Str {
    fn eq(&self, other: &Str) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Str {}

impl PartialEq<str> for Str {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Str {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Str {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Str> for str {
    fn eq(&self, other: &Str) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Str> for &str {
    fn eq(&self, other: &Str) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Str> for String {
    fn eq(&self, other: &Str) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialOrd for Str {
    fn partial_cmp(&self, other: &Str) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Str {
    fn cmp(&self, other: &Str) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for Str {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_strings_read_back_the_same() {
        for s in [
            "",
            "a",
            "é",
            "0123456789012345678901",
            "01234567890123456789012",
            "012345678901234567890123456789",
            "0123456789012345678901234567890",
            "ü".repeat(15).as_str(),
            "ü".repeat(16).as_str(),
            "ü".repeat(40).as_str(),
        ] {
            let x = Str::from(s);
            assert_eq!(x.as_str(), s);
            assert_eq!(String::from(x.clone()), s);
            assert_eq!(Str::from(s.to_string()), x);
            assert_eq!(x.len() <= INLINE, matches!(x.0, Repr::Inline { .. }));
            let text = format!("{s}\"{}", "x".repeat(30));
            let (whole, short) = (text.as_bytes(), &text.as_bytes()[..s.len() + 1]);
            // As the parser finds a member's value: two bytes before it.
            let member = format!(":\"{s}\"{}", "x".repeat(30));
            let (m_whole, m_short) = (member.as_bytes(), &member.as_bytes()[..s.len() + 3]);
            if s.is_ascii() {
                // SAFETY: just checked to be ASCII.
                unsafe {
                    assert_eq!(Str::from_ascii(whole, 0, s.len()).unwrap(), x);
                    assert_eq!(Str::from_ascii(short, 0, s.len()).unwrap(), x);
                    let (a, b) = (2, 2 + s.len());
                    assert_eq!(Str::from_ascii(m_whole, a, b).unwrap(), x);
                    assert_eq!(Str::from_ascii(m_short, a, b).unwrap(), x);
                    // Built in registers where it fits and the text goes on for it.
                    let framed = Str::from_ascii_framed(m_whole, a, b);
                    assert_eq!(
                        framed.is_some(),
                        cfg!(target_arch = "x86_64") && s.len() <= INLINE
                    );
                    if let Some(f) = &framed {
                        assert_eq!(*f, x);
                        assert_eq!(f.len(), s.len());
                        assert!(matches!(f.0, Repr::Inline { .. }));
                    }
                    // Only with 32 bytes from two before the string.
                    let short = Str::from_ascii_framed(m_short, a, b);
                    let room = m_short.len() >= INLINE + 2;
                    assert_eq!(short.is_some(), framed.is_some() && room);
                    assert!(short.is_none_or(|f| f == x));
                    assert_eq!(Str::from_ascii_framed(whole, 0, s.len()), None);
                }
            }
        }
        // SAFETY: out of bounds, so nothing is read.
        assert!(unsafe { Str::from_ascii(b"ab", 1, 3) }.is_none());
        assert_eq!(std::mem::size_of::<Str>(), 32);
        // The layout the parser's speed depends on (see `Repr`): a string value is its `Str`.
        assert_eq!(std::mem::size_of::<crate::Value>(), 32);
        let v = crate::Value::String(Str::from("abc"));
        let crate::Value::String(s) = &v else {
            unreachable!("built as a string")
        };
        assert_eq!(std::ptr::from_ref(s).addr(), std::ptr::from_ref(&v).addr());
    }
}
