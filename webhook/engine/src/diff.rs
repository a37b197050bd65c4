//! `diff(original, shaped)`: the RFC 6902 patch the API server receives.
//!
//! The same operations as `json_patch::diff` (tests compare the two), but the maps a staged
//! copy still shares with the original are skipped with one comparison, each node is visited
//! at most once, and paths are only rendered for operations that are emitted:
//! `json_patch::diff` escapes and allocates a path segment for every node it visits, which
//! was a quarter of the cost of an admission. [`diff_json`] writes the patch's JSON straight
//! from the shaped object, without copying the values it adds.

use rayshape_json::{Map, Value};

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Where the walk reports operations.
trait Sink {
    fn op(&mut self, op: &'static str, path: &[Seg<'_>], value: Option<&Value>);
}

/// The operations that turn `left` into `right`, as RFC 6902 JSON text, and their number.
pub fn diff_json(left: &Value, right: &Value) -> (Vec<u8>, usize) {
    /// The patch so far, its number of operations, and the text of the last path (its
    /// buffer reused from one operation to the next).
    struct Json(Vec<u8>, usize, String);
    impl Sink for Json {
        fn op(&mut self, op: &'static str, path: &[Seg<'_>], value: Option<&Value>) {
            let out = &mut self.0;
            out.push(if self.1 == 0 { b'[' } else { b',' });
            self.1 += 1;
            out.extend_from_slice(b"{\"op\":\"");
            out.extend_from_slice(op.as_bytes());
            out.extend_from_slice(b"\",\"path\":");
            let text = &mut self.2;
            text.clear();
            for seg in path {
                text.push('/');
                match seg {
                    Seg::Key(k) => pointer_token(text, k),
                    Seg::Index(i) => decimal(text, *i),
                }
            }
            rayshape_json::write_str(out, text);
            if let Some(v) = value {
                out.extend_from_slice(b",\"value\":");
                rayshape_json::to_writer(out, v);
            }
            out.push(b'}');
        }
    }
    // A shaped pod's patch is a few KB; growing from nothing would copy it several times.
    let mut sink = Json(Vec::with_capacity(4096), 0, String::new());
    walk(left, right, &mut Vec::new(), &mut sink);
    if sink.1 == 0 {
        sink.0.push(b'[');
    }
    sink.0.push(b']');
    (sink.0, sink.1)
}

/// A JSON Pointer reference token (RFC 6901): `~` as `~0`, `/` as `~1`.
fn pointer_token(out: &mut String, key: &str) {
    // Most keys have neither: one pass over their bytes, not a pattern search.
    if !key.bytes().any(|b| b == b'~' || b == b'/') {
        out.push_str(key);
        return;
    }
    let mut rest = key;
    while let Some(i) = rest.find(['~', '/']) {
        out.push_str(&rest[..i]);
        out.push_str(if rest.as_bytes()[i] == b'~' {
            "~0"
        } else {
            "~1"
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

/// `n` in decimal, without the formatting machinery.
fn decimal(out: &mut String, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&digits[at..]).unwrap_or_default());
}

/// Every node is visited at most once: two objects or arrays are walked into, not compared
/// first (which compared the equal part of a subtree again at every level above a change);
/// walking two equal ones emits nothing.
fn walk<'a>(left: &'a Value, right: &'a Value, path: &mut Vec<Seg<'a>>, sink: &mut impl Sink) {
    match (left, right) {
        // A staged copy shares every map it did not edit with the original.
        (Value::Object(l), Value::Object(r)) => {
            if !Map::ptr_eq(l, r) {
                object(l, r, path, sink);
            }
        }
        (Value::Array(l), Value::Array(r)) => array(l, r, path, sink),
        _ => {
            if left != right {
                sink.op("replace", path, Some(right));
            }
        }
    }
}

fn object<'a>(l: &'a Map, r: &'a Map, path: &mut Vec<Seg<'a>>, sink: &mut impl Sink) {
    // `r` is mostly `l` edited, its keys at the same places: each key is looked for at its
    // own index first, and only looked up when it is not there.
    let mut in_l = l.lookup();
    let mut same_place = l.iter();
    for (k, rv) in r {
        path.push(Seg::Key(k));
        let lv = match same_place.next() {
            Some((lk, lv)) if lk == k => Some(lv),
            _ => in_l.get(k),
        };
        match lv {
            Some(lv) => walk(lv, rv, path, sink),
            None => sink.op("add", path, Some(rv)),
        }
        path.pop();
    }
    let mut in_r = r.lookup();
    let mut same_place = r.keys();
    for k in l.keys() {
        let kept = same_place.next() == Some(k) || in_r.get(k).is_some();
        if !kept {
            path.push(Seg::Key(k));
            sink.op("remove", path, None);
            path.pop();
        }
    }
}

/// Element by element; extra elements on the left are removed from the same index in turn.
fn array<'a>(l: &'a [Value], r: &'a [Value], path: &mut Vec<Seg<'a>>, sink: &mut impl Sink) {
    let common = l.len().min(r.len());
    for i in 0..common {
        path.push(Seg::Index(i));
        walk(&l[i], &r[i], path, sink);
        path.pop();
    }
    for (i, v) in r.iter().enumerate().skip(common) {
        path.push(Seg::Index(i));
        sink.op("add", path, Some(v));
        path.pop();
    }
    for _ in common..l.len() {
        path.push(Seg::Index(common));
        sink.op("remove", path, None);
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use json_patch::jsonptr::{PointerBuf, Token};
    use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};

    /// The operations that turn `left` into `right`.
    fn diff(left: &Value, right: &Value) -> Patch {
        struct Ops(Vec<PatchOperation>);
        impl Sink for Ops {
            fn op(&mut self, op: &'static str, path: &[Seg<'_>], value: Option<&Value>) {
                let path = PointerBuf::from_tokens(path.iter().map(|s| match s {
                    Seg::Key(k) => Token::new(*k),
                    Seg::Index(i) => Token::from(*i),
                }));
                let value = || serde_json::Value::from(value.cloned().unwrap_or(Value::Null));
                self.0.push(match op {
                    "add" => PatchOperation::Add(AddOperation {
                        path,
                        value: value(),
                    }),
                    "replace" => PatchOperation::Replace(ReplaceOperation {
                        path,
                        value: value(),
                    }),
                    _ => PatchOperation::Remove(RemoveOperation { path }),
                });
            }
        }
        let mut sink = Ops(Vec::new());
        walk(left, right, &mut Vec::new(), &mut sink);
        Patch(sink.0)
    }
    use super::*;
    use proptest::prelude::*;
    use rayshape_json::json;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (0i64..4).prop_map(|n| json!(n)),
            prop::sample::select(&["a", "b", "a/b", "~x"][..]).prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(4, 40, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(&["k", "l", "m/n", "o~p"][..]).prop_map(str::to_string),
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn same_as_json_patch_and_applies(a in value(), b in value()) {
            let ours = diff(&a, &b);
            let (sa, sb) = (serde_json::Value::from(a.clone()), serde_json::Value::from(b.clone()));
            prop_assert_eq!(&ours, &json_patch::diff(&sa, &sb));
            let (bytes, n) = diff_json(&a, &b);
            let parsed: Patch = serde_json::from_slice(&bytes).unwrap();
            prop_assert_eq!((&parsed, n), (&ours, ours.0.len()));
            let mut applied = sa;
            json_patch::patch(&mut applied, &ours).unwrap();
            prop_assert_eq!(applied, sb);
        }
    }

    #[test]
    fn paths_are_written_as_rfc_6901_says() {
        let mut s = String::new();
        for k in ["", "a", "~", "/", "a~b/c", "~1/~0", "//~~", "é/ü"] {
            s.clear();
            pointer_token(&mut s, k);
            assert_eq!(s, k.replace('~', "~0").replace('/', "~1"));
        }
        for n in [0, 7, 10, 99, 100, 12345, usize::MAX] {
            s.clear();
            decimal(&mut s, n);
            assert_eq!(s, n.to_string());
        }
        let (bytes, n) = diff_json(
            &json!({"a": vec![0; 12]}),
            &json!({"a": vec![0; 13], "x/~y": 1}),
        );
        assert_eq!(n, 2);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"[{"op":"add","path":"/a/12","value":0},{"op":"add","path":"/x~1~0y","value":1}]"#
        );
    }

    #[test]
    fn escapes_keys() {
        let p = diff(&json!({}), &json!({"a/b": 1, "c~d": 2}));
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(
            text,
            r#"[{"op":"add","path":"/a~1b","value":1},{"op":"add","path":"/c~0d","value":2}]"#
        );
    }
}
