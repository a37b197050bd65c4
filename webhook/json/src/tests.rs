use crate::{Map, Str, Value, from_slice, from_slice_lazy};
use proptest::prelude::*;

/// What serde_json makes of `bytes`: its value's compact text, or its error's message.
fn serde_json_reads(bytes: &[u8]) -> Result<String, String> {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .map(|v| v.to_string())
        .map_err(|e| e.to_string())
}

fn ours_reads(bytes: &[u8]) -> Result<String, String> {
    from_slice(bytes)
        .map(|v| v.to_string())
        .map_err(|e| e.to_string())
}

/// Keys whose objects the lazy tests keep unread: "a" directly, "ab" also as `"a\u0062"`.
const UNREAD: &[&str] = &["a", "ab"];

fn lazy_reads(bytes: &[u8]) -> Result<String, String> {
    from_slice_lazy(bytes, UNREAD)
        .map(|v| v.to_string())
        .map_err(|e| e.to_string())
}

/// Leave `bytes` as they are (`how` 0), cut them short (1), insert `junk` (2) or overwrite
/// a byte with it (3), at the place `cut` picks.
fn damage(bytes: &mut Vec<u8>, cut: prop::sample::Index, junk: u8, how: u8) {
    match how {
        0 => {}
        1 => bytes.truncate(cut.index(bytes.len() + 1)),
        2 => bytes.insert(cut.index(bytes.len() + 1), junk),
        _ => {
            if !bytes.is_empty() {
                let i = cut.index(bytes.len());
                bytes[i] = junk;
            }
        }
    }
}

/// Add a member to every object in `v`, the way a change reaches into a document.
fn touch(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.insert("added", Value::Null);
            m.values_mut().for_each(touch);
        }
        Value::Array(a) => a.iter_mut().for_each(touch),
        _ => {}
    }
}

fn text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        prop::sample::select(
            &[
                "0",
                "-0",
                "7",
                "-12",
                "1.5",
                "1e3",
                "-2.5E-3",
                "18446744073709551615",
                "18446744073709551616",
                "9999999999999999999",
                "01",
                "1.",
                ".5",
                "1e400",
                "-",
            ][..]
        )
        .prop_map(str::to_string),
        prop::sample::select(
            &[
                r#""""#,
                r#""a""#,
                r#""é ü""#,
                r#""a\"b""#,
                r#""\\\/\b\f\n\r\t""#,
                r#""\u00e9""#,
                r#""\ud83d\ude00""#,
                r#""\ud83d""#,
                r#""\ude00x""#,
                r#""\x""#,
                "\"tab\there\"",
                r#""a very long string that does not fit in place at all""#,
                r#""\u004""#,
                r#""\u0001\u001f\u007f\u0008\u000c""#,
                r#""é\nü""#,
                r#""ascii first, then é, then \"quotes\" and ü""#,
                "\"日本語のテキストはここにあります、とても長い\"",
            ][..]
        )
        .prop_map(str::to_string),
    ];
    let ws = prop::sample::select(&["", " ", "\n  ", "\t", "\r\n"][..]);
    leaf.prop_recursive(5, 64, 6, move |inner| {
        let ws = ws.clone();
        prop_oneof![
            (prop::collection::vec((inner.clone(), ws.clone()), 0..6)).prop_map(|items| {
                let body: Vec<String> = items.iter().map(|(v, w)| format!("{w}{v}{w}")).collect();
                format!("[{}]", body.join(","))
            }),
            (prop::collection::vec(
                (
                    prop::sample::select(
                        &[
                            "a",
                            "b",
                            "key",
                            "a\\u0062",
                            "a long key that is kept on the heap"
                        ][..]
                    ),
                    inner,
                    ws
                ),
                0..6
            ))
            .prop_map(|items| {
                let body: Vec<String> = items
                    .iter()
                    .map(|(k, v, w)| format!("{w}\"{k}\"{w}:{w}{v}{w}"))
                    .collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The same value (order, numbers, duplicates) or the same error as serde_json.
    #[test]
    fn reads_as_serde_json_does(t in text(), cut in any::<prop::sample::Index>(), junk in any::<u8>(), how in 0u8..4) {
        let mut bytes = t.into_bytes();
        damage(&mut bytes, cut, junk, how);
        prop_assert_eq!(ours_reads(&bytes), serde_json_reads(&bytes));
    }

    /// Objects kept unread change nothing but the cost: the same value or the same error
    /// (an error inside an unread object included), equal to the eager parse, and changes
    /// through them land as in the eager document, leaving a copy that shares them intact.
    #[test]
    fn unread_objects_read_as_serde_json_does(t in text(), cut in any::<prop::sample::Index>(), junk in any::<u8>(), how in 0u8..4) {
        // Always within an object kept unread, besides wherever the text has its own.
        let mut bytes = format!(r#"{{"a":{{"k":{t},"l":[{t}]}},"b":{t}}}"#).into_bytes();
        damage(&mut bytes, cut, junk, how);
        prop_assert_eq!(lazy_reads(&bytes), serde_json_reads(&bytes));
        if let (Ok(lazy), Ok(eager)) = (from_slice_lazy(&bytes, UNREAD), from_slice(&bytes)) {
            prop_assert_eq!(&lazy, &eager);
            let (mut changed, mut eager_changed) = (lazy.clone(), eager.clone());
            touch(&mut changed);
            touch(&mut eager_changed);
            prop_assert_eq!(changed.to_string(), eager_changed.to_string());
            prop_assert_eq!(lazy.to_string(), eager.to_string());
        }
    }

    /// Converting to and from serde_json's Value keeps everything.
    #[test]
    fn converts_both_ways(t in text()) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) {
            let ours = Value::from(v.clone());
            prop_assert_eq!(serde_json::Value::from(ours.clone()), v.clone());
            prop_assert_eq!(ours, from_slice(t.as_bytes()).unwrap());
        }
    }
}

#[test]
fn deep_nesting_and_errors_are_serde_jsons() {
    for depth in [99, 100, 101, 127, 128, 129, 200] {
        let t = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(
            ours_reads(t.as_bytes()),
            serde_json_reads(t.as_bytes()),
            "depth {depth}"
        );
    }
    for t in [
        "",
        " ",
        "{",
        "{\"a\" 1}",
        "[1,]",
        "{\"a\":1,}",
        "tru",
        "nul",
        "1 2",
        "\u{feff}1",
        "\"\\ud800\\u0041\"",
    ] {
        assert_eq!(
            ours_reads(t.as_bytes()),
            serde_json_reads(t.as_bytes()),
            "{t:?}"
        );
    }
    assert_eq!(ours_reads(b"\"\xff\""), serde_json_reads(b"\"\xff\""));
}

#[test]
fn repeated_keys_replace_in_place_as_serde_json_does() {
    let mut t = String::from("{");
    for i in 0..40 {
        t.push_str(&format!("\"k{}\":{i},", i % 25));
    }
    t.push_str("\"z\":0}");
    assert_eq!(ours_reads(t.as_bytes()), serde_json_reads(t.as_bytes()));
    assert_eq!(
        ours_reads(br#"{"a":1,"b":2,"a":3}"#),
        Ok(r#"{"a":3,"b":2}"#.into())
    );
}

#[test]
fn maps_behave_as_serde_jsons() {
    let mut ours = Map::new();
    let mut theirs = serde_json::Map::new();
    for (i, k) in ["a", "b", "c", "d", "b"].iter().enumerate() {
        assert_eq!(
            ours.insert(*k, json!(i)).map(serde_json::Value::from),
            theirs.insert(k.to_string(), serde_json::json!(i))
        );
    }
    assert_eq!(
        ours.remove("a").map(serde_json::Value::from),
        theirs.remove("a")
    );
    assert_eq!(
        ours.shift_remove("d").map(serde_json::Value::from),
        theirs.shift_remove("d")
    );
    *ours.entry("e").or_insert(Value::Null) = json!(5);
    *theirs.entry("e").or_insert(serde_json::Value::Null) = serde_json::json!(5);
    assert_eq!(
        serde_json::Value::from(Value::Object(ours.clone())),
        serde_json::Value::Object(theirs.clone())
    );
    // Equal regardless of order, as serde_json's are.
    let reversed: Map = ours
        .iter()
        .rev()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(reversed, ours);
    let big: Map = (0..40).map(|i| (format!("k{i}"), json!(i))).collect();
    let big_rev: Map = big
        .iter()
        .rev()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(big, big_rev);
    let mut other = big_rev.clone();
    other.insert("k3", json!("x"));
    assert_ne!(big, other);
}

#[test]
fn copies_share_maps_until_they_are_changed() {
    let original = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [{"name": "ray", "env": []}], "volumes": [{"name": "v"}]}});
    let mut copy = original.clone();
    let shared = |a: &Value, b: &Value, path: &str| {
        Map::ptr_eq(
            a.pointer(path).unwrap().as_object().unwrap(),
            b.pointer(path).unwrap().as_object().unwrap(),
        )
    };
    assert!(shared(&original, &copy, ""));
    copy["spec"]["containers"].as_array_mut().unwrap()[0]
        .as_object_mut()
        .unwrap()
        .insert("image", json!("x"));
    assert_eq!(original.pointer("/spec/containers/0/image"), None);
    assert_eq!(copy.pointer("/spec/containers/0/image"), Some(&json!("x")));
    assert!(!shared(&original, &copy, ""));
    assert!(!shared(&original, &copy, "/spec"));
    assert!(!shared(&original, &copy, "/spec/containers/0"));
    assert!(shared(&original, &copy, "/metadata"));
    assert!(shared(&original, &copy, "/spec/volumes/0"));
    assert_ne!(original, copy);
    let mut back = copy.clone();
    back["spec"]["containers"].as_array_mut().unwrap()[0]
        .as_object_mut()
        .unwrap()
        .remove("image");
    assert_eq!(back, original);
    assert_eq!(copy.pointer("/spec/containers/0/image"), Some(&json!("x")));
}

#[test]
fn indexes_and_pointers_as_serde_json() {
    let v = json!({"a": [{"b/c": 1, "d~e": [true]}], "": 2});
    let s = serde_json::Value::from(v.clone());
    for p in [
        "",
        "/a",
        "/a/0",
        "/a/0/b~1c",
        "/a/0/d~0e/0",
        "/a/00",
        "/a/1",
        "/x",
        "/",
        "a",
    ] {
        assert_eq!(
            v.pointer(p).cloned().map(serde_json::Value::from),
            s.pointer(p).cloned(),
            "{p}"
        );
    }
    assert_eq!(v["a"][0]["b/c"], 1);
    assert!(v["nope"][3].is_null());
    assert_eq!(Str::from("x"), "x");
}

/// Kept text is what writing the value says, through every way of changing a map: each
/// change below is made to a kept value and to a copy of it, and both are then written
/// and compared with serde_json's text of the same value.
#[test]
fn kept_text_follows_every_change() {
    type Change = fn(&mut Value);
    let changes: [(&str, Change); 12] = [
        ("insert", |v| {
            v["spec"].as_object_mut().unwrap().insert("x", json!(1));
        }),
        ("get_mut deep", |v| {
            *v.get_mut("spec")
                .unwrap()
                .get_mut("env")
                .unwrap()
                .get_mut(0)
                .unwrap() = json!({"name": "B"});
        }),
        ("IndexMut", |v| v["spec"]["resources"]["cpu"] = json!("2")),
        ("entry", |v| {
            v["spec"]
                .as_object_mut()
                .unwrap()
                .entry("y")
                .or_insert(json!([]));
        }),
        ("remove", |v| {
            v["spec"].as_object_mut().unwrap().remove("resources");
        }),
        ("shift_remove", |v| {
            v.as_object_mut().unwrap().shift_remove("name");
        }),
        ("retain", |v| {
            v["spec"].as_object_mut().unwrap().retain(|k, _| k != "env")
        }),
        ("values_mut", |v| {
            for x in v["spec"]["resources"].as_object_mut().unwrap().values_mut() {
                *x = json!("0");
            }
        }),
        ("iter_mut", |v| {
            for (_, x) in v.as_object_mut().unwrap().iter_mut() {
                *x = json!(null);
            }
        }),
        ("array", |v| {
            v["spec"]["env"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "C"}))
        }),
        ("nested array element", |v| {
            v["spec"]["env"][0]
                .as_object_mut()
                .unwrap()
                .insert("value", json!("v"));
        }),
        ("extend", |v| {
            v["spec"]
                .as_object_mut()
                .unwrap()
                .extend([("z", json!(true))])
        }),
    ];
    let template =
        json!({"name": "sidecar", "spec": {"env": [{"name": "A"}], "resources": {"cpu": "1"}}});
    let written = |v: &Value| {
        let mut out = Vec::new();
        crate::to_writer(&mut out, v);
        String::from_utf8(out).unwrap()
    };
    let serde_json = |v: &Value| serde_json::to_string(&serde_json::Value::from(v)).unwrap();
    for (what, change) in changes {
        let mut kept = template.clone();
        kept.keep_text();
        assert!(kept.as_object().unwrap().kept_text().is_some(), "{what}");
        assert_eq!(written(&kept), serde_json(&template), "{what}");
        let mut copy = kept.clone();
        change(&mut copy);
        assert_eq!(written(&copy), serde_json(&copy), "{what}, a copy");
        assert_eq!(
            written(&kept),
            serde_json(&template),
            "{what}, the kept value after its copy changed"
        );
        change(&mut kept);
        assert_eq!(
            written(&kept),
            serde_json(&kept),
            "{what}, changed in place"
        );
        assert_ne!(
            written(&kept),
            serde_json(&template),
            "{what} changed nothing"
        );
    }
}

#[test]
fn objects_named_unread_stay_text_until_read() {
    let text = br#"{"a":{"x":[1,{"y":"\u00e9"}]},"b":{"x":1},"c":[{"a":{"z":true}}],"ab":{}}"#;
    let v = from_slice_lazy(text, UNREAD).unwrap();
    let unread = |p: &str| v.pointer(p).and_then(Value::as_object).map(Map::is_unread);
    assert_eq!(unread("/b"), Some(false));
    assert_eq!(unread("/c/0/a"), Some(true), "at any depth");
    assert_eq!(
        unread("/ab"),
        Some(false),
        "`{{}}` is not worth keeping as text"
    );
    assert_eq!(unread("/a"), Some(true));
    assert_eq!(v["a"]["x"][1]["y"], "é");
    assert_eq!(unread("/a"), Some(false), "read once asked for");
    assert_eq!(v.to_string(), from_slice(text).unwrap().to_string());
    // A key is matched as read, escapes and all.
    let v = from_slice_lazy(br#"{"a\u0062":{"q":null}}"#, UNREAD).unwrap();
    assert!(v["ab"].as_object().is_some_and(Map::is_unread));
}

#[test]
fn unread_objects_keep_the_depth_limit_and_errors() {
    for depth in [96, 97, 98, 99, 100, 101, 127, 128, 129] {
        let t = format!(
            "{{\"a\":{{\"b\":{}{}}}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert_eq!(
            lazy_reads(t.as_bytes()),
            serde_json_reads(t.as_bytes()),
            "depth {depth}"
        );
    }
    for t in [
        r#"{"a":{"x":1,}}"#,
        r#"{"a":{"x" 1}}"#,
        r#"{"a":{"x":tru}}"#,
        r#"{"a":{"x":"\ud800\u0041"}}"#,
        r#"{"a":{"x":"\ude00"}}"#,
        r#"{"a":{"x":"\q"}}"#,
        r#"{"a":{"x":01}}"#,
        r#"{"a":{"x":[1,]}}"#,
        r#"{"a":{"x":1}"#,
        "{\"a\":{\"x\":\"\t\"}}",
    ] {
        assert_eq!(
            lazy_reads(t.as_bytes()),
            serde_json_reads(t.as_bytes()),
            "{t:?}"
        );
    }
    let bad_utf8 = b"{\"a\":{\"x\":\"\\n\xff\"}}";
    assert_eq!(lazy_reads(bad_utf8), serde_json_reads(bad_utf8));
}
