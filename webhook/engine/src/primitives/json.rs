//! Compact JSON text, byte for byte as `serde_json::to_writer` writes it, for the patch
//! and the response: their strings rarely need escaping, and checking that eight bytes at
//! a time is several times cheaper than serde_json's check of each byte.

use serde_json::Value;

/// `v` as compact JSON.
pub fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // Writing to a Vec cannot fail.
        Value::Number(n) => drop(serde_json::to_writer(&mut *out, n)),
        Value::String(s) => write_str(out, s),
        Value::Array(a) => {
            out.push(b'[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, v);
            }
            out.push(b']');
        }
        Value::Object(m) => {
            out.push(b'{');
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, k);
                out.push(b':');
                write_value(out, v);
            }
            out.push(b'}');
        }
    }
}

/// `s` as a JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether any byte is one JSON escapes: `"`, `\` or a control character below 0x20.
fn needs_escape(bytes: &[u8]) -> bool {
    special(bytes) < bytes.len()
}

/// The index of the first `"`, `\` or control character below 0x20 (where a JSON string
/// ends or needs escaping), or the length when there is none; eight bytes at a time.
pub fn special(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each zero byte of `x`, exact up to the first one (a borrow can only
    // flag bytes after a zero byte).
    let zeros = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let x = u64::from_le_bytes(w);
        // Below 0x20 exactly when bits 5 to 7 are all clear.
        let found = zeros(x & 0xe0e0_e0e0_e0e0_e0e0)
            | zeros(x ^ (ONES * u64::from(b'"')))
            | zeros(x ^ (ONES * u64::from(b'\\')));
        if found != 0 {
            return at + found.trailing_zeros() as usize / 8;
        }
        at += 8;
    }
    at + bytes[at..]
        .iter()
        .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
        .unwrap_or(bytes.len() - at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn special_finds_the_first() {
        for len in 0..20 {
            for at in 0..=len {
                for b in [b'"', b'\\', 0, 0x1f, b'a', 0x20, 0x7f, 0xc3] {
                    let mut s = vec![b'a'; len];
                    if at < len {
                        s[at] = b;
                    }
                    // Specials after the first must not matter.
                    s.extend_from_slice(b"\"\\\x01");
                    let want = s.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\');
                    assert_eq!(Some(special(&s)), want, "{s:?}");
                }
            }
        }
        assert_eq!(special(b""), 0);
        assert_eq!(special(b"abcdefghij"), 10);
    }

    #[test]
    fn every_byte_is_checked() {
        for b in 0..=0x7fu8 {
            for at in 0..20 {
                let mut s = vec![b'a'; 20];
                s[at] = b;
                let s = String::from_utf8(s).unwrap();
                let want = b < 0x20 || b == b'"' || b == b'\\';
                assert_eq!(needs_escape(s.as_bytes()), want, "{b:#x} at {at}");
                let mut out = Vec::new();
                write_str(&mut out, &s);
                assert_eq!(out, serde_json::to_vec(&s).unwrap());
            }
        }
        for s in ["é", "€uro\u{7f}", "\u{1F600}\"", "\u{80}\u{9f}\u{a0}", ""] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s}");
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            "[a-z\"\\\\\n\u{1}é]{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec(("[a-z\"/~\u{1f}]{0,10}", inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn the_same_text_as_serde_json(v in json_value()) {
            let mut out = Vec::new();
            write_value(&mut out, &v);
            prop_assert_eq!(out, serde_json::to_vec(&v).unwrap());
        }
    }

    #[test]
    fn numbers_as_serde_json_writes_them() {
        let v = json!([0, -1, 1.5, 1e300, u64::MAX, i64::MIN, 0.1, -0.0]);
        let mut out = Vec::new();
        write_value(&mut out, &v);
        assert_eq!(out, serde_json::to_vec(&v).unwrap());
    }
}
