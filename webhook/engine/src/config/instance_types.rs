//! `instance_types.yaml`: the Anyscale operator's instance-type ConfigMap format.
//!
//! ```yaml
//! 8CPU-32GB-1xT4:
//!   resources: {CPU: 8, GPU: 1, memory: 32Gi, accelerators: [T4]}
//!   nodeSelector: {...}
//!   tolerations: [...]
//! ```

use super::problems::Report;
use super::settings::{Settings, is_label_key, is_label_value, is_resource_name};
use crate::primitives::quantity::Quantity;
use rayshape_json::{Map, Value};
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

pub const FILE: &str = "instance_types.yaml";

/// The defaults of the Anyscale chart (`workloads.instanceTypes.defaults`).
pub const DEFAULTS: &str = "\
2CPU-8GB:
  resources: {CPU: 2, memory: 8Gi}
4CPU-16GB:
  resources: {CPU: 4, memory: 16Gi}
8CPU-32GB:
  resources: {CPU: 8, memory: 32Gi}
8CPU-32GB-1xT4:
  resources: {CPU: 8, GPU: 1, memory: 32Gi, accelerators: [T4]}
";

/// One instance type: the pod shape and what Ray should see.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceType {
    pub name: String,
    /// Kubernetes resources of the whole pod (`cpu`, `memory`, `ephemeral-storage`,
    /// extended resources): the upper bound on the sum of all containers.
    pub shape: BTreeMap<String, Quantity>,
    /// Ray's GPU count.
    pub gpus: i128,
    /// Ray custom resources, including `accelerator_type:X`.
    pub ray_resources: BTreeMap<String, f64>,
    /// The Ray accelerator name (`T4`, `A100-80G`, ...).
    pub accelerator: Option<String>,
    pub node_selector: Map,
    pub tolerations: Vec<Value>,
    /// A short hash of everything the type applies, so a record can say which definition
    /// of a type shaped an object, and a changed definition is noticed.
    pub definition: String,
    /// A short hash of what sizing depends on (the shape and the Ray resources): a change
    /// of placement alone leaves it as it was.
    pub sizing: String,
}

impl InstanceType {
    fn hash(&self, placement: bool) -> String {
        use sha2::{Digest, Sha256};
        let mut canonical = rayshape_json::json!({
            "shape": self.shape.iter().map(|(k, q)| (k.clone(), q.millis().to_string())).collect::<BTreeMap<_, _>>(),
            "ray": self.ray_resources,
        });
        if placement && let Some(m) = canonical.as_object_mut() {
            m.insert("accelerator", rayshape_json::json!(self.accelerator));
            m.insert("nodeSelector", Value::Object(self.node_selector.clone()));
            m.insert("tolerations", Value::Array(self.tolerations.clone()));
        }
        let hash = Sha256::digest(canonical.to_string().as_bytes());
        hash[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The shape as text, for messages: `cpu 8, memory 32Gi, nvidia.com/gpu 1`.
    pub fn describe(&self) -> String {
        self.shape
            .iter()
            .map(|(k, q)| format!("{k} {}", q.format_for(k)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Whether a Kubernetes resource name is a GPU the way KubeRay decides it (`IsGPUResourceKey`).
/// The Kubernetes resource of TPU chips, which Ray calls `TPU`.
pub const TPU_RESOURCE: &str = "google.com/tpu";

/// Ray refuses a node whose resources are not whole (`ray start` fails: "Resource quantities
/// must all be whole numbers"), so a fraction here would stop every pod of the type.
fn ray_quantity(n: f64) -> bool {
    n.is_finite() && n >= 0.0 && n.fract() == 0.0 && n <= 1e15
}
const RAY_QUANTITY: &str =
    "must be a whole, non-negative number (Ray refuses fractional node resources at `ray start`)";

pub fn is_gpu_resource(name: &str) -> bool {
    name.ends_with("gpu") || (name.starts_with("nvidia.com/mig-") && name.ends_with("gb"))
}

/// Parse and check the file; every problem goes to `report`.
pub fn load(
    text: &str,
    settings: &Settings,
    report: &mut Report,
) -> Option<BTreeMap<String, InstanceType>> {
    let doc: Option<BTreeMap<String, Spanned<Value>>> = match serde_saphyr::from_str(text) {
        Ok(d) => d,
        Err(e) => {
            report.yaml(
                FILE,
                &e,
                "a mapping of instance-type names, each given once, to their `resources` (and optional `nodeSelector`, `tolerations`), as in the Anyscale ConfigMap",
            );
            return None;
        }
    };
    let before = report.errors.len();
    let mut out = BTreeMap::new();
    for (name, spanned) in doc.unwrap_or_default() {
        let line = Some(spanned.referenced.line());
        if let Some(t) = parse_one(&name, &spanned.value, line, settings, report) {
            out.insert(name, t);
        }
    }
    (report.errors.len() == before).then_some(out)
}

fn parse_one(
    name: &str,
    v: &Value,
    line: Option<u64>,
    settings: &Settings,
    r: &mut Report,
) -> Option<InstanceType> {
    let mut ok = true;
    let mut err = |place: String, msg: String| {
        ok = false;
        r.errors.push(super::problems::Problem {
            file: FILE.into(),
            line,
            place,
            message: msg,
        });
    };
    if name.is_empty() || !is_label_value(name) || name.contains('.') {
        err(name.to_string(), "is not a valid instance-type name: use letters, digits, `-` and `_`, starting and ending with a letter or digit, at most 63 characters".into());
    }
    let Some(m) = v.as_object() else {
        err(name.to_string(), "must be a mapping with `resources` (and optionally `nodeSelector`, `tolerations`, `cpuArchitecture`)".into());
        return None;
    };
    let mut t = InstanceType {
        name: name.to_string(),
        shape: BTreeMap::new(),
        gpus: 0,
        ray_resources: BTreeMap::new(),
        accelerator: None,
        node_selector: Map::new(),
        tolerations: Vec::new(),
        definition: String::new(),
        sizing: String::new(),
    };
    for (k, val) in m {
        let place = format!("{name}.{k}");
        match k.as_str() {
            "resources" => {}
            "nodeSelector" => match val.as_object() {
                Some(sel) => {
                    for (key, value) in sel {
                        match value.as_str() {
                            _ if !is_label_key(key) => err(
                                format!("{place}.{key}"),
                                "is not a label key (a qualified name such as node.kubernetes.io/instance-type)".into(),
                            ),
                            Some(v) if is_label_value(v) => {}
                            _ => err(
                                format!("{place}.{key}"),
                                format!("{value} is not a label value (a string of at most 63 letters, digits, `-`, `_` and `.`)"),
                            ),
                        }
                    }
                    t.node_selector.extend(sel.clone());
                }
                None => err(
                    place,
                    "must be a mapping of label keys to string values".into(),
                ),
            },
            "tolerations" => match val.as_array() {
                Some(ts) => {
                    for (i, tol) in ts.iter().enumerate() {
                        if let Err(msg) = check_toleration(tol) {
                            err(format!("{place}[{i}]"), msg);
                        }
                    }
                    t.tolerations = ts.clone();
                }
                None => err(
                    place,
                    "must be a list of tolerations (mappings with key, operator, value, effect)"
                        .into(),
                ),
            },
            "cpuArchitecture" => match val.as_str() {
                Some(arch @ ("amd64" | "arm64")) => {
                    t.node_selector
                        .insert("kubernetes.io/arch", Value::String(arch.into()));
                }
                _ => err(
                    place,
                    format!("{val} is not a CPU architecture; accepted: amd64, arm64"),
                ),
            },
            other => err(
                place,
                format!(
                    "unknown field {other:?}; accepted: resources, nodeSelector, tolerations, cpuArchitecture"
                ),
            ),
        }
    }
    let Some(res) = m.get("resources").and_then(Value::as_object) else {
        err(
            format!("{name}.resources"),
            "is missing or not a mapping; expected e.g. {CPU: 2, memory: 8Gi}".into(),
        );
        return None;
    };
    let mut explicit_gpu_resource = false;
    let mut tpus = 0;
    for (k, val) in res {
        let place = format!("{name}.resources.{k}");
        let quantity = |err: &mut dyn FnMut(String, String)| match Quantity::from_json(val) {
            Ok(q) if q.millis() >= 0 => Some(q),
            Ok(_) => {
                err(place.clone(), "must not be negative".into());
                None
            }
            Err(e) => {
                err(place.clone(), e.to_string());
                None
            }
        };
        match k.as_str() {
            "CPU" => {
                if let Some(q) = quantity(&mut err) {
                    if q.is_positive() {
                        t.shape.insert("cpu".into(), q);
                    } else {
                        err(place, "must be more than 0".into());
                    }
                }
            }
            "memory" => {
                if let Some(q) = quantity(&mut err) {
                    if q.millis() % 1000 != 0 || !q.is_positive() {
                        err(
                            place,
                            "must be a positive whole number of bytes, like 8Gi or 8589934592"
                                .into(),
                        );
                    } else {
                        t.shape.insert("memory".into(), q);
                    }
                }
            }
            "ephemeral-storage" => {
                if let Some(q) = quantity(&mut err) {
                    t.shape.insert(k.to_string(), q);
                }
            }
            "GPU" => {
                if let Some(q) = quantity(&mut err) {
                    if q.millis() % 1000 != 0 {
                        err(place, "must be a whole number of GPUs".into());
                    } else {
                        t.gpus = q.floor_units();
                    }
                }
            }
            "accelerators" => match val
                .as_array()
                .map(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
            {
                Some(Some(names)) if !names.is_empty() => {
                    // Anyscale takes the first of several as the node's accelerator; so do we.
                    // It is the same as the legacy `accelerator_type:X: 1` Ray resource.
                    set_accelerator(&mut t, names[0], &place, &mut err);
                    t.ray_resources
                        .entry(format!("accelerator_type:{}", names[0]))
                        .or_insert(1.0);
                }
                _ => err(
                    place,
                    "must be a non-empty list of Ray accelerator names, like [T4]".into(),
                ),
            },
            key if key.starts_with("accelerator_type:") => {
                let acc = &key["accelerator_type:".len()..];
                match val.as_f64() {
                    Some(n) if ray_quantity(n) => {
                        t.ray_resources.insert(key.to_string(), n);
                        set_accelerator(&mut t, acc, &place, &mut err);
                    }
                    _ => err(place, RAY_QUANTITY.into()),
                }
            }
            // Ray's TPU resource is the pod's TPU chips: KubeRay gives Ray `TPU` from the
            // `google.com/tpu` limit, and GKE attaches chips only to pods that request them.
            "TPU" => match val.as_f64() {
                Some(n) if ray_quantity(n) => {
                    t.ray_resources.insert(k.to_string(), n);
                    tpus = n as i64;
                }
                _ => err(
                    place,
                    format!("{RAY_QUANTITY}: the pod's TPU chips, requested as {TPU_RESOURCE} too"),
                ),
            },
            // Anyscale's own scheduling hints for TPU slices; no Kubernetes or Ray meaning here.
            key if key.starts_with("anyscale/") => {}
            key if key.contains('/') || key.starts_with("hugepages-") => {
                if !is_resource_name(key) && !key.starts_with("hugepages-") {
                    err(
                        place.clone(),
                        "is not a Kubernetes extended resource name (domain/name)".into(),
                    );
                }
                if let Some(q) = quantity(&mut err) {
                    if q.millis() % 1000 != 0 && !key.starts_with("hugepages-") {
                        err(place, "extended resources must be whole numbers".into());
                    } else {
                        if is_gpu_resource(key) {
                            explicit_gpu_resource = true;
                        }
                        t.shape.insert(key.to_string(), q);
                    }
                }
            }
            key => match val.as_f64() {
                Some(n) if ray_quantity(n) => {
                    t.ray_resources.insert(key.to_string(), n);
                }
                _ => err(
                    place,
                    format!(
                        "{RAY_QUANTITY}: keys other than CPU, GPU, TPU, memory, ephemeral-storage, accelerators and domain/name resources are Ray custom resources"
                    ),
                ),
            },
        }
    }
    if !res.contains_key("CPU") {
        err(
            format!("{name}.resources"),
            "has no CPU; every instance type needs CPU and memory".into(),
        );
    }
    if !res.contains_key("memory") {
        err(
            format!("{name}.resources"),
            "has no memory; every instance type needs CPU and memory".into(),
        );
    }
    if tpus > 0 {
        t.shape
            .entry(TPU_RESOURCE.into())
            .or_insert(Quantity::from_units(tpus));
    }
    if t.gpus > 0 && !explicit_gpu_resource {
        t.shape.insert(
            settings.gpu_resource_name.clone(),
            Quantity::from_units(t.gpus as i64),
        );
    } else if t.gpus == 0 {
        t.gpus = t
            .shape
            .iter()
            .filter(|(k, _)| is_gpu_resource(k))
            .map(|(_, q)| q.floor_units())
            .sum();
    }
    t.definition = t.hash(true);
    t.sizing = t.hash(false);
    ok.then_some(t)
}

/// A toleration as the API server validates one.
fn check_toleration(tol: &Value) -> Result<(), String> {
    let Some(m) = tol.as_object() else {
        return Err(
            "must be a mapping with key, operator, value, effect and tolerationSeconds".into(),
        );
    };
    if let Some(k) = m.keys().find(|k| {
        !matches!(
            k.as_str(),
            "key" | "operator" | "value" | "effect" | "tolerationSeconds"
        )
    }) {
        return Err(format!(
            "unknown field {k:?}; a toleration has key, operator, value, effect and tolerationSeconds"
        ));
    }
    let text = |f: &str| match m.get(f) {
        None => Ok(""),
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(other) => Err(format!("{f}: {other} is not a string")),
    };
    let (key, operator, value, effect) = (
        text("key")?,
        text("operator")?,
        text("value")?,
        text("effect")?,
    );
    match operator {
        "" | "Equal" => {
            if key.is_empty() {
                return Err("key is empty; only operator Exists may leave it empty (to tolerate every taint)".into());
            }
        }
        "Exists" => {
            if !value.is_empty() {
                return Err(format!(
                    "value {value:?} is set with operator Exists; leave it out, or use operator Equal"
                ));
            }
        }
        other => return Err(format!("operator {other:?}; accepted: Exists, Equal")),
    }
    if !key.is_empty() && !is_label_key(key) {
        return Err(format!(
            "key {key:?} is not a qualified name (like nvidia.com/gpu)"
        ));
    }
    if !is_label_value(value) {
        return Err(format!("value {value:?} is not a label value"));
    }
    if !matches!(effect, "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!(
            "effect {effect:?}; accepted: NoSchedule, PreferNoSchedule, NoExecute, or none for all"
        ));
    }
    if let Some(secs) = m.get("tolerationSeconds") {
        if !secs.is_i64() {
            return Err(format!(
                "tolerationSeconds: {secs} is not a whole number of seconds"
            ));
        }
        if effect != "NoExecute" {
            return Err("tolerationSeconds is only allowed with effect NoExecute".into());
        }
    }
    Ok(())
}

fn set_accelerator(
    t: &mut InstanceType,
    acc: &str,
    place: &str,
    err: &mut dyn FnMut(String, String),
) {
    if acc.is_empty() || !is_label_value(acc) {
        err(
            place.to_string(),
            format!(
                "{acc:?} is not a valid accelerator name: it becomes the value of the accelerator-type label (letters, digits, `-`, `_` and `.`, at most 63, like T4 or A100-80G)"
            ),
        );
        return;
    }
    match &t.accelerator {
        Some(a) if a != acc => err(
            place.to_string(),
            format!(
                "names accelerator {acc:?} but the type already has {a:?}; an instance type has one accelerator"
            ),
        ),
        _ => t.accelerator = Some(acc.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_ok(text: &str) -> BTreeMap<String, InstanceType> {
        let mut r = Report::default();
        let t = load(text, &Settings::default(), &mut r);
        assert!(r.errors.is_empty(), "{:#?}", r.errors);
        t.unwrap()
    }

    #[test]
    fn defaults_parse() {
        let t = load_ok(DEFAULTS);
        assert_eq!(t.len(), 4);
        let gpu = &t["8CPU-32GB-1xT4"];
        assert_eq!(gpu.accelerator.as_deref(), Some("T4"));
        assert_eq!(gpu.gpus, 1);
        assert_eq!(gpu.shape["nvidia.com/gpu"], Quantity::from_units(1));
        assert_eq!(gpu.describe(), "cpu 8, memory 32Gi, nvidia.com/gpu 1");
    }

    #[test]
    fn anyscale_legacy_and_extended_keys() {
        let t = load_ok(
            "8CPU-32GB-1xT4:\n  resources: {CPU: 8, GPU: 1, memory: 32Gi, \"accelerator_type:T4\": 1}\n\
             trn:\n  resources: {CPU: \"4000m\", memory: 16Gi, aws.amazon.com/neuroncore: 2, ephemeral-storage: 100Gi, my_res: 3}\n  nodeSelector: {node.kubernetes.io/instance-type: trn1.2xlarge}\n  cpuArchitecture: arm64\n\
             amd:\n  resources: {CPU: 8, memory: 32Gi, amd.com/gpu: 1, accelerators: [AMD-Instinct-MI300X-OAM]}\n",
        );
        assert_eq!(t["8CPU-32GB-1xT4"].accelerator.as_deref(), Some("T4"));
        assert_eq!(
            t["8CPU-32GB-1xT4"].ray_resources["accelerator_type:T4"],
            1.0
        );
        let trn = &t["trn"];
        assert_eq!(
            trn.shape["aws.amazon.com/neuroncore"],
            Quantity::from_units(2)
        );
        assert_eq!(trn.ray_resources["my_res"], 3.0);
        assert_eq!(trn.node_selector["kubernetes.io/arch"], "arm64");
        assert_eq!(t["amd"].gpus, 1);
        assert!(!t["amd"].shape.contains_key("nvidia.com/gpu"));
        // Anyscale's TPU types: `TPU` is Ray's name for the chips the pod requests.
        let t = load_ok(
            "tpu:\n  resources: {CPU: 8, TPU: 4, memory: 16Gi, accelerators: [TPU-V5E], anyscale/tpu_hosts: 1}\n\
             both:\n  resources: {CPU: 8, TPU: 4, google.com/tpu: 4, memory: 16Gi}\n",
        );
        assert_eq!(t["tpu"].shape["google.com/tpu"], Quantity::from_units(4));
        assert_eq!(t["tpu"].ray_resources["TPU"], 4.0);
        assert_eq!(t["both"].shape["google.com/tpu"], Quantity::from_units(4));
    }

    #[test]
    fn ray_resources_must_be_whole() {
        for bad in [
            "my_res: 0.5",
            "TPU: 1.5",
            "\"accelerator_type:T4\": 0.5",
            "my_res: -1",
        ] {
            let mut r = Report::default();
            let text = format!("a:\n  resources: {{CPU: 2, memory: 8Gi, {bad}}}\n");
            assert!(load(&text, &Settings::default(), &mut r).is_none(), "{bad}");
            assert!(
                r.errors[0].to_string().contains("whole, non-negative"),
                "{bad}: {:?}",
                r.errors
            );
        }
    }

    #[test]
    fn what_would_break_every_pod_of_a_type_is_refused() {
        let mut r = Report::default();
        let text = "a:\n  resources: {CPU: 2, memory: 8Gi, \"accelerator_type:T4 x\": 1}\n\
                    b:\n  resources: {CPU: 2, memory: 8Gi}\n  nodeSelector: {\"bad key!\": x, good.io/k: \"bad value!\"}\n\
                    c:\n  resources: {CPU: 2, memory: 8Gi}\n  tolerations: [{key: k, operator: Maybe}, {operator: Exists, value: v}, {key: k, effect: Now}, {key: k, tolerationSeconds: 5}, {key: k, colour: red}, 3]\n";
        assert!(load(text, &Settings::default(), &mut r).is_none());
        let msgs: Vec<String> = r.errors.iter().map(|p| p.to_string()).collect();
        let has = |place: &str, what: &str| {
            assert!(
                msgs.iter().any(|m| m.contains(place) && m.contains(what)),
                "{place} / {what}: {msgs:#?}"
            )
        };
        has(
            "a.resources.accelerator_type:T4 x",
            "not a valid accelerator name",
        );
        has("b.nodeSelector.bad key!", "not a label key");
        has("b.nodeSelector.good.io/k", "not a label value");
        has("c.tolerations[0]", "accepted: Exists, Equal");
        has("c.tolerations[1]", "operator Exists");
        has("c.tolerations[2]", "effect \"Now\"");
        has("c.tolerations[3]", "only allowed with effect NoExecute");
        has("c.tolerations[4]", "unknown field \"colour\"");
        has("c.tolerations[5]", "must be a mapping");
    }

    #[test]
    fn reports_every_problem_with_lines() {
        let mut r = Report::default();
        let text = "ok:\n  resources: {CPU: 2, memory: 8Gi}\nbad:\n  resources: {CPU: lots, memory: 8GB, GPU: 0.5}\n  zone: x\nalso.bad:\n  resources: {memory: 1Gi}\n";
        assert!(load(text, &Settings::default(), &mut r).is_none());
        let msgs: Vec<String> = r.errors.iter().map(|p| p.to_string()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("instance_types.yaml:4: bad.resources.CPU")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("bad.resources.memory") && m.contains("8Gi")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("bad.resources.GPU") && m.contains("whole")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("bad.zone") && m.contains("accepted")),
            "{msgs:#?}"
        );
        assert!(msgs.iter().any(|m| m.contains(":7: also.bad") && m.contains("not a valid instance-type name")), "{msgs:#?}");
        assert!(
            msgs.iter()
                .any(|m| m.contains("also.bad.resources") && m.contains("no CPU")),
            "{msgs:#?}"
        );
    }
}
