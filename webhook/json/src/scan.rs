//! Finding the bytes a JSON string cannot hold as they are (`"`, `\` and control
//! characters), eight at a time: shared by the parser and the writer.

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
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let m = specials(u64::from_le_bytes(w));
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = bytes.get(i) {
        if is_special(b) {
            break;
        }
        i += 1;
    }
    i
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
}
