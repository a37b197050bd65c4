//! RFC 6902 operations as rule authors need them, applied to a working copy of the object.
//!
//! Differences from strict RFC 6902, each on purpose (the API server only ever sees
//! `diff(original, shaped)`, which is strict):
//! - `add`, `copy` and `move` create missing parent objects and arrays;
//! - `add`, `copy` and `move` to the end of an array (`/-`) add nothing when an equal
//!   element is already there, so rules are idempotent (Kubernetes' advice: treat unkeyed
//!   arrays as sets); a `move` still removes its source, and the value is at the target;
//! - `remove` of a missing path does nothing;
//! - `add` without a `value` (the Anyscale chart's zone rule has one) does nothing: it only
//!   asked for parents to exist, which every `add`, `copy` and `move` here ensures.
//!
//! Paths are JSON pointers with three extra segment forms, valid where the value is an
//! array: `[name=foo]` (the element whose `name` is `foo`; any field works), `[ray]` (the Ray
//! container) and `*` (every element; for `add` on a missing or empty array, a new element).

use rayshape_json::{Map, Value};
use thiserror::Error;

/// A parsed, validated path.
#[derive(Clone, Debug, PartialEq)]
pub struct Path {
    raw: String,
    tokens: Vec<String>,
}

/// A concrete step after wildcards and keyed selections are resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
    Append,
}

/// Why a path does not parse.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path {0:?} must start with `/`")]
    NoSlash(String),
    #[error("path {0:?}: `-` (end of array) may only be the last segment")]
    DashNotLast(String),
    #[error("path {0:?}: segment {1:?} is not `[field=value]` or `[ray]`")]
    BadSelector(String, String),
    #[error("path {0:?}: bad escape; `~` must be followed by 0 or 1")]
    BadEscape(String),
}

impl Path {
    pub fn parse(raw: &str) -> Result<Path, PathError> {
        let Some(rest) = raw.strip_prefix('/') else {
            return Err(PathError::NoSlash(raw.to_string()));
        };
        let mut tokens = Vec::new();
        for t in rest.split('/') {
            let mut out = String::with_capacity(t.len());
            let mut chars = t.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return Err(PathError::BadEscape(raw.to_string())),
                    }
                } else {
                    out.push(c);
                }
            }
            if out.starts_with('[') && out != "[ray]" && parse_where(&out).is_none() {
                return Err(PathError::BadSelector(raw.to_string(), out));
            }
            tokens.push(out);
        }
        if let Some(pos) = tokens.iter().position(|t| t == "-")
            && pos + 1 != tokens.len()
        {
            return Err(PathError::DashNotLast(raw.to_string()));
        }
        Ok(Path {
            raw: raw.to_string(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The first `depth` segments (fewer if the path is shorter).
    pub fn head(&self, depth: usize) -> &[String] {
        &self.tokens[..depth.min(self.tokens.len())]
    }
}

fn parse_where(tok: &str) -> Option<(&str, &str)> {
    let inner = tok.strip_prefix('[')?.strip_suffix(']')?;
    let (k, v) = inner.split_once('=')?;
    (!k.is_empty()).then_some((k, v))
}

/// One operation of a rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Add { path: Path, value: Option<Value> },
    Remove { path: Path },
    Replace { path: Path, value: Value },
    Move { from: Path, path: Path },
    Copy { from: Path, path: Path },
    Test { path: Path, value: Value },
}

/// Why an operation is not well-formed (found when rules are loaded).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OpError {
    #[error("an operation must be a mapping with `op` and `path`")]
    NotAMap,
    #[error("`op` is missing; accepted: add, remove, replace, move, copy, test")]
    MissingOp,
    #[error("unknown op {0:?}; accepted: add, remove, replace, move, copy, test")]
    UnknownOp(String),
    #[error("`{0}` is missing; `{1}` needs it")]
    MissingField(&'static str, String),
    #[error("unknown field {0:?}; an operation has `op`, `path`, `value` and `from`")]
    UnknownField(String),
    #[error(transparent)]
    Path(#[from] PathError),
}

impl Op {
    /// Parse one RFC 6902 operation object.
    pub fn from_value(v: &Value) -> Result<Op, OpError> {
        let m = v.as_object().ok_or(OpError::NotAMap)?;
        if let Some(k) = m
            .keys()
            .find(|k| !matches!(k.as_str(), "op" | "path" | "value" | "from"))
        {
            return Err(OpError::UnknownField(k.to_string()));
        }
        let op = m
            .get("op")
            .and_then(Value::as_str)
            .ok_or(OpError::MissingOp)?;
        let field = |name: &'static str| -> Result<Path, OpError> {
            let s = m
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| OpError::MissingField(name, op.to_string()))?;
            Ok(Path::parse(s)?)
        };
        let value = || {
            m.get("value")
                .cloned()
                .ok_or_else(|| OpError::MissingField("value", op.to_string()))
        };
        Ok(match op {
            "add" => Op::Add {
                path: field("path")?,
                value: m.get("value").cloned(),
            },
            "remove" => Op::Remove {
                path: field("path")?,
            },
            "replace" => Op::Replace {
                path: field("path")?,
                value: value()?,
            },
            "move" => Op::Move {
                from: field("from")?,
                path: field("path")?,
            },
            "copy" => Op::Copy {
                from: field("from")?,
                path: field("path")?,
            },
            "test" => Op::Test {
                path: field("path")?,
                value: value()?,
            },
            other => return Err(OpError::UnknownOp(other.to_string())),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Op::Add { .. } => "add",
            Op::Remove { .. } => "remove",
            Op::Replace { .. } => "replace",
            Op::Move { .. } => "move",
            Op::Copy { .. } => "copy",
            Op::Test { .. } => "test",
        }
    }

    /// `from`, for `copy` and `move`.
    pub fn from(&self) -> Option<&Path> {
        match self {
            Op::Move { from, .. } | Op::Copy { from, .. } => Some(from),
            _ => None,
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Op::Add { path, .. }
            | Op::Remove { path }
            | Op::Replace { path, .. }
            | Op::Move { path, .. }
            | Op::Copy { path, .. }
            | Op::Test { path, .. } => path,
        }
    }
}

/// Why an operation could not be applied to a particular object.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{op} {path}: {reason}")]
pub struct ApplyError {
    pub op: &'static str,
    pub path: String,
    pub reason: String,
}

/// What the engine knows about the object that paths may refer to.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context {
    /// Index of the Ray container in `/spec/containers`, for `[ray]`.
    pub ray_container: Option<usize>,
}

/// Apply one operation to `doc`. On error, `doc` may be partly changed: callers that need
/// atomicity keep a copy (rules do).
pub fn apply(doc: &mut Value, op: &Op, ctx: Context) -> Result<(), ApplyError> {
    let fail = |path: &Path, reason: String| ApplyError {
        op: op.name(),
        path: path.raw.clone(),
        reason,
    };
    match op {
        Op::Add { value: None, .. } => Ok(()),
        Op::Add {
            path,
            value: Some(v),
        } => {
            for steps in resolve(doc, path, true, ctx).map_err(|r| fail(path, r))? {
                add(doc, &steps, v.clone()).map_err(|r| fail(path, r))?;
            }
            Ok(())
        }
        Op::Remove { path } => {
            // Highest indices first, so removing one element does not shift the next.
            let mut all = resolve(doc, path, false, ctx).map_err(|r| fail(path, r))?;
            all.reverse();
            for steps in all {
                remove(doc, &steps).map_err(|r| fail(path, r))?;
            }
            Ok(())
        }
        Op::Replace { path, value } => {
            for steps in resolve(doc, path, false, ctx).map_err(|r| fail(path, r))? {
                let slot = get_mut(doc, &steps)
                    .ok_or_else(|| fail(path, "no value at this path to replace".into()))?;
                *slot = value.clone();
            }
            Ok(())
        }
        Op::Test { path, value } => {
            let all = resolve(doc, path, false, ctx).map_err(|r| fail(path, r))?;
            if all.is_empty() {
                return Err(fail(path, "no value at this path to test".into()));
            }
            for steps in all {
                match get(doc, &steps) {
                    Some(v) if v == value => {}
                    Some(v) => {
                        return Err(fail(
                            path,
                            format!("test failed: found {v}, expected {value}"),
                        ));
                    }
                    None => return Err(fail(path, "no value at this path to test".into())),
                }
            }
            Ok(())
        }
        Op::Copy { from, path } | Op::Move { from, path } => {
            let src = single(doc, from, ctx).map_err(|r| fail(from, r))?;
            let v = get(doc, &src)
                .cloned()
                .ok_or_else(|| fail(from, "no value at `from` to copy or move".into()))?;
            if matches!(op, Op::Move { .. }) {
                if path.tokens.starts_with(&from.tokens) && path.tokens.len() > from.tokens.len() {
                    return Err(fail(path, "cannot move a value into itself".into()));
                }
                remove(doc, &src).map_err(|r| fail(from, r))?;
            }
            for steps in resolve(doc, path, true, ctx).map_err(|r| fail(path, r))? {
                add(doc, &steps, v.clone()).map_err(|r| fail(path, r))?;
            }
            Ok(())
        }
    }
}

/// Resolve a `from` path, which must name exactly one place.
fn single(doc: &Value, p: &Path, ctx: Context) -> Result<Vec<Step>, String> {
    let mut all = resolve(doc, p, false, ctx)?;
    match all.len() {
        1 => Ok(all.remove(0)),
        0 => Err("no value at this path".into()),
        n => Err(format!("`from` must name one value, this names {n}")),
    }
}

/// Expand a path into the concrete places it names in `doc`.
fn resolve(doc: &Value, p: &Path, for_add: bool, ctx: Context) -> Result<Vec<Vec<Step>>, String> {
    let mut out = Vec::new();
    walk(
        Some(doc),
        &p.tokens,
        &mut Vec::new(),
        for_add,
        ctx,
        &mut out,
    )?;
    Ok(out)
}

fn walk(
    node: Option<&Value>,
    toks: &[String],
    prefix: &mut Vec<Step>,
    for_add: bool,
    ctx: Context,
    out: &mut Vec<Vec<Step>>,
) -> Result<(), String> {
    let Some((tok, rest)) = toks.split_first() else {
        out.push(prefix.clone());
        return Ok(());
    };
    let ray = if tok == "[ray]" {
        Some(ray_index(ctx, prefix))
    } else {
        None
    };
    let mut descend = |step: Step, next: Option<&Value>, out: &mut Vec<Vec<Step>>| {
        prefix.push(step);
        let r = walk(next, rest, prefix, for_add, ctx, out);
        prefix.pop();
        r
    };
    match node {
        Some(Value::Object(m)) => descend(Step::Key(tok.clone()), m.get(tok), out),
        Some(Value::Array(a)) => match tok.as_str() {
            "-" => descend(Step::Append, None, out),
            "*" if a.is_empty() => {
                if for_add {
                    descend(Step::Index(0), None, out)
                } else {
                    Ok(())
                }
            }
            "*" => {
                for (i, item) in a.iter().enumerate() {
                    descend(Step::Index(i), Some(item), out)?;
                }
                Ok(())
            }
            "[ray]" => {
                let i = ray.expect("computed for [ray]")?;
                descend(Step::Index(i), a.get(i), out)
            }
            t if t.starts_with('[') => {
                let (k, v) = parse_where(t).ok_or_else(|| format!("bad selector {t:?}"))?;
                let i = a
                    .iter()
                    .position(|e| e.get(k).and_then(Value::as_str) == Some(v))
                    .ok_or_else(|| format!("no element with {k}={v}"))?;
                descend(Step::Index(i), a.get(i), out)
            }
            t => {
                let i: usize = t.parse().map_err(|_| {
                    format!("{t:?} is not an array index, `-`, `*`, `[field=value]` or `[ray]`")
                })?;
                descend(Step::Index(i), a.get(i), out)
            }
        },
        Some(Value::Null) | None => match tok.as_str() {
            "-" => descend(Step::Append, None, out),
            "*" if for_add => descend(Step::Index(0), None, out),
            "*" => Ok(()),
            "[ray]" => Err("the Ray container does not exist here".into()),
            t if t.starts_with('[') => {
                Err(format!("no element matches {t}: the array does not exist"))
            }
            t => descend(
                t.parse()
                    .map_or_else(|_| Step::Key(t.to_string()), Step::Index),
                None,
                out,
            ),
        },
        Some(scalar) => Err(format!(
            "cannot go into {tok:?}: the value there is {scalar}, not an object or array"
        )),
    }
}

fn ray_index(ctx: Context, prefix: &[Step]) -> Result<usize, String> {
    let in_containers =
        matches!(prefix, [Step::Key(a), Step::Key(b)] if a == "spec" && b == "containers");
    if !in_containers {
        return Err("`[ray]` addresses /spec/containers only".into());
    }
    ctx.ray_container
        .ok_or_else(|| "this pod has no Ray container".to_string())
}

fn get<'a>(doc: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    steps.iter().try_fold(doc, |v, s| match (v, s) {
        (Value::Object(m), Step::Key(k)) => m.get(k),
        (Value::Array(a), Step::Index(i)) => a.get(*i),
        _ => None,
    })
}

fn get_mut<'a>(doc: &'a mut Value, steps: &[Step]) -> Option<&'a mut Value> {
    steps.iter().try_fold(doc, |v, s| match (v, s) {
        (Value::Object(m), Step::Key(k)) => m.get_mut(k),
        (Value::Array(a), Step::Index(i)) => a.get_mut(*i),
        _ => None,
    })
}

fn empty_for(next: &Step) -> Value {
    match next {
        Step::Key(_) => Value::Object(Map::new()),
        Step::Index(_) | Step::Append => Value::Array(Vec::new()),
    }
}

fn add(doc: &mut Value, steps: &[Step], value: Value) -> Result<(), String> {
    let Some((step, rest)) = steps.split_first() else {
        *doc = value;
        return Ok(());
    };
    if doc.is_null() {
        *doc = empty_for(step);
    }
    let Some(next) = rest.first() else {
        return match (doc, step) {
            (Value::Object(m), Step::Key(k)) => {
                m.insert(k.clone(), value);
                Ok(())
            }
            (Value::Array(a), Step::Append) => {
                if !a.contains(&value) {
                    a.push(value);
                }
                Ok(())
            }
            (Value::Array(a), Step::Index(i)) if *i <= a.len() => {
                a.insert(*i, value);
                Ok(())
            }
            (Value::Array(a), Step::Index(i)) => Err(format!(
                "index {i} is past the end of an array of {}",
                a.len()
            )),
            (v, s) => Err(format!("cannot add {s:?} to {}", kind(v))),
        };
    };
    let child = match (doc, step) {
        (Value::Object(m), Step::Key(k)) => m.entry(k.clone()).or_insert(Value::Null),
        (Value::Array(a), Step::Index(i)) if *i < a.len() => &mut a[*i],
        (Value::Array(a), Step::Index(i)) if *i == a.len() => {
            a.push(Value::Null);
            a.last_mut().expect("just pushed")
        }
        (Value::Array(a), Step::Index(i)) => {
            return Err(format!(
                "index {i} is past the end of an array of {}",
                a.len()
            ));
        }
        (v, s) => return Err(format!("cannot create {s:?} inside {}", kind(v))),
    };
    if child.is_null() {
        *child = empty_for(next);
    }
    add(child, rest, value)
}

fn remove(doc: &mut Value, steps: &[Step]) -> Result<(), String> {
    let Some((last, parents)) = steps.split_last() else {
        return Err("cannot remove the whole object".into());
    };
    let Some(parent) = get_mut(doc, parents) else {
        return Ok(());
    };
    match (parent, last) {
        (Value::Object(m), Step::Key(k)) => {
            m.shift_remove(k);
            Ok(())
        }
        (Value::Array(a), Step::Index(i)) => {
            if *i < a.len() {
                a.remove(*i);
            }
            Ok(())
        }
        (_, Step::Append) => Err("`-` names no element to remove".into()),
        _ => Ok(()),
    }
}

/// The values at a set of object paths, to put back if a multi-step change fails. Keeping
/// only the subtrees a rule can touch is much cheaper than copying the whole object.
pub struct Snapshot<'p>(Vec<(&'p [String], Option<Value>)>);

impl<'p> Snapshot<'p> {
    /// Save what is needed to restore everything under `roots`, the paths whose subtrees
    /// may change: the value at each root that no other root contains, or its absence (and
    /// that of the first missing object on the way, so a parent an `add` creates goes too).
    pub fn take(doc: &Value, roots: impl IntoIterator<Item = &'p [String]>) -> Snapshot<'p> {
        let mut all: Vec<&[String]> = roots.into_iter().collect();
        all.sort_by_key(|p| p.len());
        all.dedup();
        let mut saved: Vec<(&[String], Option<Value>)> = Vec::new();
        for &p in &all {
            // Inside a root already saved (or one that was absent): restored with it.
            if saved.iter().any(|(q, _)| p.starts_with(q)) {
                continue;
            }
            let mut at = Some(doc);
            let mut depth = 0;
            while depth < p.len() {
                at = at.and_then(|v| v.as_object()?.get(&p[depth]));
                depth += 1;
                if at.is_none() {
                    break;
                }
            }
            saved.push((&p[..depth], at.cloned()));
        }
        Snapshot(saved)
    }

    /// Put every saved value back, deepest first; absent ones are removed again.
    pub fn restore(self, doc: &mut Value) {
        for (p, v) in self.0.into_iter().rev() {
            let Some((last, parents)) = p.split_last() else {
                if let Some(v) = v {
                    *doc = v;
                }
                continue;
            };
            let parent = parents
                .iter()
                .try_fold(&mut *doc, |v, t| v.as_object_mut()?.get_mut(t));
            if let Some(Value::Object(m)) = parent {
                match v {
                    Some(v) => {
                        m.insert(last.clone(), v);
                    }
                    None => {
                        m.shift_remove(last);
                    }
                }
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayshape_json::json;

    fn op(v: Value) -> Op {
        Op::from_value(&v).unwrap()
    }

    fn run(doc: &mut Value, v: Value) -> Result<(), ApplyError> {
        apply(
            doc,
            &op(v),
            Context {
                ray_container: Some(0),
            },
        )
    }

    #[test]
    fn add_creates_parents_and_escapes() {
        let mut d = json!({"spec": {}});
        run(&mut d, json!({"op":"add","path":"/spec/nodeSelector/eks.amazonaws.com~1capacityType","value":"SPOT"})).unwrap();
        assert_eq!(
            d,
            json!({"spec": {"nodeSelector": {"eks.amazonaws.com/capacityType": "SPOT"}}})
        );
        run(
            &mut d,
            json!({"op":"add","path":"/spec/tolerations/-","value":{"key":"a"}}),
        )
        .unwrap();
        run(
            &mut d,
            json!({"op":"add","path":"/spec/tolerations/-","value":{"key":"a"}}),
        )
        .unwrap();
        assert_eq!(
            d["spec"]["tolerations"],
            json!([{"key":"a"}]),
            "append is set-like"
        );
    }

    #[test]
    fn wildcard_ands_into_every_term_or_creates_one() {
        let expr = json!({"key":"k","operator":"DoesNotExist"});
        let path = "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/*/matchExpressions/-";
        let mut d = json!({"spec": {}});
        run(&mut d, json!({"op":"add","path":path,"value":expr})).unwrap();
        assert_eq!(
            d["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"],
            json!([{"matchExpressions":[expr]}])
        );
        let mut d = json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key":"a","operator":"Exists"}]}, {"matchFields": [{"key":"metadata.name","operator":"In","values":["n"]}]}]}}}}});
        run(&mut d, json!({"op":"add","path":path,"value":expr})).unwrap();
        let terms = &d["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"];
        assert_eq!(
            terms.as_array().unwrap().len(),
            2,
            "no new term: terms are ORed"
        );
        assert_eq!(terms[0]["matchExpressions"][1], expr);
        assert_eq!(terms[1]["matchExpressions"][0], expr);
    }

    #[test]
    fn keyed_and_ray_segments() {
        let mut d = json!({"spec": {"containers": [{"name":"ray"},{"name":"side"}]}});
        run(&mut d, json!({"op":"add","path":"/spec/containers/[name=side]/env/-","value":{"name":"A","value":"1"}})).unwrap();
        run(&mut d, json!({"op":"add","path":"/spec/containers/[ray]/env/-","value":{"name":"B","value":"2"}})).unwrap();
        assert_eq!(d["spec"]["containers"][1]["env"][0]["name"], "A");
        assert_eq!(d["spec"]["containers"][0]["env"][0]["name"], "B");
        let e = run(
            &mut d,
            json!({"op":"add","path":"/spec/containers/[name=nope]/env/-","value":1}),
        )
        .unwrap_err();
        assert!(e.reason.contains("name=nope"), "{e}");
    }

    #[test]
    fn copy_move_remove_test() {
        let mut d =
            json!({"metadata": {"annotations": {"rayshape.io/zone": "us-west-2a"}}, "spec": {}});
        run(&mut d, json!({"op":"copy","from":"/metadata/annotations/rayshape.io~1zone","path":"/spec/nodeSelector/topology.kubernetes.io~1zone"})).unwrap();
        assert_eq!(
            d["spec"]["nodeSelector"]["topology.kubernetes.io/zone"],
            "us-west-2a"
        );
        run(&mut d, json!({"op":"remove","path":"/spec/missing/thing"})).unwrap();
        run(&mut d, json!({"op":"test","path":"/spec/nodeSelector/topology.kubernetes.io~1zone","value":"us-west-2a"})).unwrap();
        assert!(run(&mut d, json!({"op":"test","path":"/spec/nodeSelector/topology.kubernetes.io~1zone","value":"x"})).is_err());
        run(
            &mut d,
            json!({"op":"move","from":"/spec/nodeSelector","path":"/spec/x/y"}),
        )
        .unwrap();
        assert_eq!(
            d["spec"]["x"]["y"]["topology.kubernetes.io/zone"],
            "us-west-2a"
        );
        assert!(d["spec"].get("nodeSelector").is_none());
        assert!(
            run(
                &mut d,
                json!({"op":"replace","path":"/spec/nope","value":1})
            )
            .is_err()
        );
        assert!(
            run(
                &mut d,
                json!({"op":"copy","from":"/spec/nope","path":"/spec/a"})
            )
            .is_err()
        );
    }

    #[test]
    fn snapshot_restores_touched_subtrees_only() {
        let before = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"tolerations": [{"key": "x"}], "containers": [{"name": "c"}]}});
        let mut d = before.clone();
        let heads = [
            vec!["spec".to_string(), "tolerations".into()],
            vec!["spec".into(), "nodeSelector".into()],
            vec!["status".into(), "x".into()],
            vec!["status".into(), "y".into()],
        ];
        let snap = Snapshot::take(&d, heads.iter().map(Vec::as_slice));
        assert_eq!(snap.0.len(), 3, "spec is not copied whole: {:?}", snap.0);
        assert_eq!(snap.0[2], (&["status".to_string()][..], None));
        run(
            &mut d,
            json!({"op":"add","path":"/spec/tolerations/-","value":{"key":"y"}}),
        )
        .unwrap();
        run(
            &mut d,
            json!({"op":"add","path":"/spec/nodeSelector/k","value":"v"}),
        )
        .unwrap();
        run(&mut d, json!({"op":"add","path":"/status/x/y","value":1})).unwrap();
        snap.restore(&mut d);
        assert_eq!(d, before);
        // A root that contains another is saved whole: replacing /metadata and then failing
        // must give back all of it, not only its labels.
        let roots = [
            vec!["metadata".to_string()],
            vec!["metadata".into(), "labels".into()],
        ];
        let snap = Snapshot::take(&d, roots.iter().map(Vec::as_slice));
        run(
            &mut d,
            json!({"op":"add","path":"/metadata","value":{"name":"x"}}),
        )
        .unwrap();
        snap.restore(&mut d);
        assert_eq!(d, before);
    }

    #[test]
    fn malformed_ops_are_explained() {
        assert_eq!(
            Op::from_value(&json!({"op":"frob","path":"/a"})),
            Err(OpError::UnknownOp("frob".into()))
        );
        assert!(matches!(
            Op::from_value(&json!({"op":"replace","path":"/a"})),
            Err(OpError::MissingField("value", _))
        ));
        assert!(matches!(
            Op::from_value(&json!({"op":"add","path":"a"})),
            Err(OpError::Path(PathError::NoSlash(_)))
        ));
        assert!(matches!(
            Op::from_value(&json!({"op":"add","path":"/a/-/b","value":1})),
            Err(OpError::Path(PathError::DashNotLast(_)))
        ));
        assert!(matches!(
            Op::from_value(&json!({"op":"add","path":"/a/[x]","value":1})),
            Err(OpError::Path(PathError::BadSelector(..)))
        ));
        assert!(matches!(
            Op::from_value(&json!({"op":"add","path":"/a","valu":1})),
            Err(OpError::UnknownField(_))
        ));
    }

    /// Where an op is strict RFC 6902 here, it does what the `json-patch` crate does; the
    /// set-like append is the one difference (the module docs), on `add`, `copy` and `move`.
    #[test]
    fn copy_and_move_are_rfc_6902_but_for_the_set_like_append() {
        let strict = |doc: Value, o: Value| {
            let mut theirs = serde_json::Value::from(doc.clone());
            let patch: json_patch::Patch =
                serde_json::from_value(serde_json::Value::from(json!([o.clone()]))).unwrap();
            json_patch::patch(&mut theirs, &patch).unwrap();
            let mut ours = doc;
            run(&mut ours, o).unwrap();
            assert_eq!(serde_json::Value::from(ours), theirs);
        };
        strict(
            json!({"a": [1], "b": [2]}),
            json!({"op":"copy","from":"/a/0","path":"/b/-"}),
        );
        strict(
            json!({"a": [1], "b": [2]}),
            json!({"op":"move","from":"/a/0","path":"/b/-"}),
        );
        strict(
            json!({"a": [1, 2]}),
            json!({"op":"move","from":"/a/0","path":"/a/-"}),
        );
        strict(
            json!({"a": [1, 2]}),
            json!({"op":"copy","from":"/a/1","path":"/a/0"}),
        );
        strict(
            json!({"a": {"k": 1}, "b": {}}),
            json!({"op":"move","from":"/a/k","path":"/b/k"}),
        );

        // Already there: nothing is appended, and a moved value is where it was sent.
        let mut d = json!({"a": [{"k": 1}], "b": [{"k": 1}]});
        run(&mut d, json!({"op":"copy","from":"/a/0","path":"/b/-"})).unwrap();
        assert_eq!(d, json!({"a": [{"k": 1}], "b": [{"k": 1}]}));
        run(&mut d, json!({"op":"move","from":"/a/0","path":"/b/-"})).unwrap();
        assert_eq!(d, json!({"a": [], "b": [{"k": 1}]}));
    }
}
