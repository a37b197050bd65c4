//! Small accessors over a pod (or pod template) held as JSON.
//!
//! The engine works on JSON values ([`rayshape_json::Value`]) rather than typed structs so
//! that every field it does not own, including ones newer than our Kubernetes types, passes
//! through untouched.

use super::quantity::Quantity;
use super::vecmap::VecMap;
use rayshape_json::{Map, Value};

/// `v[key]` when `v` is an object: `Value::get` for a key, found as [`Map::get`] finds it.
pub fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object()?.get(key)
}

/// `obj[a][b]...` without the allocation `Value::pointer` makes to unescape each segment
/// (it showed up as half the cost of evaluating rule selectors).
pub fn at<'a>(obj: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |v, k| field(v, k))
}

/// `obj[a][b]...` for writing, through objects only.
pub fn at_mut<'a>(obj: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter()
        .try_fold(obj, |v, k| v.as_object_mut()?.get_mut(k))
}

pub fn labels(obj: &Value) -> Option<&Map> {
    at(obj, &["metadata", "labels"])?.as_object()
}

pub fn annotations(obj: &Value) -> Option<&Map> {
    at(obj, &["metadata", "annotations"])?.as_object()
}

/// A vocabulary value: the label, else the annotation of the same key.
pub fn vocab<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    labels(obj)
        .and_then(|m| m.get(key))
        .or_else(|| annotations(obj).and_then(|m| m.get(key)))
        .and_then(Value::as_str)
}

fn meta_map<'a>(obj: &'a mut Value, which: &str) -> &'a mut Map {
    let root = ensure_object(obj);
    let meta = ensure_object(
        root.entry("metadata")
            .or_insert_with(|| Value::Object(Map::new())),
    );
    ensure_object(
        meta.entry(which)
            .or_insert_with(|| Value::Object(Map::new())),
    )
}

/// An object of these members, in this order: what `json!` builds, without going through
/// serde_json's value (for the few objects an admission adds).
pub fn object<const N: usize>(members: [(&str, Value); N]) -> Value {
    Value::Object(members.into_iter().collect())
}

/// Make `v` an object (replacing null or anything else) and return its map.
pub fn ensure_object(v: &mut Value) -> &mut Map {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    v.as_object_mut().expect("just made an object")
}

/// `v[key]`, making `v` an object and inserting `null` first where needed; the safe form
/// of `v[key]` for writing, which panics when `v` is not an object.
pub fn ensure_field<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    ensure_object(v).entry(key).or_insert(Value::Null)
}

/// Make `v` an array (replacing anything else) and return its elements.
pub fn ensure_array(v: &mut Value) -> &mut Vec<Value> {
    if !v.is_array() {
        *v = Value::Array(Vec::new());
    }
    v.as_array_mut().expect("just made an array")
}

/// Record an effective value as both label and annotation.
pub fn set_vocab(obj: &mut Value, key: &str, value: &str) {
    for which in ["labels", "annotations"] {
        meta_map(obj, which).insert(key, Value::from(value));
    }
}

/// Remove a vocabulary key from labels and annotations.
pub fn remove_vocab(obj: &mut Value, key: &str) {
    for which in ["labels", "annotations"] {
        if let Some(m) = at_mut(obj, &["metadata", which]).and_then(Value::as_object_mut) {
            m.shift_remove(key);
        }
    }
}

pub fn set_annotation(obj: &mut Value, key: &str, value: String) {
    meta_map(obj, "annotations").insert(key, Value::from(value));
}

pub fn containers(pod: &Value) -> &[Value] {
    at(pod, &["spec", "containers"])
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

pub fn init_containers(pod: &Value) -> &[Value] {
    at(pod, &["spec", "initContainers"])
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

pub fn name(c: &Value) -> &str {
    field(c, "name").and_then(Value::as_str).unwrap_or("")
}

/// An init container that keeps running beside the app containers (`restartPolicy: Always`).
pub fn is_native_sidecar(c: &Value) -> bool {
    field(c, "restartPolicy").and_then(Value::as_str) == Some("Always")
}

/// One of a container's `requests` or `limits`, parsed, by name (borrowed from the
/// container); unparseable entries are skipped (the API server rejects them anyway).
pub fn resource_list<'a>(c: &'a Value, which: &str) -> VecMap<&'a str, Quantity> {
    let list = at(c, &["resources", which]).and_then(Value::as_object);
    let mut out = VecMap::with_capacity(list.map_or(0, |l| l.len()));
    out.extend(
        list.into_iter()
            .flatten()
            .filter_map(|(k, v)| Quantity::from_json(v).ok().map(|q| (k.as_str(), q))),
    );
    out
}

/// What a container can take of each resource: its limit, else its request.
pub fn footprint(c: &Value) -> VecMap<&str, Quantity> {
    let mut out = resource_list(c, "requests");
    out.merge_with(resource_list(c, "limits"), |e, q| *e = (*e).max(q));
    out
}

/// The literal value of a container's environment variable: of the last entry of that
/// name, the one the kubelet uses.
pub fn env_value<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    field(c, "env")?
        .as_array()?
        .iter()
        .rfind(|e| field(e, "name").and_then(Value::as_str) == Some(name))
        .and_then(|e| field(e, "value"))
        .and_then(Value::as_str)
}

/// The container's command line as one string (command then args).
pub fn command_line(c: &Value) -> String {
    let mut parts = Vec::new();
    for field in ["command", "args"] {
        if let Some(a) = self::field(c, field).and_then(Value::as_array) {
            parts.extend(a.iter().filter_map(Value::as_str));
        }
    }
    parts.join(" ")
}
