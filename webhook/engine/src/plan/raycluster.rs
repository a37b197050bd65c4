//! Sizing of KubeRay's own objects: RayCluster, the `rayClusterSpec` of a RayJob and the
//! `rayClusterConfig` of a RayService.
//!
//! KubeRay derives `--num-cpus`, `--memory`, `--num-gpus`, `--resources` and the `/dev/shm`
//! size from the group template, and its autoscaler plans from the RayCluster, never from
//! pods. So a group whose template (or group `labels`, which KubeRay copies onto its pods)
//! names an instance type gets its Ray container sized here exactly as its pods will be,
//! with every container KubeRay runs beside Ray counted (the autoscaler, the history-server
//! collector, the RayJob submitter in SidecarMode, your own sidecars) and the type's custom
//! Ray resources where KubeRay and the autoscaler read them. Then the three views agree:
//! what Ray registers, what the kubelet enforces, what the autoscaler plans with.
//!
//! Any template change alters KubeRay's upgrade hash (a RayService then starts a whole new
//! cluster), so sizing is idempotent, `replicas`, `workersToDelete` and the user's own
//! `rayStartParams` values are left alone, and an UPDATE that does not change a group keeps
//! the shape the group was given, even if the type's definition has changed since: the
//! record annotation says which definition each group got. Each sized template carries the
//! `sized-for` stamp ([`sized_for`]), which KubeRay copies onto the group's pods, so that
//! they keep that shape too ([`super::pod()`]).

use super::{Denial, sidecar, sizing};
use crate::classify::ClusterKind;
use crate::config::Config;
use crate::config::instance_types::{InstanceType, is_gpu_resource};
use crate::primitives::pod;
use crate::primitives::quantity::Quantity;
use crate::primitives::vecmap::VecMap;
use rayshape_contract::keys;
use rayshape_json::{Map, Str, Value, json};
use std::collections::{BTreeMap, HashMap};

/// KubeRay's default autoscaler container resources (`BuildAutoscalerContainer`).
const AUTOSCALER: (&str, &str, &str, &str) = ("500m", "512Mi", "500m", "512Mi");
/// KubeRay's default history-server collector (`BuildCollectorContainer`, KubeRay ≥ 1.7):
/// limits, then requests.
const COLLECTOR: (&str, &str, &str, &str) = ("200m", "256Mi", "50m", "64Mi");
/// KubeRay's RayJob submitter in SidecarMode (`GetDefaultSubmitterContainer`).
const SUBMITTER: (&str, &str, &str, &str) = ("1", "1Gi", "500m", "200Mi");
const SUBMITTER_NAME: &str = "ray-job-submitter";
const COLLECTOR_NAME: &str = "ray-history-collector";
/// The KAI scheduler's annotation for a fraction of one GPU.
const KAI_GPU_FRACTION: &str = "gpu-fraction";

/// Everything decided about one RayCluster, RayJob or RayService.
#[derive(Debug)]
pub struct ClusterPlan<'c> {
    /// The groups to size.
    pub groups: Vec<GroupPlan<'c>>,
    /// Groups left as an earlier shaping left them (an UPDATE that did not change them).
    pub kept: Vec<String>,
    /// The record annotation, when it changes.
    pub record: Option<(String, String)>,
    pub warnings: Vec<String>,
    /// Why nothing changes, when nothing does.
    pub skipped: Option<&'static str>,
}

/// One group to size.
#[derive(Debug)]
pub struct GroupPlan<'c> {
    /// `head`, or the worker group's name.
    pub name: String,
    /// The path from the object's root to the group spec (keys, and indices as text).
    pub group: Vec<String>,
    pub instance_type: &'c InstanceType,
    /// The new `resources` of the template's first (Ray) container.
    pub resources: Value,
    /// Custom Ray resources to add where KubeRay reads them.
    pub custom: Option<Custom>,
    /// The template's `<prefix>/sized-for` annotation: key and [`sized_for`].
    /// KubeRay copies it onto the group's pods, whose shaping then keeps this sizing when
    /// the type's shape has changed since (see [`super::pod()`]). `None` for a group an
    /// earlier release sized, which an UPDATE gives back exactly as it was stored.
    pub stamp: Option<(String, String)>,
    /// Whether anything differs from what the group has.
    pub changed: bool,
}

/// Where a group's custom Ray resources go, with the whole new value.
#[derive(Debug, Clone, PartialEq)]
pub enum Custom {
    /// `rayStartParams.resources`, as JSON in single quotes (the form KubeRay writes).
    StartParams(String),
    /// The group's `resources` field (KubeRay ≥ 1.5).
    GroupResources(Map),
}

/// Plan the sizing of a KubeRay object's groups; `old` is the stored object on UPDATE.
pub fn plan<'c>(
    obj: &Value,
    old: Option<&Value>,
    kind: ClusterKind,
    cfg: &'c Config,
) -> Result<ClusterPlan<'c>, Denial> {
    let mut out = ClusterPlan {
        groups: Vec::new(),
        kept: Vec::new(),
        record: None,
        warnings: Vec::new(),
        skipped: None,
    };
    let Some(spec) = pod::at(obj, kind.spec_path) else {
        out.skipped = Some("no cluster spec (a RayJob with clusterSelector)");
        return Ok(out);
    };
    let record_key = cfg.settings.key(keys::SHAPED);
    let old_record = old.and_then(|o| record_of(o, &record_key));
    let mut old_record = old_record.as_ref().map(Map::lookup);
    // The stored object's groups by name, found once: looked up per group (as the record
    // is), thousands of groups would cost their square.
    let mut old_groups: HashMap<String, &Value> = HashMap::new();
    if let Some(s) = old.and_then(|o| pod::at(o, kind.spec_path)) {
        for g in groups(s, kind) {
            // Names should be unique (the API server does not check): the first counts.
            old_groups.entry(g.name).or_insert(g.spec);
        }
    }
    let extras = Extras::of(obj, spec, kind);
    let type_key = cfg.settings.key(keys::INSTANCE_TYPE);

    let mut faults = Vec::new();
    // Made a map at the end, hashed: inserting one by one scans what is there.
    let mut record: Vec<(Str, Value)> = Vec::new();
    for g in groups(spec, kind) {
        let Some(template) = g.spec.get("template") else {
            continue;
        };
        // KubeRay's `mergeLabels`: the group's `labels` win over the template's.
        let type_name = pod::at(g.spec, &["labels", &type_key])
            .and_then(Value::as_str)
            .or_else(|| pod::vocab(template, &type_key));
        let Some(type_name) = type_name else { continue };
        let Some(it) = cfg.instance_types.get(type_name) else {
            faults.push(format!(
                "group {}: unknown instance type {type_name:?}",
                g.name
            ));
            continue;
        };
        // An UPDATE that leaves a shaped group as it was keeps its shape.
        let before = old_groups.get(&g.name).copied();
        let shaped_before = old_record
            .as_mut()
            .and_then(|r| r.get(&g.name))
            .filter(|e| e.get("instanceType").and_then(Value::as_str) == Some(type_name));
        if let (Some(b), Some(entry)) = (before, shaped_before)
            && same_group(b, g.spec)
        {
            record.push((g.name.as_str().into(), entry.clone()));
            out.kept.push(g.name);
            continue;
        }
        match plan_group(&g, template, it, &extras, cfg) {
            Ok((mut group, warnings)) => {
                // A group sized before templates were stamped, sent back with what rayshape
                // wrote stripped (`kubectl replace`, server-side apply by another manager):
                // given back as stored, since a new template annotation would make KubeRay
                // start a new cluster for a RayService.
                if let Some(b) = before.filter(|b| !stamped(b, &group))
                    && restores(g.spec, b, &group)
                {
                    group.stamp = None;
                    group.changed = b != g.spec;
                }
                out.warnings.extend(warnings);
                record.push((
                    g.name.as_str().into(),
                    json!({"instanceType": it.name, "definition": it.definition}),
                ));
                out.groups.push(group);
            }
            Err(why) => faults.push(format!("group {}: {why}", g.name)),
        }
    }
    if !faults.is_empty() {
        let mut message = faults.join("; ");
        if message.contains("unknown instance type") {
            message.push_str(&format!("; known instance types: {}", cfg.type_names()));
        }
        return Err(Denial::new(message));
    }
    if !record.is_empty() {
        let text = json!({"groups": Map::from_members(record)}).to_string();
        let current = pod::annotations(obj)
            .and_then(|a| a.get(&record_key))
            .and_then(Value::as_str);
        if current != Some(text.as_str()) {
            out.record = Some((record_key, text));
        }
    }
    if !out.groups.iter().any(|g| g.changed) && out.record.is_none() {
        out.skipped = Some("no group template to size");
    }
    Ok(out)
}

/// One group of a cluster spec.
struct Group<'a> {
    name: String,
    path: Vec<String>,
    spec: &'a Value,
    head: bool,
}

fn groups<'a>(spec: &'a Value, kind: ClusterKind) -> Vec<Group<'a>> {
    let base: Vec<String> = kind.spec_path.iter().map(|s| s.to_string()).collect();
    let mut out = Vec::new();
    if let Some(h) = spec.get("headGroupSpec").filter(|h| h.is_object()) {
        let mut path = base.clone();
        path.push("headGroupSpec".into());
        out.push(Group {
            name: "head".into(),
            path,
            spec: h,
            head: true,
        });
    }
    let workers = spec
        .get("workerGroupSpecs")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    for (i, w) in workers.iter().enumerate().filter(|(_, w)| w.is_object()) {
        let mut path = base.clone();
        path.extend(["workerGroupSpecs".to_string(), i.to_string()]);
        out.push(Group {
            name: w
                .get("groupName")
                .and_then(Value::as_str)
                .map_or_else(|| format!("workerGroupSpecs[{i}]"), str::to_string),
            path,
            spec: w,
            head: false,
        });
    }
    out
}

/// The same group for sizing: template, group labels, group resources and rayStartParams
/// unchanged (replicas and workersToDelete may differ).
fn same_group(a: &Value, b: &Value) -> bool {
    ["template", "labels", "resources", "rayStartParams"]
        .iter()
        .all(|k| a.get(*k) == b.get(*k))
}

/// Whether a group spec's template carries the stamp `plan` would give it.
fn stamped(group: &Value, plan: &GroupPlan<'_>) -> bool {
    let Some((key, value)) = &plan.stamp else {
        return true;
    };
    pod::at(group, &["template"])
        .and_then(pod::annotations)
        .and_then(|a| a.get(key))
        .is_some_and(|v| v.as_str() == Some(value.as_str()))
}

/// Whether writing `plan`'s sizing, without the stamp, into `incoming` gives `stored`.
fn restores(incoming: &Value, stored: &Value, plan: &GroupPlan<'_>) -> bool {
    let mut group = incoming.clone();
    crate::apply::write_group(
        &mut group,
        plan.resources.clone(),
        plan.custom.clone(),
        None,
    );
    &group == stored
}

/// The value of the `<prefix>/sized-for` annotation for a template sized for `it`: its name
/// and the hash of what sizing depends on.
pub fn sized_for(it: &InstanceType) -> String {
    format!("{}@{}", it.name, it.sizing)
}

/// The per-group entries of a record annotation.
fn record_of(obj: &Value, key: &str) -> Option<Map> {
    let text = pod::annotations(obj)?.get(key)?.as_str()?;
    let v: Value = serde_json::from_str(text).ok()?;
    v.get("groups")?.as_object().cloned()
}

/// Containers KubeRay adds to a group's pods that are not in its template.
struct Extras {
    autoscaler: Option<Value>,
    collector: Option<Value>,
    submitter: bool,
}

impl Extras {
    fn of(obj: &Value, spec: &Value, kind: ClusterKind) -> Extras {
        let autoscaler = (spec.get("enableInTreeAutoscaling").and_then(Value::as_bool)
            == Some(true))
        .then(|| {
            pod::at(spec, &["autoscalerOptions", "resources"])
                .cloned()
                .unwrap_or_else(|| resources(AUTOSCALER))
        });
        let collector = pod::at(spec, &["historyServerOptions", "collectorOptions"])
            .filter(|c| c.is_object())
            .map(|c| {
                c.get("resources")
                    .cloned()
                    .unwrap_or_else(|| resources(COLLECTOR))
            });
        let submitter = kind.kind == "RayJob"
            && pod::at(obj, &["spec", "submissionMode"]).and_then(Value::as_str)
                == Some("SidecarMode");
        Extras {
            autoscaler,
            collector,
            submitter,
        }
    }
}

fn resources((lc, lm, rc, rm): (&str, &str, &str, &str)) -> Value {
    json!({"limits": {"cpu": lc, "memory": lm}, "requests": {"cpu": rc, "memory": rm}})
}

/// Size one group, or say why it cannot be.
fn plan_group<'c>(
    g: &Group<'_>,
    template: &Value,
    it: &'c InstanceType,
    extras: &Extras,
    cfg: &Config,
) -> Result<(GroupPlan<'c>, Vec<String>), String> {
    let containers = pod::containers(template);
    if let Some(i) = containers.iter().position(|c| !c.is_object()) {
        return Err(format!(
            "template.spec.containers[{i}] is not an object; every container must be a mapping with at least a name and an image"
        ));
    }
    let Some(ray) = containers.first() else {
        return Err("the template has no containers; KubeRay runs Ray in the first".into());
    };
    let mut warnings = Vec::new();
    // The pod this template becomes, with what KubeRay and rayshape add to it.
    let mut future = json!({"metadata": template.get("metadata").cloned().unwrap_or(json!({})), "spec": template.get("spec").cloned().unwrap_or(json!({}))});
    let has = |name: &str| containers.iter().any(|c| pod::name(c) == name);
    if g.head
        && let Some(r) = &extras.autoscaler
    {
        push(
            &mut future,
            "containers",
            json!({"name": "autoscaler", "resources": r}),
        );
    }
    if let Some(r) = &extras.collector
        && !has(COLLECTOR_NAME)
    {
        push(
            &mut future,
            "containers",
            json!({"name": COLLECTOR_NAME, "resources": r}),
        );
    }
    if g.head && extras.submitter && !has(SUBMITTER_NAME) {
        push(
            &mut future,
            "containers",
            json!({"name": SUBMITTER_NAME, "resources": resources(SUBMITTER)}),
        );
    }
    // The pods carry the group's labels over the template's (KubeRay's `mergeLabels`).
    let opted_out = match pod::at(g.spec, &["labels", &cfg.settings.key(keys::SIDECAR)]) {
        Some(v) => v.as_str() == Some(keys::SIDECAR_DISABLED),
        None => sidecar::opted_out(template, &cfg.settings),
    };
    if cfg.settings.sidecar.enabled && !opted_out {
        let r: Map = cfg
            .settings
            .sidecar
            .resources
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let resources = json!({"requests": r, "limits": r});
        if cfg.settings.sidecar.native {
            push(
                &mut future,
                "initContainers",
                json!({"name": cfg.settings.sidecar.name, "restartPolicy": "Always", "resources": resources}),
            );
        } else {
            push(
                &mut future,
                "containers",
                json!({"name": cfg.settings.sidecar.name, "resources": resources}),
            );
        }
    }
    let sized = sizing::plan(&future, 0, it)?;
    warnings.extend(
        sized
            .warnings
            .iter()
            .map(|w| format!("group {}: {w}", g.name)),
    );
    check_ray_values(g, template, it, &sized.ray, &mut warnings)?;
    let custom = custom_resources(g.spec, it, &mut warnings, &g.name);
    let stamp_key = cfg.settings.key(keys::SIZED_FOR);
    let stamp = sized_for(it);
    let stamped = pod::annotations(template)
        .and_then(|a| a.get(&stamp_key))
        .and_then(Value::as_str)
        == Some(stamp.as_str());
    let changed = ray.get("resources") != Some(&sized.resources) || custom.is_some() || !stamped;
    Ok((
        GroupPlan {
            name: g.name.clone(),
            group: g.path.clone(),
            instance_type: it,
            resources: sized.resources,
            custom,
            stamp: Some((stamp_key, stamp)),
            changed,
        },
        warnings,
    ))
}

/// The user's own values for Ray's view (`rayStartParams`, the group's `resources`, a KAI
/// GPU fraction) against the shape: a warning when the result still works, a denial with
/// the fix when it cannot.
fn check_ray_values(
    g: &Group<'_>,
    template: &Value,
    it: &InstanceType,
    ray: &VecMap<String, Quantity>,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    let gpus: i128 = ray
        .iter()
        .filter(|(k, _)| is_gpu_resource(k))
        .map(|(_, q)| q.floor_units())
        .sum();
    if let Some(fraction) = pod::annotations(template)
        .and_then(|a| a.get(KAI_GPU_FRACTION))
        .and_then(Value::as_str)
        && gpus > 0
    {
        return Err(format!(
            "the template asks the KAI scheduler for {fraction} of a GPU ({KAI_GPU_FRACTION}), but instance type {} gives whole GPUs; use an instance type without GPUs for fractional-GPU groups (KAI provides the fraction), or remove {KAI_GPU_FRACTION}",
            it.name
        ));
    }
    let param = |k: &str| -> Option<(String, f64)> {
        let v = pod::at(g.spec, &["rayStartParams", k])?;
        let text = v
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        let n = text.trim_matches('"').parse::<f64>().ok()?;
        Some((format!("rayStartParams {k}={text}"), n))
    };
    // KubeRay lower-cases these names (`updateRayStartParamsResources`): `CPU` and `cpu`
    // both become `--num-cpus`, `GPU` and `nvidia.com/gpu` both `--num-gpus`.
    let group_res = |is: &dyn Fn(&str) -> bool| -> Option<(String, f64)> {
        let (k, v) = pod::at(g.spec, &["resources"])?
            .as_object()?
            .iter()
            .find(|(k, _)| is(&k.to_ascii_lowercase()))?;
        let text = v
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        let n = Quantity::parse(&text).ok()?;
        Some((
            format!("group resources {k}={text}"),
            n.millis() as f64 / 1000.0,
        ))
    };
    let gpu_asked = param("num-gpus").or_else(|| group_res(&is_gpu_resource));
    if let Some((what, n)) = gpu_asked {
        if n > gpus as f64 {
            return Err(format!(
                "{what} makes Ray claim {n} GPUs, but instance type {} gives {gpus}; remove it (Ray then counts the GPUs the pod gets) or choose a type with {n} GPUs",
                it.name
            ));
        }
        if n < gpus as f64 {
            warnings.push(format!(
                "group {}: {what} hides GPUs: Ray uses {n} of the {gpus} of {}",
                g.name, it.name
            ));
        }
    }
    let cpus = ray.get("cpu").map_or(0, |q| q.ceil_units());
    if let Some((what, n)) = param("num-cpus").or_else(|| group_res(&|k| k == "cpu"))
        && n > cpus as f64
    {
        warnings.push(format!(
            "group {}: {what} is more than the {cpus} CPUs of {}: Ray will oversubscribe them",
            g.name, it.name
        ));
    }
    let memory = ray.get("memory").map_or(0, |q| q.ceil_units());
    if let Some((what, n)) = param("memory").or_else(|| group_res(&|k| k == "memory"))
        && n > memory as f64
    {
        warnings.push(format!(
            "group {}: {what} is more than the memory of {}: Ray may be killed for memory",
            g.name, it.name
        ));
    }
    Ok(())
}

/// The type's custom Ray resources (`accelerator_type:T4`, custom keys) where KubeRay and
/// its autoscaler read them: the group's `resources` field if the group uses it (KubeRay
/// refuses both), else `rayStartParams.resources`. Values the user set stay; `None` when
/// nothing needs adding.
fn custom_resources(
    group: &Value,
    it: &InstanceType,
    warnings: &mut Vec<String>,
    name: &str,
) -> Option<Custom> {
    let mut wanted: BTreeMap<&str, i64> = BTreeMap::new();
    for (k, v) in &it.ray_resources {
        if v.fract() == 0.0 && *v >= 0.0 && *v < 1e15 {
            wanted.insert(k, *v as i64);
        } else {
            warnings.push(format!(
                "group {name}: Ray resource {k}={v} is not a whole number; KubeRay's autoscaler only plans whole custom resources, so it is left to the pods"
            ));
        }
    }
    if wanted.is_empty() {
        return None;
    }
    if let Some(existing) = group
        .get("resources")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
    {
        let mut merged = existing.clone();
        for (k, v) in &wanted {
            merged
                .entry(k.to_string())
                .or_insert_with(|| json!(v.to_string()));
        }
        return (merged != *existing).then_some(Custom::GroupResources(merged));
    }
    let current = pod::at(group, &["rayStartParams", "resources"]).and_then(Value::as_str);
    let mut merged: Map = match current {
        None => Map::new(),
        Some(text) => match start_param_resources(text) {
            Some(m) => m,
            None => {
                warnings.push(format!(
                    "group {name}: rayStartParams resources {text:?} is not KubeRay's JSON form; the instance type's Ray resources were not added"
                ));
                return None;
            }
        },
    };
    let before = merged.len();
    for (k, v) in &wanted {
        merged.entry(k.to_string()).or_insert_with(|| json!(v));
    }
    (merged.len() != before).then(|| Custom::StartParams(quote_start_param(&merged)))
}

/// `rayStartParams.resources` in any of the forms users write: JSON in single quotes
/// (`'{"TPU":4}'`, what KubeRay itself writes), in an extra pair of double quotes with
/// escaped inner quotes (`"{\"TPU\": 4}"`, KubeRay's samples), or plain JSON.
pub fn start_param_resources(text: &str) -> Option<Map> {
    let t = text.trim();
    let inner = if t.len() >= 2 && t.starts_with('\'') && t.ends_with('\'') {
        t[1..t.len() - 1].to_string()
    } else if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
        t[1..t.len() - 1].replace('\\', "")
    } else {
        t.to_string()
    };
    serde_json::from_str::<Value>(&inner)
        .ok()?
        .as_object()
        .cloned()
}

/// JSON in single quotes, the form KubeRay v1.5 itself writes (`'{"TPU":4}'`), and the one
/// form all three readers take: KubeRay (which trims the quotes and parses the JSON before
/// adding `--num-gpus` and a TPU count from the container's limits; the double-quoted form
/// of its samples fails that parse, so KubeRay then adds neither), the shell running
/// `ray start --resources='...'`, and the autoscaler (which drops the first and last
/// character and parses the rest). A key with a single quote in it falls back to the
/// double-quoted form, which the shell would otherwise cut.
fn quote_start_param(m: &Map) -> String {
    let json = Value::Object(m.clone()).to_string();
    if json.contains('\'') {
        return format!("\"{}\"", json.replace('"', "\\\""));
    }
    format!("'{json}'")
}

fn push(pod: &mut Value, list: &str, v: Value) {
    let spec = pod::ensure_object(pod::ensure_field(pod, "spec"));
    pod::ensure_array(spec.entry(list).or_insert_with(|| Value::Array(Vec::new()))).push(v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Class, classify};

    /// Plan and apply, as the pipeline does.
    fn shape(obj: &Value, cfg: &Config) -> Result<crate::apply::Shaped, Denial> {
        let Class::Cluster(kind) = classify(obj, None, &cfg.settings) else {
            panic!("not a cluster: {obj}");
        };
        Ok(crate::apply::cluster(obj, plan(obj, None, kind, cfg)?))
    }

    fn cluster() -> Value {
        json!({"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "rc"},
            "spec": {"enableInTreeAutoscaling": true, "rayVersion": "2.52.0",
                "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": {"metadata": {"labels": {"rayshape.io/instance-type": "4CPU-16GB"}},
                    "spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.52.0"}]}}},
                "workerGroupSpecs": [
                    {"groupName": "gpu", "replicas": 2, "minReplicas": 0, "maxReplicas": 4, "rayStartParams": {},
                     "template": {"metadata": {"labels": {"rayshape.io/instance-type": "8CPU-32GB-1xT4"}},
                                  "spec": {"containers": [{"name": "ray-worker", "image": "rayproject/ray:2.52.0-gpu", "resources": {"limits": {"cpu": "1"}}}]}}},
                    {"groupName": "plain", "replicas": 1, "template": {"spec": {"containers": [{"name": "w", "image": "x"}]}}}]}})
    }

    #[test]
    fn sizes_labelled_groups_only_and_is_idempotent() {
        let cfg = Config::builtin();
        let out = shape(&cluster(), &cfg).unwrap();
        let spec = &out.object["spec"];
        assert_eq!(
            spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"],
            json!({"cpu": "3400m", "memory": "15808Mi"}),
            "autoscaler and sidecar taken out"
        );
        assert_eq!(
            spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"],
            json!({"cpu": "7900m", "memory": "32704Mi", "nvidia.com/gpu": "1"})
        );
        assert!(
            spec["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]
                .get("resources")
                .is_none()
        );
        assert_eq!(
            spec["headGroupSpec"]["rayStartParams"],
            json!({"num-cpus": "0"})
        );
        assert_eq!(spec["workerGroupSpecs"][0]["replicas"], 2);
        let again = shape(&out.object, &cfg).unwrap();
        assert_eq!(again.object, out.object);
        assert_eq!(again.skipped, Some("no group template to size"));
    }

    #[test]
    fn rayjob_and_unknown_types() {
        let cfg = Config::builtin();
        let job = json!({"apiVersion": "ray.io/v1", "kind": "RayJob", "spec": {"rayClusterSpec": cluster()["spec"].clone()}});
        let out = shape(&job, &cfg).unwrap();
        assert_eq!(
            out.object["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"]
                [0]["resources"]["requests"]["cpu"],
            "7900m"
        );
        let selector_job = json!({"apiVersion": "ray.io/v1", "kind": "RayJob", "spec": {"clusterSelector": {"ray.io/cluster": "x"}}});
        assert!(shape(&selector_job, &cfg).unwrap().skipped.is_some());
        let mut bad = cluster();
        bad["spec"]["workerGroupSpecs"][0]["template"]["metadata"]["labels"]["rayshape.io/instance-type"] =
            json!("huge");
        let e = shape(&bad, &cfg).unwrap_err();
        assert!(
            e.message
                .starts_with("group gpu: unknown instance type \"huge\""),
            "{e}"
        );
    }

    fn group_mut<'a>(obj: &'a mut Value, path: &[&str]) -> &'a mut Value {
        path.iter()
            .fold(&mut obj["spec"], |v, k| match k.parse::<usize>() {
                Ok(i) => &mut v[i],
                Err(_) => &mut v[*k],
            })
    }

    fn update(new: &Value, old: &Value, cfg: &Config) -> Result<crate::apply::Shaped, Denial> {
        let Class::Cluster(kind) = classify(new, None, &cfg.settings) else {
            panic!("not a cluster: {new}");
        };
        Ok(crate::apply::cluster(new, plan(new, Some(old), kind, cfg)?))
    }

    fn types(extra: &str) -> Config {
        Config::from_sources(&crate::config::Sources {
            instance_types: Some(format!(
                "{}{extra}",
                crate::config::instance_types::DEFAULTS
            )),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn rayservice_cluster_is_sized_under_ray_cluster_config() {
        let cfg = Config::builtin();
        let svc = json!({"apiVersion": "ray.io/v1", "kind": "RayService", "spec": {"rayClusterConfig": cluster()["spec"].clone()}});
        let out = shape(&svc, &cfg).unwrap();
        assert_eq!(
            out.object["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"]
                [0]["resources"]["limits"]["cpu"],
            "7900m"
        );
        let mut bad = svc.clone();
        bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["metadata"]["labels"]
            ["rayshape.io/instance-type"] = json!("nope");
        assert!(
            shape(&bad, &cfg)
                .unwrap_err()
                .message
                .contains("group gpu: unknown instance type \"nope\"")
        );
    }

    #[test]
    fn group_labels_name_the_type_and_every_container_kuberay_adds_counts() {
        let cfg = Config::builtin();
        let mut c = cluster();
        // KubeRay >= 1.5 copies the group's `labels` onto its pods.
        c["spec"]["workerGroupSpecs"][1]["labels"] =
            json!({"rayshape.io/instance-type": "2CPU-8GB"});
        // KubeRay >= 1.7 adds its history-server collector to every pod (200m/256Mi limits).
        c["spec"]["historyServerOptions"] = json!({"collectorOptions": {}});
        let out = shape(&c, &cfg).unwrap();
        let spec = &out.object["spec"];
        let plain = &spec["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"]
            ["limits"];
        assert_eq!(
            plain,
            &json!({"cpu": "1700m", "memory": "7872Mi"}),
            "2 CPU - sidecar 100m - collector 200m"
        );
        // The group's labels win over the template's, as KubeRay's `mergeLabels` merges them
        // onto the pods.
        let mut both = c.clone();
        both["spec"]["workerGroupSpecs"][1]["template"]["metadata"] =
            json!({"labels": {"rayshape.io/instance-type": "8CPU-32GB"}});
        let out = shape(&both, &cfg).unwrap();
        assert_eq!(
            &out.object["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"]
                ["limits"],
            plain,
            "sized as the group's 2CPU-8GB"
        );
        // So does the group's sidecar opt-out: no room kept for a sidecar its pods lack.
        let mut off = c.clone();
        off["spec"]["workerGroupSpecs"][1]["labels"]["rayshape.io/sidecar"] = json!("disabled");
        let out = shape(&off, &cfg).unwrap();
        assert_eq!(
            out.object["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"]
                ["limits"],
            json!({"cpu": "1800m", "memory": "7936Mi"}),
            "2 CPU - collector 200m, no sidecar"
        );
        let head =
            &spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"];
        assert_eq!(
            head,
            &json!({"cpu": "3200m", "memory": "15552Mi"}),
            "autoscaler, collector and sidecar out"
        );
        // A RayJob in SidecarMode runs its submitter (1 CPU / 1Gi limits) in the head pod.
        let job = json!({"apiVersion": "ray.io/v1", "kind": "RayJob", "spec": {"submissionMode": "SidecarMode", "rayClusterSpec": cluster()["spec"].clone()}});
        let out = shape(&job, &cfg).unwrap();
        assert_eq!(
            out.object["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
                [0]["resources"]["limits"]["cpu"],
            "2400m"
        );
    }

    #[test]
    fn contradictions_are_said_or_denied() {
        let cfg = Config::builtin();
        // Asked for more than the type has: it still works, and the user is told.
        let mut c = cluster();
        c["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"] =
            json!({"limits": {"cpu": "54", "nvidia.com/gpu": "4"}});
        let out = shape(&c, &cfg).unwrap();
        assert!(
            out.warnings.iter().any(|w| w.contains("group gpu")
                && w.contains("nvidia.com/gpu 4→1")
                && w.contains("cpu 54→7900m")),
            "{:?}",
            out.warnings
        );
        // Ray told to claim GPUs the pod does not get: denied, with the fix.
        let mut c = cluster();
        c["spec"]["workerGroupSpecs"][1]["template"]["metadata"] =
            json!({"labels": {"rayshape.io/instance-type": "2CPU-8GB"}});
        c["spec"]["workerGroupSpecs"][1]["rayStartParams"] = json!({"num-gpus": "2"});
        let e = shape(&c, &cfg).unwrap_err();
        assert!(
            e.message
                .contains("group plain: rayStartParams num-gpus=2 makes Ray claim 2 GPUs")
                && e.message.contains("remove it"),
            "{e}"
        );
        let mut c = cluster();
        c["spec"]["workerGroupSpecs"][1]["template"]["metadata"] =
            json!({"labels": {"rayshape.io/instance-type": "2CPU-8GB"}});
        c["spec"]["workerGroupSpecs"][1]["resources"] = json!({"GPU": "1"});
        assert!(
            shape(&c, &cfg)
                .unwrap_err()
                .message
                .contains("group resources GPU=1")
        );
        // KubeRay reads the group's `resources` names in any case.
        c["spec"]["workerGroupSpecs"][1]["resources"] = json!({"gpu": "1"});
        assert!(
            shape(&c, &cfg)
                .unwrap_err()
                .message
                .contains("group resources gpu=1")
        );
        c["spec"]["workerGroupSpecs"][1]["resources"] = json!({"CPU": "3", "Memory": "9Gi"});
        let out = shape(&c, &cfg).unwrap();
        for w in [
            "group resources CPU=3 is more than the 2 CPUs",
            "group resources Memory=9Gi is more than the memory",
        ] {
            assert!(
                out.warnings.iter().any(|x| x.contains(w)),
                "{w}: {:?}",
                out.warnings
            );
        }
        // A fractional GPU from KAI cannot be a whole GPU.
        let mut c = cluster();
        c["spec"]["workerGroupSpecs"][0]["template"]["metadata"]["annotations"] =
            json!({"gpu-fraction": "0.5"});
        let e = shape(&c, &cfg).unwrap_err();
        assert!(
            e.message.contains("gpu-fraction") && e.message.contains("without GPUs"),
            "{e}"
        );
        // Every group at fault is named.
        let mut c = cluster();
        c["spec"]["headGroupSpec"]["template"]["metadata"]["labels"]["rayshape.io/instance-type"] =
            json!("nope");
        c["spec"]["workerGroupSpecs"][0]["template"]["metadata"]["labels"]["rayshape.io/instance-type"] =
            json!("nada");
        let e = shape(&c, &cfg).unwrap_err();
        assert!(
            e.message
                .contains("group head: unknown instance type \"nope\"")
                && e.message
                    .contains("group gpu: unknown instance type \"nada\""),
            "{e}"
        );
    }

    #[test]
    fn custom_ray_resources_go_where_kuberay_and_the_autoscaler_read_them() {
        let cfg = types(
            "tpu:\n  resources: {CPU: 8, memory: 32Gi, google.com/tpu: 4, my_res: 2, accelerators: [TPU-V4]}\n",
        );
        let mut c = cluster();
        c["spec"]["workerGroupSpecs"][1]["template"]["metadata"] =
            json!({"labels": {"rayshape.io/instance-type": "tpu"}});
        c["spec"]["workerGroupSpecs"][1]["rayStartParams"] =
            json!({"resources": "\"{\\\"my_res\\\": 5}\""});
        let out = shape(&c, &cfg).unwrap();
        let text = out.object["spec"]["workerGroupSpecs"][1]["rayStartParams"]["resources"]
            .as_str()
            .unwrap()
            .to_string();
        let parsed = start_param_resources(&text).unwrap();
        assert_eq!(
            Value::Object(parsed),
            json!({"my_res": 5, "accelerator_type:TPU-V4": 1}),
            "the user's value stays: {text}"
        );
        // The accelerator of the GPU group too; idempotent.
        let gpu = &out.object["spec"]["workerGroupSpecs"][0]["rayStartParams"]["resources"];
        assert_eq!(
            start_param_resources(gpu.as_str().unwrap()).map(Value::Object),
            Some(json!({"accelerator_type:T4": 1}))
        );
        assert_eq!(shape(&out.object, &cfg).unwrap().object, out.object);
        // A group using the `resources` field gets them there, as strings.
        let mut c = cluster();
        c["spec"]["workerGroupSpecs"][0]["resources"] = json!({"CPU": "8"});
        let out = shape(&c, &cfg).unwrap();
        assert_eq!(
            out.object["spec"]["workerGroupSpecs"][0]["resources"],
            json!({"CPU": "8", "accelerator_type:T4": "1"})
        );
        assert!(
            out.object["spec"]["workerGroupSpecs"][0]["rayStartParams"]
                .get("resources")
                .is_none()
        );
    }

    #[test]
    fn custom_resources_are_written_as_kuberay_the_shell_and_the_autoscaler_read_them() {
        // Found against the real KubeRay v1.5 operator (tests/e2e kuberay.rs): it parses
        // rayStartParams.resources before adding --num-gpus and the TPU count from the
        // container's limits, and gives up on both when that parse fails, as it does for
        // the double-quoted form of its own samples.
        let kuberay_reads = |t: &str| {
            // getResourcesMap: strings.Trim(s, "'\"` "), then json.Unmarshal.
            let inner = t.trim_matches(|c| "'\"` ".contains(c));
            serde_json::from_str::<Map>(inner).ok()
        };
        let autoscaler_reads = |t: &str| {
            // _get_custom_resources: s[1:-1].replace("\\", ""), then json.loads.
            serde_json::from_str::<Map>(&t[1..t.len() - 1].replace('\\', "")).ok()
        };
        let sample_form = r#""{\"resource1\": 2}""#;
        assert!(kuberay_reads(sample_form).is_none());
        assert!(autoscaler_reads(sample_form).is_some());

        let cfg = Config::builtin();
        let out = shape(&cluster(), &cfg).unwrap();
        let text = out.object["spec"]["workerGroupSpecs"][0]["rayStartParams"]["resources"]
            .as_str()
            .unwrap();
        assert_eq!(text, r#"'{"accelerator_type:T4":1}'"#);
        let want = json!({"accelerator_type:T4": 1});
        assert_eq!(kuberay_reads(text).map(Value::Object), Some(want.clone()));
        assert_eq!(autoscaler_reads(text).map(Value::Object), Some(want));
        // The shell keeps everything between single quotes as it is.
        assert!(!text[1..text.len() - 1].contains('\''));

        // A user's value in the samples' form: kept, and rewritten in the form all read.
        let mut c = cluster();
        c["spec"]["workerGroupSpecs"][0]["rayStartParams"] = json!({"resources": sample_form});
        let out = shape(&c, &cfg).unwrap();
        let text = out.object["spec"]["workerGroupSpecs"][0]["rayStartParams"]["resources"]
            .as_str()
            .unwrap();
        let want = json!({"resource1": 2, "accelerator_type:T4": 1});
        assert_eq!(kuberay_reads(text).map(Value::Object), Some(want.clone()));
        assert_eq!(autoscaler_reads(text).map(Value::Object), Some(want));
        // Shaped again: read back in the new form, nothing to add.
        assert_eq!(shape(&out.object, &cfg).unwrap().object, out.object);
    }

    #[test]
    fn an_update_that_leaves_a_group_keeps_its_shape() {
        let cfg = Config::builtin();
        let stored = shape(&cluster(), &cfg).unwrap().object;
        // The admin changes the type's definition afterwards.
        let bigger = Config::from_sources(&crate::config::Sources {
            instance_types: Some(crate::config::instance_types::DEFAULTS.replace(
                "8CPU-32GB-1xT4:\n  resources: {CPU: 8,",
                "8CPU-32GB-1xT4:\n  resources: {CPU: 9,",
            )),
            ..Default::default()
        })
        .unwrap();
        // The autoscaler scales a group: nothing changes, not even the record.
        let mut scaled = stored.clone();
        scaled["spec"]["workerGroupSpecs"][0]["replicas"] = json!(3);
        scaled["spec"]["workerGroupSpecs"][0]["scaleStrategy"] = json!({"workersToDelete": ["x"]});
        let out = update(&scaled, &stored, &bigger).unwrap();
        assert_eq!(out.object, scaled);
        assert_eq!(out.skipped, Some("no group template to size"));
        // The user changes the group: the new definition applies to it, and only to it.
        let mut changed = stored.clone();
        changed["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"] =
            json!("rayproject/ray:2.53.0-gpu");
        let out = update(&changed, &stored, &bigger).unwrap();
        let gpu = &out.object["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]
            ["limits"]["cpu"];
        assert_eq!(gpu, "8900m");
        assert_eq!(
            out.object["spec"]["headGroupSpec"],
            stored["spec"]["headGroupSpec"]
        );
        let record: Value = serde_json::from_str(
            out.object["metadata"]["annotations"]["rayshape.io/shaped"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_ne!(
            record["groups"]["gpu"]["definition"],
            json!(cfg.instance_types["8CPU-32GB-1xT4"].definition)
        );
        assert_eq!(
            record["groups"]["head"]["definition"],
            json!(cfg.instance_types["4CPU-16GB"].definition)
        );
        // The template says it too, for the group's pods (KubeRay copies its annotations).
        let stamp = |o: &Value| {
            o["spec"]["workerGroupSpecs"][0]["template"]["metadata"]["annotations"]
                ["rayshape.io/sized-for"]
                .clone()
        };
        let new = &bigger.instance_types["8CPU-32GB-1xT4"];
        assert_eq!(
            stamp(&out.object),
            json!(format!("8CPU-32GB-1xT4@{}", new.sizing))
        );
        assert_eq!(
            stamp(&stored),
            json!(format!(
                "8CPU-32GB-1xT4@{}",
                cfg.instance_types["8CPU-32GB-1xT4"].sizing
            ))
        );
        // A group sized by an earlier release, sent back with what rayshape wrote stripped
        // (`kubectl replace`): given back exactly as stored, without a stamp that would
        // change a RayService's template and so start a new cluster.
        let mut legacy = stored.clone();
        for path in [&["headGroupSpec"][..], &["workerGroupSpecs", "0"]] {
            let g = group_mut(&mut legacy, path);
            g["template"]["metadata"]["annotations"] = json!({});
        }
        let mut stripped = legacy.clone();
        for path in [&["headGroupSpec"][..], &["workerGroupSpecs", "0"]] {
            let g = group_mut(&mut stripped, path);
            g["template"]["spec"]["containers"][0]["resources"] = json!({});
            if let Some(p) = g["rayStartParams"].as_object_mut() {
                p.remove("resources");
            }
        }
        assert_ne!(stripped, legacy);
        let out = update(&stripped, &legacy, &cfg).unwrap();
        assert_eq!(out.object, legacy);
        // Changed by the user, it is stamped: its template changes anyway.
        stripped["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"] =
            json!("rayproject/ray:2.53.0-gpu");
        let out = update(&stripped, &legacy, &cfg).unwrap();
        assert_eq!(stamp(&out.object), stamp(&stored));
        assert_eq!(
            out.object["spec"]["headGroupSpec"],
            legacy["spec"]["headGroupSpec"]
        );
        // A template sized by an earlier release, without the stamp, gets it when created
        // again (as KubeRay creates a RayJob's RayCluster from the RayJob's spec).
        let mut unstamped = stored.clone();
        unstamped["spec"]["workerGroupSpecs"][0]["template"]["metadata"]["annotations"] = json!({});
        let out = shape(&unstamped, &cfg).unwrap();
        assert_eq!(stamp(&out.object), stamp(&stored));
        assert_eq!(out.object, stored);
    }
}
