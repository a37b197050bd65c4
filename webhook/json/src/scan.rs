//! Finding the bytes a JSON string cannot hold as they are (`"`, `\` and control
//! characters), and the end of a run of whitespace: sixteen bytes at a time with SSE2
//! (part of every x86_64), eight at a time elsewhere. Shared by the parser and the writer.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// A mask with the high bit of each byte of `w` that is `"`, `\` or a control character;
/// the lowest one set is exact (the bits above it may not be).
fn specials(w: u64) -> u64 {
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    let zero = |x: u64| x.wrapping_sub(ONES) & !x;
    (zero(quote) | zero(backslash) | (w.wrapping_sub(ONES * 0x20) & !w)) & HIGHS
}

/// Whether a string must escape `b`.
pub fn is_special(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// Whether `bytes` has no special byte: the common case of a key or a value, checked a
/// word at a time, the last word overlapping the one before (or padded, when short).
pub fn is_plain(bytes: &[u8]) -> bool {
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        specials(u64::from_le_bytes(w)) == 0
    };
    let n = bytes.len();
    if n < 8 {
        return !bytes.iter().any(|&b| is_special(b));
    }
    let mut i = 0;
    while i + 8 < n {
        if !word(i) {
            return false;
        }
        i += 8;
    }
    word(n - 8)
}

/// The index of the first special byte of `bytes` from `from`, or `bytes.len()`.
pub fn next_special(bytes: &[u8], from: usize) -> usize {
    find(bytes, from, false)
}

/// The index of the first special byte, or byte beyond ASCII, of `bytes` from `from`, or
/// `bytes.len()`: where a string stops being one the parser can take without a UTF-8 check.
pub fn next_special_or_non_ascii(bytes: &[u8], from: usize) -> usize {
    find(bytes, from, true)
}

#[inline(always)]
fn find(bytes: &[u8], from: usize, non_ascii: bool) -> usize {
    let mut i = from;
    #[cfg(target_arch = "x86_64")]
    while let Some(chunk) = bytes.get(i..i + 16) {
        let m = sse2::specials(chunk, non_ascii);
        if m != 0 {
            return i + m.trailing_zeros() as usize;
        }
        i += 16;
    }
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let w = u64::from_le_bytes(w);
        // The high bits are exact, so the lowest bit of the union still is.
        let m = specials(w) | if non_ascii { w & HIGHS } else { 0 };
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = bytes.get(i) {
        if is_special(b) || (non_ascii && !b.is_ascii()) {
            break;
        }
        i += 1;
    }
    i
}

/// The length of the run of JSON whitespace (space, newline, return, tab) at
/// `bytes[from..]`: a newline and its indentation in one step where SSE2 is.
#[inline(always)]
pub fn whitespace(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    #[cfg(target_arch = "x86_64")]
    while let Some(chunk) = bytes.get(i..i + 16) {
        let others = !sse2::whitespace(chunk);
        if others != 0 {
            return i + others.trailing_zeros() as usize - from;
        }
        i += 16;
    }
    // Elsewhere, and in the last bytes: runs of spaces a word at a time.
    loop {
        match bytes.get(i) {
            Some(b' ') => i += spaces(bytes, i),
            Some(b'\n' | b'\r' | b'\t') => i += 1,
            _ => break,
        }
    }
    i - from
}

/// The number of spaces at `bytes[from..]`, eight at a time.
fn spaces(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        // The lowest set bit of the XOR with spaces is in the first byte that is not one.
        let others = u64::from_le_bytes(w) ^ (ONES * u64::from(b' '));
        if others != 0 {
            return i + (others.trailing_zeros() / 8) as usize - from;
        }
        i += 8;
    }
    while bytes.get(i) == Some(&b' ') {
        i += 1;
    }
    i - from
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };

    /// The first 16 bytes of `chunk`, which has at least that many.
    fn load(chunk: &[u8]) -> __m128i {
        assert!(chunk.len() >= 16);
        // SAFETY: SSE2 is in every x86_64 target's baseline, and the unaligned load reads
        // the 16 bytes just checked to be there.
        unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) }
    }

    /// A bit for each of the first 16 bytes of `chunk` that is `"`, `\` or a control
    /// character, or (with `non_ascii`) beyond ASCII.
    #[inline(always)]
    pub fn specials(chunk: &[u8], non_ascii: bool) -> u32 {
        let w = load(chunk);
        // SAFETY: SSE2 is in every x86_64 target's baseline.
        unsafe {
            let quote = _mm_cmpeq_epi8(w, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(w, _mm_set1_epi8(b'\\' as i8));
            // Unsigned min(w, 0x1f) == w exactly where w <= 0x1f.
            let control = _mm_cmpeq_epi8(_mm_min_epu8(w, _mm_set1_epi8(0x1f)), w);
            let m = _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control));
            // The high bit of each byte is its own mask bit: set beyond ASCII.
            (if non_ascii {
                m | _mm_movemask_epi8(w)
            } else {
                m
            }) as u32
        }
    }

    /// A bit for each of the first 16 bytes of `chunk` that is JSON whitespace, and the
    /// 16 bits above them set.
    pub fn whitespace(chunk: &[u8]) -> u32 {
        let w = load(chunk);
        // SAFETY: SSE2 is in every x86_64 target's baseline.
        let mask = unsafe {
            let is = |b: u8| _mm_cmpeq_epi8(w, _mm_set1_epi8(b as i8));
            _mm_movemask_epi8(_mm_or_si128(
                _mm_or_si128(is(b' '), is(b'\n')),
                _mm_or_si128(is(b'\r'), is(b'\t')),
            ))
        };
        mask as u32 | 0xffff_0000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_special_byte_anywhere() {
        for len in 0..20 {
            for at in 0..=len {
                for special in [b'"', b'\\', 0u8, 0x1f] {
                    let mut bytes = vec![b'a'; len];
                    bytes.extend_from_slice("é\u{7f} ~".as_bytes());
                    if at < len {
                        bytes[at] = special;
                        bytes.extend_from_slice(b"\"\\\x01");
                    }
                    let want = bytes
                        .iter()
                        .position(|&b| is_special(b))
                        .unwrap_or(bytes.len());
                    assert_eq!(next_special(&bytes, 0), want, "{bytes:?}");
                    let first_high = bytes
                        .iter()
                        .position(|&b| is_special(b) || !b.is_ascii())
                        .unwrap_or(bytes.len());
                    assert_eq!(
                        next_special_or_non_ascii(&bytes, 0),
                        first_high,
                        "{bytes:?}"
                    );
                    for from in 0..=bytes.len() {
                        let want = bytes[from..]
                            .iter()
                            .position(|&b| is_special(b))
                            .map_or(bytes.len(), |p| from + p);
                        assert_eq!(next_special(&bytes, from), want, "{bytes:?} from {from}");
                    }
                    for end in 0..=bytes.len() {
                        let part = &bytes[..end];
                        assert_eq!(
                            is_plain(part),
                            !part.iter().any(|&b| is_special(b)),
                            "{part:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn measures_whitespace_anywhere() {
        let ws = b" \n\r\t";
        for len in 0..40 {
            for from in 0..=len {
                for after in [&b""[..], b"x", b"x  ", b"\"\n"] {
                    // Mostly spaces, as indentation is, with the other kinds here and there.
                    let mut bytes: Vec<u8> = (0..len)
                        .map(|i| if i % 7 == 3 { ws[i % 4] } else { b' ' })
                        .collect();
                    bytes.extend_from_slice(after);
                    assert_eq!(
                        whitespace(&bytes, from),
                        len - from,
                        "{bytes:?} from {from}"
                    );
                }
            }
        }
    }
}
